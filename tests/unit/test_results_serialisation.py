"""Generic result serialisation: fields marked `in_meta()` go to the JSON meta and come back from
it; fields marked `in_table()` live in the class's tables. A run stored before a meta field existed
still opens (the field takes its default). The CLI's JSON (`to_dict`) comes from the same markers."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pytest

from explorer.analysis.attribution.result import AttributionResult, GenerationAttributionResult
from explorer.results import (
    RESULT_KINDS,
    StoredFields,
    axis_size,
    dense_from_table,
    in_meta,
    in_table,
    int_tuple,
    json_key,
    json_keys,
    long_table,
    meta_kwargs,
)


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


def test_every_result_kind_serialises_the_generic_way() -> None:
    """Every registered result class takes to_meta / from_store from `StoredFields`, and each of
    its fields says where it is stored (or is one of the few never stored)."""
    never_stored = {"run_id", "vectors"}  # the store's id; TextBank's vectors live in a cache file
    for kind in RESULT_KINDS.all_kinds():
        cls = RESULT_KINDS.get(kind)
        if kind == "widen":  # test_store's throwaway class
            continue
        assert issubclass(cls, StoredFields), kind
        assert cls.to_meta is StoredFields.to_meta, f"{kind} writes its own to_meta"
        assert cls.from_store.__func__ is StoredFields.from_store.__func__, (
            f"{kind} writes its own from_store"
        )
        unmarked = {f.name for f in fields(cls) if "store" not in f.metadata} - never_stored
        assert not unmarked, f"{kind}: fields {unmarked} are not marked in_meta / in_table / derived"


def test_every_result_kind_takes_to_dict_from_the_field_markers() -> None:
    """No registered result class hand-writes its CLI JSON: `to_dict` is `StoredFields.to_dict`,
    and the class's own keys come from `json_views`."""
    for kind in RESULT_KINDS.all_kinds():
        if kind == "widen":  # test_store's throwaway class
            continue
        cls = RESULT_KINDS.get(kind)
        assert cls.to_dict is StoredFields.to_dict, f"{kind} writes its own to_dict"
        assert cls.json_with is StoredFields.json_with, f"{kind} writes its own json_with"


def test_every_meta_field_is_in_the_json_or_marked_out() -> None:
    """Nothing disappears from the CLI's JSON silently: every meta field of every kind is shown
    (under its own key or a declared one) unless marked `json=False`, and no two fields (nor
    run_id / kind) share a key, so none overwrites another."""
    for kind in RESULT_KINDS.all_kinds():
        if kind == "widen":
            continue
        cls = RESULT_KINDS.get(kind)
        shown = json_keys(cls)
        for f in fields(cls):
            if f.metadata.get("store") == "meta":
                assert "json" in f.metadata, f"{kind}.{f.name} was not marked with in_meta()"
                assert f.metadata["json"] is False or f.name in shown, f"{kind}.{f.name}"
        keys = list(shown.values())
        assert len(keys) == len(set(keys)), f"{kind}: two fields share a JSON key: {shown}"
        assert not {"run_id", "kind"} & set(keys), kind
    r = attribution()
    out = r.to_dict()
    assert {json_key(f) for f in fields(r) if f.metadata.get("store") == "meta"} - {None} <= set(out) | {
        "contrast"
    }
    assert "input_ids" not in out and out["details"] == {"steps": [1, 2]}  # json=False; json="details"
    assert out["scores"] == [0.25, -1.0] and out["faithfulness"] == {"soft_nc": 0.5, "soft_ns": None}
    assert "contrast" not in out  # omit_empty: None is left out


def test_to_dict_is_fields_then_views_and_a_view_cannot_hide_a_field() -> None:
    @dataclass
    class Shown(StoredFields):
        kind: ClassVar[str] = "shown_test"
        json_kind: ClassVar[bool] = True
        model: str = in_meta()
        secret: str = in_meta(json=False)
        grid: tuple[int, ...] = in_meta(json="shape")
        values: np.ndarray = in_table(json=True)
        cells: np.ndarray = in_table()
        notes: list[str] = in_meta(default_factory=list, omit_empty=True)
        run_id: str | None = None

        def json_views(self) -> dict[str, object]:
            return {"n_cells": int(self.cells.size)}

    r = Shown(
        model="m", secret="s", grid=(2, 3), values=np.array([0.5, 1.0]), cells=np.zeros((2, 3)), run_id="r"
    )
    assert r.to_dict() == {"run_id": "r", "kind": "shown_test", "model": "m", "shape": [2, 3],
                           "values": [0.5, 1.0], "n_cells": 6}  # fmt: skip
    assert Shown(**{**r.__dict__, "notes": ["n"]}).to_dict()["notes"] == ["n"]
    with pytest.raises(ValueError, match="model"):
        r.json_with({"model": "other"})


