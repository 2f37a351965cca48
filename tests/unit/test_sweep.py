"""`explorer sweep`: shards, resume, SQL views behind the store's guard, executors, bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import make_tiny_lm

from explorer.errors import InputError
from explorer.store import Store

PROMPTS = ["The capital of France is", "One, two, three,", "Hello world", "The cat sat on the", "Water is"]


def tiny_llama() -> Any:
    """The sweep's model factory: each worker (a pool process, a Ray actor) builds it once."""
    return make_tiny_lm("llama")


def _dataset(tmp_path: Path, n: int = 5, fmt: str = "jsonl") -> Path:
    rows = [{"prompt": p, "target": " the"} for p in PROMPTS[:n]]
    path = tmp_path / f"prompts.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        import pyarrow.csv as pc
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        pc.write_csv(table, path) if fmt == "csv" else pq.write_table(table, path)
    return path


def _tables(out: Path) -> dict[str, pa.Table]:
    from explorer.sweeps.shards import read_table, table_files

    tables = {}
    for name in table_files(out):
        t = read_table(out, name)
        assert t is not None
        if "seconds" in t.column_names:  # wall times differ between runs
            t = t.drop_columns(["seconds"])
        keys = [
            c for c in t.column_names if c != "token" and not pa.types.is_floating(t.schema.field(c).type)
        ]
        tables[name] = t.sort_by([(c, "ascending") for c in keys])
    return tables


