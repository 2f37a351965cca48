"""Pieces every tab uses: the context, error handling, progress, export buttons."""

from __future__ import annotations

import functools
import logging
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from explorer.config import Settings
from explorer.errors import InputError
from explorer.plots import DATA_FORMATS, FIGURE_FORMATS, export, figure_spec
from explorer.progress import ProgressFn
from explorer.store import Store

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
            raise gr.Error(f"Internal error ({type(exc).__name__}): {exc}", duration=None) from exc

    return wrapper


def export_file(result: Any, figure: str, fmt: str) -> str:
    """Export `figure` of `result` to a fresh temp dir and return the path for a gr.File."""
    if result is None:
        raise gr.Error("Run an analysis first: there is nothing to export yet.")
    out_dir = Path(tempfile.mkdtemp(prefix="explorer-export-"))
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
