"""Captum baselines on the input embeddings: saliency, input x gradient, integrated gradients,
and feature ablation (occlusion of one token at a time, or of sliding spans of tokens).

All explain the objective of `task` (log p(target), or log p(target) - log p(foil)) as a
function of the context's input embeddings E (P, d); per-token scores reduce over d:

- saliency:              ||df/dE_i||_2 (unsigned)
- input_x_gradient:      sum_j E_ij * df/dE_ij (signed)
- integrated_gradients:  sum_j (E_ij - 0) * mean_alpha df/dE_ij(alpha E) (signed); the
                         attributions sum to f(E) - f(0) (completeness); Gauss-Legendre steps,
                         evaluated `internal_batch_size` at a time so memory stays bounded
- occlusion:             f(E) - f(E with token i's embedding zeroed) (Captum FeatureAblation);
                         with window w > 1: spans of w tokens zeroed every `stride` tokens,
                         each token scored by the mean drop of its spans (Captum Occlusion)

The model's parameters are frozen (requires_grad off, restored afterwards) and the model lock
is held for the duration, so nothing else runs a forward pass on it meanwhile.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from explorer.analysis.attribution.task import (
    AttributionTask,
    context_embeddings,
    objective_embeds,
)
from explorer.backends.language import LanguageModel
from explorer.errors import InputError

# Memory budget: a gradient pass keeps every layer's activations for each of its batch x T
# tokens, so a batch holds at most this many tokens (IG's internal batch and occlusion's
# perturbations per pass shrink for long prompts; a 4,096-token prompt runs one row at a time).
GRADIENT_BATCH_TOKENS = 4096


@dataclass(frozen=True)
class IGParams:
    """n_steps: integration points (Gauss-Legendre); internal_batch_size: points per forward."""

    n_steps: int = 32
    internal_batch_size: int = 8

    def validate(self) -> None:
        if not 2 <= self.n_steps <= 512:
            raise InputError(f"n_steps must be between 2 and 512, got {self.n_steps}")
        if not 1 <= self.internal_batch_size <= 128:
            raise InputError(f"internal_batch_size must be between 1 and 128, got {self.internal_batch_size}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAX_OCCLUSION_WINDOW = 4096


@dataclass(frozen=True)
class OcclusionParams:
    """perturbations_per_eval: occluded copies evaluated per forward pass.

    window / stride: occlude spans of `window` consecutive tokens, starting every `stride`
    tokens (Captum's Occlusion `sliding_window_shapes` / `strides` along the tokens); a token's
    score is the mean drop over the windows that cover it. window = stride = 1 (the default)
    is one token at a time, exactly the feature ablation it always was; a span cuts the passes
    from one per token to about (P - window) / stride + 1 (a 4,096-token prompt with window =
    stride = 64 takes 64 passes instead of 4,096)."""

    perturbations_per_eval: int = 8
    window: int = 1
    stride: int = 1

    def validate(self) -> None:
        if not 1 <= self.perturbations_per_eval <= 256:
            raise InputError(
                f"perturbations_per_eval must be between 1 and 256, got {self.perturbations_per_eval}"
            )
        for name in ("window", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be a whole number of tokens, got {value!r}")
        if not 1 <= self.window <= MAX_OCCLUSION_WINDOW:
            raise InputError(f"window must be between 1 and {MAX_OCCLUSION_WINDOW} tokens, got {self.window}")
        if not 1 <= self.stride <= self.window:
            raise InputError(
                f"stride must be between 1 and the window ({self.window}), got {self.stride}: "
                "a stride past the window would leave tokens never occluded"
            )

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        if self.window == 1 and self.stride == 1:  # one token at a time: the key it always had
            del out["window"], out["stride"]
        return out


@dataclass(frozen=True)
class NoParams:
    """Methods without parameters."""

    def validate(self) -> None:
        return None

    def to_json(self) -> dict[str, Any]:
        return {}


def _rows_per_pass(task: AttributionTask, wanted: int) -> int:
    """Rows per batched pass: `wanted`, fewer when rows x tokens would exceed GRADIENT_BATCH_TOKENS."""
    total = task.n_context + task.n_target - 1
    return max(1, min(wanted, GRADIENT_BATCH_TOKENS // max(1, total)))


def _forward(lm: LanguageModel, task: AttributionTask):  # type: ignore[no-untyped-def]
    def f(embeds: torch.Tensor) -> torch.Tensor:
        return objective_embeds(lm, task, embeds)

    return f


def saliency(
    lm: LanguageModel, task: AttributionTask, params: NoParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Gradient norm per token: (P,) >= 0."""
    from captum.attr import Saliency

    emb = context_embeddings(lm, task).unsqueeze(0)
    with lm.frozen_weights(), lm.memory_efficient_attention():
        attr = Saliency(_forward(lm, task)).attribute(emb, abs=False)
    return attr[0].float().norm(dim=-1).detach().cpu(), {}, []


def input_x_gradient(
    lm: LanguageModel, task: AttributionTask, params: NoParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Embedding . gradient per token: (P,), signed."""
    from captum.attr import InputXGradient

    emb = context_embeddings(lm, task).unsqueeze(0)
    with lm.frozen_weights(), lm.memory_efficient_attention():
        attr = InputXGradient(_forward(lm, task)).attribute(emb)
    return attr[0].float().sum(dim=-1).detach().cpu(), {}, []


# Piecewise quadrature along the straight path alpha * E, alpha in [0, 1]: pre-norm models
# change fastest right next to the zero baseline (the first norm goes from 0 to full scale
# there), so a quarter of the points each go to [0, 0.002] and [0.002, 0.05].
IG_SEGMENTS = ((0.0, 0.002, 0.25), (0.002, 0.05, 0.25), (0.05, 1.0, 0.5))


def integrated_gradients(
    lm: LanguageModel, task: AttributionTask, params: IGParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Integrated gradients from the all-zero embedding baseline: (P,), signed.

    The path integral is split into the segments of IG_SEGMENTS, each computed by Captum's
    IntegratedGradients (Gauss-Legendre) from a*E to b*E; IG is additive along the path, so
    the sum is IG over [0, 1] with more quadrature points where the integrand is steep.
    extras: convergence_delta = sum(scores) - (f(E) - f(0)).
    """
    from captum.attr import IntegratedGradients

    params.validate()
    emb = context_embeddings(lm, task).unsqueeze(0)
    total = torch.zeros_like(emb)
    with lm.frozen_weights(), lm.memory_efficient_attention():
        ig = IntegratedGradients(_forward(lm, task))
        for a, b, share in IG_SEGMENTS:
            total = total + ig.attribute(
                b * emb,
                baselines=a * emb,
                n_steps=max(2, round(share * params.n_steps)),
                internal_batch_size=_rows_per_pass(task, params.internal_batch_size),
            )
        with torch.no_grad():
            gap = objective_embeds(lm, task, torch.cat([emb, torch.zeros_like(emb)]))
    scores = total[0].float().sum(dim=-1).detach().cpu()
    delta = float(scores.sum()) - float(gap[0] - gap[1])
    return scores, {"convergence_delta": delta}, []


def occlusion(
    lm: LanguageModel, task: AttributionTask, params: OcclusionParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Drop in the objective when one token's embedding is zeroed: (P,), signed. With a
    window > 1, spans of `window` tokens are zeroed every `stride` tokens (Captum Occlusion; the
    last span is cut at the end of the context) and each token gets the mean drop of its spans."""
    from captum.attr import FeatureAblation, Occlusion

    params.validate()
    emb = context_embeddings(lm, task).unsqueeze(0)
    p, d = emb.shape[1], emb.shape[2]
    per_pass = _rows_per_pass(task, params.perturbations_per_eval)
    if params.window > p:
        raise InputError(
            f"occlusion window ({params.window} tokens) is longer than the context ({p} tokens): "
            f"choose a window of at most {p}"
        )
    if params.window == 1:
        feature_mask = torch.arange(p, device=emb.device).view(1, p, 1).expand(1, p, d)
        with torch.no_grad(), lm.lock, lm.memory_efficient_attention():
            attr = FeatureAblation(_forward(lm, task)).attribute(
                emb, baselines=0.0, feature_mask=feature_mask, perturbations_per_eval=per_pass
            )
        return attr[0, :, 0].float().detach().cpu(), {}, []
    w, s = params.window, params.stride
    with torch.no_grad(), lm.lock, lm.memory_efficient_attention():
        attr = Occlusion(_forward(lm, task)).attribute(
            emb, sliding_window_shapes=(w, d), strides=(s, d), baselines=0.0, perturbations_per_eval=per_pass
        )
    n_windows = occlusion_windows(p, w, s)
    note = (
        f"occlusion over spans of {w} tokens every {s} tokens: {n_windows} passes instead of {p}; each token's "
        "score is the mean drop of the spans that cover it, so tokens in a span share its effect"
    )
    return attr[0, :, 0].float().detach().cpu(), {"window": w, "stride": s, "passes": n_windows}, [note]


def occlusion_windows(n_tokens: int, window: int, stride: int) -> int:
    """Spans Captum's Occlusion zeroes over `n_tokens` tokens: starts 0, stride, ... up to the
    first start at or past n_tokens - window (the last span may be cut at the end)."""
    return -(-(n_tokens - window) // stride) + 1
