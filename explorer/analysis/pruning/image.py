"""Image-patch pruning inside a vision transformer: which patches can a ViT do without?

Pruning at layer L (0 <= L <= n_layers) means: blocks 0..L-1 run on all tokens, then only the
prefix tokens ([CLS] and registers) plus the kept patches go through blocks L..n_layers-1, so
the compute saving is real (blocks are called one by one on the shorter sequence).

Strategies are registered by name in `IMAGE_STRATEGIES` (the protocol shared with text pruning,
`analysis.pruning.common`: function(signals, keep, seed, option) -> sorted kept patch indices,
0-based over patches) with a one-sentence `deviation` on how they differ from their paper. A
strategy sees only what the model has computed before block L (`PruningSignals`); at L = 0
nothing has been computed yet, so block 0 is run once on all tokens as a probe. Each strategy
declares what its scoring runs (`scoring`: nothing, the probe, or the whole unpruned pass) and
its rows are charged exactly that.

Effects are measured against the unpruned pass of the same image:
- cls_cosine:    cosine between the pruned and unpruned image embeddings ([CLS] after the final
                 layernorm, as Dinov2Model's pooler_output; mean of patches without [CLS]).
- patch_cosine:  mean cosine of the kept patches' final tokens with their unpruned versions.
- saliency_corr: Pearson correlation of the pruned and unpruned saliency maps (pixel level).
- saliency_iou:  IoU of the top-20% pixels of the two saliency maps.
  For the saliency decoder, pruned positions are refilled (OptiPrune style) with the final
  token of the most similar kept patch, similarity = cosine of the layer-L features.
  Models without a decoder report None and the reason in `skipped`.
- flops_ratio:   analytic FLOPs of the encoder blocks (Linear layers 2*T*params + attention
                 4*T^2*D per block, with the actual token counts T), scoring + pruned pass, over
                 the unpruned count; embeddings, final norm and decoder are excluded.
- seconds / time_ratio: wall time of scoring (its blocks + selection) + the pruned pass
                 (embeddings, blocks, final norm) over the unpruned pass; the shared prefix
                 (blocks 0..L-1) is charged to every row. Strategies at one ratio run batched,
                 so a row's time is its batch's share.
- scoring_seconds / scoring_flops_ratio: the scoring part of seconds / flops_ratio.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from explorer.analysis.pruning import common
from explorer.analysis.pruning.common import (
    DEFAULT_KEEP_RATIOS,
    PruningRow,
    StrategyRegistry,
    keep_count,
    retention_curve,
    rows_from_table,
    rows_table,
)
from explorer.backends.images import ImageInput, image_to_png, load_image, model_view, normalize, png_to_array
from explorer.backends.vision import VisionModel
from explorer.errors import InputError
from explorer.progress import ProgressFn, or_silent
from explorer.results import StoredFields, in_meta, in_table, int_tuple, register_result

if TYPE_CHECKING:
    from explorer.analysis.pruning.params import PruneImageParams

SALIENCY_TOP_FRACTION = 0.2  # IoU mask: the top 20% pixels of each saliency map
MMR_LAMBDA = 0.5  # IDPruner trade-off: lambda * importance - (1 - lambda) * max similarity


# ---------------------------------------------------------------------------------------------
# What a strategy may look at
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruningSignals:
    """Everything computed before block `layer`, restricted to the P patch tokens.

    layer:           the pruning layer L
    features:        (P, D) float32 patch hidden states entering block L (L = 0: embeddings)
    patch_attention: (S, P) float32 head-mean attention from [CLS] to each patch, for the S
                     blocks run on all tokens (S = max(L, 1): blocks 0..L-1, or the block-0
                     probe when L = 0); the last row is the block right before pruning.
                     Models without [CLS] use the mean over all query rows.
    patch_history:   (S + 1, P, D) float32 patch hidden states at layers 0..S
    grid:            (grid_h, grid_w), P = grid_h * grid_w, row-major
    last_attention:  (P,) float32 head-mean [CLS]->patch attention of the encoder's *last* block in
                     the unpruned pass (an analogue of VTC-CLS's penultimate-block signal), or None
    """

    layer: int
    features: torch.Tensor
    patch_attention: torch.Tensor
    patch_history: torch.Tensor
    grid: tuple[int, int]
    last_attention: torch.Tensor | None = None

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])


# What an image strategy's scoring needs beyond the pruned pass itself (charged to its rows):
#   "none":      nothing (random, uniform)
#   "probe":     the signals of the blocks before the pruning layer; at layer 0 that is a block-0
#                probe on all tokens, at layer L > 0 the shared prefix the pruned pass runs anyway
#   "full_pass": the whole unpruned encoder pass (blocks L..n-1 on all tokens)
SCORING_COSTS = ("none", "probe", "full_pass")
IMAGE_STRATEGIES: StrategyRegistry[PruningSignals] = StrategyRegistry("image", SCORING_COSTS)


def register_image_strategy(
    name: str, deviation: str, scoring: str = "probe"
) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Register `fn(signals, keep, seed, option)` under `name`, with a one-sentence note on how it
    departs from its paper and what its scoring runs (one of SCORING_COSTS)."""
    return IMAGE_STRATEGIES.register(name, deviation=deviation, scoring=scoring)


def top_k_patches(scores: torch.Tensor, keep: int) -> np.ndarray:
    """Indices of the `keep` highest scores (ties -> lower index), sorted ascending."""
    order = np.argsort(-scores.double().numpy(), kind="stable")[:keep]
    return np.sort(order).astype(np.int64)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Each row of x (..., D) scaled to unit L2 norm."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """x min-max normalised to [0, 1] (all-equal input -> zeros)."""
    return (x - x.min()) / (x.max() - x.min() + 1e-12)


@register_image_strategy(
    "cls_attention",
    "VTC-CLS (single layer): keeps the patches [CLS] attends to most in the block right before the "
    "pruning layer (heads averaged) and prunes inside the ViT, where the paper prunes before the LLM.",
)
def cls_attention(signals: PruningSignals, keep: int, seed: int, option: str | None = None) -> np.ndarray:
    """Top-`keep` patches by head-mean [CLS] attention of block L-1 (the block-0 probe at L=0)."""
    return top_k_patches(signals.patch_attention[-1], keep)


@register_image_strategy(
    "cls_attention_last",
    "An analogue of VTC-CLS's signal, not the paper's: [CLS] attention of the encoder's last block, read "
    "from the unpruned pass. VTC-CLS reads the penultimate block (the layer LLaVA takes its features from) "
    "and sums [CLS] attention over several late layers. Scoring costs a full encoder pass (charged to the "
    "row): the paper prunes before the LLM, where that pass is needed anyway; inside the ViT it saves nothing.",
    scoring="full_pass",
)
def cls_attention_last(
    signals: PruningSignals, keep: int, seed: int, option: str | None = None
) -> np.ndarray:
    """Top-`keep` patches by head-mean [CLS] attention of the last encoder block (unpruned pass)."""
    if signals.last_attention is None:
        raise InputError("cls_attention_last needs the last block's attention from the unpruned pass")
    return top_k_patches(signals.last_attention, keep)


@register_image_strategy(
    "cls_attention_ensemble",
    "VTC-CLS (ensemble): averages the head-mean [CLS] attention over every block before the pruning "
    "layer with equal weights, instead of the paper's chosen set of encoder layers.",
)
def cls_attention_ensemble(
    signals: PruningSignals, keep: int, seed: int, option: str | None = None
) -> np.ndarray:
    """Top-`keep` patches by [CLS] attention averaged over blocks 0..L-1."""
    return top_k_patches(signals.patch_attention.mean(dim=0), keep)


@register_image_strategy(
    "kcenter",
    "ToDRE stage 1 only (no task-relevance stage, no text): greedy k-center on cosine distance of the "
    "layer-L patch features, seeded with the patch [CLS] attends to most.",
)
def kcenter(signals: PruningSignals, keep: int, seed: int, option: str | None = None) -> np.ndarray:
    """Greedy k-center (Gonzalez): repeatedly add the patch farthest (1 - cosine) from the kept set."""
    return kcenter_select(signals.features, int(torch.argmax(signals.patch_attention[-1])), keep)


def kcenter_select(features: torch.Tensor, first: int, keep: int) -> np.ndarray:
    """Greedy k-center on cosine distance of `features` (N, D), starting from index `first`:
    repeatedly add the row farthest (1 - cosine) from the chosen set -> sorted int64 indices."""
    feats = unit_rows(features.double())
    distance = 1.0 - feats @ feats.T  # (N, N) cosine distances
    chosen = [first]
    dist = distance[first].clone()  # (N,) distance to the nearest chosen row
    dist[first] = -math.inf
    for _ in range(keep - 1):
        nxt = int(torch.argmax(dist))
        chosen.append(nxt)
        dist = torch.minimum(dist, distance[nxt])
        dist[nxt] = -math.inf
    return np.sort(np.asarray(chosen, dtype=np.int64))


@register_image_strategy(
    "idpruner_mmr",
    f"IDPruner MMR with lambda={MMR_LAMBDA}: importance is the min-max-normalised [CLS] attention of "
    "the block before pruning (the paper avoids attention maps), similarity is cosine of layer-L features.",
)
def idpruner_mmr(signals: PruningSignals, keep: int, seed: int, option: str | None = None) -> np.ndarray:
    """Maximal marginal relevance: argmax lambda * Imp(i) - (1 - lambda) * max_{j kept} cos(i, j)."""
    return mmr_select(signals.patch_attention[-1], signals.features, keep, MMR_LAMBDA)


def mmr_select(scores: torch.Tensor, features: torch.Tensor, keep: int, lam: float) -> np.ndarray:
    """IDPruner's MMR over N items: importance = min-max-normalised `scores` (N,), similarity =
    cosine of `features` (N, D); greedily argmax lam * Imp(i) - (1 - lam) * max_{j kept} Sim(i, j)."""
    importance = minmax(scores.double())
    feats = unit_rows(features.double())
    similarity = feats @ feats.T  # (N, N) cosine similarities
    chosen: list[int] = []
    max_sim = torch.zeros_like(importance)  # the kept set starts empty: similarity term 0
    taken = torch.zeros_like(importance, dtype=torch.bool)
    for _ in range(keep):
        score = lam * importance - (1.0 - lam) * max_sim
        score[taken] = -math.inf
        nxt = int(torch.argmax(score))
        chosen.append(nxt)
        taken[nxt] = True
        max_sim = similarity[nxt].clone() if len(chosen) == 1 else torch.maximum(max_sim, similarity[nxt])
    return np.sort(np.asarray(chosen, dtype=np.int64))


@register_image_strategy(
    "transprune_ttv",
    "TransPrune TTV only (no instruction-guided attention, as there is no text): per block, min-max "
    "normalised |change in L2 norm| plus (1 - cosine) between a patch's input and output, summed over "
    "the blocks before the pruning layer, one-shot instead of progressive.",
)
def transprune_ttv(signals: PruningSignals, keep: int, seed: int, option: str | None = None) -> np.ndarray:
    """Top-`keep` patches by token transition variation accumulated over blocks 0..L-1."""
    history = signals.patch_history.double()
    total = torch.zeros(history.shape[1], dtype=torch.float64)
    for layer in range(history.shape[0] - 1):
        total += transition_variation(history[layer], history[layer + 1])
    return top_k_patches(total, keep)


def transition_variation(h_in: torch.Tensor, h_out: torch.Tensor) -> torch.Tensor:
    """TransPrune's token transition variation of N tokens through one module: h_in, h_out (N, D)
    -> (N,) min-max normalised |change in L2 norm| + min-max normalised (1 - cosine)."""
    magnitude = (h_out.norm(dim=-1) - h_in.norm(dim=-1)).abs()
    direction = 1.0 - (unit_rows(h_in) * unit_rows(h_out)).sum(dim=-1)
    return minmax(magnitude) + minmax(direction)


@register_image_strategy(
    "uniform",
    "Baseline: spatially uniform coverage by farthest-point sampling on the patch grid, starting at the centre.",
    scoring="none",
)
def uniform(signals: PruningSignals, keep: int, seed: int, option: str | None = None) -> np.ndarray:
    """Farthest-point sampling on (row, col) grid coordinates: an even spread of exactly `keep` patches."""
    return grid_farthest_points(signals.grid, keep)


def grid_farthest_points(grid: tuple[int, int], keep: int) -> np.ndarray:
    """`keep` cells of a row-major (rows, cols) grid spread evenly: farthest-point sampling on
    (row, col) coordinates from the centre cell -> sorted int64 cell indices."""
    gh, gw = grid
    rows, cols = np.divmod(np.arange(gh * gw), gw)
    coords = np.stack([rows, cols], axis=1).astype(np.float64)
    first = int((gh // 2) * gw + gw // 2)
    chosen = [first]
    dist = ((coords - coords[first]) ** 2).sum(axis=1)
    dist[first] = -np.inf
    for _ in range(keep - 1):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((coords - coords[nxt]) ** 2).sum(axis=1))
        dist[nxt] = -np.inf
    return np.sort(np.asarray(chosen, dtype=np.int64))


@register_image_strategy(
    "random", "Baseline: patches drawn uniformly at random without replacement (seeded).", scoring="none"
)
def random_patches(signals: PruningSignals, keep: int, seed: int, option: str | None = None) -> np.ndarray:
    """`keep` distinct patches drawn with numpy's default_rng(seed)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(signals.n_patches, size=keep, replace=False)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def resolve_strategies(strategies: Sequence[str] | str) -> list[str]:
    """ "all" or a list of names -> validated, de-duplicated names (order kept)."""
    return IMAGE_STRATEGIES.resolve(strategies)


def validate_layer(vm: VisionModel, layer: int) -> int:
    """The pruning layer L: 0 (before block 0) .. n_layers (after the last block)."""
    return common.validate_layer(
        layer, 0, vm.n_layers, f"use 0 (before block 0) to {vm.n_layers} (after the last block)"
    )


def select_patches(strategy: str, signals: PruningSignals, keep: int, seed: int = 0) -> np.ndarray:
    """Run one registered strategy -> sorted kept patch indices (int64, length `keep`)."""
    return IMAGE_STRATEGIES.select(strategy, signals, keep, seed, signals.n_patches)


# ---------------------------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------------------------
@dataclass
class UnprunedPass:
    """The reference pass of one image, with what pruning at `layer` reuses.

    hidden:        list of n_layers + 1 tensors [1, T, D]: [0] embeddings, [i] output of block i-1
    final:         [1, T, D] after the final norm
    signals:       PruningSignals for `layer`
    block_seconds: wall time of each block on all tokens (n_layers,)
    embed_seconds / norm_seconds: wall time of the embeddings / final norm
    """

    hidden: list[torch.Tensor]
    final: torch.Tensor
    signals: PruningSignals
    block_seconds: list[float]
    embed_seconds: float
    norm_seconds: float

    @property
    def seconds(self) -> float:
        return self.embed_seconds + sum(self.block_seconds) + self.norm_seconds


@torch.inference_mode()
def unpruned_pass(vm: VisionModel, pixel_values: torch.Tensor, layer: int) -> UnprunedPass:
    """Run all blocks on all tokens, block by block, timing each; collect the layer-`layer` signals."""
    n_prefix = vm.n_prefix
    scoring_blocks = max(layer, 1)
    t0 = time.perf_counter()
    hidden = vm.embed(pixel_values)
    embed_seconds = time.perf_counter() - t0
    states = [hidden]
    attentions: list[torch.Tensor] = []
    block_seconds = []
    last_block: list[torch.Tensor] = []
    for block in range(vm.n_layers):
        is_last = block == vm.n_layers - 1
        t0 = time.perf_counter()
        hidden, captured = vm.run_blocks(
            hidden, block, block + 1, attentions=block < scoring_blocks or is_last
        )
        block_seconds.append(time.perf_counter() - t0)
        states.append(hidden)
        if block < scoring_blocks:
            attentions.extend(captured)
        if is_last:
            last_block.extend(captured)
    t0 = time.perf_counter()
    final = vm.final_norm(hidden)
    norm_seconds = time.perf_counter() - t0
    attn = torch.stack([a[0].float().mean(dim=0) for a in attentions])  # [S, T, T]
    rows = attn[:, 0, :] if vm.has_cls else attn.mean(dim=1)
    last = last_block[0][0].float().mean(dim=0)  # [T, T]
    last_row = last[0] if vm.has_cls else last.mean(dim=0)
    grid = vm.grid(int(pixel_values.shape[2]), int(pixel_values.shape[3]))
    signals = PruningSignals(
        layer=layer,
        features=states[layer][0, n_prefix:].float(),
        patch_attention=rows[:, n_prefix:].contiguous(),
        patch_history=torch.stack([s[0, n_prefix:] for s in states[: scoring_blocks + 1]]).float(),
        grid=grid,
        last_attention=last_row[n_prefix:].contiguous(),
    )
    return UnprunedPass(states, final, signals, block_seconds, embed_seconds, norm_seconds)


@torch.inference_mode()
def run_pruned(vm: VisionModel, hidden: torch.Tensor, kept: Sequence[np.ndarray], layer: int) -> torch.Tensor:
    """Continue from the layer-`layer` hidden state [1, T, D] with only the prefix + kept patches.

    kept: B index arrays of equal length k (0-based over patches); they run as one batch.
    Returns the final-normed tokens [B, n_prefix + k, D] (prefix first, then kept patches in
    ascending order). With every patch kept this reproduces the unpruned output bit for bit.
    """
    n_prefix = vm.n_prefix
    prefix = torch.arange(n_prefix, device=hidden.device)
    index = torch.stack(
        [torch.cat([prefix, torch.as_tensor(k, device=hidden.device) + n_prefix]) for k in kept]
    )  # [B, n_prefix + k]
    x = hidden[0][index]  # [B, n_prefix + k, D]
    x, _ = vm.run_blocks(x, layer, vm.n_layers)
    return vm.final_norm(x)


def block_flops(vm: VisionModel, tokens: int) -> float:
    """Analytic FLOPs of one encoder block on `tokens` tokens: Linear layers + attention scores/mixing."""
    return 2.0 * tokens * vm.linear_params_per_layer() + 4.0 * tokens * tokens * vm.hidden_size


def pruned_flops(vm: VisionModel, n_tokens: int, kept_tokens: int, layer: int) -> float:
    """Encoder FLOPs of the pruned pass: blocks 0..L-1 on all tokens, then the kept tokens."""
    return layer * block_flops(vm, n_tokens) + (vm.n_layers - layer) * block_flops(vm, kept_tokens)


def scoring_flops(vm: VisionModel, n_tokens: int, layer: int, scoring: str) -> float:
    """Encoder FLOPs a strategy's scoring adds to the pruned pass (see SCORING_COSTS)."""
    if scoring == "full_pass":
        return (vm.n_layers - layer) * block_flops(vm, n_tokens)
    if scoring == "probe" and layer == 0:
        return block_flops(vm, n_tokens)
    return 0.0


def restore_tokens(final_patches: torch.Tensor, kept: np.ndarray, features: torch.Tensor) -> torch.Tensor:
    """Refill pruned positions for the saliency decoder (OptiPrune-style nearest-kept copy).

    final_patches: [k, D] final tokens of the kept patches; kept: (k,) their indices;
    features: [P, D] layer-L features used for the cosine match. Returns [P, D].
    """
    feats = unit_rows(features.float())
    kept_t = torch.as_tensor(kept, dtype=torch.long)
    nearest = torch.argmax(feats @ feats[kept_t].T, dim=1)  # [P] -> position in kept
    nearest[kept_t] = torch.arange(len(kept))
    return final_patches[nearest.to(final_patches.device)]


def saliency_similarity(reference: np.ndarray, pruned: np.ndarray) -> tuple[float, float]:
    """(Pearson correlation, IoU of the top-20% pixel masks) of two [H, W] saliency maps."""
    a = reference.astype(np.float64).ravel()
    b = pruned.astype(np.float64).ravel()
    a_c, b_c = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a_c**2).sum()) * float((b_c**2).sum()))
    corr = float((a_c * b_c).sum() / denom) if denom > 0 else float("nan")
    top = max(1, round(SALIENCY_TOP_FRACTION * a.size))
    mask_a = np.zeros(a.size, dtype=bool)
    mask_b = np.zeros(b.size, dtype=bool)
    mask_a[np.argpartition(-a, top - 1)[:top]] = True
    mask_b[np.argpartition(-b, top - 1)[:top]] = True
    iou = float((mask_a & mask_b).sum() / (mask_a | mask_b).sum())
    return corr, iou


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (unit_rows(a.double()) * unit_rows(b.double())).sum(dim=-1)


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
FIDELITY_KEYS = ("cls_cosine", "patch_cosine", "saliency_corr", "saliency_iou")
ROW_EXTRAS = ("time_ratio",)  # PruningRow's image-only field


