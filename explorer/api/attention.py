"""Public API for the attention views (re-exported by `explorer` and `explorer.api`).

`attention(model, prompt)` (causal LMs) runs exactly one forward pass (`explorer.trace.capture`)
for the request, computes every view (per-head matrices, rollout, entropy, sink shares and, when
asked, attention flow) from that one trace, stores the run and returns an `AttentionResult`.

`attention_image(image, model=...)` (vision transformers) validates the image, runs the vision
backbone once and returns a `VisionAttentionResult`: [CLS] -> patch attention per layer and
head, attention rollout and per-head entropy of the [CLS] row, plus the model's view of the
image so overlays redraw from the store alone. The UI re-renders every display choice from
the returned result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from explorer.analysis import attention as _att
from explorer.analysis import vision_attention_result as _vatt
from explorer.api.runner import (
    DbArg,
    ProgressFn,
    cache_params,
    get_model,
    open_store,
    run_cached,
)
from explorer.backends.embedded import EMBEDDED_LMS
from explorer.backends.images import ImageInput, load_image
from explorer.backends.language import LanguageModel
from explorer.backends.vision import EMBEDDED_VISION_MODELS, VisionModel, load_vision_model
from explorer.config import Settings
from explorer.errors import InputError
from explorer.text_input import check_prompt
from explorer.vlm.attention import VLMAttentionParams, VLMAttentionResult


def attention(
    model: str | LanguageModel | None,
    prompt: str,
    *,
    flow: bool = False,
    flow_positions: Sequence[int] = (-1,),
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
    image: ImageInput | None = None,
    generate: int | None = None,
) -> _att.AttentionResult | VLMAttentionResult:
    """Attention of every layer and head over `prompt`, plus rollout, entropy and sink shares.

    `model`: embedded name (default "smollm2-135m"), hub id, local dir or a loaded
    `LanguageModel`. `flow=True` adds Abnar & Zuidema's attention flow from each of
    `flow_positions` (query positions after the last block; -1 = the last token) to every input
    token; it is exact max-flow, limited to prompts of at most `MAX_FLOW_TOKENS` tokens.
    Returns an `AttentionResult`; `.to_dict()` is the CLI's JSON.

    `image` (a path, bytes or PIL image) makes it a vision-language model's attention (default
    model "tiny-vlm"): every text token after the image (prompt and the `generate` greedy answer
    tokens, default 8) -> image patch attention per block and head and rolled out, and per block
    the share of attention on image / text / sink tokens. Returns a `VLMAttentionResult` (kind
    "vlm_attention"); a text-only model with an image raises InputError.
    """
    settings = settings or Settings.from_env()
    if image is not None:
        return _vlm_attention(model, prompt, image, flow, generate, db, use_cache, settings, dtype, progress)
    if generate is not None:
        raise InputError("generate applies to attention over an image (a vision-language model)")
    params = _att.AttentionParams(flow=bool(flow), flow_positions=tuple(int(p) for p in flow_positions))
    params.validate()
    check_prompt(prompt, settings.max_prompt_tokens)  # by characters, before the model loads
    lm = get_model(model, settings, progress, dtype)
    return run_cached(
        _att.AttentionResult.kind,
        model=lm.model_id,
        weight_hash=lm.weight_hash,
        prompt=prompt,
        params=cache_params(
            params, max_tokens=settings.max_prompt_tokens, full_tokens=settings.attention_full_tokens
        ),
        compute=lambda: _att.analyze_attention(
            lm,
            prompt,
            params=params,
            max_tokens=settings.max_prompt_tokens,
            full_tokens=settings.attention_full_tokens,
            progress=progress,
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def _vlm_attention(
    model: Any,
    prompt: str,
    image: ImageInput,
    flow: bool,
    generate: int | None,
    db: DbArg,
    use_cache: bool,
    settings: Settings,
    dtype: str | None,
    progress: ProgressFn | None,
) -> VLMAttentionResult:
    from explorer.api import vlm as vlm_api

    name = model if isinstance(model, str) else getattr(model, "model_id", None)
    if isinstance(model, LanguageModel) or (isinstance(model, str) and model in EMBEDDED_LMS):
        raise InputError(
            f"{name!r} is a text-only language model and cannot take an image; use a vision-language "
            "model (tiny-vlm or a hub VLM), or drop the prompt for a vision encoder's [CLS] attention"
        )
    if isinstance(model, VisionModel) or (isinstance(model, str) and model in EMBEDDED_VISION_MODELS):
        raise InputError(
            f"{name!r} is a vision encoder: it reads no prompt; give a "
            "vision-language model (tiny-vlm) or drop the prompt for its [CLS] attention"
        )
    if flow:
        raise InputError("attention flow applies to text prompts of a language model, not to an image")
    params = VLMAttentionParams(generate=8 if generate is None else int(generate))
    params.validate()
    return vlm_api.run_vlm_attention(
        model, prompt, image, params=params, db=db, use_cache=use_cache, settings=settings, dtype=dtype,
        progress=progress,
    )  # fmt: skip


def attention_image(
    image: ImageInput,
    *,
    model: str | VisionModel | None = None,
    residual_weight: float = 0.5,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> _vatt.VisionAttentionResult:
    """[CLS] -> patch attention of every layer and head of a vision transformer over `image`,
    plus attention rollout and the entropy of each head's [CLS] row.

    `image`: a path, bytes or PIL image; anything that is not a readable picture within the
    size limits raises InputError before a model loads and nothing is stored. `model`: embedded
    name (default "dinov2-small-focus"), hub id or local dir of a ViT / DINOv2 / CLIP / SigLIP
    vision tower, or a loaded `VisionModel`. `residual_weight`: identity weight of each rollout
    step (0.5 as in Abnar & Zuidema). The run is keyed by the image's pixel SHA-256 (stored in
    the prompt column). Returns a `VisionAttentionResult`; `.to_dict()` is the CLI's JSON.
    """
    settings = settings or Settings.from_env()
    params = _vatt.VisionAttentionParams(residual_weight=residual_weight)
    params.validate()
    pil = load_image(image, settings)
    sha = _vatt.image_sha256(pil)
    if isinstance(model, VisionModel):
        vm = model
    elif model in EMBEDDED_LMS:
        raise InputError(
            f"{model!r} is a language model: it has no image encoder; give a vision model "
            f"(e.g. {settings.default_vision_model!r}) or use the text mode (`attention(model, prompt)`)"
        )
    else:
        if progress is not None:
            progress(0.0, "Loading vision model")
        vm = load_vision_model(
            model or settings.default_vision_model, settings=settings, progress=progress, dtype=dtype
        )
    return run_cached(
        _vatt.VisionAttentionResult.kind,
        model=vm.model_id,
        weight_hash=vm.weight_hash,
        prompt=sha,
        params=cache_params(params, **vm.preprocessing.cache_key()),
        compute=lambda: _vatt.analyze_image_attention(
            vm, pil, params=params, settings=settings, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


MAX_FLOW_TOKENS = _att.MAX_FLOW_TOKENS
AttentionResult = _att.AttentionResult
VisionAttentionResult = _vatt.VisionAttentionResult

__all__ = [
    "MAX_FLOW_TOKENS",
    "AttentionResult",
    "VLMAttentionResult",
    "VisionAttentionResult",
    "attention",
    "attention_image",
]


def attention_window(
    result: _att.AttentionResult,
    layer: int,
    head: int | None,
    start: int,
    *,
    size: int = 128,
    model: str | LanguageModel | None = None,
    settings: Settings | None = None,
) -> tuple[Any, str]:
    """One head's (or the mean's) attention for queries and keys start..start+size-1.

    A long prompt's run stores block-aggregated matrices: the exact window is recomputed with
    one pass up to `layer` when the run's model is available (same weights), otherwise it is
    read from the stored block aggregate (each block's attention spread evenly over its keys).
    Returns (matrix (size, size) float32, source: "recomputed" or "block aggregate" or "stored")."""
    import numpy as np

    seq = result.seq_len
    start = max(0, min(int(start), max(0, seq - size)))
    stop = min(seq, start + size)
    if not result.is_blocked:
        matrix = result.head_matrix(layer, head)[start:stop, start:stop]
        return matrix, "stored"
    settings = settings or Settings.from_env()
    lm: LanguageModel | None = None
    try:
        lm = get_model(model if model is not None else result.model, settings, None, None)
    except Exception:  # noqa: BLE001 - the model is optional here: fall back to the stored aggregate
        lm = None
    if lm is not None and lm.model_id == result.model:
        window = _att.attention_head_window(lm, result.input_ids, layer, head, start, size)
        return window, "recomputed"
    block = result.head_matrix(layer, head)  # (B, B)
    assert result.spans is not None
    sizes = np.array([b - a + 1 for a, b in result.spans], dtype=np.float64)
    unit = np.repeat(np.arange(len(result.spans)), sizes.astype(int))[start:stop]
    spread = block[np.ix_(unit, unit)] / sizes[unit][None, :]
    causal = np.arange(start, stop)[None, :] <= np.arange(start, stop)[:, None]
    return np.where(causal, spread, 0.0).astype(np.float32), "block aggregate"
