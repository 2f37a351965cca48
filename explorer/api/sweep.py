"""`explorer.sweep`: one analysis over every row of a dataset, resumable, on local workers or Ray.

    r = explorer.sweep("prompts.jsonl", "lens", "out/lens-sweep", params={"top_k": 5})
    r.to_dict()["aggregate"]      # mean per (group, measure, x) with 95% bootstrap intervals
    explorer.query(f"SELECT * FROM sweep_{r.run_id}_measures")   # the shards, as SQL views

See `explorer.sweeps` for the dataset format, the shards and the executors.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from explorer.api.runner import DbArg, open_store
from explorer.config import Settings
from explorer.errors import InputError
from explorer.progress import ProgressFn, or_silent
from explorer.sweeps import shards
from explorer.sweeps.analyses import ANALYSES, check_params
from explorer.sweeps.executors import Job, make_executor, worker_count
from explorer.sweeps.result import SweepResult
from explorer.sweeps.rows import read_rows

MAX_SHARD_ROWS = 10_000


def _params(params: dict[str, Any] | str | None) -> dict[str, Any]:
    if params is None:
        return {}
    if isinstance(params, str):
        try:
            params = json.loads(params) if params.strip() else {}
        except ValueError as exc:
            raise InputError(f"params must be a JSON object: {exc}") from exc
    if not isinstance(params, dict):
        raise InputError(f"params must be a JSON object of parameter: value (got {type(params).__name__})")
    return dict(params)


def model_name(model: Any, analysis: str, images: bool, settings: Settings) -> str:
    """What identifies the model in the manifest and the store: its name, or a factory's
    "module:qualname"."""
    if isinstance(model, str) and model.strip():
        return model.strip()
    if model is None:
        if analysis == "vlm-eval" or images:
            from explorer.backends.vlm import TINY_VLM

            return TINY_VLM
        return settings.default_model
    if hasattr(model, "model_id"):  # a loaded model: in this process only (workers=1, no Ray)
        return str(model.model_id)
    if callable(model):
        return f"{getattr(model, '__module__', '?')}:{getattr(model, '__qualname__', type(model).__name__)}"
    raise InputError(
        "a sweep's model is a name (embedded, hub id or local dir) or a picklable factory that "
        f"builds one in each worker, not a loaded {type(model).__name__}"
    )


def sweep(
    dataset: str,
    analysis: str,
    out: str | Path,
    *,
    model: Any = None,
    params: dict[str, Any] | str | None = None,
    workers: int | str | None = 1,
    ray: str | None = None,
    shard_size: int = 8,
    n_boot: int = 1000,
    db: DbArg = None,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Run `analysis` ("lens", "attention", "attribute", "prune", "vlm-eval") over every row of
    `dataset` (a JSONL / CSV / Parquet file; for vlm-eval also a built-in set name with params
    `n_scenes`, `seed`) and write Parquet shards of `shard_size` rows under `out`.

    Resumable: rows already in a complete shard of `out` are skipped (the same analysis, dataset
    contents, model and params are required). `params` (a dict or its JSON) go to the analysis's
    entry point (`explorer.logit_lens`, `attention`, `attribute`, `prune`; vlm-eval: batch_size,
    vista, n_boot). `workers`: local processes, each loading the model once ("auto" = one per
    core); `ray`: "auto" (a local Ray cluster) or a cluster's address, `workers` actors. `model`:
    a name or a picklable zero-argument factory (each worker calls it once).

    Stores a `SweepResult` run (kind "sweep": the aggregate with 95% bootstrap intervals), which
    replaces the run of an earlier pass over the same directory; the store's SQL console sees
    the shards as views `sweep_<run_id>_<table>`."""
    settings = settings or Settings.from_env()
    t0 = time.perf_counter()
    report = or_silent(progress)
    analysis = str(analysis).strip()
    if analysis not in ANALYSES:
        raise InputError(f"analysis must be one of {', '.join(ANALYSES)} (got {analysis!r})")
    if not 1 <= int(shard_size) <= MAX_SHARD_ROWS:
        raise InputError(f"shard_size must be in 1..{MAX_SHARD_ROWS} (got {shard_size})")
    if not 100 <= int(n_boot) <= 100_000:
        raise InputError(f"n_boot must be in 100..100000 (got {n_boot})")
    n_workers = worker_count(workers)
    ray_address = (ray or "").strip() or None
    args = _params(params)
    n_scenes, seed = int(args.get("n_scenes", 20)), int(args.get("seed", 0))
    check_params(analysis, args, [])
    data = read_rows(str(dataset), analysis, n_scenes=n_scenes, seed=seed)
    check_params(analysis, args, data.rows)
    run_args = {k: v for k, v in args.items() if not (analysis == "vlm-eval" and k in ("n_scenes", "seed"))}
    if analysis == "vlm-eval":  # validated now, not in a worker
        from explorer.vlm.vista import VistaParams

        vista = run_args.get("vista")
        if vista is not None and not isinstance(vista, VistaParams):
            VistaParams.from_json(vista).validate()
    name = model_name(model, analysis, any(r.image for r in data.rows), settings)
    from explorer.backends.loading import default_device, dtype_name, resolve_dtype

    weights = dtype_name(resolve_dtype(dtype if dtype is not None else settings.dtype, default_device()))
    if hasattr(model, "model_id") and (n_workers > 1 or ray_address):
        raise InputError(
            "a loaded model runs in this process only: give its name or a picklable factory for "
            "workers > 1 or Ray"
        )
    out_dir = Path(out).expanduser().resolve()
    manifest = {
        "analysis": analysis,
        "dataset": data.name,
        "digest": data.digest,
        "model": name,
        "dtype": weights,  # shards of another dtype are not mixed in on resume
        "params": json.loads(json.dumps(args, default=str)),
        "n_rows": len(data.rows),
    }
    store = open_store(db, settings)  # a busy or unreadable store fails before any work
    shards.prepare(out_dir, manifest)
    done = shards.done_rows(out_dir)
    todo = [r for r in data.rows if r.row not in done]
    chunks = [todo[i : i + int(shard_size)] for i in range(0, len(todo), int(shard_size))]
    executor_name, n_used = "local", 1
    if chunks:
        report(len(done) / len(data.rows), f"starting {n_workers} worker(s); {len(todo)} rows to run")
        job = Job(analysis, None if model is None else model, dtype, run_args, settings)
        executor = make_executor(job, todo[0], workers=n_workers, ray=ray_address)
        executor_name, n_used = executor.name, executor.workers
        finished = len(done)
        try:
            for tables in executor.map(chunks):
                shards.write_shard(out_dir, tables)
                finished += tables["rows"].num_rows
                report(finished / len(data.rows), f"{finished}/{len(data.rows)} rows")
        finally:
            executor.close()
    report(1.0, "aggregating")
    n_done = len(shards.done_rows(out_dir))
    result = SweepResult(
        analysis=analysis,
        dataset=data.name,
        digest=data.digest,
        model=name,
        out_dir=str(out_dir),
        params=manifest["params"],
        n_rows=len(data.rows),
        n_done=n_done,
        n_new=len(todo),
        seconds=time.perf_counter() - t0,
        executor=executor_name,
        workers=n_used,
        tables=sorted(shards.table_files(out_dir)),
        aggregate=shards.aggregate(out_dir, analysis, n_boot=int(n_boot), seed=seed),
    )
    if store is not None:
        for old in store.list_runs(limit=10_000, kind=SweepResult.kind):
            if old.params.get("out_dir") == str(out_dir):
                store.delete(old.run_id)
        result.run_id = store.save(
            result,
            model_id=name,
            weight_hash="",
            prompt=data.name,
            params={
                "analysis": analysis,
                "out_dir": str(out_dir),
                "digest": data.digest,
                **manifest["params"],
            },
            duration_s=result.seconds,
        )
    shards.write_summary(out_dir, result.to_dict())
    return result


def list_sweeps(db: DbArg = None, settings: Settings | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Stored sweeps, newest first: run id, analysis, dataset, rows done / total, directory."""
    store = open_store(db, settings)
    if store is None:
        return []
    out = []
    for info in store.list_runs(limit=limit, kind=SweepResult.kind):
        out.append(
            {
                "run_id": info.run_id,
                "created": info.created,
                "analysis": info.params.get("analysis"),
                "model": info.model_id,
                "dataset": info.prompt,
                "out_dir": info.params.get("out_dir"),
            }
        )
    return out
