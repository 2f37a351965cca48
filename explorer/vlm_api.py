"""Public API for vision-language models: the same verbs as for text, with an image.

`explorer.logit_lens(model, prompt, image=...)` lands here. A VLM is the embedded demo
("tiny-vlm", the default whenever an image is given) or a hub VLM id / local dir. The cache
key includes a hash of the image as the model sees it, so the same picture and prompt never
recompute.
"""

from __future__ import annotations

import hashlib
from typing import Any

from PIL import Image

from explorer.analysis.logit_lens import LensParams
from explorer.backends.embedded import EMBEDDED_LMS
from explorer.backends.images import ImageInput, image_to_png, load_image
from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM, VisionLanguageModel, load_vlm
from explorer.config import Settings
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.vlm.lens import VLMLensResult, vlm_logit_lens


def is_vlm(model: str | Any | None) -> bool:
    """Is `model` (a name or a loaded backend) a vision-language model?"""
    if isinstance(model, VisionLanguageModel):
        return True
    if not isinstance(model, str):
        return False
    if model in EMBEDDED_VLMS:
        return True
    if model in EMBEDDED_LMS:
        return False
    return _config_has_vision(model)


def _config_has_vision(name: str) -> bool:
    """A hub id or local dir whose config has a `vision_config` (every transformers VLM does)."""
    from pathlib import Path

    from transformers import AutoConfig

    from explorer.backends.loading import hub_kwargs
    from explorer.model_policy import admit_model

    name = admit_model(name)  # the host's allow-list, before any file or hub access
    try:
        config = AutoConfig.from_pretrained(name, **hub_kwargs(Path(name).exists()))
    except (OSError, ValueError):
        return False
    return getattr(config, "vision_config", None) is not None


def resolve_vlm(
    model: str | VisionLanguageModel | None,
    settings: Settings,
    progress: ProgressFn | None,
    dtype: str | None = None,
) -> VisionLanguageModel:
    if isinstance(model, VisionLanguageModel):
        return model
    name = (model or TINY_VLM).strip()
    if name in EMBEDDED_LMS:
        raise InputError(
            f"{name!r} is a text-only language model and cannot take an image; "
            f"use a vision-language model ({', '.join(EMBEDDED_VLMS)} or a hub VLM)"
        )
    return load_vlm(name, settings=settings, progress=progress, dtype=dtype)


def open_image(image: ImageInput | None, settings: Settings) -> Image.Image | None:
    return None if image is None else load_image(image, settings)


def image_digest(image: Image.Image | None) -> str | None:
    return None if image is None else hashlib.sha256(image_to_png(image)).hexdigest()[:16]


def vlm_lens(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: LensParams,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> VLMLensResult:
    """Logit lens of a VLM over (image, prompt) [+ generated tokens]; stored as kind "vlm_lens"."""
    from explorer.api import open_store, run_cached

    settings = settings or Settings.from_env()
    params.validate()
    picture = open_image(image, settings)
    vlm = resolve_vlm(model, settings, progress, dtype)
    return run_cached(
        VLMLensResult.kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt=prompt,
        params={**params.to_json(), "image": image_digest(picture), "max_tokens": settings.max_prompt_tokens},
        compute=lambda: vlm_logit_lens(
            vlm, prompt, picture, params=params, max_tokens=settings.max_prompt_tokens, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def visual_tokens(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: Any = None,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """EmbedLens-style sink / dead / alive visual tokens and text->image attention; stored as
    kind "vlm_tokens". `params` is an `explorer.vlm.tokens.TokenParams` (default thresholds)."""
    from explorer.api import open_store, run_cached
    from explorer.vlm.tokens import TokenParams, VisualTokensResult
    from explorer.vlm.tokens import visual_tokens as compute_tokens

    settings = settings or Settings.from_env()
    params = params or TokenParams()
    params.validate()
    picture = open_image(image, settings)
    if picture is None:
        raise InputError("visual-token analysis needs an image")
    vlm = resolve_vlm(model, settings, progress, dtype)
    return run_cached(
        VisualTokensResult.kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt=prompt,
        params={**params.to_json(), "image": image_digest(picture), "max_tokens": settings.max_prompt_tokens},
        compute=lambda: compute_tokens(
            vlm, prompt, picture, params=params, max_tokens=settings.max_prompt_tokens, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def vlm_attribute(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: Any,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """Attribution of the VLM's answer to the image patches; stored as kind "vlm_attribution"."""
    from explorer.analysis.vlm_attribution import VLMAttributionResult, vlm_attribution
    from explorer.api import open_store, run_cached

    settings = settings or Settings.from_env()
    params.validate()
    if image is None:
        raise InputError("image attribution needs an image (--image PATH)")
    picture = open_image(image, settings)
    vlm = resolve_vlm(model, settings, progress, dtype)
    return run_cached(
        VLMAttributionResult.kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt=prompt,
        params={**params.to_json(), "image": image_digest(picture), "max_tokens": settings.max_prompt_tokens},
        compute=lambda: vlm_attribution(
            vlm, prompt, picture, params, max_tokens=settings.max_prompt_tokens, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )
