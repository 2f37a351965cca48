"""The runner behind every API entry point: the store, the model, the cache.

Each entry point (one module per analysis in `explorer.api`) loads (or accepts) a model, looks the request up in the run store, computes
only on a miss, stores the result in one transaction and returns the result object, whose
`.to_dict()` is exactly the CLI's JSON.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from explorer.backends.language import LanguageModel, load_model
from explorer.config import Settings
from explorer.params import Params
from explorer.progress import ProgressFn
from explorer.results import StoredResult
from explorer.store import PendingRun, QueryLimits, RunInfo, Store, cache_key
from explorer.text_input import check_text

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
    return Store.open(path, lock_timeout_s=settings.store_lock_timeout_s)


def query_limits(settings: Settings | None = None, max_rows: int = 1000) -> QueryLimits:
    """The SQL console's bounds from settings (EXPLORER_SQL_* variables)."""
    settings = settings or Settings.from_env()
    return QueryLimits(
        timeout_s=settings.sql_timeout_s,
        max_rows=max_rows,
        max_cell_chars=settings.sql_max_cell_chars,
        max_response_bytes=settings.sql_max_response_bytes,
    )


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


def cache_params(params: Params, **context: Any) -> dict[str, Any]:
    """The parameter part of a run's cache key, computed one way for every analysis: `params`
    validated (its `validate()` names the parameter at fault) and in its key form (`to_json()`),
    plus the run's context that changes the result (e.g. `max_tokens`, an `image` digest)."""
    params.validate()
    return {**params.to_json(), **context}


@dataclass(frozen=True)
class CachedRequest(Generic[R]):
    """One analysis request: what identifies it in the store, and how to compute it on a miss."""

    kind: str
    model: str  # the model's id (stored in the runs table's model_id column)
    weight_hash: str
    prompt: str
    params: dict[str, Any]
    compute: Callable[[], R]


class _InFlight:
    """Identical requests in flight share one computation: one lock per cache key, so the
    second request waits for the first and then finds its run in the store."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextmanager
    def hold(self, keys: list[str]) -> Iterator[None]:
        keys = sorted(set(keys))  # one global order: no deadlock between overlapping batches
        with self._guard:
            for key in keys:
                lock, users = self._locks.get(key, (threading.Lock(), 0))
                self._locks[key] = (lock, users + 1)
            locks = [self._locks[k][0] for k in keys]
        with ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            try:
                yield
            finally:
                with self._guard:
                    for key in keys:
                        lock, users = self._locks[key]
                        if users <= 1:
                            del self._locks[key]
                        else:
                            self._locks[key] = (lock, users - 1)


_IN_FLIGHT = _InFlight()


def run_cached_many(
    requests: Sequence[CachedRequest[R]], store: Store | None, use_cache: bool = True
) -> list[R]:
    """Serve each request from the store or compute it; store every new result in ONE transaction.

    Every `compute` runs before anything is written, so a failure (bad input, out of memory,
    a kill) leaves the store untouched: all of the batch is stored or none of it."""
    for req in requests:
        check_text(req.prompt, "the prompt")
        check_text(json.dumps(req.params, ensure_ascii=False, default=str), "a parameter")
    keys = [cache_key(r.kind, r.model, r.weight_hash, r.prompt, r.params) for r in requests]
    with _IN_FLIGHT.hold(keys if store is not None and use_cache else []):
        results: list[R | None] = [None] * len(requests)
        if store is not None and use_cache:
            for i, req in enumerate(requests):
                run_id = store.find(req.kind, req.model, req.weight_hash, req.prompt, req.params)
                if run_id is not None:
                    results[i] = store.load(run_id)  # type: ignore[assignment]
        pending: list[tuple[int, PendingRun]] = []
        for i, req in enumerate(requests):
            if results[i] is not None:
                continue
            t0 = time.perf_counter()
            result = req.compute()
            duration = time.perf_counter() - t0
            results[i] = result
            pending.append(
                (i, PendingRun(result, req.model, req.weight_hash, req.prompt, req.params, duration))
            )
        if store is not None and pending:
            run_ids = store.save_many([p for _, p in pending])
            for (i, _), run_id in zip(pending, run_ids, strict=True):
                results[i].run_id = run_id  # type: ignore[union-attr]
    return [r for r in results if r is not None]


def run_cached(
    kind: str,
    *,
    model: str,
    weight_hash: str,
    prompt: str,
    params: dict[str, Any],
    compute: Callable[[], R],
    store: Store | None,
    use_cache: bool = True,
) -> R:
    """Serve (kind, model, weights, prompt, params) from the store, or compute and store it.

    `compute` runs before anything is written, so a failure (bad input, out of memory)
    leaves the store untouched. Identical requests in flight share one computation.
    """
    request = CachedRequest(kind, model, weight_hash, prompt, params, compute)
    return run_cached_many([request], store, use_cache)[0]


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
