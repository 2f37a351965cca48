"""A sweep's output directory: its manifest, its Parquet shards, and the aggregate over them.

    DIR/sweep.json                        what runs (analysis, dataset + digest, model, params)
    DIR/summary.json                      the last pass's result: counts, timing, the aggregate
    DIR/shards/rows-<first>-<last>/       one shard: <table>.parquet for every table of its rows
    DIR/shards/.tmp-*/                    a shard being written (renamed into place when complete)

A shard directory appears by one atomic rename, after all its files are written and closed, so a
kill leaves either a whole shard or none (a leftover `.tmp-*` is removed by the next run). Resume
reads the `row` column of every shard's `rows.parquet` and runs only the other rows.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from explorer.errors import InputError

MANIFEST = "sweep.json"
SHARDS = "shards"
# what must match for a directory to be resumed (the rest of the manifest is informational)
IDENTITY = ("analysis", "dataset", "digest", "model", "dtype", "params")
AGGREGATE_SCHEMA = pa.schema(
    [
        ("condition", pa.string()),
        ("group", pa.string()),
        ("measure", pa.string()),
        ("x", pa.float64()),
        ("value", pa.float64()),
        ("low", pa.float64()),
        ("high", pa.float64()),
        ("n", pa.int64()),
    ]
)


def prepare(out: Path, manifest: dict[str, Any]) -> None:
    """Create `out` (or check that it holds the same sweep) and clear half-written shards."""
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--out {out}: unreadable {MANIFEST} ({exc}); choose another directory") from exc
        # a manifest written before the dtype was recorded matches any dtype
        changed = [
            k for k in IDENTITY if old.get(k, manifest.get(k) if k == "dtype" else None) != manifest.get(k)
        ]
        if changed:
            raise InputError(
                f"--out {out} holds another sweep (its {', '.join(changed)} differ); "
                "resume with the same arguments or choose another directory"
            )
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"--out {out} exists and is not a sweep directory; choose an empty or new one")
    try:
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out {out}: cannot create it ({exc.strerror})") from exc
    for tmp in (out / SHARDS).glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if not manifest_path.exists():
        tmp_manifest = out / f".{MANIFEST}.tmp"
        tmp_manifest.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp_manifest, manifest_path)


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """The last pass's result as JSON beside the shards (replaced atomically)."""
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, out / "summary.json")


def shard_dirs(out: Path) -> list[Path]:
    """The complete shards, in row order."""
    root = out / SHARDS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("rows-"))


def done_rows(out: Path) -> set[int]:
    done: set[int] = set()
    for shard in shard_dirs(out):
        rows = pq.read_table(shard / "rows.parquet", columns=["row"]).column("row").to_pylist()
        done.update(int(r) for r in rows)
    return done


def write_shard(out: Path, tables: dict[str, pa.Table]) -> Path:
    """Write one shard's tables; it becomes visible only when complete (one rename)."""
    rows = tables["rows"].column("row").to_pylist()
    name = f"rows-{min(rows):06d}-{max(rows):06d}"
    final = out / SHARDS / name
    if final.exists():  # the same rows again (a resumed chunk that was cut differently)
        name = f"{name}-{uuid.uuid4().hex[:6]}"
        final = out / SHARDS / name
    tmp = out / SHARDS / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    for table_name, table in tables.items():
        pq.write_table(table, tmp / f"{table_name}.parquet")
    os.replace(tmp, final)
    return final


def table_files(out: Path) -> dict[str, list[Path]]:
    """Table name -> its Parquet files over every complete shard."""
    files: dict[str, list[Path]] = {}
    for shard in shard_dirs(out):
        for f in sorted(shard.glob("*.parquet")):
            files.setdefault(f.stem, []).append(f)
    return files


def read_table(out: Path, name: str) -> pa.Table | None:
    """One table over every shard (None when no shard has it)."""
    files = table_files(out).get(name)
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")


def _mean_estimates(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float, float]:
    from explorer.vlm import metrics as m

    idx = m.bootstrap_indices(values.size, n_boot, seed)
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(values.mean()), float(lo), float(hi)


def aggregate(out: Path, analysis: str, *, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Over every done row: for vlm-eval, the evaluation's metrics (accuracy per question type,
    POPE, CHAIR, with 95% bootstrap intervals); otherwise the mean of each (group, measure, x)
    over rows with a 95% bootstrap interval (resampling rows, seeded)."""
    if analysis == "vlm-eval":
        from explorer.vlm.vlm_eval import aggregate as eval_aggregate

        samples = read_table(out, "samples")
        if samples is None:
            return []
        rows = eval_aggregate(samples.to_pylist(), n_boot=n_boot, seed=seed)
        return [
            {
                "condition": r["condition"],
                "group": r["group"],
                "measure": r["metric"],
                "x": None,
                **{k: r[k] for k in ("value", "low", "high", "n")},
            }
            for r in rows
        ]
    table = read_table(out, "measures")
    if table is None or table.num_rows == 0:
        return []
    cols = table.to_pydict()
    groups: dict[tuple[str, str, float | None], list[float]] = {}
    for g, meas, x, v in zip(cols["group"], cols["measure"], cols["x"], cols["value"], strict=True):
        groups.setdefault((g, meas, x), []).append(float(v))
    out_rows = []
    for (g, meas, x), values in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -1e300 if kv[0][2] is None else kv[0][2])
    ):
        value, low, high = _mean_estimates(np.asarray(values), n_boot, seed)
        out_rows.append(
            {
                "condition": "",
                "group": g,
                "measure": meas,
                "x": x,
                "value": value,
                "low": low,
                "high": high,
                "n": len(values),
            }
        )
    return out_rows
