"""The parameter half of the analysis contract.

Every analysis takes a `Params` dataclass: everything besides the model and the input that
determines its result. `validate()` checks it, in one place, with messages that name the parameter
(never a CLI flag or a UI control: the front ends translate); `to_json()` is its part of the cache
key. `params_json` is the one generic `to_json`: every field, in JSON form, except those a field's
metadata leaves out:

    field(metadata={"key": False})       never part of the key (e.g. a batch size that changes no number)
    field(metadata={"key_if": "flow"})   part of the key only when `self.flow` is truthy (a field
                                         that only matters when another is on, so turning the other
                                         off gives the same key whatever this one says)

A nested Params dataclass contributes its own fields (flattened). The runner
(`explorer.api.runner.cache_params`) adds the run's context (prompt-length limit, image digest).
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Params(Protocol):
    """What an analysis' parameters offer: one validation and one cache-key form."""

    def validate(self) -> None:
        """Raise `InputError` naming the offending parameter; return None when valid."""
        ...

    def to_json(self) -> dict[str, Any]:
        """The parameters' part of the cache key (JSON-serialisable)."""
        ...


def json_value(value: Any) -> Any:
    """A field value in JSON form: tuples become lists, dataclasses dicts, numpy scalars Python
    numbers and numpy arrays (nested) lists of them, nested containers recursively."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_value(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | list):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return value


def params_json(params: Any) -> dict[str, Any]:
    """The generic `to_json` of a Params dataclass (see the module docstring for the metadata)."""
    if not is_dataclass(params) or isinstance(params, type):
        raise TypeError(f"params_json needs a dataclass instance, got {type(params).__name__}")
    out: dict[str, Any] = {}
    for f in fields(params):
        if f.metadata.get("key") is False:
            continue
        condition = f.metadata.get("key_if")
        if condition is not None and not getattr(params, condition):
            continue
        value = getattr(params, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            out.update(value.to_json() if hasattr(value, "to_json") else params_json(value))
        else:
            out[f.name] = json_value(value)
    return out