def _close(a: Any, b: Any) -> bool:
    """Equal, floats to float32 round-off: a worker and the test process may use different torch
    thread counts, which reorders float reductions (the same model, inputs and code otherwise)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _sweep(data: Path, out: Path, db: Any, **kw: Any) -> Any:
    from explorer.api.sweep import sweep

    kw.setdefault("model", tiny_llama)
    analysis = kw.pop("analysis", "attention")
    kw.setdefault("params", {"top_k": 3} if analysis == "lens" else {})
    return sweep(str(data), analysis, out, db=db, shard_size=2, n_boot=200, **kw)


def test_lens_sweep_writes_shards_views_and_resumes(tmp_path: Path) -> None:
    data, out, db = _dataset(tmp_path, fmt="csv"), tmp_path / "out", tmp_path / "runs.duckdb"
    r = _sweep(data, out, db, analysis="lens")
    assert (r.n_rows, r.n_done, r.n_new, r.executor) == (5, 5, 5, "local")
    assert len(list((out / "shards").glob("rows-*"))) == 3  # 2 + 2 + 1 rows
    assert {"rows", "measures", "tracked", "topk"} <= set(r.tables)
    layers = {a["x"] for a in r.aggregate if a["measure"] == "is top-1"}
    assert layers == set(range(4))  # embeddings + 3 blocks of the tiny llama
    last = [a for a in r.aggregate if a["measure"] == "is top-1" and a["x"] == 3.0][0]
    assert last["value"] == 1.0 and last["n"] == 5  # the final layer's top-1 is itself
    for a in r.aggregate:
        assert a["low"] <= a["value"] + 1e-12 and a["value"] <= a["high"] + 1e-12

    store = Store.open(db)
    runs = store.list_runs(kind="sweep")
    assert [x.run_id for x in runs] == [r.run_id]
    counted = store.query(f"SELECT count(DISTINCT row) AS n FROM sweep_{r.run_id}_rows").to_pylist()
    assert counted == [{"n": 5}]
    by_sql = store.query(
        f"SELECT count(*) AS n FROM sweep_{r.run_id}_measures WHERE measure = 'is top-1'"
    ).to_pylist()[0]["n"]
    assert by_sql == 5 * 4
    reopened = store.load(r.run_id)
    assert reopened.aggregate == r.aggregate and reopened.n_done == 5

    before = _tables(out)
    again = _sweep(
        data, out, db, analysis="lens"
    )  # everything done: nothing runs, same aggregate, one stored run
    assert again.n_new == 0 and again.aggregate == r.aggregate
    assert [x.run_id for x in store.list_runs(kind="sweep")] == [again.run_id]

    shutil.rmtree(sorted((out / "shards").glob("rows-*"))[1])  # lose rows 2-3: only they run again
    resumed = _sweep(data, out, db, analysis="lens")
    assert resumed.n_new == 2 and resumed.n_done == 5
    after = _tables(out)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name].equals(before[name]), name


def test_vlm_eval_sweep_scores_every_row_like_one_evaluation(tmp_path: Path) -> None:
    """A vlm-eval sweep over POPE (tiny random VLM, one answer per batch on both sides) stores every
    sample once and aggregates to exactly the metrics of one `evaluate_vlm` over the same set."""
    from conftest import make_tiny_projector
    from test_vlm import _tiny_vision

    from explorer.backends.vlm import projector_vlm
    from explorer.vlm.eval_sets import load_eval_set
    from explorer.vlm.vlm_eval import EvalParams, evaluate_vlm

    lm = make_tiny_lm("llama")
    vlm = projector_vlm(lm, _tiny_vision(), make_tiny_projector(lm), model_id="tiny-test-vlm")
    r = _sweep(
        Path("pope"),
        tmp_path / "out",
        False,
        analysis="vlm-eval",
        model=vlm,
        params={"n_scenes": 2, "batch_size": 1},
    )
    samples = load_eval_set("pope", 2, 0)
    assert (r.n_rows, r.n_done, r.dataset) == (len(samples), len(samples), "pope")
    direct = evaluate_vlm(vlm, samples, EvalParams(dataset="pope", n_scenes=2, batch_size=1, n_boot=200))
    expected = {(m["group"], m["metric"]): (m["value"], m["n"]) for m in direct.metrics}
    got = {(a["group"], a["measure"]): (a["value"], a["n"]) for a in r.aggregate}
    assert got == expected
    with pytest.raises(InputError, match="in this process only"):
        _sweep(Path("pope"), tmp_path / "o2", False, analysis="vlm-eval", model=vlm, workers=2)


def test_runs_tab_lists_sweeps(tmp_path: Path) -> None:
    from explorer.config import Settings
    from explorer.ui.common import UIContext
    from explorer.ui.runs_tab import kind_choices, run_choices
    from explorer.ui.sweeps_panel import sweeps_table

    db = tmp_path / "runs.duckdb"
    r = _sweep(_dataset(tmp_path, n=1), tmp_path / "out", db)
    ctx = UIContext(Settings.from_env(db_path=db))
    assert "sweep" in kind_choices()
    assert [row[0] for row in sweeps_table(ctx)] == [r.run_id]
    assert sweeps_table(ctx)[0][2:4] == ["attention", f"{__name__}:tiny_llama"]
    assert [rid for _, rid in run_choices(ctx, "sweep")] == [r.run_id]


def test_a_kill_leaves_no_partial_shard_and_resume_finishes(tmp_path: Path, monkeypatch: Any) -> None:
    from explorer.sweeps import analyses, executors

    data, out = _dataset(tmp_path), tmp_path / "out"
    real = analyses.run_chunk
    calls: list[int] = []

    def dies_on_second_chunk(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill in the middle of the second chunk
        return real(*args, **kw)

    monkeypatch.setattr(executors, "run_chunk", dies_on_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        _sweep(data, out, False)
    shards = list((out / "shards").iterdir())
    assert [p.name for p in shards] == ["rows-000000-000001"]
    (out / "shards" / ".tmp-leftover").mkdir()  # what a kill during a shard's write leaves
    monkeypatch.setattr(executors, "run_chunk", real)
    r = _sweep(data, out, False)
    assert (r.n_new, r.n_done) == (3, 5)
    assert not (out / "shards" / ".tmp-leftover").exists()


def test_sql_console_still_has_no_file_access(tmp_path: Path) -> None:
    data, out, db = _dataset(tmp_path, n=2), tmp_path / "out", tmp_path / "runs.duckdb"
    r = _sweep(data, out, db)
    shard = next((out / "shards").glob("rows-*/rows.parquet"))
    store = Store.open(db)
    for sql in (f"SELECT * FROM read_parquet('{shard}')", f"SELECT * FROM '{shard}'"):
        with pytest.raises(InputError):
            store.query(sql)
    assert store.query(f"SELECT count(*) AS n FROM sweep_{r.run_id}_rows").to_pylist() == [{"n": 2}]


def test_prune_and_attention_sweeps_aggregate_per_strategy_and_layer(tmp_path: Path) -> None:
    from explorer.plots import figure_spec

    data = _dataset(tmp_path, n=3)
    pr = _sweep(
        data,
        tmp_path / "prune",
        False,
        analysis="prune",
        params={
            "strategies": ["random", "self_information"],
            "keep_ratios": [0.5, 1.0],
            "continuation_tokens": 2,
        },
    )
    curve = {(a["group"], a["x"]) for a in pr.aggregate if a["measure"] == "kl"}
    assert curve == {(s, x) for s in ("random", "self_information") for x in (0.5, 1.0)}
    full = [a for a in pr.aggregate if a["measure"] == "kl" and a["x"] == 1.0]
    assert all(abs(a["value"]) < 1e-6 for a in full)  # keeping everything changes nothing
    at = _sweep(data, tmp_path / "attention", False)
    assert {a["measure"] for a in at.aggregate} >= {"entropy", "sink share"}
    for result in (pr, at):
        fig = figure_spec(result, "aggregate").build(result)
        assert len(fig.data) > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "missing.jsonl", "--analysis", "lens"], "does not exist"),
        (["--analysis", "lens", "--param", "top_kk=3"], "does not take top_kk"),
        (["--analysis", "prune", "--param", 'strategies=["nope"]'], "unknown pruning strategy"),
        (["--analysis", "lens", "--workers", "0.5"], "workers"),
        (["--analysis", "lens", "--shard-size", "0"], "shard_size"),
        (["--analysis", "vlm-eval", "--param", "top_k=3"], "does not take top_k"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_stores_nothing(
    tmp_path: Path, capsys: Any, args: list[str], message: str | None
) -> None:
    from explorer.cli import main

    if message is None:
        return
    data = _dataset(tmp_path, n=2)
    db = tmp_path / "runs.duckdb"
    full = ["sweep", "--dataset", str(data), "--out", str(tmp_path / "out"), "--db", str(db), *args]
    rc = main(full)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out" / "shards").exists()
    assert not db.exists() or Store.open(db).list_runs(kind="sweep") == []


def test_out_dir_of_another_sweep_is_refused(tmp_path: Path) -> None:
    data, out = _dataset(tmp_path, n=1), tmp_path / "out"
    _sweep(data, out, False)
    with pytest.raises(InputError, match="holds another sweep"):
        _sweep(data, out, False, params={"flow": True})
    with pytest.raises(InputError, match="its dtype differ"):  # no float32 shards in a bfloat16 sweep
        _sweep(data, out, False, dtype="bfloat16")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(InputError, match="not a sweep directory"):
        _sweep(data, tmp_path / "other", False)


def _assert_same(a: Any, b: Any) -> None:
    """Two sweeps wrote the same shard tables (wall times aside) and aggregate: keys and integer
    columns exactly, float columns to 1e-4 relative (see `_close`)."""
    ta, tb = _tables(Path(a.out_dir)), _tables(Path(b.out_dir))
    assert ta.keys() == tb.keys()
    for name in ta:
        x, y = ta[name], tb[name]
        assert x.schema == y.schema and x.num_rows == y.num_rows, name
        for col in x.column_names:
            if pa.types.is_floating(x.schema.field(col).type):
                u, v = x[col].to_numpy(zero_copy_only=False), y[col].to_numpy(zero_copy_only=False)
                assert np.allclose(u, v, rtol=1e-4, atol=1e-6, equal_nan=True), (name, col)
            else:
                assert x[col].equals(y[col]), (name, col)
    assert _close(a.aggregate, b.aggregate)


def test_two_local_workers_give_the_local_results(tmp_path: Path) -> None:
    data = _dataset(tmp_path, n=4)
    one = _sweep(data, tmp_path / "one", False)
    two = _sweep(data, tmp_path / "two", False, workers=2)
    assert (two.executor, two.workers, two.n_done) == ("pool", 2, 4)
    _assert_same(one, two)


# A hang must not stall the suite. On a quiet 2-core machine the test takes about a minute (cluster
# start, two actors importing torch and building the tiny model); under the heavy load of a shared
# machine (load average 11-13) it took several minutes, hence the margin.
RAY_TIME_LIMIT_S = 600


@pytest.mark.ray
def test_ray_cluster_of_two_workers_gives_the_local_results(tmp_path: Path) -> None:
    """A local Ray cluster (2 actors, each building the tiny model once) writes the same shards
    and aggregate as the in-process executor, within RAY_TIME_LIMIT_S."""
    from concurrent import futures

    pytest.importorskip("ray")
    data = _dataset(tmp_path, n=4)
    local = _sweep(data, tmp_path / "local", False)
    pool = futures.ThreadPoolExecutor(1)
    try:
        on_ray = pool.submit(_sweep, data, tmp_path / "ray", False, workers=2, ray="auto").result(
            timeout=RAY_TIME_LIMIT_S
        )
    except futures.TimeoutError:
        import ray

        ray.shutdown()  # stop the cluster: the sweep's thread fails, and the process can exit
        pytest.fail(f"the Ray sweep did not finish within {RAY_TIME_LIMIT_S} s")
    finally:
        pool.shutdown(wait=False)
    assert (on_ray.executor, on_ray.workers, on_ray.n_done) == ("ray", 2, 4)
    _assert_same(local, on_ray)


def test_device_map_auto_only_with_cuda_devices() -> None:
    from explorer.backends.loading import placement_kwargs
    from explorer.config import Settings

    assert placement_kwargs("auto", cuda_devices=2) == {"device_map": "auto"}
    assert placement_kwargs("auto", cuda_devices=0) == {}
    assert placement_kwargs("none", cuda_devices=4) == {}
    with pytest.raises(InputError, match="device_map"):
        placement_kwargs("balanced", cuda_devices=1)
    assert Settings.from_env(device_map="auto").device_map == "auto"
    assert Settings.from_env().device_map in ("none", "auto")
    with pytest.raises(ValueError, match="device_map"):
        Settings.from_env(device_map="everywhere")


def test_hub_lm_loads_with_device_map_auto_when_gpus_are_present(tmp_path: Path, monkeypatch: Any) -> None:
    """The loader hands `device_map="auto"` to transformers when the setting asks for it and CUDA
    devices exist (faked here: the machine has none), and leaves placement to accelerate."""
    import torch
    import transformers

    from explorer.backends.language import load_model
    from explorer.config import Settings

    lm = tiny_llama()
    lm.hf_model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    seen: list[dict[str, Any]] = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(dict(kwargs))
        kwargs.pop("device_map", None)  # no GPU here to place it on
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", recording)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for device_map, expected in (("auto", "auto"), ("none", None)):
        settings = Settings.from_env(device_map=device_map, cache_dir=tmp_path / "cache")
        loaded = load_model(str(tmp_path / "m"), settings=settings, dtype="float32")
        assert seen[-1].get("device_map") == expected
        assert loaded.n_layers == lm.n_layers
