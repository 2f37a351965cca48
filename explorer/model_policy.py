"""What a host lets load, under which name, and how much of it stays in memory.

- `EXPLORER_ALLOWED_MODELS`: names, hub ids or globs (comma- or newline-separated) for every
  model field alike (language, vision and masked-LM models). When it is set nothing else loads,
  and the server is in *hosted mode*.
- Local paths are canonicalised (`dir`, `dir/`, `dir/.`, `a/./dir` are one model, cached once)
  before the allow-list is checked, so `..` cannot walk out of an allowed folder.
- Hosted mode (an allow-list, or a non-loopback host): a model that cannot load is "not an
  available model" and nothing more; whether a path exists, and why a load failed, stay in the
  server log.
- `ModelLRU`: the process's model cache, bounded by `EXPLORER_MODEL_MEMORY_GB` (default 6).
  Evicting drops only the cache's reference: a request that holds the model finishes normally,
  and the memory is freed when the last holder lets go.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from explorer.errors import ModelNotAvailableError

if TYPE_CHECKING:
    from explorer.config import Settings

log = logging.getLogger(__name__)
ENV_ALLOWED = "EXPLORER_ALLOWED_MODELS"
ENV_MEMORY = "EXPLORER_MODEL_MEMORY_GB"
DEFAULT_MEMORY_GB = 6.0
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def allowed_patterns() -> tuple[str, ...] | None:
    """The host's allow-list, or None when every model may load (local use)."""
    raw = os.environ.get(ENV_ALLOWED, "")
    patterns = tuple(p.strip() for p in re.split(r"[,\n]", raw) if p.strip())
    return patterns or None


def hosted_mode(settings: Settings | None = None) -> bool:
    """Serving others: an allow-list is set, or the app listens beyond this machine."""
    if allowed_patterns() is not None:
        return True
    return settings is not None and settings.host not in LOOPBACK


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or name.rstrip("/").count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def canonical_model_name(name: str, embedded: Collection[str] = ()) -> str:
    """One spelling per model: embedded names and hub ids as given (no trailing slash), local
    directories as their resolved absolute path."""
    name = name.strip()
    if name in embedded:
        return name
    path = Path(name).expanduser()
    if _looks_like_path(name) or path.exists():
        return str(path.resolve())
    return name.rstrip("/")


def _matches(candidate: str, pattern: str, embedded: Collection[str]) -> bool:
    """Does the canonical `candidate` match one allow-list entry (a name, hub id, path or glob)?"""
    if any(c in pattern for c in "*?["):
        if _looks_like_path(pattern):
            pattern = os.path.abspath(os.path.expanduser(pattern))
        return fnmatch.fnmatchcase(candidate, pattern)
    return candidate == canonical_model_name(pattern, embedded)


class NotAnAvailableModel(ModelNotAvailableError):
    """The hosted answer: says which models are available, nothing about why or where."""


def not_available(name: str) -> NotAnAvailableModel:
    """The hosted answer for any model that cannot be used: no reason, no path."""
    patterns = allowed_patterns() or ()
    listed = [p for p in patterns if not _looks_like_path(p) and not any(c in p for c in "*?[")]
    hint = f" (available: {', '.join(listed)})" if listed else ""
    shown = name if not _looks_like_path(name) else Path(name).name
    return NotAnAvailableModel(f"{shown!r} is not an available model{hint}")


def admit_model(name: str, embedded: Collection[str] = (), *, check_allowed: bool = True) -> str:
    """The canonical name of `name` if the host allows it; otherwise ModelNotAvailableError.

    `check_allowed=False` only canonicalises: for a part of a model the host already admitted
    (the demo VLM's text model and vision encoder), never for a name a user typed."""
    canonical = canonical_model_name(name, embedded)
    patterns = allowed_patterns()
    if patterns is None or not check_allowed:
        return canonical
    if any(_matches(canonical, p, embedded) for p in patterns):
        return canonical
    log.info("refused model %r (canonical %r): not in %s", name, canonical, ENV_ALLOWED)
    raise not_available(name)


@contextmanager
def load_errors_hidden(name: str, settings: Settings | None) -> Iterator[None]:
    """In hosted mode, turn a failed load into "not an available model" (details to the log)."""
    try:
        yield
    except ModelNotAvailableError as exc:
        if isinstance(exc, NotAnAvailableModel) or not hosted_mode(settings):
            raise
        log.warning("model %r failed to load: %s", name, exc)
        raise not_available(name) from None


def memory_budget_bytes() -> int:
    """EXPLORER_MODEL_MEMORY_GB as bytes (bad values fall back to the default, with a warning)."""
    raw = os.environ.get(ENV_MEMORY)
    try:
        gb = float(raw) if raw else DEFAULT_MEMORY_GB
    except ValueError:
        log.warning("%s=%r is not a number; using %s GB", ENV_MEMORY, raw, DEFAULT_MEMORY_GB)
        gb = DEFAULT_MEMORY_GB
    return int(gb * 1024**3)


def model_bytes(value: Any) -> int:
    """Bytes of parameters and buffers of a cached model: a module, or a backend holding modules
    (`hf_model`, `model`, `backbone`, `decoder`, or a backend in `lm`, as a VLM holds its text
    model); tied and shared weights count once."""
    import torch

    modules: list[torch.nn.Module] = []
    pending, seen = [value], set()
    while pending:
        item = pending.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.nn.Module):
            modules.append(item)
            continue
        pending.extend(
            getattr(item, attr, None) for attr in ("hf_model", "model", "backbone", "decoder", "lm")
        )
    tensors = {id(t): t for m in modules for t in [*m.parameters(), *m.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class ModelLRU:
    """key -> loaded model, each loaded once even under concurrency; least recently used models
    are dropped while the total exceeds the memory budget or the cache holds more than
    `max_entries` (tokenizers weigh almost nothing, yet each spelling must not stay forever);
    the newest always stays."""

    def __init__(self, budget: Callable[[], int] = memory_budget_bytes, max_entries: int = 32) -> None:
        self._budget = budget
        self._max_entries = max_entries
        self._models: OrderedDict[tuple[str, ...], tuple[Any, int]] = OrderedDict()
        self._locks: dict[tuple[str, ...], threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, key: tuple[str, ...], factory: Callable[[], Any]) -> Any:
        with self._guard:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key][0]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            with self._guard:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key][0]
            value = factory()
            size = model_bytes(value)
            with self._guard:
                self._models[key] = (value, size)
                self._evict(keep=key)
            return value

    def _evict(self, keep: tuple[str, ...]) -> None:
        budget = self._budget()
        total = sum(size for _, size in self._models.values())
        for key in list(self._models):
            if total <= budget and len(self._models) <= self._max_entries:
                break
            if key == keep:
                continue
            _, size = self._models.pop(key)
            total -= size
            log.info(
                "model cache: evicted %s (%.0f MB) to stay under %.1f GB",
                key[0],
                size / 1e6,
                budget / 1024**3,
            )

    def keys(self) -> list[tuple[str, ...]]:
        with self._guard:
            return list(self._models)

    def memory_bytes(self) -> int:
        with self._guard:
            return sum(size for _, size in self._models.values())

    def clear(self) -> None:
        with self._guard:
            self._models.clear()
