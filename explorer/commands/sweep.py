"""`explorer sweep`: one analysis over every row of a dataset, resumable, on local workers or Ray."""

from __future__ import annotations

import argparse
import json
from typing import Any

from explorer.config import Settings

ANALYSIS_CHOICES = ("lens", "attention", "attribute", "prune", "vlm-eval")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "sweep",
        help="run one analysis over every row of a JSONL/CSV/Parquet dataset (resumable; local workers or Ray)",
        description="Rows: prompt [, image, target] (lens, attention, attribute, prune) or image, question, "
        "answer [, type] (vlm-eval; or a built-in set: all, caption, pope, qa). Writes Parquet shards under "
        "--out (rows already done are skipped when the same command runs again), stores the aggregate as a "
        "run of kind 'sweep' (its shards become SQL views sweep_<run_id>_<table>), shows progress on stderr "
        "and prints {run_id, analysis, n_rows, n_done, aggregate, views, ...}.",
    )
    p.add_argument(
        "--dataset", required=True, help="a .jsonl/.csv/.parquet file (vlm-eval: or all|caption|pope|qa)"
    )
    p.add_argument(
        "--analysis", required=True, choices=ANALYSIS_CHOICES, help="the analysis run on every row"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="directory of the shards (resumed if it exists)"
    )
    p.add_argument("--model", default=None, help="model name, hub id or local dir (default: the analysis's)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter of the analysis (repeatable; VALUE is JSON or a plain string), e.g. top_k=5, "
        "strategies='[\"random\"]', n_scenes=200",
    )
    p.add_argument("--params", default=None, metavar="JSON", help="all parameters as one JSON object")
    p.add_argument(
        "--workers",
        default="1",
        help="local worker processes, each loads the model once (1; auto = one per core)",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="auto|ADDRESS",
        help="run on Ray: auto starts a local cluster, ADDRESS joins one",
    )
    p.add_argument("--shard-size", type=int, default=8, help="rows per Parquet shard, the unit of resume (8)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the aggregate (1000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def parse_params(pairs: list[str], blob: str | None) -> dict[str, Any]:
    from explorer.errors import InputError

    out: dict[str, Any] = {}
    if blob:
        try:
            loaded = json.loads(blob)
        except ValueError as exc:
            raise InputError(f"--params is not JSON: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputError("--params must be a JSON object")
        out.update(loaded)
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise InputError(f"--param: give NAME=VALUE (got {pair!r})")
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return out


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.sweep import sweep
    from explorer.progress import StderrBar

    result = sweep(
        args.dataset,
        args.analysis,
        args.out,
        model=args.model,
        params=parse_params(args.param, args.params),
        workers=args.workers,
        ray=args.ray,
        shard_size=args.shard_size,
        n_boot=args.bootstrap,
        settings=settings,
        progress=None if args.no_progress else StderrBar("sweep"),
    )
    out: dict[str, Any] = result.to_dict()
    return out
