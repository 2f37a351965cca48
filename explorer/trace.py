"""One forward pass that captures everything the views need.

`capture(lm, input_ids)` runs the model once with hooks on its blocks and returns a
`Trace`: the residual stream before block 0 (layer 0, the embeddings as the blocks see
them) and after every block (layers 1..n_layers), the attention patterns, and the model's
own output logits. Views (logit lens, attention, sinks) work on the Trace and never re-run
the model.

We hook the blocks instead of using HF's `output_hidden_states`, because HF's last hidden
state already has the final norm applied while the others do not; with hooks every layer
is the raw residual and the lens applies the final norm uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from explorer.errors import InputError
from explorer.models.loading import LanguageModel
from explorer.text_input import check_prompt


@dataclass
class Trace:
    """Captured internals of one forward pass over one sequence.

    input_ids:  (seq,) int64
    tokens:     seq strings, decoded one token at a time
    residual:   (n_layers + 1, seq, d_model) float32; [0] = input to block 0, [i] = output of block i-1
    attentions: (n_layers, n_heads, seq, seq) float32 (query x key; rows sum to 1), or None
    logits:     (seq, vocab) float32, the model's own output
    """

    input_ids: torch.Tensor
    tokens: list[str]
    residual: torch.Tensor
    attentions: torch.Tensor | None
    logits: torch.Tensor

    @property
    def n_layers(self) -> int:
        return int(self.residual.shape[0] - 1)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[0])


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    hidden = getattr(output, "hidden_states", None) or getattr(output, "last_hidden_state", None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    raise TypeError(f"cannot find the hidden state in a block output of type {type(output).__name__}")


def encode(lm: LanguageModel, prompt: str, max_tokens: int, add_special_tokens: bool = True) -> torch.Tensor:
    """Tokenise `prompt` -> (seq,) ids, with the user-facing checks (empty, too long)."""
    check_prompt(prompt, max_tokens)
    ids = lm.tokenizer(prompt, add_special_tokens=add_special_tokens, return_tensors="pt").input_ids[0]
    if ids.numel() == 0:
        raise InputError("the prompt produced no tokens")
    if ids.numel() > max_tokens:
        raise InputError(
            f"the prompt is {ids.numel()} tokens long; the maximum is {max_tokens} "
            f"(set EXPLORER_MAX_PROMPT_TOKENS to raise it)"
        )
    return ids


@torch.no_grad()
def capture(lm: LanguageModel, input_ids: torch.Tensor, attentions: bool = True) -> Trace:
    """Run `lm` once on `input_ids` (seq,) and capture residuals, attentions and logits."""
    blocks = lm.blocks()
    n = len(blocks)
    captured: list[torch.Tensor | None] = [None] * (n + 1)

    def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        captured[0] = _first_tensor(hidden)

    def make_hook(i: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured[i + 1] = _first_tensor(output)

        return hook

    handles = [blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
    handles += [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks)]
    try:
        with lm.lock:
            out = lm.model(
                input_ids=input_ids.unsqueeze(0).to(lm.device),
                output_attentions=attentions,
                use_cache=False,
            )
    finally:
        for h in handles:
            h.remove()
    if any(c is None for c in captured):
        raise RuntimeError("a block did not run: the architecture spec points at the wrong modules")
    residual = torch.stack([c[0].float() for c in captured if c is not None])  # (L+1, seq, d)
    att = None
    if attentions:
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("the model returned no attentions; load it with attn_implementation='eager'")
        att = torch.stack([a[0].float() for a in out.attentions])  # (L, H, seq, seq)
    ids = input_ids.detach().cpu()
    return Trace(
        input_ids=ids,
        tokens=lm.tokens_str(ids.tolist()),
        residual=residual,
        attentions=att,
        logits=out.logits[0].float(),
    )