def _quantize(saliency: np.ndarray) -> bytes:
    return np.clip(np.round(saliency * 255.0), 0, 255).astype(np.uint8).tobytes()


@register_result
@dataclass
class ImagePruningResult(StoredFields):
    """A pruning sweep over strategies x keep ratios on one image.

    rows:               one PruningRow per (strategy, ratio), strategies outer, ratios inner
    image_png:          PNG of the model's view of the image (image_size x image_size RGB)
    reference_saliency: (H, W) float32 in [0, 1], unpruned saliency map, or None (no decoder)
    saliency_maps:      (strategy, keep_ratio) -> (H, W) float32 pruned saliency map
    skipped:            measure -> reason it was not computed (e.g. no saliency decoder)
    Saliency maps are stored as uint8 (1/255 steps); metrics are computed before quantising.
    """

    kind: ClassVar[str] = "prune_image"
    json_kind: ClassVar[bool] = True

    model: str = in_meta(old=("model_id",))  # runs stored before the rename: "model_id"
    layer: int = in_meta()
    seed: int = in_meta()
    grid: tuple[int, int] = in_meta(decode=int_tuple)
    n_prefix: int = in_meta(json=False)
    image_png: bytes = in_table()
    rows: list[PruningRow] = in_table()
    reference_saliency: np.ndarray | None = in_table()
    saliency_maps: dict[tuple[str, float], np.ndarray] = in_table()
    unpruned_seconds: float = in_meta(decode=float)
    deviations: dict[str, str] = in_meta(default_factory=dict)
    skipped: dict[str, str] = in_meta(default_factory=dict)
    run_id: str | None = None

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def image_array(self) -> np.ndarray:
        """The model's view of the image as uint8 [H, W, 3]."""
        return png_to_array(self.image_png)

    def kept_mask(self, strategy: str, keep_ratio: float) -> np.ndarray:
        """Boolean [grid_h, grid_w] of the patches kept by (strategy, keep_ratio)."""
        for row in self.rows:
            if row.strategy == strategy and row.keep_ratio == keep_ratio:
                mask = np.zeros(self.n_patches, dtype=bool)
                mask[row.kept] = True
                return mask.reshape(self.grid)
        raise InputError(f"no row for strategy {strategy!r} at keep ratio {keep_ratio}")

    def retention_curve(self, metric: str = "cls_cosine") -> dict[str, list[tuple[float, float | None]]]:
        """strategy -> [(keep_ratio, metric value)] sorted by ratio, for retention plots."""
        return retention_curve(self.rows, metric, FIDELITY_KEYS, ("flops_ratio", "time_ratio"))

    def json_views(self) -> dict[str, Any]:
        return {"n_patches": self.n_patches, "rows": [row.to_dict(ROW_EXTRAS) for row in self.rows]}

    def to_tables(self) -> dict[str, pa.Table]:
        rows = rows_table(self.rows, FIDELITY_KEYS, ROW_EXTRAS)
        maps: list[tuple[str, float, np.ndarray]] = []
        if self.reference_saliency is not None:
            maps.append(("unpruned", 1.0, self.reference_saliency))
        maps.extend((s, r, m) for (s, r), m in self.saliency_maps.items())
        saliency_table = pa.table(
            {
                "strategy": pa.array([m[0] for m in maps], type=pa.string()),
                "keep_ratio": pa.array([m[1] for m in maps], type=pa.float64()),
                "height": pa.array([m[2].shape[0] for m in maps], type=pa.int32()),
                "width": pa.array([m[2].shape[1] for m in maps], type=pa.int32()),
                "values_u8": pa.array([_quantize(m[2]) for m in maps], type=pa.binary()),
            }
        )
        image_table = pa.table({"png": pa.array([self.image_png], type=pa.binary())})
        return {"rows": rows, "saliency": saliency_table, "image": image_table}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        reference: np.ndarray | None = None
        maps: dict[tuple[str, float], np.ndarray] = {}
        saliency = tables.get("saliency")
        for r in saliency.to_pylist() if saliency is not None else []:
            array = np.frombuffer(r["values_u8"], dtype=np.uint8).reshape(r["height"], r["width"])
            values = array.astype(np.float32) / 255.0
            if r["strategy"] == "unpruned":
                reference = values
            else:
                maps[(r["strategy"], r["keep_ratio"])] = values
        return {
            "image_png": bytes(tables["image"].to_pylist()[0]["png"]),
            "rows": rows_from_table(tables["rows"], FIDELITY_KEYS, ROW_EXTRAS),
            "reference_saliency": reference,
            "saliency_maps": maps,
        }


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
def prune_image(
    vm: VisionModel,
    image: ImageInput,
    params: PruneImageParams | None = None,
    *,
    strategies: Sequence[str] | str = "all",
    keep_ratios: Sequence[float] | float = DEFAULT_KEEP_RATIOS,
    layer: int = 0,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ImagePruningResult:
    """Prune patches of one image with each strategy at each keep ratio; measure the effects.

    image: a PIL image, path or bytes (validated by `load_image`); it is resized to the
    model's view (vm.image_size square) first. `params`: the `PruneImageParams` (validated by the
    caller, e.g. the API's runner); without it, the keywords build one: strategies: names from
    IMAGE_STRATEGIES or "all". keep_ratios: fractions in (0, 1]; keep count = max(1, round(ratio * P)).
    layer: 0..vm.n_layers. Blocks 0..layer-1 run once on all tokens (shared by every row);
    strategies at one ratio run their remaining blocks as one batch; identical kept sets
    are computed once. Raises InputError for bad ratios, layers, strategies or images.
    """
    from explorer.analysis.pruning.params import PruneImageParams

    if params is None:
        params = PruneImageParams.of(strategies, keep_ratios, layer=layer, seed=seed)
    p = params.for_model(vm)  # validated once, in the Params; the layer checked against vm's depth
    names, ratios, layer, seed = list(p.strategies), list(p.keep_ratios), p.layer, p.seed
    report = or_silent(progress)
    pil = load_image(image)
    view = model_view(vm, pil)
    pixel_values = normalize(view, vm.preprocessing).to(vm.device)
    size = (int(pixel_values.shape[2]), int(pixel_values.shape[3]))
    skipped: dict[str, str] = {}
    if vm.decoder is None:
        skipped["saliency"] = (
            f"model {vm.model_id!r} has no saliency decoder: saliency_corr and saliency_iou are None"
        )

    with vm.lock, torch.inference_mode():
        report(0.02, "Unpruned pass")
        ref = unpruned_pass(vm, pixel_values, layer)
        signals = ref.signals
        n_patches = signals.n_patches
        n_tokens = vm.n_prefix + n_patches
        ref_embedding = vm.pooled(ref.final)[0]
        ref_patches = ref.final[0, vm.n_prefix :]
        reference_saliency = None
        if vm.decoder is not None:
            reference_saliency = vm.saliency(ref_patches[None], signals.grid, size)[0].float().cpu().numpy()
        full_flops = vm.n_layers * block_flops(vm, n_tokens)
        # the pruned pass's shared prefix: embeddings + blocks 0..layer-1 on all tokens
        shared_seconds = ref.embed_seconds + sum(ref.block_seconds[:layer])
        scoring_seconds_of = {  # what each kind of scoring ran, from the unpruned pass's timings
            "none": 0.0,
            "probe": ref.block_seconds[0] if layer == 0 else 0.0,
            "full_pass": sum(ref.block_seconds[layer:]),
        }
        hidden_at_layer = ref.hidden[layer]

        rows: list[PruningRow] = []
        maps: dict[tuple[str, float], np.ndarray] = {}
        for r_i, ratio in enumerate(ratios):
            report(0.05 + 0.9 * r_i / len(ratios), f"Keep ratio {ratio:g}")
            keep = keep_count(ratio, n_patches)
            selections: dict[str, np.ndarray] = {}
            select_seconds: dict[str, float] = {}
            for name in names:
                t0 = time.perf_counter()
                selections[name] = select_patches(name, signals, keep, seed)
                select_seconds[name] = time.perf_counter() - t0
            unique: dict[tuple[int, ...], int] = {}
            for kept in selections.values():
                unique.setdefault(tuple(kept.tolist()), len(unique))
            kept_sets = [np.asarray(k, dtype=np.int64) for k in unique]
            t0 = time.perf_counter()
            final = run_pruned(vm, hidden_at_layer, kept_sets, layer)  # [U, n_prefix + keep, D]
            suffix_seconds = (time.perf_counter() - t0) / len(kept_sets)
            embeddings = vm.pooled(final)  # [U, D]
            cls_cos = _cosine(embeddings, ref_embedding[None]).cpu()
            patch_cos = torch.stack(
                [
                    _cosine(final[u, vm.n_prefix :], ref_patches[torch.as_tensor(k)]).mean()
                    for u, k in enumerate(kept_sets)
                ]
            ).cpu()
            pruned_maps: np.ndarray | None = None
            if vm.decoder is not None:
                restored = torch.stack(
                    [
                        restore_tokens(final[u, vm.n_prefix :], k, signals.features)
                        for u, k in enumerate(kept_sets)
                    ]
                )
                pruned_maps = vm.saliency(restored, signals.grid, size).float().cpu().numpy()
            flops_ratio = pruned_flops(vm, n_tokens, vm.n_prefix + keep, layer) / full_flops
            for name in names:
                kept = selections[name]
                u = unique[tuple(kept.tolist())]
                fidelity: dict[str, float | None] = {
                    "cls_cosine": float(cls_cos[u]),
                    "patch_cosine": float(patch_cos[u]),
                    "saliency_corr": None,
                    "saliency_iou": None,
                }
                if pruned_maps is not None and reference_saliency is not None:
                    corr, iou = saliency_similarity(reference_saliency, pruned_maps[u])
                    fidelity["saliency_corr"], fidelity["saliency_iou"] = corr, iou
                    maps[(name, ratio)] = pruned_maps[u]
                scoring = IMAGE_STRATEGIES[name].scoring
                score_seconds = scoring_seconds_of[scoring] + select_seconds[name]
                score_flops = scoring_flops(vm, n_tokens, layer, scoring) / full_flops
                seconds = score_seconds + shared_seconds + suffix_seconds + ref.norm_seconds
                row_flops = flops_ratio + score_flops
                rows.append(
                    PruningRow(
                        strategy=name,
                        keep_ratio=ratio,
                        keep_count=keep,
                        layer=layer,
                        kept=[int(i) for i in kept],
                        fidelity=fidelity,
                        seconds=seconds,
                        time_ratio=seconds / ref.seconds,
                        flops_ratio=row_flops,
                        scoring_seconds=score_seconds,
                        scoring_flops_ratio=score_flops,
                    )
                )
    order = {name: i for i, name in enumerate(names)}
    rows.sort(key=lambda row: (order[row.strategy], ratios.index(row.keep_ratio)))
    report(1.0, "Done")
    return ImagePruningResult(
        model=vm.model_id,
        layer=layer,
        seed=seed,
        grid=signals.grid,
        n_prefix=vm.n_prefix,
        image_png=image_to_png(view),
        rows=rows,
        reference_saliency=reference_saliency,
        saliency_maps=maps,
        unpruned_seconds=ref.seconds,
        deviations={name: IMAGE_STRATEGIES[name].deviation for name in names},
        skipped=skipped,
    )
