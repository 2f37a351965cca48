"""The Runs tab's "Dataset sweeps" panel: stored sweeps, and a sweep over an uploaded dataset.

A sweep from the UI runs in the app's process (one worker) with a Gradio progress bar; its shards go
to `<cache>/sweeps/<analysis>-<hash of dataset contents, model, params>`, so the same upload resumes
where it stopped. Images referenced by an uploaded file are not uploaded with it: rows with images
need the CLI or the API (or vlm-eval's built-in sets).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import gradio as gr

from explorer.ui.common import UIContext, dtype_dropdown, progress_fn, ui_figure, user_errors

SWEEP_COLUMNS = ["run_id", "created", "analysis", "model", "dataset"]
BUILTIN = ("", "pope", "qa", "caption", "all")


def sweeps_table(ctx: UIContext) -> list[list[Any]]:
    from explorer.api.sweep import list_sweeps

    return [
        [s["run_id"], s["created"][:19], s["analysis"], s["model"], str(s["dataset"]).split("/")[-1]]
        for s in list_sweeps(db=ctx.store(), settings=ctx.settings)
    ]


def build(ctx: UIContext) -> None:
    gr.Markdown(
        "Every stored sweep (`explorer sweep` or below). Open one in the run chooser above to draw its "
        "aggregate figure; its shards are SQL views `sweep_<run_id>_<table>`."
    )
    table = gr.Dataframe(
        value=lambda: sweeps_table(ctx), headers=SWEEP_COLUMNS, interactive=False, elem_id="sweeps-table"
    )
    with gr.Row():
        upload = gr.File(label="Dataset (.jsonl, .csv, .parquet)", file_types=[".jsonl", ".csv", ".parquet"])
        builtin = gr.Dropdown(list(BUILTIN), value="", label="or a built-in set (vlm-eval)")
    with gr.Row():
        analysis = gr.Dropdown(
            ["lens", "attention", "attribute", "prune", "vlm-eval"], value="lens", label="Analysis"
        )
        model = gr.Textbox(label="Model (empty: the analysis's default)", value="")
        params = gr.Textbox(label="Parameters (JSON)", value="{}", lines=1)
        dtype = dtype_dropdown(ctx)
    run = gr.Button("Run the sweep", variant="primary")
    summary = gr.Markdown(elem_id="sweep-summary")
    plot = gr.Plot(label="Aggregate", elem_id="sweep-plot")

    @user_errors
    def on_run(
        file: Any,
        set_name: str,
        analysis_v: str,
        model_v: str,
        params_v: str,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        from pathlib import Path

        from explorer.api.sweep import sweep
        from explorer.errors import InputError
        from explorer.plots import figure_spec
        from explorer.table_files import file_digest

        path = getattr(file, "name", file) if file else None
        dataset = str(path) if path else (set_name or "")
        if not dataset:
            raise InputError("upload a dataset or choose a built-in set")
        contents = file_digest(Path(dataset)) if path else dataset
        tag = hashlib.sha256(
            json.dumps([contents, model_v.strip(), params_v.strip(), dtype_v or "auto"]).encode()
        ).hexdigest()[:12]
        result = sweep(
            dataset,
            analysis_v,
            ctx.settings.cache_dir / "sweeps" / f"{analysis_v}-{tag}",
            model=model_v.strip() or None,
            params=params_v,
            db=ctx.store(),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        text = (
            f"**sweep** run `{result.run_id}` · {result.analysis} · {result.n_done}/{result.n_rows} rows "
            f"({result.n_new} new) in {result.seconds:.1f} s"
        )
        figure = ui_figure("aggregate", figure_spec(result, "aggregate").build, result, run_id=result.run_id)
        return text, figure, sweeps_table(ctx)

    run.click(
        on_run,
        [upload, builtin, analysis, model, params, dtype],
        [summary, plot, table],
        api_name="run_sweep",
    )
