"""`explorer export RUN_ID --format svg|png|pdf|csv|parquet`: a stored run's figure or data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from explorer.config import Settings
from explorer.plots import DATA_FORMATS, FIGURE_FORMATS


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="export a stored run's figure (png/svg/pdf) or its data (csv/parquet)",
        description="Renders from the store alone (no model). Prints {run_id, figure, format, path}.",
    )
    p.add_argument("run_id", help="id from `explorer runs`")
    p.add_argument("--format", required=True, choices=FIGURE_FORMATS + DATA_FORMATS)
    p.add_argument("--figure", default=None, help="figure name (default: the run's first figure); see --list")
    p.add_argument("--out", default=".", help="output directory (default: current directory)")
    p.add_argument("--list", action="store_true", help="list the run's figures instead of exporting")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api import load_run
    from explorer.plots import export, figure_spec, figures_for

    result = load_run(args.run_id, settings=settings)
    if args.list:
        return {
            "run_id": args.run_id,
            "figures": [{"name": s.name, "title": s.title} for s in figures_for(result)],
        }
    spec = figure_spec(result, args.figure)
    path = export(result, args.format, Path(args.out), figure=spec.name)
    return {"run_id": args.run_id, "figure": spec.name, "format": args.format, "path": str(path.resolve())}
