"""Text-prompt pruning for causal LMs: which prompt tokens can the model do without?

Every pruning is executed for real and compared with the unpruned run of the same prompt.

Strategies (registry `TEXT_STRATEGIES`, notes on how each departs from its paper in `DEVIATIONS`):

- `frugalprompt:<method>` (FrugalPrompt): keep the tokens with the largest |attribution| by any
  method of `explorer.analysis.attribution.ATTRIBUTION_METHODS`, towards the target (the user's
  `target`, else the unpruned model's top-1 next token). `frugalprompt` alone means
  `frugalprompt:input_x_gradient`.
- `bottom_k:<method>`: the opposite ablation: keep the tokens with the *smallest* |attribution|
  by the same scores (`bottom_k` alone: `bottom_k:input_x_gradient`).
- `self_information` (Selective Context / LLMLingua style): keep the tokens with the highest
  self-information -log p(x_t | x_<t) under the same LM (read from the unpruned pass).
- `random`: a seeded uniform draw.
- `fastv` / `fastv_last_row` (FastV, "An Image is Worth 1/2 Tokens After Layer 2"): inside the
  LM. Blocks 0..K-1 run on the whole prompt; after block K-1 the prompt tokens that receive the
  least attention leave the sequence, and blocks K..L-1 run on the kept tokens only. The two
  differ only in the score: `fastv` averages block K-1's attention over heads and over all query
  rows (the paper's text: the average attention a token receives from all other tokens);
  `fastv_last_row` averages over heads the last query row only (FastV's released code). Kept tokens keep their
  original position ids (rotary embeddings unchanged) and the causal mask is restricted to the
  kept tokens, so keep ratio 1.0 reproduces the unpruned logits exactly.

Keep count: max(1, round(ratio * n)) of the n prompt tokens, and the last prompt token (the one
that predicts the next token) is always kept; the other keep-1 tokens are chosen by the
strategy among positions 0..n-2 (ties go to the earlier token). Order is always preserved.

Measured against the unpruned run (`fidelity`, by name):
- kl:                      KL(p_unpruned || p_pruned) of the next-token distribution, in nats
- target_prob_before/after, target_rank_before/after: the target token's probability and rank
                           (1 = top) in the next-token distribution
- continuation_agreement:  fraction of the first N greedy tokens equal position by position
- semantic_similarity:     cosine of the all-MiniLM-L6-v2 embeddings of the two N-token greedy
                           continuations (None when N = 0)
- prefill_time_saved:      1 - prefill seconds / unpruned prefill seconds
Per row also the cost, charged for exactly what the strategy runs: `seconds` = scoring + the
pruned prefill (a batch's time is shared equally by its rows) and `flops_ratio` (analytic FLOPs of
the blocks' weight matmuls 2*T*W plus attention 4*T^2*d per block, scoring + pruned pass, over the
unpruned pass), with the scoring part split out as `scoring_seconds` / `scoring_flops_ratio`:
an attribution method's passes (counted as they run; backward = 2x forward) for frugalprompt and
bottom_k, one forward pass over the prompt for self_information, nothing for random and FastV
(which reads its own pass's attention).

Batching: every row of one keep ratio keeps the same number of tokens, so all strategies at a
ratio run as one batch (prefill and greedy decoding with a KV cache); identical kept sets run
once, and a kept set equal to the whole prompt (or FastV keeping every token) is the unpruned
run itself. FastV runs the HF forward with hooks on blocks K..L-1 that cut the sequence, so the
KV cache of those layers only holds the kept tokens and decoding continues with FastV's pruned
cache; when FastV is in the sweep the pruned prompts are left-padded to n tokens in the same
batch (`padded_fastv_batch`). The signals (self-information, FastV's attention) come from the
unpruned run and attribution runs once per method, not per ratio; the continuations of every
row are compared in one MiniLM batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from explorer.analysis.pruning.common import row_columns
from explorer.backends.language import LanguageModel, encode
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import register_result

DEFAULT_ATTRIBUTION = "input_x_gradient"
SWEEP_RATIOS: tuple[float, ...] = (1.0, 0.9, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05)
DEFAULT_LAYER = 2  # FastV's K
MAX_CONTINUATION = 64
FIDELITY_KEYS = (
    "kl",
    "target_prob_before",
    "target_prob_after",
    "target_rank_before",
    "target_rank_after",
    "continuation_agreement",
    "semantic_similarity",
    "prefill_time_saved",
)
BEFORE_LM_LAYER = 0  # rows of strategies that prune the prompt itself report layer 0


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextStrategy:
    """A registered text pruning strategy.

    name: registry key; inside_lm: prunes inside the LM after layer K (else the prompt itself);
    uses_attribution: the name takes ":<attribution method>"; select: (scores, keep) -> kept
    (with the scores it is given, see `strategy_scores`); description: one line for the UI.
    """

    name: str
    label: str
    inside_lm: bool
    uses_attribution: bool
    description: str
    deviation: str
    scoring: str = "none"  # what scoring runs: "none", "forward" (one pass over the prompt), "attribution"


TEXT_STRATEGIES: dict[str, TextStrategy] = {
    s.name: s
    for s in (
        TextStrategy(
            "frugalprompt", "FrugalPrompt (top-k by attribution)", False, True,
            "keep the tokens with the largest |attribution| towards the target",
            "FrugalPrompt scores tokens with GlobEnc/DecompX towards the task label; here any registered "
            "attribution method scores |importance| towards the target token (default input x gradient), "
            "and the last prompt token is always kept.",
            scoring="attribution",
        ),
        TextStrategy(
            "self_information", "Self-information (Selective Context / LLMLingua)", False, False,
            "keep the most surprising tokens, -log p(token | prefix) under the same LM",
            "Selective Context filters phrases/sentences by self-information from a small LM and LLMLingua "
            "uses a budget controller and iterative compression; here single tokens are ranked by "
            "self-information under the analysed LM itself, the first token (no context) counts as "
            "maximally informative, and the last prompt token is always kept.",
            scoring="forward",
        ),
        TextStrategy(
            "bottom_k", "Bottom-k by attribution", False, True,
            "keep the tokens with the smallest |attribution| (the FrugalPrompt scores)",
            "The bottom-k ablation of FrugalPrompt: the same |attribution| scores as frugalprompt with the "
            "same method, keeping the least important tokens (the last prompt token is always kept).",
            scoring="attribution",
        ),
        TextStrategy(
            "random", "Random", False, False,
            "keep a seeded uniform random subset",
            "Baseline: a uniform draw without replacement (numpy default_rng(seed)); the last prompt "
            "token is always kept.",
        ),
        TextStrategy(
            "fastv", "FastV, mean over query rows (the paper's text; inside the LM, after layer K)", True,
            False,
            "after layer K drop the prompt tokens that receive the least attention (mean over all queries)",
            "FastV prunes only image tokens of a vision-language model; here every prompt token but the "
            "last is a candidate. The score follows the paper's text: block K-1's attention received by "
            "a token, averaged over heads and over all query rows (causally masked entries count as 0, "
            "which favours early tokens). FastV's released code uses the last query row instead: that "
            "rule is `fastv_last_row`. Kept tokens keep their position ids, and the pruned KV cache is "
            "used for decoding.",
        ),
        TextStrategy(
            "fastv_last_row", "FastV, last query row (FastV's code; inside the LM, after layer K)", True,
            False,
            "after layer K drop the prompt tokens the last token attends to least",
            "FastV prunes only image tokens of a vision-language model; here every prompt token but the "
            "last is a candidate. The score follows FastV's released code: block K-1's attention from "
            "the last query row (the last prompt token), averaged over heads; the paper's text averages "
            "over all query rows instead (`fastv`). Kept tokens keep their position ids, and the pruned "
            "KV cache is used for decoding.",
        ),
    )
}  # fmt: skip
DEVIATIONS: dict[str, str] = {name: s.deviation for name, s in TEXT_STRATEGIES.items()}
DEFAULT_STRATEGIES: tuple[str, ...] = (
    f"frugalprompt:{DEFAULT_ATTRIBUTION}",
    "self_information",
    f"bottom_k:{DEFAULT_ATTRIBUTION}",
    "random",
    "fastv",
    "fastv_last_row",
)


def strategy_names() -> list[str]:
    """Every selectable name: "<base>:<method>" for the attribution strategies, else the base name."""
    from explorer.analysis.attribution import ATTRIBUTION_METHODS

    names: list[str] = []
    for s in TEXT_STRATEGIES.values():
        if s.uses_attribution:
            names.extend(f"{s.name}:{m}" for m in ATTRIBUTION_METHODS)
        else:
            names.append(s.name)
    return names


def split_strategy(name: str) -> tuple[TextStrategy, str | None]:
    """ "frugalprompt:reagent" -> (strategy, "reagent"); unknown names -> InputError listing names."""
    from explorer.analysis.attribution import ATTRIBUTION_METHODS

    base, _, method = str(name).strip().partition(":")
    if base not in TEXT_STRATEGIES:
        raise InputError(
            f"unknown text pruning strategy {name!r}; known: {', '.join(TEXT_STRATEGIES)} "
            f"(frugalprompt and bottom_k take an attribution method, e.g. frugalprompt:reagent), or 'all'"
        )
    strategy = TEXT_STRATEGIES[base]
    if not strategy.uses_attribution:
        if method:
            raise InputError(f"strategy {base!r} takes no attribution method (got {name!r})")
        return strategy, None
    method = method or DEFAULT_ATTRIBUTION
    if method not in ATTRIBUTION_METHODS:
        raise InputError(
            f"unknown attribution method {method!r} in {name!r}; known: {', '.join(ATTRIBUTION_METHODS)}"
        )
    return strategy, method


def resolve_strategies(strategies: Sequence[str] | str) -> list[str]:
    """ "all", one name or a list -> canonical names ("frugalprompt" -> "frugalprompt:input_x_gradient"),
    de-duplicated in order. Raises InputError for unknown names or an empty list."""
    if isinstance(strategies, str):
        if strategies.strip() == "all":
            return list(DEFAULT_STRATEGIES)
        strategies = [strategies]
    names: list[str] = []
    for raw in strategies:
        if str(raw).strip() == "all":
            names.extend(n for n in DEFAULT_STRATEGIES if n not in names)
            continue
        strategy, method = split_strategy(raw)
        canonical = f"{strategy.name}:{method}" if method else strategy.name
        if canonical not in names:
            names.append(canonical)
    if not names:
        raise InputError(f"choose at least one pruning strategy; known: {', '.join(TEXT_STRATEGIES)}")
    return names


def resolve_keep_ratios(keep_ratios: Sequence[float] | float) -> list[float]:
    """Each ratio a number in (0, 1]; de-duplicated, sorted from 1.0 down."""
    values = [keep_ratios] if isinstance(keep_ratios, (int, float)) else list(keep_ratios)
    ratios: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InputError(f"keep ratio {value!r} is not a number")
        ratio = float(value)
        if math.isnan(ratio) or not 0.0 < ratio <= 1.0:
            raise InputError(f"keep ratio {ratio} is outside (0, 1]: give the fraction of tokens to keep")
        if ratio not in ratios:
            ratios.append(ratio)
    if not ratios:
        raise InputError("give at least one keep ratio in (0, 1]")
    return sorted(ratios, reverse=True)


def validate_layer(lm: LanguageModel, layer: int, needs_layer: bool) -> int:
    """FastV's K: 1 <= K <= n_layers - 1 (blocks 0..K-1 see every token). Without fastv the
    layer is unused but must still be within 0..n_layers - 1."""
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise InputError(f"the pruning layer must be an integer; got {layer!r}")
    n = lm.n_layers
    low = 1 if needs_layer else 0
    if not low <= int(layer) <= n - 1:
        raise InputError(
            f"pruning layer {layer} is out of range for {lm.model_id} ({n} layers): FastV needs "
            f"1 <= K <= {n - 1} (blocks 0..K-1 run on every token, blocks K..{n - 1} on the kept ones)"
        )
    return int(layer)


def keep_count(ratio: float, n_tokens: int) -> int:
    """Tokens kept at `ratio` of `n_tokens`: max(1, round(ratio * n)) (Python rounding)."""
    return max(1, min(n_tokens, round(ratio * n_tokens)))


# ---------------------------------------------------------------------------------------------
# Scores and selection
# ---------------------------------------------------------------------------------------------
@dataclass
class TextSignals:
    """What the strategies rank, all (n,) float64 over prompt positions.

    self_information: -log p(x_t | x_<t) from the unpruned pass; +inf at position 0
    attribution:      method -> attribution scores towards the target (signed, as the method returns)
    fastv_attention:  attention received at block K-1, mean over heads and all query rows (or None)
    fastv_last_row:   attention from the last query row at block K-1, mean over heads (or None)
    """

    n: int
    self_information: np.ndarray
    attribution: dict[str, np.ndarray] = field(default_factory=dict)
    fastv_attention: np.ndarray | None = None
    fastv_last_row: np.ndarray | None = None


def _top(scores: np.ndarray, keep: int, lowest: bool = False) -> np.ndarray:
    """Kept positions: the last one, plus the keep-1 best of the rest (ties: earlier first), sorted."""
    n = scores.shape[0]
    rest = scores[: n - 1].astype(np.float64)
    order = np.argsort(rest if lowest else -rest, kind="stable")[: keep - 1]
    return np.sort(np.concatenate([order, [n - 1]])).astype(np.int64)


def strategy_scores(name: str, signals: TextSignals) -> np.ndarray | None:
    """The (n,) importance a strategy ranks by (None for random)."""
    strategy, method = split_strategy(name)
    if strategy.uses_attribution:
        assert method is not None
        if method not in signals.attribution:
            raise RuntimeError(f"attribution scores for {method!r} were not computed")
        return np.abs(signals.attribution[method])
    if strategy.name == "self_information":
        return signals.self_information
    if strategy.name == "fastv":
        if signals.fastv_attention is None:
            raise RuntimeError("FastV attention was not captured")
        return signals.fastv_attention
    if strategy.name == "fastv_last_row":
        if signals.fastv_last_row is None:
            raise RuntimeError("FastV attention was not captured")
        return signals.fastv_last_row
    return None


def select_tokens(name: str, signals: TextSignals, keep: int, seed: int = 0) -> np.ndarray:
    """Kept positions (sorted, int64, exactly `keep`, always including n-1) for one strategy."""
    n = signals.n
    if not 1 <= keep <= n:
        raise InputError(f"keep count {keep} must be between 1 and {n}")
    strategy, _ = split_strategy(name)
    if strategy.name == "random":
        rng = np.random.default_rng(seed)
        chosen = rng.choice(n - 1, size=keep - 1, replace=False) if keep > 1 else np.empty(0, np.int64)
        kept = np.sort(np.concatenate([chosen, [n - 1]])).astype(np.int64)
    else:
        scores = strategy_scores(name, signals)
        assert scores is not None
        kept = _top(scores, keep, lowest=strategy.name == "bottom_k")
    if kept.shape != (keep,) or len(np.unique(kept)) != keep or kept[-1] != n - 1:
        raise RuntimeError(f"strategy {name!r} kept {kept.tolist()} for keep={keep} of {n}")
    return kept


# ---------------------------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------------------------
def _gather_rows(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Per-row index along `dim` (>= 1): x (b0 in {1, B}, ...), index (B, k) -> (B, ..., k, ...)."""
    b = index.shape[0]
    x = x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b > 1 else x
    shape = [1] * x.dim()
    shape[0], shape[dim] = b, index.shape[1]
    idx = index.view(shape).expand(*[x.shape[i] if i != dim else index.shape[1] for i in range(x.dim())])
    return x.gather(dim, idx)


