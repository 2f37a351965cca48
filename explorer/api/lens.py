"""The logit lens entry point: `explorer.logit_lens` (text LMs and, with an image, VLMs)."""

from __future__ import annotations

from typing import Any

from explorer.analysis import logit_lens as _lens
from explorer.api.runner import DbArg, cache_params, get_model, open_store, run_cached
from explorer.backends.language import LanguageModel
from explorer.config import Settings
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.text_input import check_prompt


def run_logit_lens(
    model: Any,
    prompt: str,
    *,
    top_k: int = 10,
    targets: list[str] | tuple[str, ...] = (),
    generate: int = 0,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    image: Any = None,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> _lens.LensResult:
    """Logit lens over every layer and position of `prompt` (and `generate` new tokens).

    `model`: embedded name (default "smollm2-135m"; "tiny-vlm" whenever an `image` is given),
    hub id, local dir, or a loaded `LanguageModel` / `VisionLanguageModel`. `image`: a path,
    bytes or PIL image for a vision-language model; its patches enter the LM as visual tokens
    and the result is a `VLMLensResult`. `targets`: token strings to track (multi-token
    targets use their first token; a note says so). `.to_dict()` is the CLI's JSON.
    """
    settings = settings or Settings.from_env()
    params = _lens.LensParams.of(top_k, targets, generate, sample, temperature, seed)
    from explorer.api import vlm as _vlm

    if image is not None or _vlm.is_vlm(model):
        if isinstance(model, LanguageModel):
            raise InputError(f"{model.model_id!r} is a text-only language model and cannot take an image")
        return _vlm.vlm_lens(
            model,
            prompt,
            image,
            params=params,
            db=db,
            use_cache=use_cache,
            settings=settings,
            dtype=dtype,
            progress=progress,
        )
    check_prompt(prompt, settings.max_prompt_tokens)  # by characters, before the model loads
    lm = get_model(model, settings, progress, dtype)
    return run_cached(
        _lens.LensResult.kind,
        model=lm.model_id,
        weight_hash=lm.weight_hash,
        prompt=prompt,
        params=cache_params(params, max_tokens=settings.max_prompt_tokens),
        compute=lambda: _lens.logit_lens(
            lm, prompt, params, max_tokens=settings.max_prompt_tokens, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )
