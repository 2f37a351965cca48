"""Logit lens over a multimodal sequence: what the LM "reads" in every image patch, layer by layer.

The same read-out as the text lens (final norm + unembedding at every layer; the last layer
equals the model's logits), over the whole sequence: the text tokens, the projected image
tokens, and any generated tokens (step s at position prompt_len - 1 + s, traced in one pass
after decoding with a KV cache). The result is a `LensResult` (every text-lens view works
on it) plus the modality of each position, the patch grid and the image as the model saw it,
so image positions can be drawn as a grid on the picture with each patch's top token.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from explorer.analysis.logit_lens import (
    LensParams,
    LensResult,
    lens_from_trace,
    never_emitted_candidates,
    resolve_targets,
    summarize_positions,
)
from explorer.backends.images import image_to_png
from explorer.backends.vlm import MODALITY_IMAGE, VisionLanguageModel, capture_vlm, generate
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import in_meta, register_result


@register_result
@dataclass
class VLMLensResult(LensResult):
    """A `LensResult` over a multimodal sequence.

    modality:  seq strings ("text" / "image"), prompt then generated positions
    grid:      [rows, cols] of the image tokens (row-major), or None without an image
    image_png: the image as the model saw it, base64 PNG (so a reopened run draws overlays)
    """

    kind: ClassVar[str] = "vlm_lens"
    json_kind: ClassVar[bool] = True

    modality: list[str] = in_meta(default_factory=list)
    grid: list[int] | None = in_meta(default=None)
    image_png: str | None = in_meta(default=None, json=False)
    prompt: str = in_meta(default="")

    @property
    def image_positions(self) -> list[int]:
        return [i for i, m in enumerate(self.modality) if m == MODALITY_IMAGE]

    def image(self) -> Image.Image | None:
        if not self.image_png:
            return None
        import io

        return Image.open(io.BytesIO(base64.b64decode(self.image_png))).convert("RGB")

    def patch_top_tokens(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) top-1 lens token and its probability at `layer` for every image token."""
        if self.grid is None:
            raise ValueError("this run has no image")
        rows, cols = self.grid
        pos = self.grid_positions
        tokens = self.topk_tokens[layer, pos, 0].reshape(rows, cols)
        probs = self.topk_probs[layer, pos, 0].reshape(rows, cols)
        return tokens, probs

    @property
    def grid_positions(self) -> list[int]:
        """The image positions that form the patch grid (row-major). Models that add tiles after
        a base view (LLaVA-NeXT) have more image positions than grid cells: the grid is the base view."""
        if self.grid is None:
            return []
        return self.image_positions[: self.grid[0] * self.grid[1]]

    @property
    def target_tokens(self) -> list[str]:
        """The tracked targets, as the tokenizer decodes them, in order."""
        roles = self.tracked["role"] == "target"
        return list(dict.fromkeys(str(t) for t in self.tracked["token"][roles]))

    def target_name(self, target: str) -> str:
        """`target` as stored: the tokenizer may decode " red" without its space."""
        names = self.target_tokens
        if target in names:
            return target
        stripped = [t for t in names if t.strip() == target.strip()]
        if not stripped:
            raise InputError(f"{target!r} is not a tracked target of this run; tracked: {names}")
        return stripped[0]

    def patch_target(self, target: str, value: str = "prob") -> np.ndarray:
        """(n_layers + 1, rows, cols): a tracked target's probability (or rank) at every patch."""
        if self.grid is None:
            raise ValueError("this run has no image")
        m = self.tracked_matrix("target", value, target=self.target_name(target))
        return m[:, self.grid_positions].reshape(m.shape[0], *self.grid)

    def surfacing(self) -> list[dict[str, Any]]:
        """Per tracked target, over the image tokens: the first layer where it is top-1 (and
        top-10) at any patch, the layer where its best patch probability peaks, and how many
        patches have it as top-1 at that layer, and where that best patch is (`peak_patch`: row,
        column of the grid, 0-based from the top left)."""
        if self.grid is None:
            return []
        out = []
        pos = self.grid_positions
        for target in self.target_tokens:
            ranks = self.tracked_matrix("target", "rank", target=target)[:, pos]
            probs = self.tracked_matrix("target", "prob", target=target)[:, pos]
            best = np.nanmax(probs, axis=1)
            top1 = np.nonzero((ranks == 1).any(axis=1))[0]
            top10 = np.nonzero((ranks <= 10).any(axis=1))[0]
            peak = int(np.nanargmax(best))
            row, col = divmod(int(np.nanargmax(probs[peak])), int(self.grid[1]))
            out.append(
                {
                    "target": target,
                    "first_top1_layer": int(top1[0]) if len(top1) else None,
                    "first_top10_layer": int(top10[0]) if len(top10) else None,
                    "peak_layer": peak,
                    "peak_prob": float(best[peak]),
                    "patches_top1_at_peak": int((ranks[peak] == 1).sum()),
                    "peak_patch": [row, col],
                }
            )
        return out

    def json_views(self) -> dict[str, Any]:
        out = super().json_views()
        out["surfacing"] = self.surfacing()
        if self.grid is not None:
            out["patch_top_tokens"] = [
                {
                    "layer": layer,
                    "tokens": self.patch_top_tokens(layer)[0].tolist(),
                    "probs": np.round(self.patch_top_tokens(layer)[1].astype(float), 5).tolist(),
                }
                for layer in range(self.n_layers + 1)
            ]
        return out


