"""Text pruning strategies, registered in `TEXT_STRATEGIES` (the shared protocol of
`analysis.pruning.common`): each is a function (signals, keep, seed, option) -> kept positions.

Keep count: max(1, round(ratio * n)) of the n prompt tokens, and the last prompt token (the one
that predicts the next token) is always kept; the other keep-1 tokens are chosen by the strategy
among positions 0..n-2 (ties go to the earlier token). Order is always preserved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from explorer.analysis.pruning import common
from explorer.analysis.pruning.common import StrategyRegistry
from explorer.backends.language import LanguageModel

DEFAULT_ATTRIBUTION = "input_x_gradient"
DEFAULT_LAYER = 2  # FastV's K
BEFORE_LM_LAYER = 0  # rows of strategies that prune the prompt itself report layer 0
# What a text strategy's scoring runs (charged to its rows): nothing, one forward pass over the
# prompt, or an attribution method's passes.
TEXT_SCORING_COSTS = ("none", "forward", "attribution")


@dataclass
class TextSignals:
    """What the strategies rank: signal name -> (n,) float64 over prompt positions.

    "self_information":          -log p(x_t | x_<t) from the unpruned pass; +inf at position 0
    "attribution:<method>":      attribution scores towards the target (signed, as the method returns)
    "fastv_attention":           attention received at block K-1, mean over heads and all query rows
    "fastv_last_row_attention":  attention from the last query row at block K-1, mean over heads
    """

    n: int
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        if name not in self.values:
            raise RuntimeError(f"the signal {name!r} was not computed")
        return self.values[name]


def attribution_methods() -> list[str]:
    from explorer.analysis.attribution import ATTRIBUTION_METHODS

    return list(ATTRIBUTION_METHODS)


def top_tokens(scores: np.ndarray, keep: int, lowest: bool = False) -> np.ndarray:
    """Kept positions: the last one, plus the keep-1 best of the rest (ties: earlier first), sorted."""
    n = scores.shape[0]
    rest = scores[: n - 1].astype(np.float64)
    order = np.argsort(rest if lowest else -rest, kind="stable")[: keep - 1]
    return np.sort(np.concatenate([order, [n - 1]])).astype(np.int64)


TEXT_STRATEGIES: StrategyRegistry[TextSignals] = StrategyRegistry(
    "text", TEXT_SCORING_COSTS, option_name="attribution method"
)


@TEXT_STRATEGIES.register(
    "frugalprompt",
    label="FrugalPrompt (top-k by attribution)",
    description="keep the tokens with the largest |attribution| towards the target",
    deviation="FrugalPrompt scores tokens with GlobEnc/DecompX towards the task label; here any registered "
    "attribution method scores |importance| towards the target token (default input x gradient), "
    "and the last prompt token is always kept.",
    scoring="attribution",
    signal="attribution:{option}",
    options=attribution_methods,
    default_option=DEFAULT_ATTRIBUTION,
)
def frugalprompt(signals: TextSignals, keep: int, seed: int, option: str | None) -> np.ndarray:
    return top_tokens(np.abs(signals.get(f"attribution:{option}")), keep)


@TEXT_STRATEGIES.register(
    "self_information",
    label="Self-information (Selective Context / LLMLingua)",
    description="keep the most surprising tokens, -log p(token | prefix) under the same LM",
    deviation="Selective Context filters phrases/sentences by self-information from a small LM and LLMLingua "
    "uses a budget controller and iterative compression; here single tokens are ranked by "
    "self-information under the analysed LM itself, the first token (no context) counts as "
    "maximally informative, and the last prompt token is always kept.",
    scoring="forward",
    signal="self_information",
)
def self_information(signals: TextSignals, keep: int, seed: int, option: str | None) -> np.ndarray:
    return top_tokens(signals.get("self_information"), keep)


@TEXT_STRATEGIES.register(
    "bottom_k",
    label="Bottom-k by attribution",
    description="keep the tokens with the smallest |attribution| (the FrugalPrompt scores)",
    deviation="The bottom-k ablation of FrugalPrompt: the same |attribution| scores as frugalprompt with the "
    "same method, keeping the least important tokens (the last prompt token is always kept).",
    scoring="attribution",
    signal="attribution:{option}",
    options=attribution_methods,
    default_option=DEFAULT_ATTRIBUTION,
)
def bottom_k(signals: TextSignals, keep: int, seed: int, option: str | None) -> np.ndarray:
    return top_tokens(np.abs(signals.get(f"attribution:{option}")), keep, lowest=True)


@TEXT_STRATEGIES.register(
    "random",
    label="Random",
    description="keep a seeded uniform random subset",
    deviation="Baseline: a uniform draw without replacement (numpy default_rng(seed)); the last prompt "
    "token is always kept.",
    scoring="none",
)
def random_tokens(signals: TextSignals, keep: int, seed: int, option: str | None) -> np.ndarray:
    n = signals.n
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n - 1, size=keep - 1, replace=False) if keep > 1 else np.empty(0, np.int64)
    return np.sort(np.concatenate([chosen, [n - 1]])).astype(np.int64)


@TEXT_STRATEGIES.register(
    "fastv",
    label="FastV, mean over query rows (the paper's text; inside the LM, after layer K)",
    description="after layer K drop the prompt tokens that receive the least attention (mean over all queries)",
    deviation="FastV prunes only image tokens of a vision-language model; here every prompt token but the "
    "last is a candidate. The score follows the paper's text: block K-1's attention received by "
    "a token, averaged over heads and over all query rows (causally masked entries count as 0, "
    "which favours early tokens). FastV's released code uses the last query row instead: that "
    "rule is `fastv_last_row`. Kept tokens keep their position ids, and the pruned KV cache is "
    "used for decoding.",
    scoring="none",  # it reads its own pass's attention
    inside_model=True,
    signal="fastv_attention",
)
def fastv(signals: TextSignals, keep: int, seed: int, option: str | None) -> np.ndarray:
    return top_tokens(signals.get("fastv_attention"), keep)


@TEXT_STRATEGIES.register(
    "fastv_last_row",
    label="FastV, last query row (FastV's code; inside the LM, after layer K)",
    description="after layer K drop the prompt tokens the last token attends to least",
    deviation="FastV prunes only image tokens of a vision-language model; here every prompt token but the "
    "last is a candidate. The score follows FastV's released code: block K-1's attention from "
    "the last query row (the last prompt token), averaged over heads; the paper's text averages "
    "over all query rows instead (`fastv`). Kept tokens keep their position ids, and the pruned "
    "KV cache is used for decoding.",
    scoring="none",
    inside_model=True,
    signal="fastv_last_row_attention",
)
def fastv_last_row(signals: TextSignals, keep: int, seed: int, option: str | None) -> np.ndarray:
    return top_tokens(signals.get("fastv_last_row_attention"), keep)


# What "all" means for text: every strategy, attribution ones with the default method.
DEFAULT_STRATEGIES: tuple[str, ...] = tuple(TEXT_STRATEGIES.default_names())


def strategy_names() -> list[str]:
    """Every selectable name: "<base>:<method>" for the attribution strategies, else the base name."""
    return TEXT_STRATEGIES.selectable_names()


def resolve_strategies(strategies: Sequence[str] | str) -> list[str]:
    """ "all", one name or a list -> canonical names ("frugalprompt" -> "frugalprompt:input_x_gradient"),
    de-duplicated in order. Raises InputError for unknown names or an empty list."""
    return TEXT_STRATEGIES.resolve(strategies)


def select_tokens(name: str, signals: TextSignals, keep: int, seed: int = 0) -> np.ndarray:
    """Kept positions (sorted, int64, exactly `keep`, always including n-1) for one strategy."""
    kept = TEXT_STRATEGIES.select(name, signals, keep, seed, signals.n)
    if kept[-1] != signals.n - 1:
        raise RuntimeError(f"strategy {name!r} dropped the last prompt token: kept {kept.tolist()}")
    return kept


def validate_layer(lm: LanguageModel, layer: int, needs_layer: bool) -> int:
    """FastV's K: 1 <= K <= n_layers - 1 (blocks 0..K-1 see every token). Without fastv the
    layer is unused but must still be within 0..n_layers - 1."""
    n = lm.n_layers
    return common.validate_layer(
        layer,
        1 if needs_layer else 0,
        n - 1,
        f"for {lm.model_id} ({n} layers) FastV needs 1 <= K <= {n - 1} (blocks 0..K-1 run on every "
        f"token, blocks K..{n - 1} on the kept ones)",
    )
