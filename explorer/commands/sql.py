"""`explorer sql QUERY`: read-only SQL over the run store (compare and query runs)."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "sql",
        help="run one read-only SELECT over the run store; prints rows as JSON objects",
        description="Tables: runs(run_id, created, kind, model_id, weight_hash, prompt, params, meta, duration_s, "
        "status, cache_key) and long-form result tables such as lens_topk and lens_tracked "
        '(see `explorer sql "SHOW TABLES"`). No file or network access; nothing can be modified.',
    )
    p.add_argument("query", help='e.g. "SELECT kind, count(*) FROM runs GROUP BY kind"')
    p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000)")
    return p


def run(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    from explorer.store import Store

    store = Store.open(settings.database)
    return store.query(args.query, limit=args.limit).to_pylist()
