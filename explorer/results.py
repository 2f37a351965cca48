"""The contract between analyses and the store.

Every analysis returns a dataclass that implements `StoredResult`: it can render itself as
the CLI's JSON (`to_dict`), as long-form Arrow tables plus a small JSON `meta` (for DuckDB),
and rebuild itself from exactly those (`from_store`). Reopening a run therefore never
touches a model. Result classes register their `kind` so the store can find the class.

Fields say where they are stored: `in_meta()` (the JSON meta) or `in_table()` (long-form table
columns). `meta_of` is then the class's whole `to_meta`, and `meta_kwargs` gives `from_store` every
meta field back (defaults for fields newer than the stored run); the class writes only its tables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, field, fields
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import pyarrow as pa


@runtime_checkable
class StoredResult(Protocol):
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON object (run_id included when known)."""
        ...

    def to_meta(self) -> dict[str, Any]:
        """Small JSON-serialisable state (tokens, summaries, parameters)."""
        ...

    def to_tables(self) -> dict[str, pa.Table]:
        """Long-form tables, one per name; stored as `<kind>_<name>`."""
        ...

    @classmethod
    def from_store(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> StoredResult:
        """Inverse of (to_meta, to_tables)."""
        ...


_R = TypeVar("_R")


class _KindRegistry:
    """Name -> result class. Filled by `register_result` when analysis modules import."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}

    def register(self, cls: type[_R]) -> type[_R]:
        kind = cls.kind  # type: ignore[attr-defined]
        if kind in self._classes and self._classes[kind] is not cls:
            raise ValueError(f"result kind {kind!r} registered twice")
        self._classes[kind] = cls
        return cls

    def get(self, kind: str) -> type:
        if kind not in self._classes:
            _import_result_modules()
        if kind not in self._classes:
            raise KeyError(f"no result class registered for kind {kind!r}; known: {sorted(self._classes)}")
        return self._classes[kind]

    def kinds(self) -> list[str]:
        """Kinds registered so far (by the modules imported until now)."""
        return sorted(self._classes)

    def all_kinds(self) -> list[str]:
        """Every kind an analysis of this install can store (imports `RESULT_MODULES` first)."""
        _import_result_modules()
        return self.kinds()


# Modules that define result classes; imported on a registry miss so that reopening a run
# works in a fresh process whatever was imported before.
RESULT_MODULES = (
    "explorer.analysis.logit_lens",
    "explorer.analysis.attention",
    "explorer.analysis.vision_attention_result",
    "explorer.analysis.attribution",
    "explorer.analysis.pruning",
    "explorer.analysis.pruning.text",
    "explorer.vlm.lens",
    "explorer.analysis.vlm_attribution",
    "explorer.analysis.atlas.token_map",
    "explorer.analysis.atlas.vocab",
    "explorer.analysis.atlas.microscope",
    "explorer.analysis.atlas.tokenizers",
    "explorer.vlm.tokens",
    "explorer.vlm.vlm_eval",
    "explorer.vlm.prune_eval",
    "explorer.vlm.attention",
    "explorer.vlm.latent",
    "explorer.vlm.vista_patterns",
    "explorer.sweeps.result",
)


def _import_result_modules() -> None:
    import importlib

    for name in RESULT_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


RESULT_KINDS = _KindRegistry()
register_result: Callable[[type[_R]], type[_R]] = RESULT_KINDS.register


# ---------------------------------------------------------------------------------------------
# Generic serialisation: each field of a result dataclass says where it is stored
# ---------------------------------------------------------------------------------------------
STORE_META = "meta"  # in the run's small JSON `meta` (tokens, summaries, parameters)
STORE_COLUMN = "column"  # in the long-form tables (the class's to_tables / from_store build those)


def in_meta(**kwargs: Any) -> Any:
    """A dataclass field stored in the run's JSON meta; `decode` (optional) rebuilds its value
    from the JSON form (e.g. `tuple` for a field that JSON turns into a list)."""
    decode = kwargs.pop("decode", None)
    return field(metadata={"store": STORE_META, "decode": decode}, **kwargs)


def in_table(**kwargs: Any) -> Any:
    """A dataclass field stored as table columns (built by the class's to_tables)."""
    return field(metadata={"store": STORE_COLUMN}, **kwargs)


def meta_of(result: Any) -> dict[str, Any]:
    """The generic `to_meta`: every field marked `in_meta()`, in JSON form."""
    from explorer.params import json_value

    return {
        f.name: json_value(getattr(result, f.name))
        for f in fields(result)
        if f.metadata.get("store") == STORE_META
    }


def meta_kwargs(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments of `cls` held in `stored` meta: every `in_meta()` field (a field
    missing from a run stored by an older version takes its default), plus `run_id` when known.
    KeyError when a field without default is missing."""
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("store") == STORE_META:
            if f.name in stored:
                decode = f.metadata.get("decode")
                out[f.name] = (
                    stored[f.name] if decode is None or stored[f.name] is None else decode(stored[f.name])
                )
            elif f.default is MISSING and f.default_factory is MISSING:
                raise KeyError(f"stored run has no {f.name!r} (needed by {cls.__name__})")
        elif f.name == "run_id" and "run_id" in stored:
            out["run_id"] = stored["run_id"]
    return out
