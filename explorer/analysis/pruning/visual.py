"""Visual-token pruning inside a VLM: which of the visual tokens the LM receives can it do without?

A strategy turns what is known about one prompt (`VisualSignals`) and a keep count into a
`VisualPlan`: the visual tokens kept *before* the LM (dropped from the input sequence, the rest
renumbered 0..n-1 as a shorter prompt) and, optionally, cuts *inside* the LM (`stages`: from
block K on, only these visual tokens remain; text tokens always remain; kept tokens keep their
positions, as FastV does). The keep ratio of a row is the share of visual tokens in its final
kept set, except ToDRE, whose second stage drops every visual token in the late blocks (its ratio
is the first stage's).

Strategies are registered by name in `VISUAL_STRATEGIES`, the registry shared with text and
image pruning (`analysis.pruning.common`), with the paper they follow and how they depart from
it. At keep = all, every strategy's plan is the identity (nothing is pruned, no stage), so a
100% row is the unpruned model (the invariant the tests check).

In-LM signals (attention received, the instruction's attention, token transition variation)
are read from one instrumented pass of the unpruned prompt. Blocks before a cut see the full
sequence in the pruned pass too, so for a single cut these are the values the method computes in
flight; for TransPrune's second stage the paper scores the already-pruned sequence (a deviation,
listed with the strategy). The cost charged to a row is what the method itself runs: the blocks
before each cut at their full length (in the pruned pass's FLOPs and time), the selection, and
for VTC-CLS the encoder pass with attention maps (measured, as scoring time).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from explorer.analysis.pruning.common import StrategyRegistry, keep_count
from explorer.analysis.pruning.image import (
    grid_farthest_points,
    kcenter_select,
    minmax,
    mmr_select,
    top_k_patches,
)
from explorer.errors import InputError

FASTV_LAYER = 2  # FastV: K = 2, "an image is worth 1/2 tokens after layer 2"
IDPRUNER_LAMBDA = 0.5  # MMR trade-off
TODRE_RELEVANCE_DEPTH = 2 / 3  # ToDRE stage 2: drop every visual token from this depth on
VTC_CLS_BLOCKS = 3  # VTC-CLS ensemble: the encoder blocks ending at the penultimate one


def transprune_layers(n_layers: int) -> tuple[int, int]:
    """TransPrune's two pruning layers at this depth: about 1/8 and 1/4 of the LM (>= 1, distinct)."""
    first = max(1, round(n_layers / 8))
    return first, max(first + 1, round(n_layers / 4))


def todre_layer(n_layers: int) -> int:
    return max(1, min(n_layers - 1, round(n_layers * TODRE_RELEVANCE_DEPTH)))


def vtc_cls_blocks() -> list[int]:
    """Encoder blocks of VTC-CLS's ensemble, counted from the end: the VTC_CLS_BLOCKS blocks ending
    at the penultimate one (-2)."""
    return list(range(-1 - VTC_CLS_BLOCKS, -1))


# ---------------------------------------------------------------------------------------------
# What a strategy may look at, and what it returns
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisualSignals:
    """One prompt's V visual tokens (positions `positions` of its T tokens) and what was measured.

    embeds:        (V, d) float32 the visual tokens as the LM receives them (projector output)
    grid:          (rows, cols) of the visual tokens, row-major
    received:      (L, V) float32 head-mean attention each visual token receives at each LM block,
                   mean over all query rows (FastV's score at block K-1)
    instruction:   (L, V) float32 head-mean attention from the instruction (the text after the
                   image) to each visual token, mean over those query rows (TransPrune's IGA)
    transition:    (L, V) float32 token transition variation through each LM block (TransPrune's TTV)
    cls_attention: (V,) float32 the vision encoder's [CLS] attention (VTC-CLS), None if not exposed
    """

    embeds: torch.Tensor
    grid: tuple[int, int]
    received: torch.Tensor
    instruction: torch.Tensor
    transition: torch.Tensor
    cls_attention: torch.Tensor | None = None

    @property
    def n_visual(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.received.shape[0])


