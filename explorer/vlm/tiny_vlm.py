"""The embedded demo VLM, "tiny-vlm": DINOv2-S patch features -> MLP projector -> SmolLM2-135M.

LLaVA-style: the image goes through the embedded DINOv2-small (224 x 224, 16 x 16 patches),
patch features are average-pooled 2 x 2 to an 8 x 8 grid (64 visual tokens), a small MLP
projects them into SmolLM2's embedding space, and they replace the `<image>` placeholder in
the prompt. SmolLM2 stays frozen; only the projector is trained (explorer.vlm.train).

Deviation from LLaVA, stated in the model card and the UI: the projector reads two DINOv2
layers concatenated (the residual after block 6, and the final-normed output of block 12),
because DINOv2's last layer keeps little colour (a linear probe of an object's colour from
its pooled patch: 0.87 from layer 12 alone, 0.96 from layer 6; measured on 500 scenes).

Second deviation: next to the DINOv2 features, the projector reads simple colour statistics
of each pooled cell's pixels (`colour_statistics`: mean and standard deviation of R, G, B,
the chroma-weighted mean colour and the mean chroma; 10 numbers per visual token), through
a separate linear branch. DINOv2 is trained with heavy colour-jitter augmentation, so its
features separate red from orange poorly, which was the demo VLM's main error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

FEATURE_LAYERS = (6, 12)  # DINOv2 blocks whose outputs are concatenated (12 = final, normed)
POOL = 2  # 16 x 16 patches -> 8 x 8 visual tokens
COLOUR_DIM = 10  # colour statistics per visual token (see colour_statistics)
IMAGE_PLACEHOLDER = "<image>"


@dataclass(frozen=True)
class ProjectorConfig:
    """vision_dim = vision hidden size x len(feature_layers); grid = visual tokens per side;
    colour_dim = colour statistics per visual token appended to the features (0: none)."""

    vision_dim: int = 384 * len(FEATURE_LAYERS)
    lm_dim: int = 576
    hidden_dim: int = 1152
    grid: int = 8
    feature_layers: tuple[int, ...] = FEATURE_LAYERS
    colour_dim: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_layers", tuple(int(v) for v in self.feature_layers))

    @property
    def n_visual_tokens(self) -> int:
        return self.grid * self.grid


class Projector(nn.Module):
    """features (B, 64, vision_dim + colour_dim) -> visual token embeddings (B, 64, lm_dim).

    The vision part goes through LayerNorm, plus a learned per-position embedding so the LM
    can tell where each patch is (SmolLM2's rotary positions only order the 64 tokens in
    reading order), then Linear, GELU, Linear. The colour statistics (in [0, 1]) enter the
    hidden layer through their own Linear, so they are not normalised with the DINOv2 part."""

    def __init__(self, config: ProjectorConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.vision_dim)
        self.position = nn.Parameter(torch.zeros(config.n_visual_tokens, config.vision_dim))
        self.fc1 = nn.Linear(config.vision_dim, config.hidden_dim)
        self.colour = nn.Linear(config.colour_dim, config.hidden_dim) if config.colour_dim else None
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.hidden_dim, config.lm_dim)

    @property
    def input_dim(self) -> int:
        return self.config.vision_dim + self.config.colour_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.input_dim:
            raise ValueError(
                f"projector expects {self.input_dim} features per token, got {features.shape[-1]}"
            )
        vision = features[..., : self.config.vision_dim]
        hidden = self.fc1(self.norm(vision) + self.position)
        if self.colour is not None:
            hidden = hidden + self.colour(features[..., self.config.vision_dim :] * 4.0 - 2.0)
        return self.fc2(self.act(hidden))  # type: ignore[no-any-return]


def colour_statistics(
    pixel_values: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], grid: int
) -> torch.Tensor:
    """Normalised pixel_values (B, 3, H, W) -> per-cell colour statistics (B, grid * grid, 10).

    Per cell of a grid x grid partition of the image, in row-major order, from RGB in [0, 1]:
    mean R, G, B; their standard deviations; the chroma-weighted mean R, G, B (chroma =
    max - min of a pixel's channels, so grey background pixels hardly count and a coloured
    shape's hue survives even when it covers a small part of the cell); the mean chroma."""
    m = torch.tensor(mean, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)
    rgb = (pixel_values * s + m).clamp(0.0, 1.0).float()
    pool = nn.functional.adaptive_avg_pool2d
    chroma = rgb.amax(dim=1, keepdim=True) - rgb.amin(dim=1, keepdim=True)
    mu = pool(rgb, grid)
    sd = (pool(rgb * rgb, grid) - mu * mu).clamp_min(0.0).sqrt()
    mean_chroma = pool(chroma, grid)
    hue = pool(rgb * chroma, grid) / (mean_chroma + 1e-3)
    stats = torch.cat([mu, sd, hue.clamp(0.0, 1.0), mean_chroma], dim=1)  # (B, 10, grid, grid)
    return stats.flatten(2).transpose(1, 2)


@torch.inference_mode()
def visual_features(
    vision: Any, pixel_values: torch.Tensor, layers: tuple[int, ...] = FEATURE_LAYERS, colour: bool = False
) -> torch.Tensor:
    """pixel_values (B, 3, 224, 224) -> pooled patch features (B, 64, 384 * len(layers) [+ 10]).

    `vision` is a `VisionModel` (the embedded DINOv2); feature i is the concatenation of the
    outputs of blocks `layers` (the last one final-normed) at the patch tokens, averaged over
    2 x 2 patches, in row-major grid order; with `colour`, followed by the colour statistics
    of the same grid cell (`colour_statistics`)."""
    hidden = vision.embed(pixel_values)
    picked = []
    last = max(layers)
    if last > vision.n_layers:
        raise ValueError(f"feature layer {last} > the vision model's {vision.n_layers} layers")
    for layer in range(last):
        hidden, _ = vision.run_blocks(hidden, layer, layer + 1)
        if layer + 1 in layers:
            picked.append(vision.final_norm(hidden) if layer + 1 == vision.n_layers else hidden)
    out = []
    n_prefix = vision.n_prefix
    for h in picked:
        patches = h[:, n_prefix:]
        b, p, d = patches.shape
        side = int(round(p**0.5))
        grid = patches.reshape(b, side, side, d).permute(0, 3, 1, 2)
        pooled = nn.functional.avg_pool2d(grid, POOL)
        out.append(pooled.permute(0, 2, 3, 1).reshape(b, -1, d))
    if colour:
        grid = int(round(out[0].shape[1] ** 0.5))
        prep = vision.preprocessing
        out.append(colour_statistics(pixel_values, prep.mean, prep.std, grid).to(out[0].dtype))
    return torch.cat(out, dim=-1).float()


def chat_prompt(question: str) -> str:
    """The demo VLM's prompt: SmolLM2's chat format without its default system prompt
    (which would add 20 tokens to every example), with the image placeholder first."""
    return f"<|im_start|>user\n{IMAGE_PLACEHOLDER}\n{question}<|im_end|>\n<|im_start|>assistant\n"


ANSWER_END = "<|im_end|>"


# ---------------------------------------------------------------------------------------------
# LoRA on the language model (stage 2 of the demo VLM's training)
# ---------------------------------------------------------------------------------------------
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) * B(A(x)); base frozen, A random, B zero (starts as the identity change)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) / rank**0.5 * 0.01)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t().to(x.dtype)) @ self.lora_b.t().to(x.dtype) * self.scale  # type: ignore[no-any-return]


def add_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Wrap every Linear named in `targets` with a LoRALinear (in place); returns their names."""
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters only: {"<linear name>.lora_a": (r, in), "<linear name>.lora_b": (out, r)}."""
    return {k: v.detach() for k, v in model.state_dict().items() if ".lora_a" in k or ".lora_b" in k}


@torch.no_grad()
def merge_lora(model: nn.Module, state: dict[str, torch.Tensor], scale: float) -> int:
    """Add scale * B @ A into each adapted Linear's weight of a plain (unwrapped) model."""
    merged = 0
    for key, a in state.items():
        if not key.endswith(".lora_a"):
            continue
        prefix = key[: -len(".lora_a")]
        b = state[prefix + ".lora_b"]
        linear = model.get_submodule(prefix.replace(".base", ""))
        assert isinstance(linear, nn.Linear)
        linear.weight += (b.float() @ a.float() * scale).to(linear.weight.dtype)
        merged += 1
    return merged
