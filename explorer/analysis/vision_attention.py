"""One forward pass of a vision transformer, and the attention views built on it.

`trace_image(vm, pixel_values)` runs the backbone once, block by block, and returns a
`VisionTrace` (hidden states per layer, attention patterns, final tokens, image embedding,
saliency map when the model has a decoder). The views are pure functions of the trace:

- `cls_attention_maps(trace)`  -> [n_layers, n_heads, grid_h, grid_w]: [CLS] -> patch attention.
- `rollout_matrix(trace)`      -> [T, T]: attention rollout (Abnar & Zuidema 2020).
- `rollout_relevance(trace)`   -> [grid_h, grid_w]: the rollout row of [CLS], over patches.
- `upsample_map(map, size)`    -> [H, W]: bilinear resize for overlays on the model's view.

All outputs are numpy arrays (float32) ready to draw; plotting lives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from explorer.analysis.attention_math import RESIDUAL_WEIGHT, attention_rollout
from explorer.backends.vision import VisionModel
from explorer.errors import InputError


@dataclass
class VisionTrace:
    """Captured internals of one forward pass over one image.

    Token layout: n_prefix prefix tokens ([CLS] if has_cls, then registers), then
    P = grid_h * grid_w patches in row-major order; T = n_prefix + P.

    pixel_values:  (1, 3, H, W) float32, the normalised input
    hidden_states: (n_layers + 1, T, D) float32; [0] = input of block 0 (embeddings, after any
                   pre-norm), [i] = output of block i-1 (raw residual, no final norm)
    attentions:    (n_layers, n_heads, T, T) float32, query x key, rows sum to 1; or None
    final:         (T, D) float32, last hidden state after the model's final norm
    embedding:     (D,) float32, the image embedding ([CLS] of `final`, else mean of patches)
    saliency:      (H, W) float32 in [0, 1] from the saliency decoder, or None
    """

    pixel_values: torch.Tensor
    hidden_states: torch.Tensor
    attentions: torch.Tensor | None
    final: torch.Tensor
    embedding: torch.Tensor
    saliency: torch.Tensor | None
    grid: tuple[int, int]
    n_prefix: int
    has_cls: bool
    n_registers: int

    @property
    def n_layers(self) -> int:
        return int(self.hidden_states.shape[0] - 1)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def seq_len(self) -> int:
        return int(self.hidden_states.shape[1])


def _check_pixels(vm: VisionModel, pixel_values: torch.Tensor) -> tuple[int, int]:
    if pixel_values.ndim != 4 or pixel_values.shape[0] != 1 or pixel_values.shape[1] != 3:
        raise InputError(f"pixel_values must be [1, 3, H, W]; got {list(pixel_values.shape)}")
    h, w = int(pixel_values.shape[2]), int(pixel_values.shape[3])
    if h < vm.patch_size or w < vm.patch_size:
        raise InputError(f"the image must be at least {vm.patch_size}x{vm.patch_size} pixels; got {h}x{w}")
    return h, w


@torch.inference_mode()
def trace_image(
    vm: VisionModel, pixel_values: torch.Tensor, attentions: bool = True, saliency: bool = True
) -> VisionTrace:
    """Run `vm` once on pixel_values [1, 3, H, W]; capture hidden states, attentions, outputs."""
    h, w = _check_pixels(vm, pixel_values)
    grid = vm.grid(h, w)
    with vm.lock:
        hidden = vm.embed(pixel_values)
        states = [hidden[0]]
        attn: list[torch.Tensor] = []
        for layer in range(vm.n_layers):
            hidden, captured = vm.run_blocks(hidden, layer, layer + 1, attentions=attentions)
            states.append(hidden[0])
            attn.extend(a[0] for a in captured)
        final = vm.final_norm(hidden)
        embedding = vm.pooled(final)[0]
        sal = None
        if saliency and vm.decoder is not None:
            sal = vm.saliency(final[:, vm.n_prefix :], grid, (h, w))[0]
    expected = vm.n_prefix + grid[0] * grid[1]
    if hidden.shape[1] != expected:
        raise InputError(
            f"{vm.model_id}: got {hidden.shape[1]} tokens, expected {expected} for a {h}x{w} input; "
            f"resize the image to {vm.image_size}x{vm.image_size}"
        )
    return VisionTrace(
        pixel_values=pixel_values.detach().cpu(),
        hidden_states=torch.stack(states).float().cpu(),
        attentions=torch.stack(attn).float().cpu() if attentions else None,
        final=final[0].float().cpu(),
        embedding=embedding.float().cpu(),
        saliency=sal.float().cpu() if sal is not None else None,
        grid=grid,
        n_prefix=vm.n_prefix,
        has_cls=vm.has_cls,
        n_registers=vm.n_registers,
    )


def _need_attentions(trace: VisionTrace) -> torch.Tensor:
    if trace.attentions is None:
        raise InputError("this trace was captured without attentions; call trace_image(..., attentions=True)")
    return trace.attentions


def query_to_patch_attention(attentions: torch.Tensor, n_prefix: int, has_cls: bool) -> torch.Tensor:
    """attentions [..., T, T] -> attention each patch receives [..., P].

    With a [CLS] token: the [CLS] query row restricted to the patch keys. Without one
    (SigLIP): the mean over all query rows (the attention each patch receives on average).
    """
    rows = attentions[..., 0, :] if has_cls else attentions.mean(dim=-2)
    return rows[..., n_prefix:]


def cls_attention_maps(trace: VisionTrace) -> np.ndarray:
    """[CLS] -> patch attention per layer and head: [n_layers, n_heads, grid_h, grid_w].

    Values are the raw attention probabilities (they sum, over patches, to 1 minus what
    [CLS] gives to itself and the registers). Models without [CLS] use the mean query row.
    """
    attn = _need_attentions(trace)
    maps = query_to_patch_attention(attn, trace.n_prefix, trace.has_cls)
    return maps.reshape(attn.shape[0], attn.shape[1], *trace.grid).numpy().astype(np.float32)


def rollout_matrix(trace: VisionTrace, residual_weight: float = RESIDUAL_WEIGHT) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020) after the last block -> [T, T] float32, rows sum to 1.

    See `attention_math.attention_rollout`: per layer A = w * I + (1 - w) * mean_heads(attention),
    rows re-normalised; R = A_{L-1} @ ... @ A_0.
    """
    return attention_rollout(_need_attentions(trace), residual_weight)[-1].cpu().numpy().astype(np.float32)


def rollout_relevance(trace: VisionTrace, residual_weight: float = RESIDUAL_WEIGHT) -> np.ndarray:
    """Rollout relevance of each patch for [CLS] -> [grid_h, grid_w], re-normalised to sum to 1.

    Models without [CLS] use the mean rollout row over all tokens.
    """
    rollout = torch.from_numpy(rollout_matrix(trace, residual_weight))
    row = rollout[0] if trace.has_cls else rollout.mean(dim=0)
    patches = row[trace.n_prefix :]
    patches = patches / patches.sum().clamp_min(1e-12)
    return patches.reshape(*trace.grid).numpy().astype(np.float32)


def upsample_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a [grid_h, grid_w] (or [..., grid_h, grid_w]) map to [..., H, W]."""
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    lead = tensor.shape[:-2]
    flat = tensor.reshape(-1, 1, *tensor.shape[-2:])
    out = torch.nn.functional.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size).numpy()