@dataclass(frozen=True)
class VisualPlan:
    """before: sorted visual indices kept in the LM's input; stages: (block K, sorted visual indices
    kept from block K on), K ascending, each set a subset of the previous one (may be empty)."""

    before: np.ndarray
    stages: tuple[tuple[int, np.ndarray], ...] = field(default_factory=tuple)

    @property
    def final(self) -> np.ndarray:
        """The visual tokens left in the last blocks (empty after ToDRE's drop-all stage)."""
        return self.stages[-1][1] if self.stages else self.before

    @property
    def kept(self) -> np.ndarray:
        """The set the keep ratio counts: the last non-empty one (ToDRE: its first stage)."""
        sets = [self.before, *(k for _, k in self.stages)]
        return next(k for k in reversed(sets) if len(k))

    def is_identity(self, n_visual: int) -> bool:
        return len(self.before) == n_visual and not self.stages

    def validate(self, n_visual: int, n_layers: int, name: str) -> VisualPlan:
        previous = set(range(n_visual))
        last_block = 0
        for block, kept in ((0, self.before), *self.stages):
            if kept.ndim != 1 or (len(kept) and (np.any(np.diff(kept) <= 0) or kept[0] < 0)):
                raise RuntimeError(f"strategy {name!r}: kept indices {kept.tolist()} not sorted/unique")
            if not set(kept.tolist()) <= previous:
                raise RuntimeError(f"strategy {name!r}: stage at block {block} keeps tokens already dropped")
            if block and not last_block < block < n_layers:
                raise RuntimeError(f"strategy {name!r}: cut at block {block} not in 1..{n_layers - 1}")
            previous, last_block = set(kept.tolist()), max(last_block, block)
        return self


PlanFn = Callable[[VisualSignals, int, int], VisualPlan]

# What a visual strategy's scoring runs (charged to its rows):
#   "none":              nothing (random, uniform)
#   "selection":         a selection over the projector outputs only (IDPruner, ToDRE stage 1)
#   "encoder_attention": the vision encoder with attention maps (VTC-CLS; measured, as scoring time)
#   "lm_prefix":         LM blocks before the cut, which the pruned pass runs at full length anyway
SCORING_COSTS = ("none", "selection", "encoder_attention", "lm_prefix")
VISUAL_STRATEGIES: StrategyRegistry[VisualSignals] = StrategyRegistry("visual tokens", SCORING_COSTS)
_PLANNERS: dict[str, PlanFn] = {}
PAPERS: dict[str, str] = {}


def register_visual_strategy(
    name: str, *, paper: str, deviation: str, scoring: str, label: str, inside_model: bool = False
) -> Callable[[PlanFn], PlanFn]:
    """Register `plan(signals, keep, seed) -> VisualPlan` under `name` (the registry's `select`
    returns the plan's final kept set)."""

    def decorate(fn: PlanFn) -> PlanFn:
        VISUAL_STRATEGIES.register(
            name,
            deviation=deviation,
            scoring=scoring,
            label=label,
            description=paper,
            inside_model=inside_model,
        )(lambda signals, keep, seed, option=None: fn(signals, keep, seed).kept)
        _PLANNERS[name] = fn
        PAPERS[name] = paper
        return fn

    return decorate


def plan_for(name: str, signals: VisualSignals, keep: int, seed: int = 0) -> VisualPlan:
    """The validated plan of strategy `name` keeping `keep` of the prompt's visual tokens."""
    n = signals.n_visual
    if not 1 <= keep <= n:
        raise InputError(f"keep count {keep} must be between 1 and {n}")
    strategy, _ = VISUAL_STRATEGIES.parse(name)
    if keep == n:
        return VisualPlan(np.arange(n, dtype=np.int64))
    plan = _PLANNERS[strategy.name](signals, keep, seed)
    return plan.validate(n, signals.n_layers, name)


