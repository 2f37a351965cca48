"""The contract between analyses and the store.

Every analysis returns a dataclass that implements `StoredResult`: it can render itself as
the CLI's JSON (`to_dict`), as long-form Arrow tables plus a small JSON `meta` (for DuckDB),
and rebuild itself from exactly those (`from_store`). Reopening a run therefore never
touches a model. Result classes register their `kind` so the store can find the class.

Fields say where they are stored: `in_meta()` (the JSON meta) or `in_table()` (long-form table
columns). A result class derives from `StoredFields`: its `to_meta` is `meta_of` (every meta field
in JSON form) and its `from_store` rebuilds every meta field with `meta_kwargs` (defaults for fields
newer than the stored run, old key names via `in_meta(old=...)`, nested dataclasses via `decode`),
then asks the class's `fields_from_tables` for the table fields. The class writes only its tables:
`to_tables` and its inverse `fields_from_tables`, which also recomputes the fields marked
`derived()`. Unmarked fields (run_id, caches) are never stored.

Fields also say whether the CLI's JSON shows them (`json=`): a meta field is shown under its own
name unless marked `json=False` (or `json="key"`: under another key; `omit_empty=True`: left out
when None or empty); table and derived fields are shown only when marked `json=True` / `json="key"`.
`StoredFields.to_dict` is therefore generic: `run_id` (and `kind` where the class sets
`json_kind`), every shown field in JSON form (`json_value`), then the class's `json_views()`: only
the keys that present a field differently from its stored form (nested per-layer lists, counts,
rankings). A view never repeats a key a field already shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field, field, fields
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
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
STORE_DERIVED = "derived"  # not stored: recomputed from the stored fields when a run is reopened


JsonShown = bool | str  # a field's `json=`: shown under its name (True), not shown (False), or under a key


def in_meta(
    *,
    decode: Callable[[Any], Any] | None = None,
    old: tuple[str, ...] = (),
    json: JsonShown = True,
    omit_empty: bool = False,
    **kwargs: Any,
) -> Any:
    """A dataclass field stored in the run's JSON meta. `decode` (optional) rebuilds its value
    from the JSON form (e.g. `tuple` for a field that JSON turns into a list, or a nested
    dataclass from its dict); `old` lists the keys older versions stored it under (read when the
    field's own key is missing, so their runs still open). `json`: whether the CLI's JSON shows
    it (default: yes, under its name; a string: under that key); `omit_empty`: not when the value
    is None or empty."""
    meta = {"store": STORE_META, "decode": decode, "old": old, "json": json, "omit_empty": omit_empty}
    return field(metadata=meta, **kwargs)


def in_table(*, json: JsonShown = False, omit_empty: bool = False, **kwargs: Any) -> Any:
    """A dataclass field stored as table columns (built by the class's to_tables). The CLI's JSON
    shows it only when marked `json=True` (or `json="key"`), in `json_value` form."""
    return field(metadata={"store": STORE_COLUMN, "json": json, "omit_empty": omit_empty}, **kwargs)


def int_tuple(values: Sequence[Any]) -> tuple[int, ...]:
    """`decode` for a tuple of ints (a grid, a span) that JSON stores as a list."""
    return tuple(int(v) for v in values)


def float_values(mapping: dict[str, Any]) -> dict[str, float]:
    """`decode` for a {name: number} meta field whose numbers are floats (JSON may give ints)."""
    return {str(k): float(v) for k, v in mapping.items()}


def derived(*, json: JsonShown = False, **kwargs: Any) -> Any:
    """A dataclass field computed from the others (never stored): `fields_from_tables` computes
    it again when a run is reopened. The CLI's JSON shows it only when marked `json=`."""
    return field(metadata={"store": STORE_DERIVED, "json": json}, **kwargs)


def json_key(f: Field[Any]) -> str | None:
    """The key the CLI's JSON shows a marked field under, or None when it is not shown."""
    shown = f.metadata.get("json", False)
    if shown is False or "store" not in f.metadata:
        return None
    return f.name if shown is True else str(shown)


def json_keys(cls: type) -> dict[str, str]:
    """field name -> JSON key of every field of the dataclass `cls` that its CLI JSON shows."""
    return {f.name: key for f in fields(cls) if (key := json_key(f)) is not None}


def _is_empty(value: Any) -> bool:
    return value is None or (hasattr(value, "__len__") and len(value) == 0)


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
            key = next((k for k in (f.name, *f.metadata.get("old", ())) if k in stored), None)
            if key is not None:
                decode = f.metadata.get("decode")
                out[f.name] = stored[key] if decode is None or stored[key] is None else decode(stored[key])
            elif f.default is MISSING and f.default_factory is MISSING:
                raise KeyError(f"stored run has no {f.name!r} (needed by {cls.__name__})")
        elif f.name == "run_id" and "run_id" in stored:
            out["run_id"] = stored["run_id"]
    return out


class StoredFields:
    """The generic half of `StoredResult` for a dataclass whose fields are marked `in_meta()` /
    `in_table()`: `to_dict`, `to_meta` and `from_store` come from the markers; the class
    implements `to_tables` and its inverse `fields_from_tables`, and `json_views` for the keys of
    its CLI JSON that are not a field as it is."""

    json_kind: ClassVar[bool] = False  # whether the CLI's JSON names the result's kind ("kind")

    def to_dict(self) -> dict[str, Any]:
        """The CLI's JSON object: run_id, every field its marker shows, then `json_views()`."""
        return self.json_with(self.json_views())

    def json_views(self) -> dict[str, Any]:
        """The class's own keys of the CLI JSON: fields presented differently from their stored
        form (nested per-layer lists, rounded grids) and values computed from the fields."""
        return {}

    def json_with(self, views: dict[str, Any]) -> dict[str, Any]:
        """The CLI's JSON object with `views` as the class's own keys (see `to_dict`)."""
        from explorer.params import json_value

        out: dict[str, Any] = {"run_id": getattr(self, "run_id", None)}
        if self.json_kind:
            out["kind"] = self.kind  # type: ignore[attr-defined]
        for f in fields(self):  # type: ignore[arg-type]
            key = json_key(f)
            if key is None:
                continue
            value = getattr(self, f.name)
            if not (f.metadata.get("omit_empty") and _is_empty(value)):
                out[key] = json_value(value)
        clash = sorted(set(out) & set(views))
        if clash:
            raise ValueError(f"{type(self).__name__}.json_views repeats keys its fields show: {clash}")
        return {**out, **views}

    def to_meta(self) -> dict[str, Any]:
        return meta_of(self)

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        """The `in_table()` and `derived()` fields rebuilt from the stored tables. `meta` is the
        stored meta with every meta field decoded under its own name (so a renamed key is read
        under its new name; keys of older versions are still there for runs stored by them)."""
        return {}

    @classmethod
    def from_store(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> Any:
        kwargs = meta_kwargs(cls, meta)
        return cls(**kwargs, **cls.fields_from_tables({**meta, **kwargs}, tables))


# ---------------------------------------------------------------------------------------------
# Long-form tables of dense arrays: the common case of `to_tables` / `fields_from_tables`
# ---------------------------------------------------------------------------------------------
def long_table(axes: dict[str, Any], values: dict[str, tuple[Any, Any]]) -> pa.Table:
    """One row per cell of same-shaped arrays: the cell's index along each axis (`axes`: name ->
    integer dtype, in axis order), then each array's value (`values`: column -> (array, dtype))."""
    arrays = {name: np.asarray(array) for name, (array, _) in values.items()}
    shape = next(iter(arrays.values())).shape
    if len(shape) != len(axes):
        raise ValueError(f"arrays have {len(shape)} axes, names given for {len(axes)}: {list(axes)}")
    index = np.indices(shape).reshape(len(shape), -1)
    columns: dict[str, Any] = {name: index[i].astype(dtype) for i, (name, dtype) in enumerate(axes.items())}
    for name, (_, dtype) in values.items():
        if arrays[name].shape != shape:
            raise ValueError(f"column {name!r} has shape {arrays[name].shape}, expected {shape}")
        columns[name] = arrays[name].ravel().astype(dtype)
    return pa.table(columns)


def dense_from_table(
    table: pa.Table, axes: Sequence[str], column: str, shape: Sequence[int], dtype: Any, fill: Any = 0
) -> np.ndarray:
    """Inverse of `long_table` for one column: an array of `shape` filled with `fill`, each row's
    value at its (axes...) index. Rows may be any subset of the cells (a sparse table)."""
    out = np.full(tuple(shape), fill, dtype=dtype)
    where = tuple(table[a].to_numpy().astype(np.int64) for a in axes)
    out[where] = table[column].to_numpy()
    return out


def axis_size(table: pa.Table, column: str) -> int:
    """Number of distinct index values a full `long_table` has along `column` (max + 1; 0 if empty)."""
    return int(table[column].to_numpy().max()) + 1 if table.num_rows else 0
