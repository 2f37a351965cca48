"""Result -> Plotly figure, and export of figures (PNG/SVG/PDF) and their data (CSV/Parquet).

Figures are registered per result kind: `register_figure(kind, name, title, build, data)`
where `build(result, **view) -> go.Figure` and `data(result, **view) -> pyarrow.Table` is the
data behind that figure; view choices (layer, head, position...) are keyword arguments only. The UI, the CLI's `export` and notebooks all use `figures_for`.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

FIGURE_FORMATS = ("png", "svg", "pdf")
DATA_FORMATS = ("csv", "parquet")


def accepted_options(fn: Callable[..., Any], view: Mapping[str, Any] | None) -> dict[str, Any]:
    """The display choices in `view` that `fn` takes as keyword arguments (all of them when it
    takes **options): one view dict of a tab's controls can be passed to each of its figures."""
    if not view:
        return {}
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(view)
    return {k: v for k, v in view.items() if k in params and k != next(iter(params))}


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure: `build(result, **view)` -> Figure and `data(result, **view)` -> its
    table. View choices (layer, head, position, colour...) are keyword arguments, never part of
    the result; `figure` / `table` pass each builder the choices it takes."""

    kind: str
    name: str
    title: str
    build: Callable[..., go.Figure]
    data: Callable[..., pa.Table]
    applies: Callable[[Any], bool] = lambda result: True

    def figure(self, result: Any, view: Mapping[str, Any] | None = None) -> go.Figure:
        return self.build(result, **accepted_options(self.build, view))

    def table(self, result: Any, view: Mapping[str, Any] | None = None) -> pa.Table:
        return self.data(result, **accepted_options(self.data, view))


_FIGURES: dict[str, list[FigureSpec]] = {}


def register_figure(
    kind: str,
    name: str,
    title: str,
    build: Callable[..., go.Figure],
    data: Callable[..., pa.Table],
    applies: Callable[[Any], bool] = lambda result: True,
) -> None:
    specs = _FIGURES.setdefault(kind, [])
    specs[:] = [s for s in specs if s.name != name]
    specs.append(FigureSpec(kind, name, title, build, data, applies))


def figures_for(result: Any) -> list[FigureSpec]:
    """The figures that apply to `result` (registered for its kind), in registration order."""
    _load_builtin_figures()
    return [s for s in _FIGURES.get(result.kind, []) if s.applies(result)]


def figure_spec(result: Any, name: str | None = None) -> FigureSpec:
    specs = figures_for(result)
    if not specs:
        from explorer.errors import InputError

        raise InputError(f"no figures for a {result.kind!r} run")
    if name is None:
        return specs[0]
    for s in specs:
        if s.name == name:
            return s
    from explorer.errors import InputError

    raise InputError(
        f"unknown figure {name!r} for a {result.kind!r} run; choose from {[s.name for s in specs]}"
    )


def _load_builtin_figures() -> None:
    # importing registers; kept lazy so `import explorer` stays light
    import explorer.plots.lens  # noqa: F401

    for module in (
        "attention",
        "attribution",
        "pruning",
        "vlm",
        "atlas",
        "vlm_tokens",
        "vlm_attention",
        "vlm_attribution",
        "vlm_eval",
        "vlm_prune",
        "vlm_latent",
        "vista_patterns",
        "sweep",
    ):
        try:
            __import__(f"explorer.plots.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"explorer.plots.{module}":
                raise


# ---- labels ----------------------------------------------------------------------------
def token_label(token: str) -> str:
    """A token as a readable, HTML-safe plot label: whitespace-only tokens as "␣", the empty
    token as "∅", newlines and tabs as \\n / \\t (plotly renders a subset of HTML)."""
    import html

    if not token.strip(" "):
        return "␣" * len(token) if token else "∅"
    return html.escape(token.replace("\n", "\\n").replace("\t", "\\t"), quote=False)


# ---- styling ---------------------------------------------------------------------------
FONT = "Helvetica, Arial, sans-serif"


def base_layout(fig: go.Figure, title: str, height: int = 480, width: int | None = None) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template="plotly_white",
        font={"family": FONT, "size": 13},
        height=height,
        margin={"l": 70, "r": 30, "t": 60, "b": 70},
    )
    if width:
        fig.update_layout(width=width)
    return fig


def publication_style(fig: go.Figure) -> go.Figure:
    """A copy styled for a paper: white background, larger fonts, no UI chrome."""
    out = go.Figure(fig)
    out.update_layout(
        template="plotly_white",
        font={"family": FONT, "size": 15, "color": "black"},
        paper_bgcolor="white",
        plot_bgcolor="white",
        hovermode=False,
    )
    return out


# ---- export ----------------------------------------------------------------------------
_KALEIDO_LOCK = threading.Lock()
_KALEIDO_STARTED = False


def _ensure_kaleido() -> None:
    global _KALEIDO_STARTED
    if _KALEIDO_STARTED:
        return
    import kaleido

    try:
        kaleido.start_sync_server(silence_warnings=True)
    except TypeError:
        kaleido.start_sync_server()
    except RuntimeError:
        pass  # already running
    _KALEIDO_STARTED = True


def figure_bytes(
    fig: go.Figure,
    fmt: str,
    width: int | None = None,
    height: int | None = None,
    options: Any | None = None,
    provenance: dict[str, Any] | None = None,
    laid_out: bool = False,
) -> bytes:
    """Render `fig` to PNG/SVG/PDF bytes with kaleido + Chromium.

    `options` (an `ExportOptions`) lays the figure out for a journal column (the default: double
    column) or, with size "screen", keeps the page layout in publication style. `provenance` is
    written into the file's metadata; the same figure and provenance always give the same bytes.
    `laid_out=True`: `fig` is already laid out for print (a composed panel figure)."""
    from explorer.errors import InputError
    from explorer.plots.paper import PNG_DPI, PX_PER_IN, ExportOptions, paper_figure
    from explorer.plots.provenance import with_provenance

    if fmt not in FIGURE_FORMATS:
        raise InputError(f"unknown figure format {fmt!r}; choose from {FIGURE_FORMATS}")
    opts = options or ExportOptions()
    if laid_out:
        styled = fig
    else:
        styled = publication_style(fig) if opts.size == "screen" else fig
        styled = paper_figure(styled, opts)
    styled = go.Figure(styled)
    for i, trace in enumerate(styled.data):  # plotly draws random trace uids into the SVG otherwise
        if getattr(trace, "uid", None) is None:
            trace.uid = f"t{i}"
    w = width or styled.layout.width or 1000
    h = height or styled.layout.height or 500
    scale = 2.0 if opts.size == "screen" else PNG_DPI / PX_PER_IN
    import plotly.io as pio

    with _KALEIDO_LOCK:
        try:
            _ensure_kaleido()
            data = bytes(
                pio.to_image(styled, format=fmt, width=w, height=h, scale=scale if fmt == "png" else 1)
            )
        except Exception as exc:  # no Chromium, crashed renderer ...
            raise RuntimeError(
                f"figure export failed ({exc}). Export needs Chromium: `apt-get install chromium` "
                f"(or set BROWSER_PATH)"
            ) from exc
    dpi = PNG_DPI if opts.size != "screen" else None
    return with_provenance(data, fmt, provenance or {}, dpi=dpi)


def write_figure(
    fig: go.Figure,
    path: Path,
    fmt: str | None = None,
    options: Any | None = None,
    provenance: dict[str, Any] | None = None,
    laid_out: bool = False,
) -> Path:
    fmt = fmt or path.suffix.lstrip(".")
    path.write_bytes(figure_bytes(fig, fmt, options=options, provenance=provenance, laid_out=laid_out))
    return path


def write_table(table: pa.Table, path: Path, fmt: str | None = None) -> Path:
    """Write `table` as CSV or Parquet (list columns are JSON-encoded for CSV)."""
    from explorer.errors import InputError

    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        flat = table
        for i, f in enumerate(table.schema):
            if pa.types.is_list(f.type) or pa.types.is_struct(f.type):
                import json

                col = pa.array([json.dumps(v) for v in table.column(i).to_pylist()])
                flat = flat.set_column(i, f.name, col)
        pacsv.write_csv(flat, path)
    else:
        raise InputError(f"unknown data format {fmt!r}; choose from {DATA_FORMATS}")
    return path


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("token-explorer")
    except PackageNotFoundError:
        return "unknown"


def figure_provenance(
    result: Any, figure: str, fmt: str, options: Any, run_info: Any | None = None
) -> dict[str, Any]:
    """What an exported figure carries in its metadata: enough to regenerate it exactly."""
    from explorer.plots.paper import export_command, export_python

    run_id = getattr(result, "run_id", None)
    info = run_info.to_dict() if run_info is not None else {}
    return {
        "run_id": run_id,
        "kind": result.kind,
        "figure": figure,
        "model": info.get("model") or getattr(result, "model", None),
        "weight_hash": info.get("weight_hash") or getattr(result, "weight_hash", None),
        "params": info.get("params") if info else getattr(result, "params", None),
        "prompt": info.get("prompt"),
        "version": package_version(),
        "options": options.to_json(),
        "command": export_command(run_id, figure, fmt, options),
        "python": export_python(run_id, figure, fmt, options),
    }


def export(
    result: Any,
    fmt: str,
    out_dir: Path,
    figure: str | None = None,
    stem: str | None = None,
    options: Any | None = None,
    run_info: Any | None = None,
    view: Mapping[str, Any] | None = None,
) -> Path:
    """Export one figure of `result` (default: its first) or that figure's data, drawn with the
    display choices in `view` (e.g. {"layer": 3, "head": "mean"}; each builder takes its own).

    Figures are laid out by `options` (an `ExportOptions`, default double column) and carry
    their provenance (run id, model, weight hash, parameters, version, the regenerating command)
    in the file's metadata; `run_info` (the store's `RunInfo`) supplies the model's weight hash."""
    from explorer.errors import InputError
    from explorer.plots.paper import ExportOptions

    spec = figure_spec(result, figure)
    opts = (options or ExportOptions()).validate()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{getattr(result, 'run_id', None) or result.kind}_{spec.name}"
    path = out_dir / f"{stem}.{fmt}"
    if fmt in FIGURE_FORMATS:
        meta = figure_provenance(result, spec.name, fmt, opts, run_info)
        meta["title"] = spec.title
        return write_figure(spec.figure(result, view), path, fmt, options=opts, provenance=meta)
    if fmt in DATA_FORMATS:
        return write_table(spec.table(result, view), path, fmt)
    raise InputError(f"unknown export format {fmt!r}; choose from {FIGURE_FORMATS + DATA_FORMATS}")
