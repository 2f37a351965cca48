"""`explorer export RUN_ID --format svg|png|pdf|csv|parquet`: a stored run's figure or data,
laid out for a journal column; `--list` names the run's figures; `RUN_A:FIG RUN_B:FIG --panel`
composes several figures into one labelled (a), (b), ..."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from explorer.config import Settings
from explorer.plots import DATA_FORMATS, FIGURE_FORMATS
from explorer.plots.paper import BACKGROUNDS, COLUMN_WIDTH_IN, MIN_FONT_PT, ExportOptions


def add_parser(sub: Any) -> argparse.ArgumentParser:
    default = ExportOptions()
    p: argparse.ArgumentParser = sub.add_parser(
        "export",
        help="export a stored run's figure (png/svg/pdf) or its data (csv/parquet)",
        description=(
            "Renders from the store alone (no model). Prints {run_id, figure, format, path}. Figures are laid "
            "out for a journal column (text >= 7 pt at print size, PNG at 300 dpi) and carry their provenance "
            "in the file's metadata; the same command gives the same bytes."
        ),
    )
    p.add_argument(
        "run_id",
        nargs="+",
        metavar="RUN_ID",
        help="id from `explorer runs`; with --panel, several RUN_ID:FIGURE items",
    )
    p.add_argument(
        "--format", default=None, choices=FIGURE_FORMATS + DATA_FORMATS, help="required unless --list"
    )
    p.add_argument("--figure", default=None, help="figure name (default: the run's first figure); see --list")
    p.add_argument("--out", default=".", help="output directory (default: current directory)")
    p.add_argument("--list", action="store_true", help="list the run's figures instead of exporting")
    p.add_argument(
        "--size",
        default=default.size,
        choices=[*COLUMN_WIDTH_IN, "screen"],
        help="journal column: single (3.3 in) or double (7 in); 'screen' keeps the app's layout",
    )
    p.add_argument(
        "--no-title", action="store_true", help="leave the title out (papers put it in the caption)"
    )
    p.add_argument(
        "--font-size",
        type=float,
        default=default.font_pt,
        help=f"base font size in points at print size (>= {MIN_FONT_PT:g}; default {default.font_pt:g})",
    )
    p.add_argument("--background", default=default.background, choices=BACKGROUNDS)
    p.add_argument(
        "--panel",
        action="store_true",
        help="compose RUN_A:FIG RUN_B:FIG ... into one figure labelled (a), (b), ...",
    )
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.export import export_figure, export_panel, list_figures
    from explorer.errors import InputError

    options = {
        "size": args.size,
        "title": not args.no_title,
        "font_pt": args.font_size,
        "background": args.background,
    }
    if args.panel:
        if args.list:
            raise InputError("--list takes one run id, not --panel")
        if args.format is None:
            raise InputError("--format is required: one of " + ", ".join(FIGURE_FORMATS))
        path = export_panel(list(args.run_id), args.format, Path(args.out), settings=settings, **options)
        return {"panels": list(args.run_id), "format": args.format, "path": str(path.resolve())}
    if len(args.run_id) != 1:
        raise InputError("one RUN_ID, or several RUN_ID:FIGURE items with --panel")
    run_id = args.run_id[0]
    if args.list:
        return {"run_id": run_id, "figures": list_figures(run_id, settings=settings)}
    if args.format is None:
        raise InputError("--format is required: one of " + ", ".join(FIGURE_FORMATS + DATA_FORMATS))
    from explorer.api.export import parse_panel

    run_id, figure = parse_panel(run_id)
    path = export_figure(
        run_id, args.format, args.figure or figure, Path(args.out), settings=settings, **options
    )
    return {
        "run_id": run_id,
        "figure": _figure_name(path, run_id),
        "format": args.format,
        "path": str(path.resolve()),
    }


def _figure_name(path: Path, run_id: str) -> str:
    return path.stem[len(run_id) + 1 :] if path.stem.startswith(run_id + "_") else path.stem
