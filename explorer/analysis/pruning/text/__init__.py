"""Text-prompt pruning for causal LMs: which prompt tokens can the model do without?

Every pruning is executed for real and compared with the unpruned run of the same prompt.

Strategies (registry `TEXT_STRATEGIES`, the protocol shared with image pruning in
`analysis.pruning.common`; each strategy's `deviation` says how it departs from its paper):

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

Modules: `strategies` (the registry, signals, selection, layer validation), `runs` (batched
prefill + decoding, the reference run), `fastv` (the in-LM cut and the padded batch), `cost`
(FLOPs, attribution scoring with its cost), `result` (`TextPruningResult`), `sweep`
(`prune_text`).
"""

from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS, PruningRow, keep_count, resolve_keep_ratios
from explorer.analysis.pruning.text.cost import (
    attribution_scores,
    block_weight_count,
    counted_block_flops,
    prefill_flops,
)
from explorer.analysis.pruning.text.fastv import padded_fastv_batch
from explorer.analysis.pruning.text.result import FIDELITY_KEYS, TextPruningResult
from explorer.analysis.pruning.text.runs import BatchRun, ReferenceRun, reference_run, run_batch
from explorer.analysis.pruning.text.strategies import (
    BEFORE_LM_LAYER,
    DEFAULT_ATTRIBUTION,
    DEFAULT_LAYER,
    DEFAULT_STRATEGIES,
    TEXT_STRATEGIES,
    TextSignals,
    resolve_strategies,
    select_tokens,
    strategy_names,
    top_tokens,
    validate_layer,
)
from explorer.analysis.pruning.text.sweep import MAX_CONTINUATION, prune_text
from explorer.backends.token_cut import FastVCut, fastv_hooks, gather_rows

__all__ = [
    "BEFORE_LM_LAYER",
    "DEFAULT_ATTRIBUTION",
    "DEFAULT_KEEP_RATIOS",
    "DEFAULT_LAYER",
    "DEFAULT_STRATEGIES",
    "FIDELITY_KEYS",
    "MAX_CONTINUATION",
    "TEXT_STRATEGIES",
    "BatchRun",
    "FastVCut",
    "PruningRow",
    "ReferenceRun",
    "TextPruningResult",
    "TextSignals",
    "attribution_scores",
    "block_weight_count",
    "counted_block_flops",
    "fastv_hooks",
    "gather_rows",
    "keep_count",
    "padded_fastv_batch",
    "prefill_flops",
    "prune_text",
    "reference_run",
    "resolve_keep_ratios",
    "resolve_strategies",
    "run_batch",
    "select_tokens",
    "strategy_names",
    "top_tokens",
    "validate_layer",
]
