"""The forward passes of a text-pruning sweep: one batched prefill + greedy decoding (KV cache),
and the unpruned reference run with the signals the strategies rank by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from explorer.backends.language import LanguageModel
from explorer.backends.token_cut import FastVCut, fastv_hooks


@dataclass
class BatchRun:
    """Outputs of one prefill (+ greedy decoding) over B inputs.

    last_logits:  (B, vocab) float32 next-token logits after the prompt
    continuation: (B, N) int64 greedy continuation (exactly N tokens, not cut at EOS)
    prefill_seconds: wall time of the prefill (the whole batch)
    """

    last_logits: torch.Tensor
    continuation: torch.Tensor
    prefill_seconds: float


def run_batch(
    lm: LanguageModel,
    input_ids: torch.Tensor,
    n_continue: int,
    cut: FastVCut | None = None,
    output_attentions: bool = False,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> tuple[BatchRun, tuple[torch.Tensor, ...] | None]:
    """Prefill `input_ids` (B, T) (optionally with FastV's cut) then decode `n_continue` greedy
    tokens with the KV cache. Returns the run and the prefill's attentions (when asked for).

    attention_mask (B, T) 0/1 and position_ids (B, T) describe left-padded rows (see
    `padded_fastv_batch`); decoding extends the mask with ones and continues each row's positions.
    Only the last position's logits are computed."""

    def after_step(step: int, tokens: torch.Tensor) -> None:
        if cut is not None:
            cut.prefill = False  # the prefill has run: later passes see only the new tokens

    with fastv_hooks(lm, cut):
        generation = lm.generate(
            input_ids,
            n_continue,
            stop_at_eos=False,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_attentions=output_attentions,
            step_hook=after_step,
        )
    run = BatchRun(
        last_logits=generation.first_logits,
        continuation=generation.tokens,
        prefill_seconds=generation.prefill_seconds,
    )
    return run, generation.prefill_attentions


@dataclass
class ReferenceRun:
    """The unpruned run: the same prefill + decoding as the pruned rows, plus the signals.

    last_logits: (vocab,); continuation: (N,); self_information: (n,)
    attention: (n,) received at block layer-1, mean over heads and all query rows, or None
    attention_last_row: (n,) the last query row at block layer-1, mean over heads, or None
    """

    last_logits: torch.Tensor
    continuation: torch.Tensor
    prefill_seconds: float
    self_information: np.ndarray
    attention: np.ndarray | None
    attention_last_row: np.ndarray | None = None


@torch.inference_mode()
def reference_run(lm: LanguageModel, ids: torch.Tensor, n_continue: int, layer: int | None) -> ReferenceRun:
    """The unpruned prefill (timed, the same call as the pruned rows, after a one-token warm-up
    so first-call overheads do not count as time saved) and greedy decoding.

    The signals come from the same pass: self-information from the final-normed hidden states
    of every position (a hook on the final norm; the LM head over all positions runs after the
    timer), and, when `layer` is given, block layer-1's attention received by each token (mean
    over heads and all query rows)."""
    normed: list[torch.Tensor] = []
    mean_att: list[torch.Tensor] = []

    def grab(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not normed:
            normed.append(output[0] if isinstance(output, tuple) else output)

    def grab_attention(module: torch.nn.Module, args: Any, output: Any) -> None:
        # only block layer-1 of the prefill, reduced at once: never every layer's (heads, n, n)
        weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if not mean_att and isinstance(weights, torch.Tensor) and weights.dim() == 4:
            mean_att.append(weights[0].float().mean(dim=0))

    lm.forward(ids[:1].unsqueeze(0), logits_to_keep=1)  # warm-up
    handles = [lm.final_norm_module().register_forward_hook(grab)]
    if layer is not None:
        handles.append(lm.attention_module(layer - 1).register_forward_hook(grab_attention))
    try:
        base, _ = run_batch(lm, ids.unsqueeze(0), n_continue)
    finally:
        for handle in handles:
            handle.remove()
    logp = torch.log_softmax(lm.unembed(normed[0][0], normalize=False).float(), dim=-1)  # (n, vocab)
    n = int(ids.shape[0])
    info = np.full(n, np.inf)
    if n > 1:
        nxt = ids[1:].to(logp.device)
        info[1:] = (-logp[:-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1)).double().cpu().numpy()
    attention = last_row = None
    if layer is not None:
        if not mean_att:
            raise RuntimeError("the model returned no attentions; load it with attn_implementation='eager'")
        att = mean_att[0]  # (n, n) query x key, mean over heads
        attention = att.mean(dim=0).double().cpu().numpy()  # (n,) mean over query rows
        last_row = att[-1].double().cpu().numpy()  # (n,) the last query row
    return ReferenceRun(
        last_logits=base.last_logits[0],
        continuation=base.continuation[0],
        prefill_seconds=base.prefill_seconds,
        self_information=info,
        attention=attention,
        attention_last_row=last_row,
    )