class _FastVCut:
    """Forward pre-hooks on blocks K..L-1 that make the kept tokens the only sequence.

    Prefill (the hidden state entering block K has all T prompt tokens): the hidden state is
    cut to the kept rows, and every per-position input (the 4-D attention mask on both query
    and key axes, rotary `position_embeddings`, `position_ids`) is cut the same way, so kept
    tokens keep their original positions and a causal mask among themselves. Later blocks get
    the same cut inputs. Decoding (new tokens only): the mask's key axis is cut to the kept
    prompt tokens + the generated tokens, matching the pruned KV cache of those layers.
    """

    def __init__(self, kept: torch.Tensor, n_prompt: int, first_block: int) -> None:
        self.kept = kept  # (B, k) int64
        self.n_prompt = n_prompt
        self.first_block = first_block
        self.prefill = True

    def key_index(self, key_len: int) -> torch.Tensor:
        """(B, k + generated) key positions visible to blocks >= K."""
        extra = torch.arange(self.n_prompt, key_len, device=self.kept.device)
        return torch.cat([self.kept, extra.unsqueeze(0).expand(self.kept.shape[0], -1)], dim=1)

    def _cut_mask(self, mask: torch.Tensor) -> torch.Tensor:
        key = self.key_index(int(mask.shape[-1]))
        if self.prefill:
            mask = _gather_rows(mask, 2, self.kept)
        return _gather_rows(mask, 3, key)

    def _cut_value(self, name: str, value: Any) -> Any:
        if name == "attention_mask" and isinstance(value, torch.Tensor) and value.dim() == 4:
            return self._cut_mask(value)
        if not self.prefill:
            return value
        if name == "position_embeddings" and isinstance(value, tuple):
            return tuple(_gather_rows(v, 1, self.kept) for v in value)
        if name == "position_ids" and isinstance(value, torch.Tensor) and value.dim() == 2:
            return _gather_rows(value, 1, self.kept)
        if name == "cache_position" and isinstance(value, torch.Tensor) and value.dim() == 1:
            return value[self.kept[0]]
        return value

    def hook(self, block_index: int) -> Callable[..., Any]:
        def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            new_args = list(args)
            if self.prefill and block_index == self.first_block:
                new_args[0] = _gather_rows(args[0], 1, self.kept)
            for i in range(1, len(new_args)):  # GPT-2 passes the mask positionally
                value = new_args[i]
                if isinstance(value, torch.Tensor) and value.dim() == 4:
                    new_args[i] = self._cut_mask(value)
            new_kwargs = {k: self._cut_value(k, v) for k, v in kwargs.items()}
            return tuple(new_args), new_kwargs

        return pre_hook

    def restore(self, module: torch.nn.Module, args: Any, output: Any) -> Any:
        """Forward hook on the last block: during the prefill, scatter the kept rows back into a
        full-length (B, T, d) tensor (zeros at dropped positions), because some models (GPT-2)
        reshape to the input length after the blocks. Only the last position is read out, and
        it is always kept."""
        if not self.prefill:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        full = hidden.new_zeros(hidden.shape[0], self.n_prompt, hidden.shape[-1])
        full.scatter_(1, self.kept.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]), hidden)
        return (full, *output[1:]) if isinstance(output, tuple) else full


