"""Public API for attribution: `attribute` (one method or all) and `attribute_generation`.

Each single-method result is a run in the store (kind "attribution"), cached by (model,
weights, prompt, target, contrast, method, its parameters, seed); `method="all"` runs every
registered method (each served from the store when already computed) and returns an
`AttributionComparison` whose `.to_dict()` is the CLI's JSON list. Bad input raises
`InputError` before anything is written.
"""

from __future__ import annotations

import functools
from typing import Any

from explorer.analysis.attribution import (
    ATTRIBUTION_METHODS,
    AttributionComparison,
    AttributionResult,
    GenerationAttributionResult,
    build_task,
    get_method,
    run_attribution,
    run_generation,
    split_params,
)
from explorer.analysis.vlm_attribution import VLMAttributionParams, VLMAttributionResult
from explorer.api.runner import (
    CachedRequest,
    DbArg,
    cache_params,
    get_model,
    open_store,
    run_cached,
    run_cached_many,
)
from explorer.config import Settings
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.text_input import check_prompt

DEFAULT_GENERATION_METHOD = "input_x_gradient"


def _scaled(progress: ProgressFn | None, start: float, stop: float) -> ProgressFn | None:
    if progress is None:
        return None

    def report(fraction: float, message: str) -> None:
        progress(start + (stop - start) * fraction, message)

    return report


