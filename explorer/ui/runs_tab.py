"""The "Runs" tab: every stored run, newest first; reopen any run from the store alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from explorer.api import query_limits
from explorer.plots import figure_spec, figures_for
from explorer.ui import sweeps_panel
from explorer.ui.common import UIContext, client_gone, export_controls, ui_figure, user_errors
from explorer.ui.share import RUNS_TAB_ID, share_link

TITLE = "Runs"
TAB_ID = RUNS_TAB_ID  # the tab's id in the app (its module name): share links select it
COLUMNS = ["run_id", "created", "kind", "model", "prompt", "params", "seconds"]


def runs_table(ctx: UIContext, kind: str | None = None, limit: int = 200) -> list[list[Any]]:
    rows = []
    for info in ctx.store().list_runs(limit=limit, kind=kind or None):
        prompt = info.prompt if len(info.prompt) <= 80 else info.prompt[:77] + "..."
        rows.append(
            [
                info.run_id,
                info.created[:19],
                info.kind,
                info.model_id,
                prompt,
                json.dumps(info.params),
                round(info.duration_s, 3),
            ]
        )
    return rows


def run_choices(ctx: UIContext, kind: str | None = None, limit: int = 200) -> list[tuple[str, str]]:
    """Dropdown entries (label, run id), newest first."""
    out = []
    for info in ctx.store().list_runs(limit=limit, kind=kind or None):
        prompt = info.prompt if len(info.prompt) <= 50 else info.prompt[:47] + "..."
        out.append((f"{info.run_id} · {info.kind} · {info.created[:19]} · {prompt}", info.run_id))
    return out


def kind_choices() -> list[str]:
    """ "" (every kind) plus every result kind registered by the analyses (the result registry)."""
    from explorer.results import RESULT_KINDS

    return ["", *RESULT_KINDS.all_kinds()]


def build(ctx: UIContext) -> Callable[[gr.Tab], None]:
    state = gr.State(None)
    gr.Markdown(
        "Stored runs, newest first. Choose a run (or click a row, or type its id) to redraw it from "
        "the store — no model is run."
    )
    with gr.Row():
        kind = gr.Dropdown(
            kind_choices(),
            value="",
            label="Kind",
            allow_custom_value=True,
        )
        refresh = gr.Button("Refresh", size="sm")
    table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="runs-table")
    with gr.Row():
        run_id = gr.Dropdown(
            choices=run_choices(ctx),
            value=None,
            allow_custom_value=True,
            label="Run (or type its id)",
            scale=3,
            elem_id="runs-choice",
        )
        open_btn = gr.Button("Open", variant="primary", scale=1)
    info = gr.Markdown(elem_id="runs-info")
    share = gr.Textbox(
        label="Share link (opens this run and figure)",
        buttons=["copy"],
        interactive=False,
        elem_id="runs-share",
    )
    figure = gr.Dropdown(choices=[], label="Figure", elem_id="runs-figure")
    plot = gr.Plot(label="Figure", elem_id="runs-plot", elem_classes=["scroll-plot"])
    figure_state = gr.State("")
    export_controls(state, figure_state, ctx=ctx)  # the figure the dropdown shows

    with gr.Accordion("Query the store (read-only SQL)", open=False):
        gr.Markdown(
            "One `SELECT` over `runs` and the long-form result tables (`SHOW TABLES` lists them), e.g. compare "
            "the layer where ' Paris' becomes top-1 across runs. No file or network access; nothing is modified."
        )
        sql = gr.Textbox(
            label="SQL",
            lines=3,
            value="SELECT kind, model_id, count(*) AS runs, round(avg(duration_s), 3) AS mean_seconds\n"
            "FROM runs GROUP BY kind, model_id ORDER BY runs DESC",
        )
        sql_btn = gr.Button("Run query", size="sm")
        sql_out = gr.Dataframe(interactive=False, wrap=True, elem_id="sql-result")

    with gr.Accordion("Dataset sweeps", open=False):
        sweeps_panel.build(ctx)

    @user_errors
    def on_sql(query: str) -> Any:
        # bounded: EXPLORER_SQL_TIMEOUT_S, cell and response limits; stops when the client goes away
        limits = query_limits(ctx.settings, max_rows=1000)
        return ctx.store().query(query, limits=limits, cancelled=client_gone()).to_pandas()

    # its own pool of workers: a slow query never makes another user's query (or analysis) wait
    sql_btn.click(on_sql, [sql], [sql_out], api_name="query_runs", concurrency_limit=4, concurrency_id="sql")

    @user_errors
    def on_refresh(kind_v: str) -> tuple[list[list[Any]], Any]:
        return runs_table(ctx, kind_v), gr.Dropdown(choices=run_choices(ctx, kind_v))

    @user_errors
    def on_select(evt: gr.SelectData, rows: Any) -> str:
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            return str(rows.iloc[row, 0])
        except AttributeError:
            return str(rows[row][0])

    @user_errors
    def on_open(run_id_v: str, request: gr.Request, view: str | None = None) -> tuple[Any, ...]:
        rid = (run_id_v or "").strip()
        if not rid:
            raise gr.Error("Choose a run first (click a row or type its id).")
        store = ctx.store()
        result = store.load(rid)
        meta = store.info(rid)
        specs = figures_for(result)
        names = [s.name for s in specs]
        first = view if view in names else (names[0] if names else "")
        text = (
            f"**{meta.kind}** run `{rid}` · model `{meta.model_id}` · {meta.created[:19]} · "
            f"{meta.duration_s:.2f} s\n\nPrompt: `{meta.prompt[:300]}`\n\nParameters: `{json.dumps(meta.params)}`"
        )
        return (
            result,
            text,
            gr.Dropdown(choices=[(s.title, s.name) for s in specs], value=first),
            _figure(result, first),
            first,
            share_link(request, rid, first),
        )

    refresh.click(on_refresh, [kind], [table, run_id], api_name="list_runs")
    kind.change(on_refresh, [kind], [table, run_id], api_visibility="private")
    table.select(on_select, [table], [run_id], api_visibility="private")
    opened = [state, info, figure, plot, figure_state, share]
    open_btn.click(on_open, [run_id], opened, api_name="open_run")
    run_id.input(on_open, [run_id], opened, api_visibility="private")

    @user_errors
    def on_figure(result: Any, name: str | None, request: gr.Request) -> tuple[Any, ...]:
        rid = getattr(result, "run_id", None)
        return _figure(result, name), name or "", share_link(request, rid, name) if rid else ""

    figure.change(on_figure, [state, figure], [plot, figure_state, share], api_visibility="private")

    def on_load(request: gr.Request) -> tuple[Any, ...]:
        """A shared link `/?run=ID&tab=runs_tab&view=FIGURE` opens that run on this tab."""
        params = dict(request.query_params) if request is not None else {}
        rid = (params.get("run") or "").strip()
        if not rid or params.get("compare"):  # a comparison link: the Compare tab opens it
            return tuple(gr.skip() for _ in range(len(opened) + 2))
        try:
            shown = on_open(rid, request, view=params.get("view"))
        except gr.Error as exc:
            # the Runs tab opens on the message: a broken link must not look like a blank page
            message = f"**Cannot open the shared run:** {exc.message}"
            return (gr.Tabs(selected=TAB_ID), rid, None, message, *[gr.skip()] * 4)
        return (gr.Tabs(selected=TAB_ID), rid, *shown)

    def wire(tab: gr.Tab) -> None:
        tab.select(on_refresh, [kind], [table, run_id], api_visibility="private")
        root = gr.context.Context.root_block
        tabs = getattr(tab, "parent", None)
        if root is not None and isinstance(tabs, gr.Tabs):
            root.load(on_load, None, [tabs, run_id, *opened], api_visibility="private")

    return wire


def _figure(result: Any, name: str | None) -> go.Figure | None:
    if result is None or not name:
        return None
    return ui_figure(name, figure_spec(result, name).build, result, run_id=getattr(result, "run_id", None))