def vlm_logit_lens(
    vlm: VisionLanguageModel,
    prompt: str,
    image: Image.Image | None,
    *,
    params: LensParams,
    max_tokens: int = 512,
    progress: ProgressFn | None = None,
) -> VLMLensResult:
    """Logit lens over (image, prompt) on a VLM, optionally after generating `params.generate` tokens."""
    prog = progress or (lambda f, m: None)
    params.validate()
    t0 = time.perf_counter()
    prog(0.05, "Encoding the image and the prompt")
    inputs = vlm.prepare(prompt, image, max_tokens)
    target_ids, notes = resolve_targets(vlm.lm, params.targets)
    generated: list[int] = []
    if params.generate:
        generated = generate(
            vlm,
            inputs,
            params.generate,
            sample=params.sample,
            temperature=params.temperature,
            seed=params.seed,
            progress=lambda f, m: prog(0.1 + 0.4 * f, m),
        )
    prog(0.55, "Tracing one forward pass")
    trace, modality = capture_vlm(vlm, inputs, generated)
    prog(0.7, "Decoding every layer")
    topk_ids, topk_probs, tracked = lens_from_trace(vlm.lm, trace, top_k=params.top_k, target_ids=target_ids)
    vocab: dict[int, str] = {}

    def tok(i: int) -> str:
        if i not in vocab:
            vocab[i] = vlm.lm.token_str(i)
        return vocab[i]

    topk_tokens = np.vectorize(tok, otypes=[object])(topk_ids)
    tracked["token"] = np.asarray([tok(int(i)) for i in tracked["id"]], dtype=object)
    # "next input" at an image position is the image-token id: not a prediction target
    is_image = np.asarray([m == MODALITY_IMAGE for m in modality])
    keep = ~(
        (tracked["role"] == "next_input") & (is_image[np.minimum(tracked["position"] + 1, len(is_image) - 1)])
    )
    tracked = {k: v[keep] for k, v in tracked.items()}
    summaries = summarize_positions(trace.n_layers, tok, tracked, trace.seq_len)
    prompt_len = inputs.seq_len
    steps = list(range(prompt_len - 1, prompt_len - 1 + len(generated)))
    never_emitted = (
        never_emitted_candidates(topk_ids, topk_probs, topk_tokens, steps, generated) if generated else []
    )
    if inputs.image is None:
        notes.append("no image: a text-only prompt to a VLM has no visual tokens")
    prog(1.0, "Done")
    return VLMLensResult(
        model=vlm.model_id,
        n_layers=trace.n_layers,
        tokens=trace.tokens,
        input_ids=trace.input_ids.tolist(),
        prompt_len=prompt_len,
        topk_ids=topk_ids,
        topk_probs=topk_probs,
        topk_tokens=topk_tokens,
        tracked=tracked,
        summaries=summaries,
        params=params.to_json(),
        generated=[tok(i) for i in generated],
        never_emitted=never_emitted,
        notes=notes,
        seconds=time.perf_counter() - t0,
        modality=modality,
        grid=list(inputs.grid) if inputs.grid else None,
        image_png=base64.b64encode(image_to_png(inputs.image)).decode() if inputs.image else None,
        prompt=prompt,
    )
