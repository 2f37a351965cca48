"""DuckDB run store: round trips, cache lookups, atomic writes, listing order."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from explorer import api
from explorer.analysis.logit_lens import LensResult
from explorer.errors import InputError


def _rows(store, sql: str) -> list[tuple]:
    with store.connect() as cur:
        return cur.execute(sql).fetchall()


def test_lens_round_trip_is_exact(tiny_llama, tmp_store) -> None:
    r = api.logit_lens(tiny_llama, "the cat sat on the mat", targets=["dog"], generate=3, db=tmp_store)
    assert r.run_id
    back = tmp_store.load(r.run_id)
    assert isinstance(back, LensResult)
    assert back.to_dict() == r.to_dict()
    np.testing.assert_array_equal(back.topk_ids, r.topk_ids)


def test_same_request_is_served_from_store(tiny_llama, tmp_store) -> None:
    a = api.logit_lens(tiny_llama, "hello there", db=tmp_store)
    b = api.logit_lens(tiny_llama, "hello there", db=tmp_store)
    c = api.logit_lens(tiny_llama, "hello there", top_k=3, db=tmp_store)
    assert a.run_id == b.run_id
    assert c.run_id != a.run_id
    assert len(tmp_store.list_runs()) == 2
    d = api.logit_lens(tiny_llama, "hello there", db=tmp_store, use_cache=False)
    assert d.run_id not in (a.run_id, c.run_id)


def test_list_runs_newest_first(tiny_llama, tmp_store) -> None:
    ids = [api.logit_lens(tiny_llama, f"prompt number {i}", db=tmp_store).run_id for i in range(3)]
    listed = [r.run_id for r in tmp_store.list_runs()]
    assert listed == ids[::-1]
    assert tmp_store.list_runs(kind="lens", limit=1)[0].run_id == ids[-1]


def test_bad_input_writes_nothing(tiny_llama, tmp_store) -> None:
    with pytest.raises(InputError):
        api.logit_lens(tiny_llama, "", db=tmp_store)
    with pytest.raises(InputError):
        api.logit_lens(tiny_llama, "ok", top_k=0, db=tmp_store)
    assert tmp_store.list_runs() == []


def test_failed_write_leaves_no_partial_run(tiny_llama, tmp_store) -> None:
    first = api.logit_lens(tiny_llama, "atomic please", db=tmp_store)
    r = api.logit_lens(tiny_llama, "second run", db=False)
    good = r.to_tables()

    def broken_tables() -> dict[str, pa.Table]:
        # topk inserts fine, then tracked fails inside the transaction (text into an int column)
        bad = good["tracked"].set_column(5, "rank", pa.array(["not a number"] * good["tracked"].num_rows))
        return {"topk": good["topk"], "tracked": bad}

    r.to_tables = broken_tables  # type: ignore[method-assign]
    with pytest.raises(Exception, match="(?i)conver|cast"):
        tmp_store.save(r, model_id="m", weight_hash="h", prompt="p", params={}, duration_s=0.1)
    assert [x.run_id for x in tmp_store.list_runs()] == [first.run_id]
    rows = _rows(tmp_store, "SELECT DISTINCT run_id FROM lens_topk")
    assert rows == [(first.run_id,)]


def test_unknown_run_id(tmp_store) -> None:
    with pytest.raises(InputError, match="no run"):
        tmp_store.load("doesnotexist")


def test_delete_removes_all_rows(tiny_llama, tmp_store) -> None:
    r = api.logit_lens(tiny_llama, "delete me", db=tmp_store)
    tmp_store.delete(r.run_id)
    assert tmp_store.list_runs() == []
    assert _rows(tmp_store, "SELECT count(*) FROM lens_tracked")[0][0] == 0


def test_query_is_read_only_and_sandboxed(tiny_llama, tmp_store, tmp_path) -> None:
    r = api.logit_lens(tiny_llama, "query me", db=tmp_store)
    rows = tmp_store.query("SELECT run_id, kind FROM runs").to_pylist()
    assert rows == [{"run_id": r.run_id, "kind": "lens"}]
    best = tmp_store.query(
        "SELECT layer, max(prob) AS p FROM lens_tracked WHERE role = 'final_top1' GROUP BY layer ORDER BY layer"
    )
    assert best.num_rows == r.n_layers + 1
    for bad in ["DROP TABLE runs", "SELECT 1; DROP TABLE runs", "DELETE FROM runs", "COMMIT"]:
        with pytest.raises(InputError, match="read-only"):
            tmp_store.query(bad)
    with pytest.raises(InputError, match="failed"):
        tmp_store.query(f"SELECT * FROM read_csv('{tmp_path}/x.csv')")
    assert len(tmp_store.list_runs()) == 1


def test_a_result_class_that_gains_a_column_still_saves_into_an_old_table(tmp_store) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa

    cur = tmp_store.cursor()
    cur.execute("CREATE TABLE widen_rows (run_id VARCHAR, a INTEGER)")

    class Widened:
        kind = "widen"

        def to_meta(self) -> dict:  # type: ignore[type-arg]
            return {}

        def to_tables(self) -> dict:  # type: ignore[type-arg]
            return {"rows": pa.table({"a": pa.array([1], pa.int32()), "b": pa.array([2.5])})}

    run_id = tmp_store.save(Widened(), model_id="m", weight_hash="h", prompt="p", params={}, duration_s=0.0)
    rows = cur.execute("SELECT a, b FROM widen_rows WHERE run_id = ?", [run_id]).fetchall()
    assert rows == [(1, 2.5)]
