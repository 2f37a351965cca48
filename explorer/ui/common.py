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


def export_file(result: Any, figure: str, fmt: str) -> str:
    """Export `figure` of `result` to a fresh temp dir and return the path for a gr.File."""
    if result is None:
        raise gr.Error("Run an analysis first: there is nothing to export yet.")
    out_dir = fresh_temp_dir("export-", max_age_s=Settings.from_env().temp_file_ttl_s)
    spec = figure_spec(result, figure)
    stem = f"{getattr(result, 'run_id', None) or result.kind}_{spec.name}"
    return str(export(result, fmt, out_dir, figure=spec.name, stem=stem))


def export_controls(result_state: gr.State, figure: str, label: str = "Export") -> gr.File:
    """A row of PNG/SVG/PDF/CSV/Parquet buttons for one figure, plus the download slot."""
    with gr.Row(elem_classes=["export-row"]):
        gr.Markdown(f"**{label}:**", elem_classes=["export-label"])
        buttons = {
            fmt: gr.Button(fmt.upper(), size="sm", min_width=60) for fmt in FIGURE_FORMATS + DATA_FORMATS
        }
    out = gr.File(label="Download", visible=False, interactive=False)
    for fmt, button in buttons.items():
        button.click(
            user_errors(functools.partial(_export_handler, figure=figure, fmt=fmt)),
            inputs=[result_state],
            outputs=[out],
            api_visibility="private",
        )
    return out


def _export_handler(result: Any, *, figure: str, fmt: str) -> Any:
    return gr.File(value=export_file(result, figure, fmt), visible=True)