def attribute_image(
    model: Any,
    prompt: str,
    image: Any,
    target: str | None = None,
    method: str | None = "occlusion",
    seed: int = 0,
    db: DbArg = None,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
    contrast: str | None = None,
    generate: int = 0,
    **params: Any,
) -> VLMAttributionResult:
    """Attribute a VLM's answer to the image patches (see `attribute`, with `image`)."""
    import dataclasses

    from explorer.api import vlm as vlm_api
    from explorer.backends.language import LanguageModel

    settings = settings or Settings.from_env()
    if isinstance(model, LanguageModel):  # names of text-only models are refused by resolve_vlm
        raise InputError(f"{model.model_id!r} is a text-only language model and cannot take an image")
    if contrast:
        raise InputError("contrast: contrastive attribution is not supported with an image")
    if generate:
        raise InputError("generate: with an image, set the answer length with answer_tokens, not generate")
    known = {f.name for f in dataclasses.fields(VLMAttributionParams)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(f"unknown parameter(s) for image attribution: {unknown}; known: {sorted(known)}")
    vparams = VLMAttributionParams(
        **{
            **params,
            "method": method or "occlusion",
            "target": target or None,
            "seed": int(seed),
        }
    )
    return vlm_api.vlm_attribute(
        model,
        prompt,
        image,
        params=vparams,
        db=db,
        use_cache=use_cache,
        settings=settings,
        dtype=dtype,
        progress=progress,
    )


def attribute(
    model: Any,
    prompt: str,
    target: str | None = None,
    method: str | None = None,
    contrast: str | None = None,
    generate: int = 0,
    seed: int = 0,
    db: DbArg = None,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
    image: Any = None,
    **method_params: Any,
) -> AttributionResult | AttributionComparison | GenerationAttributionResult | VLMAttributionResult:
    """Attribute `target` (the text the model should produce after `prompt`) to the prompt tokens.

    model: embedded name ("smollm2-135m"), hub id, local dir, or a loaded `LanguageModel`.
    method: a name from `ATTRIBUTION_METHODS` (default "reagent"), or "all" (every method; with
    `contrast`, every method that supports it). contrast: a foil; the objective becomes log p(target) - log p(foil).
    generate: > 0 generates that many tokens greedily and attributes each to all preceding
    tokens (returns a `GenerationAttributionResult`; `target` is not used).
    method_params: parameters of the method(s), e.g. ReAGent's `num_probes`, `max_steps`,
    `replacement` ('auto' | 'causal' | 'mlm' | 'uniform'), `mlm_model`; IG's `n_steps`;
    faithfulness: `soft_samples`, `hard_fraction`.

    image: a path, bytes or PIL image for a vision-language model (default model "tiny-vlm"):
    the answer (`target`, or the greedy answer of `answer_tokens` tokens) is attributed to the
    image patches; method "occlusion" (default with an image) or "reagent", `baseline` "mean" or
    "blur"; returns a `VLMAttributionResult` (kind "vlm_attribution", see
    explorer.analysis.vlm_attribution for every parameter).
    """
    settings = settings or Settings.from_env()
    if image is not None:
        return attribute_image(
            model,
            prompt,
            image,
            target=target,
            method=method,
            seed=seed,
            db=db,
            settings=settings,
            dtype=dtype,
            progress=progress,
            use_cache=use_cache,
            contrast=contrast,
            generate=generate,
            **method_params,
        )
    method = method or "reagent"
    if generate:
        return attribute_generation(
            model,
            prompt,
            generate=generate,
            method=DEFAULT_GENERATION_METHOD if method in ("all", None) else method,
            seed=seed,
            db=db,
            settings=settings,
            progress=progress,
            use_cache=use_cache,
            **method_params,
        )
    if target is None or target == "":
        raise InputError("give a target: the text the model should produce after the prompt, e.g. ' Paris'")
    if method == "all":
        methods = list(ATTRIBUTION_METHODS.values())
    else:
        methods = [get_method(method)]
    notes: list[str] = []
    if contrast:
        skipped = [m.name for m in methods if not m.contrastive]
        if method != "all" and skipped:
            raise InputError(
                f"contrast: {method} does not support contrastive attribution; give no contrast or use one of "
                f"{[m.name for m in ATTRIBUTION_METHODS.values() if m.contrastive]}"
            )
        methods = [m for m in methods if m.contrastive]
        if skipped:
            notes.append(f"skipped (no contrastive attribution): {', '.join(skipped)}")
    per_method, faith = split_params(methods, method_params)
    check_prompt(prompt, settings.max_prompt_tokens)  # by characters, before the model loads
    lm = get_model(model, settings, _scaled(progress, 0.0, 0.05), dtype)
    # validate prompt/target/contrast once, before any method runs or anything is stored
    build_task(lm, prompt, target, contrast, settings.max_prompt_tokens)
    store = open_store(db, settings)
    requests: list[CachedRequest[AttributionResult]] = []
    for i, m in enumerate(methods):
        params = per_method[m.name]
        key = cache_params(
            faith,
            method=m.name,
            target=target,
            contrast=contrast or None,
            seed=int(seed),
            **params.to_json(),
            max_tokens=settings.max_prompt_tokens,
        )
        prog = _scaled(progress, 0.05 + 0.95 * i / len(methods), 0.05 + 0.95 * (i + 1) / len(methods))
        requests.append(
            CachedRequest(
                AttributionResult.kind,
                model=lm.model_id,
                weight_hash=lm.weight_hash,
                prompt=prompt,
                params=key,
                compute=functools.partial(
                    run_attribution,
                    lm,
                    prompt,
                    target,
                    method=m.name,
                    contrast=contrast or None,
                    seed=int(seed),
                    params=params,
                    faith=faith,
                    max_tokens=settings.max_prompt_tokens,
                    progress=prog,
                ),
            )
        )
    # every method of "all" is stored in one transaction: a kill leaves all of them or none
    results = run_cached_many(requests, store, use_cache)
    if method == "all":
        return AttributionComparison(results=results, notes=notes)
    return results[0]


def attribute_generation(
    model: Any,
    prompt: str,
    *,
    generate: int,
    method: str = DEFAULT_GENERATION_METHOD,
    seed: int = 0,
    db: DbArg = None,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
    use_cache: bool = True,
    **method_params: Any,
) -> GenerationAttributionResult:
    """Greedy-generate `generate` tokens after `prompt`; attribute each generated token to
    every token before it with `method`. Returns the steps x sources matrix."""
    settings = settings or Settings.from_env()
    m = get_method(method)
    per_method, faith = split_params([m], method_params)
    check_prompt(prompt, settings.max_prompt_tokens)  # by characters, before the model loads
    lm = get_model(model, settings, _scaled(progress, 0.0, 0.05), dtype)
    key = cache_params(
        faith,
        method=m.name,
        generate=int(generate),
        seed=int(seed),
        **per_method[m.name].to_json(),
        max_tokens=settings.max_prompt_tokens,
    )
    return run_cached(
        GenerationAttributionResult.kind,
        model=lm.model_id,
        weight_hash=lm.weight_hash,
        prompt=prompt,
        params=key,
        compute=lambda: run_generation(
            lm,
            prompt,
            generate=int(generate),
            method=m.name,
            seed=int(seed),
            params=per_method[m.name],
            faith=faith,
            max_tokens=settings.max_prompt_tokens,
            progress=_scaled(progress, 0.05, 1.0),
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def compare_attribution_runs(
    run_ids: list[str], db: DbArg = None, settings: Settings | None = None
) -> AttributionComparison:
    """Reopen stored attribution runs (no model needed) as a comparison."""
    store = open_store(db, settings)
    if store is None:
        raise InputError("comparing attribution runs needs a store")
    results = []
    for run_id in run_ids:
        result = store.load(run_id)
        if not isinstance(result, AttributionResult):
            raise InputError(f"run {run_id} is a {result.kind!r} run, not an attribution")
        results.append(result)
    return AttributionComparison(results=results)


__all__ = ["ATTRIBUTION_METHODS", "attribute", "attribute_generation", "compare_attribution_runs"]
