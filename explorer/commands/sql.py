"""`explorer sql QUERY`: read-only SQL over the run store (compare and query runs)."""

from __future__ import annotations

import argparse
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "sql",
        help="run one read-only SELECT over the run store; prints rows as JSON objects",
        description="Tables: runs(run_id, created, kind, model_id, weight_hash, prompt, params, meta, duration_s, "
        "status, cache_key) and long-form result tables such as lens_topk and lens_tracked "
        '(see `explorer sql "SHOW TABLES"`). No file or network access; nothing can be modified. '
        "A query stops after EXPLORER_SQL_TIMEOUT_S seconds (default 10); Ctrl-C stops it at once.",
    )
    p.add_argument("query", help='e.g. "SELECT kind, count(*) FROM runs GROUP BY kind"')
    p.add_argument("--limit", type=int, default=1000, help="at most this many rows (default 1000)")
    return p


@contextmanager
def _ctrl_c_seen() -> Iterator[Callable[[], bool]]:
    """A callable that turns true once Ctrl-C arrives, even while the main thread is inside DuckDB
    (Python runs signal handlers only between bytecodes; the wakeup fd is written at once)."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    seen: list[bool] = []
    try:
        previous = signal.set_wakeup_fd(write_fd)
    except ValueError:  # not the main thread: no signal watch
        os.close(read_fd)
        os.close(write_fd)
        yield lambda: False
        return

    def check() -> bool:
        if not seen:
            try:
                data = os.read(read_fd, 64)
            except BlockingIOError:
                data = b""
            if signal.SIGINT in data:
                seen.append(True)
        return bool(seen)

    try:
        yield check
    finally:
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)


def run(args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    from explorer.api import query_limits
    from explorer.errors import InputError
    from explorer.store import Store

    if args.limit < 1:
        raise InputError("--limit must be at least 1")
    store = Store.open(settings.database, lock_timeout_s=settings.store_lock_timeout_s)
    with _ctrl_c_seen() as ctrl_c:
        try:
            table = store.query(
                args.query, limits=query_limits(settings, max_rows=args.limit), cancelled=ctrl_c
            )
        except InputError:
            if ctrl_c():
                raise KeyboardInterrupt from None
            raise
    return table.to_pylist()
