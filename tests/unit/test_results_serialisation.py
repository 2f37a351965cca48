"""Generic result serialisation: fields marked `in_meta()` go to the JSON meta and come back from
it; fields marked `in_table()` live in the class's tables. A run stored before a meta field existed
still opens (the field takes its default)."""

from __future__ import annotations

import numpy as np
import pytest

from explorer.analysis.attribution.result import AttributionResult, GenerationAttributionResult
from explorer.results import meta_kwargs


def attribution() -> AttributionResult:
    return AttributionResult(
        model="tiny", method="occlusion", tokens=["a", "b"], input_ids=[1, 2], scores=np.array([0.25, -1.0]),
        target={"token": " c", "id": 3}, faithfulness={"soft_nc": 0.5, "soft_ns": None}, seconds=0.1,
        params={"seed": 0}, extras={"steps": (1, 2)}, notes=["n"], run_id="r1",
    )  # fmt: skip


def test_meta_holds_the_meta_fields_only_in_json_form() -> None:
    m = attribution().to_meta()
    assert set(m) == {"model", "method", "tokens", "input_ids", "target", "seconds", "params", "contrast",
                      "extras", "notes"}  # fmt: skip
    assert m["extras"] == {"steps": [1, 2]}  # tuples stored as JSON lists


def test_round_trip_through_meta_and_tables() -> None:
    r = attribution()
    back = AttributionResult.from_store({**r.to_meta(), "run_id": "r1"}, r.to_tables())
    assert back.to_dict() == {**r.to_dict(), "details": {"steps": [1, 2]}}
    g = GenerationAttributionResult(
        model="tiny", method="input_x_gradient", prompt_tokens=["a"], generated=["b", "c"], generated_ids=[2, 3],
        matrix=np.array([[0.5, np.nan], [0.25, 0.75]]), faithfulness={"soft_nc": [0.1, None]}, seconds=1.0,
        params={},
    )  # fmt: skip
    again = GenerationAttributionResult.from_store(g.to_meta(), g.to_tables())
    assert again.to_dict() == g.to_dict()


def test_a_run_stored_before_a_field_existed_still_opens() -> None:
    old = attribution().to_meta()
    for newer in ("contrast", "extras", "notes"):
        del old[newer]
    kwargs = meta_kwargs(AttributionResult, old)
    assert "extras" not in kwargs and kwargs["model"] == "tiny"
    del old["model"]
    with pytest.raises(KeyError, match="model"):
        meta_kwargs(AttributionResult, old)