@contextmanager
def _fastv_hooks(lm: LanguageModel, cut: _FastVCut | None) -> Iterator[None]:
    if cut is None:
        yield
        return
    blocks = lm.blocks()
    handles = [
        blocks[i].register_forward_pre_hook(cut.hook(i), with_kwargs=True)
        for i in range(cut.first_block, len(blocks))
    ]
    handles.append(blocks[len(blocks) - 1].register_forward_hook(cut.restore))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


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
    cut: _FastVCut | None = None,
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

    with _fastv_hooks(lm, cut):
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


def padded_fastv_batch(
    ids: torch.Tensor, prompt_kept: Sequence[np.ndarray], fastv_kept: Sequence[np.ndarray], layer: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, _FastVCut]:
    """One batch for all rows of a keep ratio: pruned prompts and FastV rows together.

    ids: (n,) the prompt; prompt_kept: U kept sets (k each) of strategies that prune the prompt;
    fastv_kept: V kept sets (k each) of FastV. Returns input_ids, attention_mask, position_ids
    (each (U + V, n)) and the cut. A pruned prompt is left-padded to n tokens (mask 0, position 0)
    and its k real tokens get positions 0..k-1, so blocks 0..K-1 compute it exactly as a fresh
    k-token prompt (the padded keys are masked); FastV rows are the whole prompt. At block K the
    cut keeps, per row, the last k positions (pruned prompt) or FastV's kept set, so blocks
    K..L-1 and their KV cache hold k tokens for every row, and decoding runs all rows as one batch.
    The price is that blocks 0..K-1 run the U pruned prompts at length n instead of k."""
    n = int(ids.shape[0])
    rows, masks, positions, kept = [], [], [], []
    for k_set in prompt_kept:
        k = len(k_set)
        rows.append(torch.cat([ids.new_zeros(n - k), ids[torch.as_tensor(k_set)]]))
        masks.append(torch.cat([torch.zeros(n - k, dtype=torch.long), torch.ones(k, dtype=torch.long)]))
        positions.append(torch.cat([torch.zeros(n - k, dtype=torch.long), torch.arange(k)]))
        kept.append(torch.arange(n - k, n))
    for k_set in fastv_kept:
        rows.append(ids)
        masks.append(torch.ones(n, dtype=torch.long))
        positions.append(torch.arange(n))
        kept.append(torch.as_tensor(k_set, dtype=torch.long))
    cut = _FastVCut(torch.stack(kept), n, layer)
    return torch.stack(rows), torch.stack(masks), torch.stack(positions), cut


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

    def grab(module: torch.nn.Module, args: Any, output: Any) -> None:
        if not normed:
            normed.append(output[0] if isinstance(output, tuple) else output)

    lm.forward(ids[:1].unsqueeze(0), logits_to_keep=1)  # warm-up
    handle = lm.final_norm_module().register_forward_hook(grab)
    try:
        base, attentions = run_batch(lm, ids.unsqueeze(0), n_continue, output_attentions=layer is not None)
    finally:
        handle.remove()
    logp = torch.log_softmax(lm.unembed(normed[0][0], normalize=False).float(), dim=-1)  # (n, vocab)
    n = int(ids.shape[0])
    info = np.full(n, np.inf)
    if n > 1:
        nxt = ids[1:].to(logp.device)
        info[1:] = (-logp[:-1].gather(-1, nxt.unsqueeze(-1)).squeeze(-1)).double().cpu().numpy()
    attention = last_row = None
    if layer is not None:
        if attentions is None:
            raise RuntimeError("the model returned no attentions; load it with attn_implementation='eager'")
        att = attentions[layer - 1][0].float().mean(dim=0)  # (n, n) query x key, mean over heads
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


