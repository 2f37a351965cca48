"""[CLS] -> patch attention and attention rollout of a vision transformer over one image, as a
stored result (kind "vision_attention").

`analyze_image_attention(vm, image)` validates the image, resizes it to the model's view,
runs the backbone once (`trace_image`) and keeps what the Attention tab's image mode draws:

- `cls_maps`   (n_layers, n_heads, grid_h, grid_w): the attention the [CLS] query gives each
  patch (raw probabilities; over patches they sum to 1 minus what [CLS] gives itself and any
  register tokens). Models without [CLS] (SigLIP) use the mean query row.
- `rollout`    (grid_h, grid_w): attention rollout (Abnar & Zuidema 2020) of [CLS] over the
  patches, re-normalised to sum to 1.
- `entropy`    (n_layers, n_heads): Shannon entropy in bits of the whole [CLS] query row
  (over all T = n_prefix + P keys); log2(T) means uniform attention.
- `prefix_share` (n_layers, n_heads): the share of that row given to the prefix tokens
  ([CLS] itself and registers) rather than to patches.
- `image_png`: the model's view of the image (image_size x image_size RGB, as PNG bytes), so a
  reopened run redraws its overlays from the store alone.

The run is keyed by `image_sha256`: the SHA-256 of the decoded RGB pixels (after EXIF
orientation and alpha flattening) plus the image size, so the same picture gives the same key
whether it arrives as a PNG, a JPEG file, bytes or a PIL image.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from explorer.analysis.attention_math import check_residual_weight, row_entropy
from explorer.analysis.vision_attention import cls_attention_maps, rollout_relevance, trace_image
from explorer.backends.images import ImageInput, image_to_png, load_image, model_view, normalize, png_to_array
from explorer.backends.vision import VisionModel
from explorer.config import Settings
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import (
    StoredFields,
    axis_size,
    dense_from_table,
    in_meta,
    in_table,
    int_tuple,
    long_table,
    register_result,
)


def image_sha256(image: Image.Image) -> str:
    """SHA-256 (hex) of an RGB image's size and decoded pixels: a format-independent image id."""
    rgb = image.convert("RGB")
    h = hashlib.sha256()
    h.update(f"{rgb.width}x{rgb.height}:".encode())
    h.update(rgb.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class VisionAttentionParams:
    """Everything besides model and image that determines a vision attention result.

    residual_weight: weight of the identity (residual connection) in each rollout step,
                     A' = w * I + (1 - w) * mean_heads(A); 0.5 as in Abnar & Zuidema.
    """

    residual_weight: float = 0.5

    def validate(self) -> None:
        check_residual_weight(self.residual_weight)

    def to_json(self) -> dict[str, Any]:
        return {"residual_weight": float(self.residual_weight)}


def cls_row_stats(attentions: torch.Tensor, n_prefix: int, has_cls: bool) -> tuple[np.ndarray, np.ndarray]:
    """attentions (n_layers, n_heads, T, T) -> (entropy, prefix_share), each (n_layers, n_heads).

    entropy: Shannon entropy (bits) of the [CLS] query row over all T keys (for models without
    [CLS]: the mean over all query rows of each row's entropy). prefix_share: mass of that row
    on the first `n_prefix` keys ([CLS] and registers)."""
    att = attentions.double()
    rows = att[:, :, :1, :] if has_cls else att  # (L, H, Q, T)
    entropy = row_entropy(rows).mean(dim=-1)
    prefix = rows[..., :n_prefix].sum(dim=-1).mean(dim=-1)
    return entropy.cpu().numpy().astype(np.float32), prefix.cpu().numpy().astype(np.float32)


@register_result
@dataclass
class VisionAttentionResult(StoredFields):
    """[CLS] -> patch attention of one vision transformer over one image.

    model:        model id (embedded name, hub id or local dir)
    image_sha256: id of the input image (see `image_sha256`)
    image_png:    PNG bytes of the model's view of the image, (image_size, image_size) RGB
    grid:         (grid_h, grid_w) patch grid; P = grid_h * grid_w patches, row-major
    n_prefix:     tokens before the patches ([CLS] + registers); has_cls: whether token 0 is [CLS]
    cls_maps:     (n_layers, n_heads, grid_h, grid_w) float32, [CLS] -> patch attention
    rollout:      (grid_h, grid_w) float32, rollout relevance of each patch for [CLS], sums to 1
    entropy:      (n_layers, n_heads) float32, entropy (bits) of the [CLS] query row over T keys
    prefix_share: (n_layers, n_heads) float32, share of the [CLS] row on the prefix tokens
    """

    kind: ClassVar[str] = "vision_attention"

    model: str = in_meta()
    image_sha256: str = in_meta()
    image_png: bytes = in_table()
    grid: tuple[int, int] = in_meta(decode=int_tuple)
    n_prefix: int = in_meta(json=False)
    has_cls: bool = in_meta(json=False)
    cls_maps: np.ndarray = in_table()
    rollout: np.ndarray = in_table(json=True)
    entropy: np.ndarray = in_table()
    prefix_share: np.ndarray = in_table()
    params: dict[str, Any] = in_meta()
    notes: list[str] = in_meta(default_factory=list, omit_empty=True)
    run_id: str | None = None
    seconds: float = in_meta(default=0.0)

    # ---- views ----------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.cls_maps.shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.cls_maps.shape[1])

    @property
    def n_tokens(self) -> int:
        """T = n_prefix + P: the length of each attention row."""
        return self.n_prefix + self.grid[0] * self.grid[1]

    def image_array(self) -> np.ndarray:
        """The model's view of the image as uint8 (H, W, 3)."""
        return png_to_array(self.image_png)

    def cls_map(self, layer: int, head: int | None = None) -> np.ndarray:
        """(grid_h, grid_w) [CLS] -> patch attention of one head, or the mean over heads (None)."""
        if not 0 <= layer < self.n_layers:
            raise InputError(
                f"layer {layer} does not exist: the model has {self.n_layers} layers (0..{self.n_layers - 1})"
            )
        if head is None:
            return self.cls_maps[layer].mean(axis=0)  # type: ignore[no-any-return]
        if not 0 <= head < self.n_heads:
            raise InputError(
                f"head {head} does not exist: the model has {self.n_heads} heads (0..{self.n_heads - 1})"
            )
        return self.cls_maps[layer, head]  # type: ignore[no-any-return]

    # ---- serialisation --------------------------------------------------------------------
    def json_views(self) -> dict[str, Any]:
        layers = [
            {
                "layer": layer,
                "heads": [
                    {
                        "head": head,
                        "cls_attention": self.cls_maps[layer, head].tolist(),
                        "entropy": float(self.entropy[layer, head]),
                    }
                    for head in range(self.n_heads)
                ],
            }
            for layer in range(self.n_layers)
        ]
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "layers": layers}

    def to_tables(self) -> dict[str, pa.Table]:
        patch = {"patch_row": np.int16, "patch_col": np.int16}
        return {
            "cls": long_table(
                {"layer": np.int16, "head": np.int16, **patch}, {"attention": (self.cls_maps, np.float32)}
            ),
            "rollout": long_table(patch, {"relevance": (self.rollout, np.float32)}),
            "heads": long_table(
                {"layer": np.int16, "head": np.int16},
                {"entropy": (self.entropy, np.float32), "prefix_share": (self.prefix_share, np.float32)},
            ),
            "image": pa.table({"png": pa.array([self.image_png], type=pa.binary())}),
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        h = tables["heads"]
        n_l, n_h = axis_size(h, "layer"), axis_size(h, "head")
        gh, gw = meta["grid"]
        cells = ("layer", "head", "patch_row", "patch_col")
        return {
            "image_png": bytes(tables["image"].to_pylist()[0]["png"]),
            "cls_maps": dense_from_table(tables["cls"], cells, "attention", (n_l, n_h, gh, gw), np.float32),
            "rollout": dense_from_table(tables["rollout"], cells[2:], "relevance", (gh, gw), np.float32),
            "entropy": dense_from_table(h, cells[:2], "entropy", (n_l, n_h), np.float32),
            "prefix_share": dense_from_table(h, cells[:2], "prefix_share", (n_l, n_h), np.float32),
        }


def run_params(vm: VisionModel, params: VisionAttentionParams) -> dict[str, Any]:
    """The JSON parameters a run is keyed and stored by: the analysis parameters plus how the
    model resizes and normalises images (part of the model, but not of its weight hash)."""
    return {**params.to_json(), **vm.preprocessing.cache_key()}


def _no_progress(fraction: float, message: str) -> None:
    return None


def analyze_image_attention(
    vm: VisionModel,
    image: ImageInput,
    *,
    params: VisionAttentionParams | None = None,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
) -> VisionAttentionResult:
    """One forward pass of `vm` over `image` -> every [CLS] attention view of it.

    image: a path, bytes or PIL image (validated by `load_image`: InputError for anything that
    is not a readable picture). It is resized to the model's view (vm.image_size square, the
    model's resize mode) before normalisation; overlays are drawn on that view. `settings`
    gives the image size limits (default: from the environment).
    """
    params = params or VisionAttentionParams()
    params.validate()
    report = progress or _no_progress
    pil = load_image(image, settings)
    sha = image_sha256(pil)
    view = model_view(vm, pil)
    pixel_values = normalize(view, vm.preprocessing).to(vm.device)  # (1, 3, H, W)
    report(0.3, "Forward pass with attentions")
    t0 = time.perf_counter()
    trace = trace_image(vm, pixel_values, attentions=True, saliency=False)
    report(0.8, "[CLS] maps and rollout")
    attentions = trace.attentions  # (L, H, T, T)
    if attentions is None:  # trace_image(attentions=True) always captures them
        raise InputError(f"{vm.model_id}: no attention weights were captured")
    maps = cls_attention_maps(trace)  # (L, H, gh, gw)
    rollout = rollout_relevance(trace, residual_weight=float(params.residual_weight))  # (gh, gw)
    entropy, prefix = cls_row_stats(attentions, trace.n_prefix, trace.has_cls)
    notes = []
    if not trace.has_cls:
        notes.append(
            f"{vm.model_id} has no [CLS] token: the maps show the attention each patch receives, "
            "averaged over all query tokens, and the entropy is the mean over all query rows"
        )
    if trace.n_registers:
        notes.append(
            f"{trace.n_registers} register tokens follow [CLS]; the attention [CLS] gives them is "
            "counted in the prefix share, not in the patch maps"
        )
    seconds = time.perf_counter() - t0
    report(1.0, "Done")
    return VisionAttentionResult(
        model=vm.model_id,
        image_sha256=sha,
        image_png=image_to_png(view),
        grid=trace.grid,
        n_prefix=trace.n_prefix,
        has_cls=trace.has_cls,
        cls_maps=maps,
        rollout=rollout,
        entropy=entropy,
        prefix_share=prefix,
        params=run_params(vm, params),
        notes=notes,
        seconds=seconds,
    )
