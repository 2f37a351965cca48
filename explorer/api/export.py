"""Export stored runs' figures for papers: one figure, or several composed into panels.

    import explorer
    explorer.export_figure(run_id, "pdf", figure="heatmap", size="double")
    explorer.export_panel([f"{a}:retention", f"{b}:retention"], "svg", size="double")

Both render from the store alone (no model), lay the figure out for a journal column (see
`explorer.plots.paper`), and write provenance into the file's metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from explorer.config import Settings
from explorer.errors import InputError
from explorer.plots.paper import ExportOptions


def _store(db: str | Path | None, settings: Settings | None) -> Any:
    from explorer.api.runner import open_store

    store = open_store(db, settings)
    if store is None:
        raise InputError("exporting needs a run store")
    return store


def list_figures(
    run_id: str, db: str | Path | None = None, settings: Settings | None = None
) -> list[dict[str, str]]:
    """The figures a stored run can export: [{name, title}]."""
    from explorer.plots import figures_for

    result = _store(db, settings).load(run_id)
    return [{"name": s.name, "title": s.title} for s in figures_for(result)]


def export_figure(
    run_id: str,
    fmt: str,
    figure: str | None = None,
    out: str | Path = ".",
    *,
    size: str = "double",
    title: bool = True,
    font_pt: float = 8.0,
    background: str = "light",
    db: str | Path | None = None,
    settings: Settings | None = None,
) -> Path:
    """Write one figure (or its data, for csv/parquet) of a stored run into `out`; returns the path.
    The same run and options always give the same bytes."""
    from explorer.plots import export, figure_spec

    options = ExportOptions(size=size, title=title, font_pt=font_pt, background=background).validate()
    store = _store(db, settings)
    result = store.load(run_id)
    spec = figure_spec(result, figure)
    return export(result, fmt, Path(out), figure=spec.name, options=options, run_info=store.info(run_id))


def parse_panel(item: str) -> tuple[str, str | None]:
    """ "RUN_ID:FIGURE" (or a bare RUN_ID for the run's first figure) -> (run_id, figure)."""
    run_id, _, figure = item.partition(":")
    if not run_id.strip():
        raise InputError(f"panel {item!r}: expected RUN_ID:FIGURE")
    return run_id.strip(), (figure.strip() or None)


def export_panel(
    items: list[str],
    fmt: str,
    out: str | Path = ".",
    *,
    size: str = "double",
    title: bool = True,
    font_pt: float = 8.0,
    background: str = "light",
    stem: str | None = None,
    db: str | Path | None = None,
    settings: Settings | None = None,
) -> Path:
    """Compose figures of stored runs ("RUN_ID:FIGURE" each) into one multi-panel figure, stacked
    top to bottom and labelled (a), (b), (c)..., with one shared style; returns the path."""
    from explorer.plots import FIGURE_FORMATS, figure_spec, package_version, write_figure
    from explorer.plots.panel import compose_panels

    if fmt not in FIGURE_FORMATS:
        raise InputError(f"panels are figures: choose a format from {FIGURE_FORMATS}, not {fmt!r}")
    if len(items) < 2:
        raise InputError("a panel figure needs at least two RUN_ID:FIGURE items")
    options = ExportOptions(size=size, title=title, font_pt=font_pt, background=background).validate()
    store = _store(db, settings)
    figures, sources = [], []
    for item in items:
        run_id, name = parse_panel(item)
        result = store.load(run_id)
        spec = figure_spec(result, name)
        info = store.info(run_id).to_dict()
        figures.append(spec.build(result))
        sources.append(
            {
                "run_id": run_id,
                "figure": spec.name,
                "kind": result.kind,
                "model": info["model"],
                "weight_hash": info["weight_hash"],
                "params": info["params"],
                "prompt": info["prompt"],
            }
        )
    composed = compose_panels(figures, options)
    from explorer.plots.paper import option_flags

    refs = [f"{s['run_id']}:{s['figure']}" for s in sources]
    flags = " ".join(option_flags(options))
    meta = {
        "panels": sources,
        "version": package_version(),
        "options": options.to_json(),
        "command": f"explorer export {' '.join(refs)} --panel --format {fmt}"
        + (f" {flags}" if flags else ""),
        "python": f"explorer.export_panel({refs!r}, {fmt!r})",
        "title": "panel figure",
    }
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem or 'panel_' + '_'.join(s['run_id'][:8] for s in sources)}.{fmt}"
    return write_figure(composed, path, fmt, options=options, provenance=meta, laid_out=True)