@contextmanager
def counted_block_flops(lm: LanguageModel) -> Iterator[list[float]]:
    """Count the analytic FLOPs of every pass through the blocks inside the context.

    A pass over a (B, T) batch costs B * n_layers * prefill_flops(T); under autograd (the input
    requires grad) the backward pass is counted as twice the forward, so 3x. Yields a one-element
    list holding the running total."""
    total = [0.0]
    n_layers = lm.n_layers

    def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
            factor = 3.0 if torch.is_grad_enabled() and hidden.requires_grad else 1.0
            total[0] += factor * hidden.shape[0] * n_layers * prefill_flops(lm, int(hidden.shape[1]))

    handle = lm.blocks()[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield total
    finally:
        handle.remove()


def attribution_scores(
    lm: LanguageModel, ids: torch.Tensor, target_ids: list[int], method: str, seed: int
) -> tuple[np.ndarray, float, float]:
    """(n,) scores of `method` for the prompt towards `target_ids` (their summed log-probability),
    with what computing them cost: (scores, seconds, FLOPs of the model passes it ran)."""
    from explorer.analysis.attribution import AttributionTask, get_method, run_method

    m = get_method(method)
    task = AttributionTask(
        context_ids=ids.cpu(),
        target_ids=torch.tensor(target_ids, dtype=torch.long),
        foil_ids=None,
        tokens=lm.tokens_str(ids.tolist()),
    )
    t0 = time.perf_counter()
    with counted_block_flops(lm) as flops:
        scores, _, _ = run_method(lm, task, m, m.make_params({}).to_json(), seed)
    return np.asarray(scores, dtype=np.float64), time.perf_counter() - t0, flops[0]


def block_weight_count(lm: LanguageModel) -> int:
    """Weights of one block used in matmuls (every parameter with >= 2 dims: Linear or Conv1D)."""
    return sum(p.numel() for p in lm.blocks()[0].parameters() if p.dim() >= 2)


def prefill_flops(lm: LanguageModel, tokens: int) -> float:
    """Analytic FLOPs of one block on `tokens` tokens: 2*T*W (matmuls) + 4*T^2*d (attention)."""
    d_attn = int(getattr(lm.config, "num_attention_heads", 1)) * int(
        getattr(lm.config, "head_dim", None) or lm.config.hidden_size // lm.config.num_attention_heads
    )
    return 2.0 * tokens * block_weight_count(lm) + 4.0 * tokens * tokens * d_attn


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass
class TextPruningRow:
    """One (strategy, keep ratio) cell. kept: 0-based prompt positions, ascending.
    continuation: the decoded greedy continuation (cut after EOS); top_token: the pruned
    run's top-1 next token."""

    strategy: str
    keep_ratio: float
    keep_count: int
    layer: int
    kept: list[int]
    fidelity: dict[str, float | None]
    seconds: float
    flops_ratio: float
    continuation: str
    continuation_ids: list[int]
    top_token: str
    scoring_seconds: float = 0.0
    scoring_flops_ratio: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "keep_ratio": self.keep_ratio,
            "keep_count": self.keep_count,
            "layer": self.layer,
            "kept": self.kept,
            "fidelity": self.fidelity,
            "seconds": self.seconds,
            "flops_ratio": self.flops_ratio,
            "scoring_seconds": self.scoring_seconds,
            "scoring_flops_ratio": self.scoring_flops_ratio,
            "continuation": self.continuation,
            "top_token": self.top_token,
        }


