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


def text_bank(
    model: str | VisionLanguageModel | None,
    *,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    corpus: Any = None,
    progress: ProgressFn | None = None,
) -> Any:
    """The LatentLens text bank of a VLM's language model (an `explorer.vlm.latent.TextBank`).

    Built once per (model, weight fingerprint, corpus hash, layers) from the shipped corpus
    (`explorer.vlm.latent_corpus.default_corpus()` unless `corpus` is given), saved under
    `<cache>/latent_banks/` and indexed in the store as a run of kind "latent_bank"; later
    calls reuse the file (and, within a process, the loaded vectors)."""
    from explorer.api import open_store, run_cached
    from explorer.backends.loading import MODEL_CACHE
    from explorer.vlm.latent import (
        BANK_FORMAT,
        MAX_CONTEXTS,
        TextBank,
        bank_file,
        bank_layers,
        build_text_bank,
        load_bank,
        save_bank,
    )
    from explorer.vlm.latent_corpus import default_corpus

    settings = settings or Settings.from_env()
    vlm = resolve_vlm(model, settings, progress, dtype)
    lm = vlm.lm
    corpus = corpus or default_corpus()
    layers = bank_layers(lm.n_layers)
    path = bank_file(settings.cache_dir, lm.model_id, lm.weight_hash, corpus.digest, layers, MAX_CONTEXTS)
    store = open_store(db, settings)
    params = {"corpus": corpus.digest, "layers": layers, "max_contexts": MAX_CONTEXTS, "format": BANK_FORMAT}

    def compute() -> TextBank:
        if use_cache and path.exists():
            try:
                return load_bank(path)
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from another format: rebuild it
        bank = build_text_bank(lm, corpus, layers=layers, max_contexts=MAX_CONTEXTS, progress=progress)
        bank.path = str(path)
        save_bank(bank, path)
        return bank

    def load() -> TextBank:
        def cached(reuse: bool) -> TextBank:
            return run_cached(
                TextBank.kind,
                model_id=lm.model_id,
                weight_hash=lm.weight_hash,
                prompt="",
                params=params,
                compute=compute,
                store=store,
                use_cache=reuse,
            )

        bank = cached(use_cache)
        try:
            bank.matrix()
        except FileNotFoundError:  # the store knows the bank but its file was deleted
            bank = cached(False)
        return bank

    if not use_cache:
        return load()
    key = ("latent_bank", str(path), str(store.path if store is not None else ""))
    return MODEL_CACHE.get(key, load)


def latent_neighbours(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: Any = None,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    corpus: Any = None,
    progress: ProgressFn | None = None,
) -> Any:
    """LatentLens-style nearest text neighbours of every visual token; stored as kind
    "vlm_latent". `params` is an `explorer.vlm.latent.LatentParams` (default: k=5, same layer).
    The first call for a model builds its text bank (see `text_bank`; `corpus` is an
    `explorer.vlm.latent_corpus.Corpus`, default the shipped one)."""
    from explorer.api import open_store, run_cached
    from explorer.vlm.latent import LatentNeighboursResult, LatentParams
    from explorer.vlm.latent import latent_neighbours as compute_neighbours

    settings = settings or Settings.from_env()
    params = params or LatentParams()
    params.validate()
    picture = open_image(image, settings)
    if picture is None:
        raise InputError("nearest text neighbours of visual tokens need an image (--image PATH)")
    vlm = resolve_vlm(model, settings, progress, dtype)
    vlm.prepare(prompt, picture, settings.max_prompt_tokens)  # bad input fails before any bank is built
    bank = text_bank(vlm, db=db, settings=settings, corpus=corpus, progress=progress)
    return run_cached(
        LatentNeighboursResult.kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt=prompt,
        params={
            **params.to_json(),
            "image": image_digest(picture),
            "bank": [bank.corpus_digest, bank.layers, bank.max_contexts],
            "max_tokens": settings.max_prompt_tokens,
        },
        compute=lambda: compute_neighbours(
            vlm,
            prompt,
            picture,
            bank,
            params=params,
            max_tokens=settings.max_prompt_tokens,
            progress=progress,
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )
