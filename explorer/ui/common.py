"""Pieces every tab uses: the context, error handling, progress, export buttons."""

from __future__ import annotations

import functools
import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
import plotly.graph_objects as go

from explorer.config import Settings
from explorer.errors import InputError
from explorer.model_policy import hosted_mode
from explorer.plots import DATA_FORMATS, FIGURE_FORMATS, export, figure_spec
from explorer.plots.paper import ExportOptions, export_command, export_python
from explorer.progress import ProgressFn
from explorer.store import Store
from explorer.temp_files import fresh_temp_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UIContext:
    """What a tab needs from the app: settings (paths, limits, default models)."""

    settings: Settings

    def store(self) -> Store:
        return Store.open(self.settings.database)


def dtype_dropdown(ctx: UIContext) -> gr.Dropdown:
    """The weights' dtype control every model-running tab shows (choices from the backends)."""
    from explorer.backends.loading import DTYPE_NAMES

    return gr.Dropdown(
        choices=list(DTYPE_NAMES),
        value=ctx.settings.dtype,
        label="Weights dtype (auto: float16 on CUDA, float32 on CPU)",
    )


def progress_fn(progress: gr.Progress) -> ProgressFn:
    """Adapt a Gradio progress tracker to the API's `progress(fraction, message)`."""

    def report(fraction: float, message: str) -> None:
        progress(fraction, desc=message)

    return report


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn InputError into a Gradio error toast; log anything else and show a short message.

    The server never crashes on a handler's exception; nothing is half-written because the
    API only writes a run after it computed completely."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except InputError as exc:
            raise gr.Error(str(exc), duration=None) from exc
        except Exception as exc:
            log.error("handler %s failed:\n%s", fn.__name__, traceback.format_exc())
            # the exception's own text can name server paths: show it only to a local user
            detail = (
                f": {exc}" if not hosted_mode(Settings.from_env()) else "; the server log has the details"
            )
            raise gr.Error(f"Internal error ({type(exc).__name__}){detail}", duration=None) from exc

    return wrapper


# ---- figures in the page ---------------------------------------------------------------
GRADIO_TITLED_TOP_MARGIN = 100  # gr.Plot raises a titled figure's top margin to this (room for its label)
MIN_PLOT_AREA = 120  # px of plot area a figure keeps below the margins, so a colour bar and ticks fit


def message_figure(name: str, message: str) -> go.Figure:
    """A figure that shows `message` where the figure `name` would be (and says so in
    `layout.meta`, which the browser tests read)."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
        font={"size": 14, "color": "#9b1c1c"}, align="center",
    )  # fmt: skip
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(
        template="plotly_white", height=160, margin={"l": 20, "r": 20, "t": 20, "b": 20},
        meta={"figure": name, "figure_error": message},
    )  # fmt: skip
    return fig


def _numbers(values: Any) -> np.ndarray | None:
    """`values` as a flat float array, or None when they are not numbers (e.g. category labels)."""
    if values is None:
        return None
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return arr


def figure_problem(fig: go.Figure) -> str | None:
    """Why `fig` would show nothing, or None: no traces, or no trace whose numeric coordinates
    (each of x, y, z that holds numbers) have a finite value."""
    if not fig.data:
        return "it has no traces"
    for trace in fig.data:
        if trace.type in ("image", "table") or getattr(trace, "source", None):
            return None  # pictures and tables carry their content in other fields
        arrays = [getattr(trace, key, None) for key in ("z", "y", "x", "values")]
        present = [a for a in arrays if a is not None and len(a)]
        numeric = [n for n in (_numbers(a) for a in present) if n is not None]
        if numeric and all(np.isfinite(n).any() for n in numeric):
            return None
        if present and not numeric:
            return None  # only labels, e.g. a categorical chart of text
    return "its data is empty or NaN everywhere"


def fit_for_page(fig: go.Figure) -> go.Figure:
    """Make room for what gr.Plot changes: it raises a titled figure's top margin to 100 px and
    lets margins grow, which would squeeze a short figure's plot area to nothing (plotly then
    throws "Something went wrong with axis scaling" and the plot collapses to height 0). The
    height grows by what the margin gains, and the plot area keeps at least `MIN_PLOT_AREA`."""
    layout = fig.layout
    height = layout.height or 450
    top = layout.margin.t if layout.margin.t is not None else 100
    bottom = layout.margin.b if layout.margin.b is not None else 80
    area = max(MIN_PLOT_AREA, height - top - bottom)
    shown_top = max(GRADIO_TITLED_TOP_MARGIN, top) if layout.title.text else top
    fig.update_layout(height=int(shown_top + bottom + area))
    return fig


def ui_figure(
    name: str, build: Callable[..., go.Figure | None], *args: Any, run_id: str | None = None, **kwargs: Any
) -> Any:
    """Build the figure `name` for the page. A figure that cannot be built, or would show
    nothing, becomes a message in its place, and the server log says why: never a blank space.
    `layout.meta` names the figure (and its run), so a browser can tell which figure it shows."""
    fig = _build_or_message(name, build, *args, **kwargs)
    if fig is not None:
        meta = fig.layout.meta if isinstance(fig.layout.meta, dict) else {}
        fig.update_layout(meta={**meta, "figure": name, "run_id": run_id})
    return fig


def _build_or_message(name: str, build: Callable[..., go.Figure | None], *args: Any, **kwargs: Any) -> Any:
    try:
        fig = build(*args, **kwargs)
    except InputError as exc:
        log.warning("figure %s not drawn: %s", name, exc)
        return message_figure(name, f"{name}: {exc}")
    except Exception as exc:
        log.error("figure %s could not be built:\n%s", name, traceback.format_exc())
        return message_figure(
            name,
            f"The figure '{name}' could not be drawn ({type(exc).__name__}: {exc}).<br>The server log has details.",
        )
    if fig is None:
        return None
    problem = figure_problem(fig)
    if problem:
        log.error("figure %s shows nothing: %s", name, problem)
        return message_figure(name, f"The figure '{name}' has nothing to show: {problem}.")
    return fit_for_page(fig)


def client_gone() -> Callable[[], bool]:
    """A callable that turns true once the client that started this event went away (closed the
    page, pressed Stop, or an API client cancelled); long handlers poll it to stop early."""
    try:
        from gradio.context import LocalContext

        blocks = LocalContext.blocks.get(None)
        event_id = LocalContext.event_id.get(None)
    except (ImportError, AttributeError):
        return lambda: False
    queue = getattr(blocks, "_queue", None)
    if queue is None or event_id is None:
        return lambda: False

    def gone() -> bool:
        for job_set in list(getattr(queue, "active_jobs", [])):
            for job in job_set or []:
                if getattr(job, "_id", None) == event_id:
                    return not getattr(job, "alive", True)
        return False

    return gone


def export_file(
    result: Any,
    figure: str,
    fmt: str,
    options: ExportOptions | None = None,
    settings: Settings | None = None,
    view: dict[str, Any] | None = None,
) -> str:
    """Export `figure` of `result`, drawn with the tab's display choices `view`, to a fresh temp
    dir and return the path for a gr.File. The file carries its provenance (with the model's
    weight hash from the run store when it is there)."""
    if result is None:
        raise gr.Error("Run an analysis first: there is nothing to export yet.")
    out_dir = fresh_temp_dir("export-", max_age_s=Settings.from_env().temp_file_ttl_s)
    spec = figure_spec(result, figure)
    stem = f"{getattr(result, 'run_id', None) or result.kind}_{spec.name}"
    info = None
    run_id = getattr(result, "run_id", None)
    if settings is not None and run_id:
        try:
            info = Store.open(settings.database).info(run_id)
        except Exception:  # the run is not stored (or the store is busy): export without its hash
            log.warning("no store entry for run %s; its export carries no weight hash", run_id)
    return str(
        export(result, fmt, out_dir, figure=spec.name, stem=stem, options=options, run_info=info, view=view)
    )


def reproduce_snippet(result: Any, figure: str, options: ExportOptions) -> str:
    """Markdown: the CLI command and Python call that regenerate this figure from the store."""
    if result is None or not getattr(result, "run_id", None):
        return "*Run an analysis: the command that reproduces this figure appears here.*"
    run_id = str(result.run_id)
    return (
        "Reproduce this figure:\n"
        f"```bash\n{export_command(run_id, figure, 'pdf', options)}\n```\n"
        f"```python\nimport explorer\n{export_python(run_id, figure, 'pdf', options)}\n```"
    )


def _options(size: str, title: bool, font_pt: float | None, background: str) -> ExportOptions:
    try:
        return ExportOptions(
            size=size, title=bool(title), font_pt=float(font_pt or 8), background=background
        ).validate()
    except InputError as exc:
        raise gr.Error(str(exc)) from exc


def export_controls(
    result_state: gr.State,
    figure: str | gr.State,
    label: str = "Export",
    ctx: UIContext | None = None,
    view: gr.State | None = None,
) -> gr.File:
    """`figure`: a figure name, or a State holding the name (a view that switches figures).
    `view`: a State holding the tab's display choices (layer, head...), passed to the figure.

    A figure's export row: journal size, title, font size and background; PNG/SVG/PDF/CSV/
    Parquet buttons; the download slot; and the CLI/Python snippet that reproduces the figure."""
    default = ExportOptions()
    with gr.Row(elem_classes=["export-row"]):
        gr.Markdown(f"**{label}:**", elem_classes=["export-label"])
        size = gr.Dropdown(
            [("single column (3.3 in)", "single"), ("double column (7 in)", "double"), ("screen", "screen")],
            value=default.size, show_label=False, container=False, min_width=150, elem_classes=["export-size"],
        )  # fmt: skip
        title = gr.Checkbox(value=default.title, label="title", container=False, min_width=70)
        font = gr.Number(
            value=default.font_pt, minimum=7, maximum=14, step=0.5, label="pt", container=False, min_width=70,
            elem_classes=["export-font"],
        )  # fmt: skip
        background = gr.Dropdown(
            [("white", "light"), ("transparent", "transparent")], value=default.background, show_label=False,
            container=False, min_width=110,
        )  # fmt: skip
        buttons = {
            fmt: gr.Button(fmt.upper(), size="sm", min_width=60) for fmt in FIGURE_FORMATS + DATA_FORMATS
        }
        from explorer.ui.share import link_controls

        link_controls(result_state, figure)  # every result panel has a share link with a copy button
    snippet = gr.Markdown(reproduce_snippet(None, "", default), elem_classes=["reproduce-snippet"])
    out = gr.File(label="Download", visible=False, interactive=False)
    settings = ctx.settings if ctx is not None else None
    figure_input = [figure] if isinstance(figure, gr.State) else []
    fixed: dict[str, str] = {} if isinstance(figure, gr.State) else {"figure": figure}
    view_input = [view] if view is not None else []
    inputs = [result_state, *figure_input, size, title, font, background, *view_input]
    for fmt, button in buttons.items():
        handler = functools.partial(
            export_handler, fmt=fmt, settings=settings, has_view=view is not None, **fixed
        )
        button.click(user_errors(handler), inputs=inputs, outputs=[out], api_visibility="private")
    show = functools.partial(snippet_handler, has_view=view is not None, **fixed)
    for trigger in inputs:
        trigger.change(show, inputs=inputs, outputs=[snippet], api_visibility="private")  # type: ignore[attr-defined]
    return out


def _by_position(args: tuple[Any, ...], figure: str | None) -> tuple[Any, str, tuple[Any, ...]]:
    """(result, figure name, option values) from a handler's inputs: the figure is either fixed
    or the second input."""
    if figure is None:
        return args[0], args[1], args[2:]
    return args[0], figure, args[1:]


def snippet_handler(*args: Any, figure: str | None = None, has_view: bool = False) -> str:
    """Export controls' handler: the Python snippet that reproduces the chosen figure."""
    result, name, (size, title, font_pt, background) = _by_position(args[:-1] if has_view else args, figure)
    if not name:
        return reproduce_snippet(None, "", ExportOptions())
    try:
        options = ExportOptions(
            size=size, title=bool(title), font_pt=float(font_pt or 8), background=background
        )
        return reproduce_snippet(result, name, options.validate())
    except InputError as exc:
        return f"*{exc}*"


def export_handler(
    *args: Any, fmt: str, settings: Settings | None, figure: str | None = None, has_view: bool = False
) -> Any:
    """Export controls' handler: write the chosen figure in `fmt` (with the tab's display
    choices, the last input when `has_view`) and return the file."""
    view = args[-1] if has_view else None
    result, name, (size, title, font_pt, background) = _by_position(args[:-1] if has_view else args, figure)
    if not name:
        raise gr.Error("Choose a figure first.")
    options = _options(size, title, font_pt, background)
    return gr.File(value=export_file(result, name, fmt, options, settings, view=view), visible=True)
