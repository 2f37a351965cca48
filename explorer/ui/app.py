"""Build the Gradio app (lazily: nothing here runs at import of `explorer`)."""

from __future__ import annotations

import importlib
import logging

import gradio as gr

from explorer.config import Settings
from explorer.ui.common import UIContext

log = logging.getLogger(__name__)
TAB_MODULES = (
    "lens_tab",
    "attention_tab",
    "attribution_tab",
    "pruning_tab",
    "visual_tokens_tab",
    "vlm_eval_tab",
    "atlas_tab",
    "runs_tab",
    "compare_tab",
)

CSS = """
.export-row { align-items: center; gap: 6px; flex-wrap: wrap; }
.export-row .export-size { flex: 0 0 190px !important; }
.export-row .export-font { flex: 0 0 80px !important; }
.reproduce-snippet { font-size: 12px; }
.reproduce-snippet pre { margin: 2px 0; }
.export-row > .export-label { flex: 0 0 210px !important; min-width: 210px !important; }
.export-row button { flex: 0 0 90px !important; max-width: 90px; }
.scroll-plot { overflow-x: auto; }
.scroll-plot .js-plotly-plot { min-width: fit-content; }
"""

INTRO = """# Token Explorer
See what happens to tokens inside a transformer: **logit lens** across layers and generation steps,
**attention**, **attribution** and **pruning**. Every run is stored (DuckDB) and can be reopened from the
*Runs* tab; every plot exports as PNG/SVG/PDF and its data as CSV/Parquet."""


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    """Create the Blocks app with every available tab."""
    settings = settings or Settings.from_env()
    ctx = UIContext(settings)
    with gr.Blocks(title="Token Explorer", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            for name in TAB_MODULES:
                try:
                    module = importlib.import_module(f"explorer.ui.{name}")
                except ModuleNotFoundError as exc:
                    if exc.name == f"explorer.ui.{name}":
                        continue
                    raise
                with gr.Tab(module.TITLE, id=name) as tab:
                    on_tab = module.build(ctx)
                if callable(on_tab):  # a tab may wire events to its own selection (e.g. refresh)
                    on_tab(tab)
    bound_sessions(demo, settings)
    return demo


def bound_sessions(demo: gr.Blocks, settings: Settings) -> None:
    """What one visitor can hold: every session State expires after `session_ttl_s` (Gradio frees
    it), every text box refuses text longer than the longest prompt in the browser (the server
    checks again), and Gradio's temp files (uploads, downloads) are deleted after `temp_file_ttl_s`."""
    for block in demo.blocks.values():
        if isinstance(block, gr.State):
            block.time_to_live = settings.session_ttl_s
        elif isinstance(block, gr.Textbox) and getattr(block, "max_length", None) is None:
            block.max_length = settings.max_prompt_chars
    ttl = settings.temp_file_ttl_s
    demo.delete_cache = (max(60, ttl // 4), ttl)


def configure_queue(demo: gr.Blocks, settings: Settings) -> gr.Blocks:
    """A bounded queue: past `queue_max_size` waiting events a request is refused at once ("Queue is
    full, please try again") instead of waiting forever; each event runs at most 2 at a time."""
    return demo.queue(max_size=settings.queue_max_size, default_concurrency_limit=2)


def _warm_up_umap_in_background(settings: Settings) -> None:
    """Compile umap-learn's numba kernels while the app starts, so the first token map is fast.
    `EXPLORER_UMAP_WARMUP=0` leaves it out (the test suite does: it times CPU in the app's process)."""
    import os
    import threading

    if os.environ.get("EXPLORER_UMAP_WARMUP", "1").strip().lower() in ("0", "false", "no", "off"):
        return

    from explorer.analysis.atlas.projection import warm_up_umap

    threading.Thread(
        target=warm_up_umap, args=(settings.cache_dir,), name="umap-warm-up", daemon=True
    ).start()


def launch(settings: Settings | None = None, **kwargs: object) -> gr.Blocks:
    """Build and serve the app (returns the Blocks; with `prevent_thread_lock=True` at once)."""
    settings = settings or Settings.from_env()
    demo = build_demo(settings)
    from explorer.temp_files import prune_temp_dirs

    prune_temp_dirs(max_age_s=0)  # exports left by an earlier run of the app
    _warm_up_umap_in_background(settings)
    configure_queue(demo, settings).launch(
        server_name=settings.host,
        server_port=settings.port,
        # messages of gr.Error (every user error) are shown; other exceptions' texts (which can name
        # server paths, e.g. an upload that is not an image) are not
        show_error=False,
        enable_monitoring=False,
        max_file_size=settings.max_image_bytes,
        css=CSS,
        **kwargs,  # type: ignore[arg-type]
    )
    return demo
