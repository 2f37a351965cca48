"""VISTA: Visual Information Steering with Token-logit Augmentation (Li et al. 2025, "The Hidden
Life of Tokens: Reducing Hallucination of Large Vision-Language Models via Visual Information
Steering"), at generation time, through the backend's residual and logits hooks.

* **Visual steering vector (VSV).** Per sample, the residual stream at the prompt's last position
  with the image minus the same prompt without it, at every layer: v_l = h_l(image) - h_l(no image)
  (l = 1..L, the output of block l-1). During generation (prefill and every decoding step, every
  position) it is added at the chosen layers with strength lambda, in one of two forms:
  - ``"norm"`` (the authors' released code): h' = normalize(normalize(h) + lambda * (1 +
    max(0, cos(h, -v))) * normalize(v)) * ||h||: a unit-direction push, the original norm kept,
    stronger where h points away from v. The paper's lambda: 0.01 (POPE) to 0.17 (CHAIR) on
    LLaVA-1.5.
  - ``"add"``: h' = h + lambda * v (the plain residual addition; lambda in units of v itself).
* **Self-logits augmentation (SLA).** The next-token logits are mixed with the mean of the logit
  lens over an early-layer window: logits' = alpha * mean_{l in window} unembed(final_norm(h_l)) +
  (1 - alpha) * logits. The paper uses alpha = 0.3 and the window 26..31 of LLaVA's 32 residual
  layers; the default window here keeps those relative positions (round(26/32 * L) .. L - 1).

Deviations from the paper (also in every result's `deviations`): the released code injects the
VSV into each block's MLP output, we edit the block's output residual (the architecture specs name
blocks, not MLPs); the released code passes the single-example difference through a rank-1 PCA,
which on one example adds an arbitrary unit vector to the difference, we use the difference
itself; the released code's SLA applies the LM head without the final norm to the early layers, we
apply the final norm, as our logit lens does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from explorer.backends.language import ResidualEdit
from explorer.backends.vlm import (
    VisionLanguageModel,
    VLMInputs,
    generate_batch,
    last_token_residuals,
)
from explorer.errors import InputError

VSV_FORMS = ("norm", "add")
PAPER_WINDOW = (
    26,
    31,
    32,
)  # residual layers 26..31 of LLaVA-1.5's 32 (released code: "25,30" of hidden_states[1:])
DEVIATIONS = (
    "VSV edits each chosen block's output residual; the released code edits each block's MLP output.",
    "VSV = the with-image minus without-image residual difference itself; the released code's rank-1 PCA "
    "of one example adds an arbitrary unit vector to it.",
    "SLA decodes the early-layer window with the final norm then the LM head (our logit lens); the released "
    "code applies the LM head without the final norm.",
)


@dataclass(frozen=True)
class VistaParams:
    """Which VISTA parts run, and their parameters.

    vsv_layers: residual layers (1..L) that get the VSV; None = every layer (the released code's default)
    sla_window: (first, last) residual layers, inclusive; None = the paper's window at relative depth
    """

    vsv: bool = False
    lam: float = 0.1
    vsv_form: str = "norm"
    vsv_layers: tuple[int, ...] | None = None
    sla: bool = False
    sla_alpha: float = 0.3
    sla_window: tuple[int, int] | None = None

    @property
    def enabled(self) -> bool:
        return self.vsv or self.sla

    def validate(self, n_layers: int | None = None) -> None:
        if self.vsv_form not in VSV_FORMS:
            raise InputError(f"vsv_form must be one of {VSV_FORMS} (got {self.vsv_form!r})")
        if not -100.0 <= self.lam <= 100.0:
            raise InputError(f"lam (the steering strength lambda) must be in [-100, 100] (got {self.lam})")
        if not 0.0 <= self.sla_alpha <= 1.0:
            raise InputError(
                f"sla_alpha (the SLA mixing weight alpha) must be in [0, 1] (got {self.sla_alpha})"
            )
        if self.sla_window is not None:
            first, last = self.sla_window
            if first > last:
                raise InputError(f"sla_window {first}..{last} is empty: give first <= last")
        if n_layers is not None:
            for layer in self.layers_for(n_layers)[0]:
                if not 1 <= layer <= n_layers:
                    raise InputError(f"vsv_layers: layer {layer} is outside 1..{n_layers}")
            first, last = self.window_for(n_layers)
            if not 1 <= first <= last <= n_layers:
                raise InputError(f"sla_window {first}..{last} must lie within 1..{n_layers}")

    def layers_for(self, n_layers: int) -> tuple[tuple[int, ...], int]:
        layers = self.vsv_layers if self.vsv_layers is not None else tuple(range(1, n_layers + 1))
        return tuple(sorted(set(layers))), n_layers

    def window_for(self, n_layers: int) -> tuple[int, int]:
        if self.sla_window is not None:
            return self.sla_window
        first = max(1, round(PAPER_WINDOW[0] / PAPER_WINDOW[2] * n_layers))
        return first, max(first, n_layers - 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "vsv": self.vsv,
            "lam": self.lam,
            "vsv_form": self.vsv_form,
            "vsv_layers": list(self.vsv_layers) if self.vsv_layers is not None else None,
            "sla": self.sla,
            "sla_alpha": self.sla_alpha,
            "sla_window": list(self.sla_window) if self.sla_window is not None else None,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> VistaParams:
        if not d:
            return cls()
        layers = d.get("vsv_layers")
        window = d.get("sla_window")
        return cls(
            vsv=bool(d.get("vsv", False)),
            lam=float(d.get("lam", 0.1)),
            vsv_form=str(d.get("vsv_form", "norm")),
            vsv_layers=tuple(int(v) for v in layers) if layers is not None else None,
            sla=bool(d.get("sla", False)),
            sla_alpha=float(d.get("sla_alpha", 0.3)),
            sla_window=(int(window[0]), int(window[1])) if window is not None else None,
        )


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    """'' or 'all' -> None (every layer); '10-20' or '3,5,7' (or a mix) -> the layers."""
    text = (text or "").strip().lower()
    if text in ("", "all"):
        return None
    layers: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if "-" in part:
                a, b = part.split("-", 1)
                layers.extend(range(int(a), int(b) + 1))
            elif part:
                layers.append(int(part))
    except ValueError:
        raise InputError(f"cannot read the layers {text!r}: give e.g. '10-20' or '3,5,7' or 'all'") from None
    if not layers:
        raise InputError(f"no layers in {text!r}")
    return tuple(layers)


# ---- the two interventions ----------------------------------------------------------------------
def steer(h: torch.Tensor, v: torch.Tensor, lam: float, form: str) -> torch.Tensor:
    """h (B, T, d) residual, v (B, d) steering vector per row -> the steered residual, same dtype."""
    vv = v.to(h.device, torch.float32)[:, None, :]
    if form == "add":
        return (h.float() + lam * vv).to(h.dtype)
    x = h.float()
    norm = x.norm(dim=-1, keepdim=True)
    boost = 1.0 + torch.clamp(F.cosine_similarity(x, -vv.expand_as(x), dim=-1), min=0.0).unsqueeze(-1)
    y = lam * boost * F.normalize(vv, dim=-1)
    return (F.normalize(F.normalize(x, dim=-1) + y, dim=-1) * norm).to(h.dtype)


def visual_steering_vectors(
    vlm: VisionLanguageModel, batch: list[VLMInputs], questions: list[str], max_tokens: int = 4096
) -> torch.Tensor:
    """(B, n_layers + 1, d): the last-position residual with the image minus without it (layer 0,
    the input embedding of the last token, is the same in both runs and so ~0)."""
    without = [vlm.prepare(q, None, max_tokens) for q in questions]
    return last_token_residuals(vlm, batch) - last_token_residuals(vlm, without)


def vista_generate_batch(
    vlm: VisionLanguageModel,
    batch: list[VLMInputs],
    questions: list[str],
    max_new_tokens: int,
    params: VistaParams,
    max_tokens: int = 4096,
) -> list[list[int]]:
    """Greedy answers with VISTA's VSV and/or SLA switched on as `params` says (all off = plain
    `generate_batch`, bit for bit). Projector VLMs decode the batch together; hub VLMs row by row."""
    lm = vlm.lm
    n_layers = lm.n_layers
    params.validate(n_layers)
    if not params.enabled:
        return generate_batch(vlm, batch, max_new_tokens)
    vsv = visual_steering_vectors(vlm, batch, questions, max_tokens) if params.vsv else None
    if vlm.uses_model_forward and len(batch) > 1:
        return [
            _steered(vlm, [b], None if vsv is None else vsv[i : i + 1], max_new_tokens, params)[0]
            for i, b in enumerate(batch)
        ]
    return _steered(vlm, batch, vsv, max_new_tokens, params)


def _edit(v: torch.Tensor, params: VistaParams) -> ResidualEdit:
    return lambda h: steer(h, v, params.lam, params.vsv_form)


def _steered(
    vlm: VisionLanguageModel,
    batch: list[VLMInputs],
    vsv: torch.Tensor | None,
    max_new_tokens: int,
    params: VistaParams,
) -> list[list[int]]:
    lm = vlm.lm
    layers, _ = params.layers_for(lm.n_layers)
    edits: dict[int, ResidualEdit] = {}
    if vsv is not None:
        for layer in layers:
            edits[layer] = _edit(vsv[:, layer], params)
    first, last = params.window_for(lm.n_layers)
    window = list(range(first, last + 1)) if params.sla else []
    with vlm.lock, lm.residual_edits(edits), lm.residual_recorder(window) as record:

        def mix(step: int, logits: torch.Tensor) -> torch.Tensor:
            early = torch.stack([lm.unembed(record[layer]).float() for layer in window]).mean(0)
            return params.sla_alpha * early + (1.0 - params.sla_alpha) * logits

        return generate_batch(vlm, batch, max_new_tokens, logits_hook=mix if params.sla else None)