def _all(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------
@register_visual_strategy(
    "fastv",
    paper="FastV (Chen et al. 2024, 'An Image is Worth 1/2 Tokens After Layer 2'): inside the LM, rank "
    "visual tokens by the attention they receive at layer K and drop the rest after layer K.",
    deviation=f"K = {FASTV_LAYER} (the paper's default); score = attention received at block K-1, mean over "
    "heads and all query rows; the kept share is the sweep's ratio instead of the paper's R = 50%. Blocks "
    "0..K-1 run at full length and are charged to the row.",
    scoring="lm_prefix",
    label="FastV",
    inside_model=True,
)
def fastv(signals: VisualSignals, keep: int, seed: int) -> VisualPlan:
    layer = min(FASTV_LAYER, signals.n_layers - 1)
    kept = top_k_patches(signals.received[layer - 1], keep)
    return VisualPlan(_all(signals.n_visual), ((layer, kept),))


@register_visual_strategy(
    "vtc_cls",
    paper="VTC-CLS (Wang et al. 2024, '[CLS] Token Tells Everything Needed for Training-free Efficient "
    "MLLMs'): keep the visual tokens the vision encoder's [CLS] attends to most, ensembled over layers, "
    "before the LM.",
    deviation=f"Ensemble = mean of the head-mean [CLS] attention over the {VTC_CLS_BLOCKS} encoder blocks "
    "ending at the penultimate one, with equal weights; a visual token of the demo VLM pools 2x2 patches, "
    "so its score is the sum over them. The encoder is re-run with attention maps for the score (measured "
    "and charged as scoring time); in the paper the maps come from the pass that makes the features.",
    scoring="encoder_attention",
    label="VTC-CLS",
)
def vtc_cls(signals: VisualSignals, keep: int, seed: int) -> VisualPlan:
    if signals.cls_attention is None:
        raise InputError("VTC-CLS needs the vision encoder's [CLS] attention, which this VLM does not expose")
    return VisualPlan(top_k_patches(signals.cls_attention, keep))


@register_visual_strategy(
    "transprune",
    paper="TransPrune (Li et al. 2025, 'Token Transition Pruning for Efficient LVLMs'): progressive "
    "pruning inside the LM by token transition variation (change of norm and direction) plus "
    "instruction-guided attention.",
    deviation="Two stages at about 1/8 and 1/4 of the LM's depth, each keeping sqrt(ratio) of the tokens "
    "left (ratio in total); score = min-max TTV accumulated over the blocks before the cut + min-max IGA "
    "(instruction -> visual attention at the block before the cut). TTV is measured through whole blocks, "
    "not separately through attention and MLP, and the second stage reads the unpruned pass instead of "
    "the already-pruned sequence.",
    scoring="lm_prefix",
    label="TransPrune",
    inside_model=True,
)
def transprune(signals: VisualSignals, keep: int, seed: int) -> VisualPlan:
    n = signals.n_visual
    first, second = transprune_layers(signals.n_layers)
    first = min(first, signals.n_layers - 1)
    second = min(second, signals.n_layers - 1)
    mid = max(keep, min(n, keep_count(math.sqrt(keep / n), n)))

    def score(layer: int, among: np.ndarray) -> torch.Tensor:
        ttv = signals.transition[:layer].sum(dim=0)[among]
        iga = signals.instruction[layer - 1][among]
        return minmax(ttv.double()) + minmax(iga.double())

    stage1 = top_k_patches(score(first, _all(n)), mid)
    if second <= first:
        return VisualPlan(_all(n), ((first, top_k_patches(score(first, _all(n)), keep)),))
    stage2 = stage1[top_k_patches(score(second, stage1), keep)]
    return VisualPlan(_all(n), ((first, stage1), (second, np.sort(stage2))))


@register_visual_strategy(
    "todre",
    paper="ToDRE (Li et al. 2025, 'Effective Visual Token Pruning via Token Diversity and Task Relevance'): "
    "keep a diverse subset of visual tokens after the encoder, then drop the task-irrelevant visual tokens "
    "inside the LM once their information has migrated to the text.",
    deviation="Stage 1 is greedy k-center on cosine distance of the projected visual tokens (the paper's v1; "
    "v2 uses max-sum diversification), seeded with the token the instruction attends to most at block 0. "
    "Stage 2 drops every remaining visual token from a fixed depth (2/3 of the LM) instead of the layer the "
    "paper finds by its information-migration analysis. The keep ratio is stage 1's.",
    scoring="selection",
    label="ToDRE",
    inside_model=True,
)
def todre(signals: VisualSignals, keep: int, seed: int) -> VisualPlan:
    first = int(torch.argmax(signals.instruction[0]))
    diverse = kcenter_select(signals.embeds, first, keep)
    return VisualPlan(diverse, ((todre_layer(signals.n_layers), np.zeros(0, dtype=np.int64)),))


@register_visual_strategy(
    "idpruner",
    paper="IDPruner (Tan et al. 2026, 'Harmonizing Importance and Diversity in Visual Token Pruning'): "
    "Maximal Marginal Relevance over visual tokens before the LM, one shot, no attention maps.",
    deviation=f"lambda = {IDPRUNER_LAMBDA}; importance = the visual token's cosine with the mean visual token "
    "(a centrality score chosen here; the paper's importance scorer is not reproduced); similarity = cosine "
    "of the projected visual tokens.",
    scoring="selection",
    label="IDPruner",
)
def idpruner(signals: VisualSignals, keep: int, seed: int) -> VisualPlan:
    embeds = signals.embeds.double()
    centre = embeds.mean(dim=0, keepdim=True)
    importance = torch.nn.functional.cosine_similarity(embeds, centre, dim=-1)
    return VisualPlan(mmr_select(importance, embeds, keep, IDPRUNER_LAMBDA))


@register_visual_strategy(
    "uniform",
    paper="Baseline: spatially uniform visual tokens (farthest-point sampling on the grid from the centre).",
    deviation="Baseline, no paper.",
    scoring="none",
    label="uniform",
)
def uniform(signals: VisualSignals, keep: int, seed: int) -> VisualPlan:
    return VisualPlan(grid_farthest_points(signals.grid, keep))


@register_visual_strategy(
    "random",
    paper="Baseline: visual tokens drawn uniformly at random without replacement (seeded).",
    deviation="Baseline, no paper.",
    scoring="none",
    label="random",
)
def random_tokens(signals: VisualSignals, keep: int, seed: int) -> VisualPlan:
    rng = np.random.default_rng(seed)
    return VisualPlan(np.sort(rng.choice(signals.n_visual, size=keep, replace=False)).astype(np.int64))


NOT_IMPLEMENTED = {
    "mustdrop": "MustDrop (Liu et al. 2024) is not implemented: its vision-encoding stage merges neighbouring "
    "tokens inside the encoder and its decoding stage is a KV-cache policy for long answers; the demo VLM's "
    "8x8 visual tokens are already 2x2-pooled and its answers are 1-3 tokens, so only the prefilling stage "
    "(text-guided dual-attention filtering) would act here, which FastV and TransPrune's IGA already cover.",
}


def resolve_strategies(strategies: str | list[str]) -> list[str]:
    """ "all" or names -> validated, de-duplicated names (order kept)."""
    names = [strategies] if isinstance(strategies, str) else list(strategies)
    flat = [n.strip() for item in names for n in str(item).split(",") if n.strip()]
    for n in flat:
        if n in NOT_IMPLEMENTED:
            raise InputError(NOT_IMPLEMENTED[n])
    return VISUAL_STRATEGIES.resolve(flat)
