"""`explorer runs`: list stored runs, newest first."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser("runs", help="list stored runs (newest first)")
    p.add_argument("--limit", type=int, default=100, help="at most this many runs (default 100)")
    p.add_argument("--kind", default=None, help="only runs of this kind (lens, attribution, ...)")
    p.add_argument("--show", metavar="RUN_ID", default=None, help="print one stored run's full JSON")
    return p


def run(args: argparse.Namespace, settings: Settings) -> Any:
    from explorer.api import list_runs, load_run
    from explorer.errors import InputError

    if args.show:
        return load_run(args.show, settings=settings).to_dict()
    if args.limit < 1:
        raise InputError("--limit must be at least 1")
    return [r.to_dict() for r in list_runs(limit=args.limit, kind=args.kind, settings=settings)]
