"""The public Python API: the same functions serve the notebook, the CLI and the UI.

Each entry point loads (or accepts) a model, looks the request up in the run store, computes
only on a miss, stores the result in one transaction and returns the result object, whose
`.to_dict()` is exactly the CLI's JSON.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from explorer.analysis import logit_lens as _lens
from explorer.backends.language import LanguageModel, load_model
from explorer.config import Settings
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import StoredResult
from explorer.store import RunInfo, Store

DbArg = str | Path | Store | bool | None
R = TypeVar("R", bound=StoredResult)


def open_store(db: DbArg = None, settings: Settings | None = None) -> Store | None:
    """`db`: None -> the default store from settings; False -> no store; a path or a Store."""
    if db is False:
        return None
    if isinstance(db, Store):
        return db
    settings = settings or Settings.from_env()
    path = settings.database if db is None or db is True else Path(db)
    return Store.open(path)


def get_model(
    model: str | LanguageModel | None,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    dtype: str | None = None,
) -> LanguageModel:
    """A loaded LanguageModel as given, or load one by name in `dtype` (default: settings.dtype)."""
    if isinstance(model, LanguageModel):
        return model
    return load_model(model, settings=settings, progress=progress, dtype=dtype)


def run_cached(
    kind: str,
    *,
    model_id: str,
    weight_hash: str,
    prompt: str,
    params: dict[str, Any],
    compute: Callable[[], R],
    store: Store | None,
    use_cache: bool = True,
) -> R:
    """Serve (kind, model, weights, prompt, params) from the store, or compute and store it.

    `compute` runs before anything is written, so a failure (bad input, out of memory)
    leaves the store untouched.
    """
    if store is not None and use_cache:
        run_id = store.find(kind, model_id, weight_hash, prompt, params)
        if run_id is not None:
            return store.load(run_id)  # type: ignore[return-value]
    t0 = time.perf_counter()
    result = compute()
    duration = time.perf_counter() - t0
    if store is not None:
        run_id = store.save(
            result,
            model_id=model_id,
            weight_hash=weight_hash,
            prompt=prompt,
            params=params,
            duration_s=duration,
        )
        result.run_id = run_id  # type: ignore[attr-defined]
    return result


def logit_lens(
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
    params = _lens.LensParams(
        top_k=int(top_k),
        targets=tuple(targets),
        generate=int(generate),
        sample=bool(sample),
        temperature=float(temperature),
        seed=int(seed),
    )
    params.validate()
    from explorer import vlm_api

    if image is not None or vlm_api.is_vlm(model):
        if isinstance(model, LanguageModel):
            raise InputError(f"{model.model_id!r} is a text-only language model and cannot take an image")
        return vlm_api.vlm_lens(
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
    lm = get_model(model, settings, progress, dtype)
    return run_cached(
        _lens.LensResult.kind,
        model_id=lm.model_id,
        weight_hash=lm.weight_hash,
        prompt=prompt,
        params={**params.to_json(), "max_tokens": settings.max_prompt_tokens},
        compute=lambda: _lens.logit_lens(
            lm,
            prompt,
            top_k=params.top_k,
            targets=params.targets,
            generate=params.generate,
            sample=params.sample,
            temperature=params.temperature,
            seed=params.seed,
            max_tokens=settings.max_prompt_tokens,
            progress=progress,
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def list_runs(
    db: DbArg = None, limit: int = 100, kind: str | None = None, settings: Settings | None = None
) -> list[RunInfo]:
    """Stored runs, newest first."""
    store = open_store(db, settings)
    return [] if store is None else store.list_runs(limit=limit, kind=kind)


def load_run(run_id: str, db: DbArg = None, settings: Settings | None = None) -> StoredResult:
    """Reopen a stored run from the database alone."""
    store = open_store(db, settings)
    if store is None:
        raise ValueError("load_run needs a store")
    return store.load(run_id)