@register_result
@dataclass
class TextPruningResult:
    """A pruning sweep over strategies x keep ratios on one prompt.

    tokens / input_ids: the n prompt tokens; rows: one per (strategy, ratio), strategies outer,
    ratios inner (1.0 first); target: {"token", "id", "ids"} the measured target;
    reference: {"continuation", "continuation_ids", "top_token", "prefill_seconds"};
    scores: signal name -> (n,) scores the strategies ranked by ("self_information",
    "attribution:<method>", "fastv_attention"); deviations: strategy -> how it departs from its paper.
    seconds: wall time of the sweep; timings: its breakdown in seconds ("reference": the unpruned
    run with its signals, "attribution", "forward": the pruned batches' prefill + decoding,
    "similarity": MiniLM, "other": selection, metrics and glue).
    """

    kind: ClassVar[str] = "prune_text"

    model_id: str
    tokens: list[str]
    input_ids: list[int]
    layer: int
    seed: int
    continuation_tokens: int
    target: dict[str, Any]
    reference: dict[str, Any]
    rows: list[TextPruningRow]
    scores: dict[str, np.ndarray]
    deviations: dict[str, str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r.strategy for r in self.rows))

    @property
    def keep_ratios(self) -> list[float]:
        return sorted({r.keep_ratio for r in self.rows}, reverse=True)

    def row(self, strategy: str, keep_ratio: float) -> TextPruningRow:
        for r in self.rows:
            if r.strategy == strategy and r.keep_ratio == keep_ratio:
                return r
        raise InputError(f"no row for strategy {strategy!r} at keep ratio {keep_ratio}")

    def retention_curve(self, metric: str = "kl") -> dict[str, list[tuple[float, float | None]]]:
        """strategy -> [(keep_ratio, value)] from 1.0 down, for retention plots."""
        if metric not in FIDELITY_KEYS and metric not in ("flops_ratio", "seconds"):
            raise InputError(
                f"unknown metric {metric!r}; known: {', '.join(FIDELITY_KEYS)}, flops_ratio, seconds"
            )
        curves: dict[str, list[tuple[float, float | None]]] = {}
        for r in self.rows:
            value = getattr(r, metric) if metric in ("flops_ratio", "seconds") else r.fidelity.get(metric)
            curves.setdefault(r.strategy, []).append((r.keep_ratio, value))
        return {k: sorted(v, reverse=True) for k, v in curves.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "model": self.model_id,
            "tokens": self.tokens,
            "n_tokens": self.n_tokens,
            "layer": self.layer,
            "seed": self.seed,
            "target": self.target,
            "continuation_tokens": self.continuation_tokens,
            "reference": self.reference,
            "rows": [r.to_dict() for r in self.rows],
            "deviations": self.deviations,
            "notes": self.notes,
            "seconds": self.seconds,
            "timings": self.timings,
        }

    def to_meta(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "tokens": self.tokens,
            "input_ids": self.input_ids,
            "layer": self.layer,
            "seed": self.seed,
            "continuation_tokens": self.continuation_tokens,
            "target": self.target,
            "reference": self.reference,
            "deviations": self.deviations,
            "notes": self.notes,
            "seconds": self.seconds,
            "timings": self.timings,
        }

    def to_tables(self) -> dict[str, pa.Table]:
        rows = self.rows
        rows_table = pa.table(
            {
                **row_columns(rows, FIDELITY_KEYS),
                "continuation": pa.array([r.continuation for r in rows], type=pa.string()),
                "continuation_ids": pa.array([r.continuation_ids for r in rows], type=pa.list_(pa.int32())),
                "top_token": pa.array([r.top_token for r in rows], type=pa.string()),
            }
        )
        names, positions, tokens, values = [], [], [], []
        for name, arr in self.scores.items():
            for pos, value in enumerate(np.asarray(arr, dtype=np.float64)):
                names.append(name)
                positions.append(pos)
                tokens.append(self.tokens[pos])
                values.append(float(value))
        scores_table = pa.table(
            {
                "signal": pa.array(names, type=pa.string()),
                "position": pa.array(positions, type=pa.int32()),
                "token": pa.array(tokens, type=pa.string()),
                "score": pa.array(values, type=pa.float64()),
            }
        )
        return {"rows": rows_table, "scores": scores_table}

    @classmethod
    def from_store(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> TextPruningResult:
        rows = [
            TextPruningRow(
                strategy=r["strategy"],
                keep_ratio=r["keep_ratio"],
                keep_count=r["keep_count"],
                layer=r["layer"],
                kept=list(r["kept"]),
                fidelity={k: r[k] for k in FIDELITY_KEYS},
                seconds=r["seconds"],
                flops_ratio=r["flops_ratio"],
                continuation=r["continuation"],
                continuation_ids=list(r["continuation_ids"]),
                top_token=r["top_token"],
                scoring_seconds=r.get("scoring_seconds") or 0.0,
                scoring_flops_ratio=r.get("scoring_flops_ratio") or 0.0,
            )
            for r in tables["rows"].sort_by("idx").to_pylist()
        ]
        n = len(meta["tokens"])
        scores: dict[str, np.ndarray] = {}
        scores_table = tables.get("scores")
        for r in scores_table.to_pylist() if scores_table is not None else []:
            scores.setdefault(r["signal"], np.zeros(n))[r["position"]] = r["score"]
        return cls(
            model_id=meta["model_id"],
            tokens=list(meta["tokens"]),
            input_ids=list(meta["input_ids"]),
            layer=int(meta["layer"]),
            seed=int(meta["seed"]),
            continuation_tokens=int(meta["continuation_tokens"]),
            target=dict(meta["target"]),
            reference=dict(meta["reference"]),
            rows=rows,
            scores=scores,
            deviations=dict(meta.get("deviations", {})),
            notes=list(meta.get("notes", [])),
            seconds=float(meta.get("seconds", 0.0)),
            timings={k: float(v) for k, v in meta.get("timings", {}).items()},
            run_id=meta.get("run_id"),
        )


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def _no_progress(fraction: float, message: str) -> None:
    return None


def _decode(lm: LanguageModel, ids: list[int]) -> str:
    """Decode a continuation, cut after the first EOS."""
    eos = lm.tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return str(lm.tokenizer.decode(ids, skip_special_tokens=True))


def _resolve_target(lm: LanguageModel, target: str | None, ref_logits: torch.Tensor) -> tuple[list[int], str]:
    if target is None or target == "":
        top = int(ref_logits.argmax())
        return [top], lm.token_str(top)
    from explorer.analysis.attribution.task import resolve_continuation

    ids, text, _ = resolve_continuation(lm, target, "target")
    return ids, text


def _rank_and_prob(logp: torch.Tensor, token: int) -> tuple[int, float]:
    """1-based rank (1 + tokens with a strictly higher log-prob) and probability of `token`."""
    value = logp[token]
    return int((logp > value).sum()) + 1, float(value.exp())


def prune_text(
    lm: LanguageModel,
    prompt: str,
    *,
    strategies: Sequence[str] | str = "all",
    keep_ratios: Sequence[float] | float = SWEEP_RATIOS,
    layer: int = DEFAULT_LAYER,
    target: str | None = None,
    continuation_tokens: int = 8,
    seed: int = 0,
    max_tokens: int = 512,
    progress: ProgressFn | None = None,
) -> TextPruningResult:
    """Prune `prompt` with each strategy at each keep ratio and measure the effects (see module doc).

    strategies: names from `strategy_names()` ("frugalprompt" = "frugalprompt:input_x_gradient")
    or "all"; keep_ratios: fractions in (0, 1]; layer: FastV's K; target: the token whose
    probability/rank is tracked (default: the unpruned top-1 next token; a multi-token target
    uses its first token for probability and rank, and all its tokens for attribution);
    continuation_tokens: N greedy tokens compared (0 skips the continuation measures).
    Raises InputError for bad inputs before any forward pass.
    """
    report = progress or _no_progress
    names = resolve_strategies(strategies)
    ratios = resolve_keep_ratios(keep_ratios)
    parsed = {name: split_strategy(name) for name in names}
    has_fastv = any(s.inside_lm for s, _ in parsed.values())
    layer = validate_layer(lm, layer, needs_layer=has_fastv)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer; got {seed!r}")
    if isinstance(continuation_tokens, bool) or not 0 <= int(continuation_tokens) <= MAX_CONTINUATION:
        raise InputError(
            f"continuation tokens must be between 0 and {MAX_CONTINUATION}, got {continuation_tokens}"
        )
    n_cont = int(continuation_tokens)
    ids = encode(lm, prompt, max_tokens).cpu()
    n = int(ids.shape[0])
    if target is not None and target != "":
        _resolve_target(lm, target, torch.zeros(1))  # validate before any model call
    t_start = time.perf_counter()
    notes: list[str] = []

    timings = {"reference": 0.0, "attribution": 0.0, "forward": 0.0, "similarity": 0.0}
    with lm.lock:
        report(0.02, "Unpruned run")
        ref = reference_run(lm, ids, n_cont, layer if has_fastv else None)
    timings["reference"] = time.perf_counter() - t_start
    target_ids, target_text = _resolve_target(lm, target, ref.last_logits)
    if len(target_ids) > 1:
        notes.append(
            f"target {target!r} is {len(target_ids)} tokens {lm.tokens_str(target_ids)}: probability and rank "
            f"track its first token; attribution explains all of them"
        )
    signals = TextSignals(
        n=n,
        self_information=ref.self_information,
        fastv_attention=ref.attention,
        fastv_last_row=ref.attention_last_row,
    )
    methods = list(dict.fromkeys(m for _, m in parsed.values() if m is not None))
    attribution_cost: dict[str, tuple[float, float]] = {}  # method -> (seconds, FLOPs) of scoring
    for i, method in enumerate(methods):
        report(0.05 + 0.15 * i / max(1, len(methods)), f"Attribution scores ({method})")
        scores_m, seconds_m, flops_m = attribution_scores(lm, ids, target_ids, method, int(seed))
        signals.attribution[method] = scores_m
        attribution_cost[method] = (seconds_m, flops_m)
        timings["attribution"] += seconds_m

    ref_logp = torch.log_softmax(ref.last_logits.double(), dim=-1)
    first_target = target_ids[0]
    rank_before, prob_before = _rank_and_prob(ref_logp, first_target)
    ref_cont = ref.continuation.tolist()
    ref_text = _decode(lm, ref_cont)
    full_flops = lm.n_layers * prefill_flops(lm, n)

    outputs: dict[tuple[str, float], tuple[BatchRun, int, float]] = {}  # (name, ratio) -> (run, row, seconds)
    kept_of: dict[tuple[str, float], np.ndarray] = {}
    with lm.lock:
        for r_i, ratio in enumerate(ratios):
            report(0.2 + 0.7 * r_i / len(ratios), f"Keep ratio {ratio:g}")
            keep = keep_count(ratio, n)
            prompt_sets: dict[tuple[int, ...], list[str]] = {}
            fastv_sets: dict[tuple[int, ...], list[str]] = {}
            for name in names:
                kept = select_tokens(name, signals, keep, int(seed))
                kept_of[(name, ratio)] = kept
                sets = fastv_sets if parsed[name][0].inside_lm else prompt_sets
                sets.setdefault(tuple(kept.tolist()), []).append(name)
            full = tuple(range(n))
            ref_run = BatchRun(ref.last_logits[None], ref.continuation[None], ref.prefill_seconds)
            for sets in (prompt_sets, fastv_sets):
                # a pruned prompt equal to the prompt, or FastV keeping every token (exact by
                # construction), is the unpruned run itself
                for name in sets.pop(full, []):
                    outputs[(name, ratio)] = (ref_run, 0, ref.prefill_seconds)
            if not prompt_sets and not fastv_sets:
                continue
            t_batch = time.perf_counter()
            if fastv_sets:
                batch, mask, positions, cut = padded_fastv_batch(
                    ids, [np.asarray(k) for k in prompt_sets], [np.asarray(k) for k in fastv_sets], layer
                )
                run, _ = run_batch(lm, batch, n_cont, cut, attention_mask=mask, position_ids=positions)
            else:
                run, _ = run_batch(lm, torch.stack([ids[list(k)] for k in prompt_sets]), n_cont)  # (U, keep)
            timings["forward"] += time.perf_counter() - t_batch
            groups = [*prompt_sets.values(), *fastv_sets.values()]
            share = run.prefill_seconds / len(groups)
            for u, group in enumerate(groups):
                for name in group:
                    outputs[(name, ratio)] = (run, u, share)

    report(0.92, "Measuring continuations")
    texts: dict[tuple[str, float], str] = {}
    for key, (run, u, _) in outputs.items():
        texts[key] = _decode(lm, run.continuation[u].tolist())
    similarity: dict[tuple[str, float], float | None] = {key: None for key in outputs}
    if n_cont:
        from explorer.backends.sentence import semantic_similarity

        t_sim = time.perf_counter()
        keys = list(outputs)  # one MiniLM batch for every continuation
        for key, value in zip(keys, semantic_similarity(ref_text, [texts[k] for k in keys]), strict=True):
            similarity[key] = value
        timings["similarity"] = time.perf_counter() - t_sim

    rows: list[TextPruningRow] = []
    ref_p = ref_logp.exp()
    for name in names:
        strategy = parsed[name][0]
        for ratio in ratios:
            run, u, seconds = outputs[(name, ratio)]
            kept = kept_of[(name, ratio)]
            logp = torch.log_softmax(run.last_logits[u].double(), dim=-1)
            kl = float((ref_p * (ref_logp - logp)).sum().clamp_min(0.0))
            rank_after, prob_after = _rank_and_prob(logp, first_target)
            cont = run.continuation[u].tolist()
            agreement = (
                float(np.mean([a == b for a, b in zip(cont, ref_cont, strict=True)])) if n_cont else None
            )
            k = len(kept)
            if strategy.inside_lm:
                flops = layer * prefill_flops(lm, n) + (lm.n_layers - layer) * prefill_flops(lm, k)
            else:
                flops = lm.n_layers * prefill_flops(lm, k)
            # what scoring ran, charged to the row: an attribution method's passes, or the
            # self-information forward pass over the whole prompt; FastV reads its own pass
            scoring_seconds, scoring_flops = 0.0, 0.0
            if strategy.scoring == "attribution":
                scoring_seconds, scoring_flops = attribution_cost[parsed[name][1] or ""]
            elif strategy.scoring == "forward":
                scoring_seconds, scoring_flops = ref.prefill_seconds, full_flops
            rows.append(
                TextPruningRow(
                    strategy=name,
                    keep_ratio=ratio,
                    keep_count=k,
                    layer=layer if strategy.inside_lm else BEFORE_LM_LAYER,
                    kept=[int(i) for i in kept],
                    fidelity={
                        "kl": kl,
                        "target_prob_before": prob_before,
                        "target_prob_after": prob_after,
                        "target_rank_before": float(rank_before),
                        "target_rank_after": float(rank_after),
                        "continuation_agreement": agreement,
                        "semantic_similarity": similarity[(name, ratio)],
                        "prefill_time_saved": 1.0 - seconds / ref.prefill_seconds,
                    },
                    seconds=scoring_seconds + seconds,
                    flops_ratio=(scoring_flops + flops) / full_flops,
                    scoring_seconds=scoring_seconds,
                    scoring_flops_ratio=scoring_flops / full_flops,
                    continuation=texts[(name, ratio)],
                    continuation_ids=[int(t) for t in cont],
                    top_token=lm.token_str(int(run.last_logits[u].argmax())),
                )
            )
    scores: dict[str, np.ndarray] = {}
    if any(s.name == "self_information" for s, _ in parsed.values()):
        scores["self_information"] = signals.self_information
    for method, values in signals.attribution.items():
        scores[f"attribution:{method}"] = values
    if any(s.name == "fastv" for s, _ in parsed.values()) and signals.fastv_attention is not None:
        scores["fastv_attention"] = signals.fastv_attention
    if any(s.name == "fastv_last_row" for s, _ in parsed.values()) and signals.fastv_last_row is not None:
        scores["fastv_last_row_attention"] = signals.fastv_last_row
    report(1.0, "Done")
    seconds = time.perf_counter() - t_start
    timings["other"] = max(0.0, seconds - sum(timings.values()))
    return TextPruningResult(
        model_id=lm.model_id,
        tokens=lm.tokens_str(ids.tolist()),
        input_ids=[int(i) for i in ids.tolist()],
        layer=layer,
        seed=int(seed),
        continuation_tokens=n_cont,
        target={"token": target_text, "id": first_target, "ids": target_ids, "given": bool(target)},
        reference={
            "continuation": ref_text,
            "continuation_ids": [int(t) for t in ref_cont],
            "top_token": lm.token_str(int(ref.last_logits.argmax())),
            "prefill_seconds": ref.prefill_seconds,
        },
        rows=rows,
        scores=scores,
        deviations={parsed[n_][0].name: DEVIATIONS[parsed[n_][0].name] for n_ in names},
        notes=notes,
        seconds=seconds,
        timings=timings,
    )