def test_an_old_meta_key_still_opens() -> None:
    @dataclass
    class Renamed(StoredFields):
        kind: ClassVar[str] = "renamed_test"
        model: str = in_meta(old=("model_id",))
        grid: tuple[int, ...] = in_meta(decode=int_tuple)
        run_id: str | None = None

    r = Renamed.from_store({"model_id": "tiny", "grid": [2, 3], "run_id": "r"}, {})
    assert (r.model, r.grid, r.run_id) == ("tiny", (2, 3), "r")
    assert r.to_meta() == {"model": "tiny", "grid": [2, 3]}  # written under the new name


def test_long_tables_round_trip_dense_arrays() -> None:
    rng = np.random.default_rng(0)
    keys, weights = rng.integers(0, 9, (2, 3, 4)), rng.random((2, 3, 4)).astype(np.float32)
    t = long_table({"layer": np.int16, "query": np.int32, "rank": np.int16},
                   {"key": (keys, np.int32), "weight": (weights, np.float32)})  # fmt: skip
    assert t.num_rows == 24 and t.column_names == ["layer", "query", "rank", "key", "weight"]
    shape = (axis_size(t, "layer"), axis_size(t, "query"), axis_size(t, "rank"))
    assert shape == (2, 3, 4)
    np.testing.assert_array_equal(
        dense_from_table(t, ("layer", "query", "rank"), "key", shape, np.int32), keys
    )
    np.testing.assert_array_equal(
        dense_from_table(t, ("layer", "query", "rank"), "weight", shape, np.float32), weights
    )
    sparse = t.filter(pa.compute.equal(t["rank"], 0))
    filled = dense_from_table(sparse, ("layer", "query", "rank"), "weight", shape, np.float32, np.nan)
    assert np.isnan(filled[:, :, 1:]).all() and (filled[:, :, 0] == weights[:, :, 0]).all()
    with pytest.raises(ValueError, match="axes"):
        long_table({"layer": np.int16}, {"w": (weights, np.float32)})


def test_results_hold_no_view_and_a_stored_view_key_still_opens() -> None:
    """Display choices are figure arguments: no result class has a `view` field, and a run whose
    meta carries a `view` key (or any key this version does not know) still reopens."""
    for kind in RESULT_KINDS.all_kinds():
        assert "view" not in {f.name for f in fields(RESULT_KINDS.get(kind))}, kind
    r = attribution()
    back = AttributionResult.from_store({**r.to_meta(), "view": {"layer": 2}, "run_id": "r1"}, r.to_tables())
    assert (
        back.to_dict()
        == AttributionResult.from_store({**r.to_meta(), "run_id": "r1"}, r.to_tables()).to_dict()
    )


def test_runs_stored_in_the_previous_layout_still_open() -> None:
    """The layouts the previous, hand-written serialisation wrote: the tokenizer inspector kept its
    per-tokenizer facts in the meta (now a table), pruning wrote `model_id`."""
    from explorer.analysis.atlas.tokenizers import TokenizedText, TokenizerResult
    from explorer.analysis.pruning.text.result import TextPruningResult

    tok = TokenizedText("a", "BPE", [1, 2], ["x", "y"], ["x", "y"], [0, 1], [1, 2], [False] * 2, [False] * 2,
                        [False, True], "chat", 5)  # fmt: skip
    r = TokenizerResult(text="xy", tokenizers=[tok], seconds=0.5, notes=["n"])
    old_meta = {"text": "xy", "seconds": 0.5, "notes": ["n"], "run_id": "r",
                "tokenizers": [{"name": "a", "kind": "BPE", "chat_text": "chat", "chat_tokens": 5}]}  # fmt: skip
    old = TokenizerResult.from_store(old_meta, {"tokens": r.to_tables()["tokens"]})
    new = TokenizerResult.from_store({**r.to_meta(), "run_id": "r"}, r.to_tables())
    assert old.to_dict() == new.to_dict() == {**r.to_dict(), "run_id": "r"}
    p = TextPruningResult(model="m", tokens=["a"], input_ids=[1], layer=2, seed=0, continuation_tokens=0,
                          target={}, reference={}, rows=[], scores={}, deviations={})  # fmt: skip
    meta = p.to_meta()
    meta["model_id"] = meta.pop("model")
    assert TextPruningResult.from_store(meta, p.to_tables()).model == "m"
