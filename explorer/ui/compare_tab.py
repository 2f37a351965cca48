"""The "Compare" tab: two stored runs of the same kind side by side, and their difference."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from explorer.compare import RunComparison, compare_runs
from explorer.plots import figure_spec, figures_for
from explorer.plots.compare import TITLES, difference_figure
from explorer.ui.common import UIContext, user_errors
from explorer.ui.runs_tab import run_choices
from explorer.ui.share import COMPARE_TAB_ID, compare_link

TITLE = "Compare"


def summary_markdown(c: RunComparison) -> str:
    a, b = c.run_a, c.run_b
    lines = [
        f"**A** `{a.run_id}` · {a.kind} · model `{a.model_id}` · prompt `{a.prompt[:120]}`",
        f"**B** `{b.run_id}` · {b.kind} · model `{b.model_id}` · prompt `{b.prompt[:120]}`",
        f"\n{c.aligned_positions} aligned positions.",
    ]
    if c.param_changes:
        lines.append(f"\nWhat differs: `{json.dumps(c.param_changes)[:600]}`")
    if c.summary:
        lines.append(f"\nSummary: `{json.dumps(c.summary)}`")
    lines += [f"\n> ⚠️ {note}" for note in c.notes]
    return "\n".join(lines)


def build(ctx: UIContext) -> Any:
    comparison = gr.State(None)
    gr.Markdown(
        "Any two stored runs of the same kind — the same prompt on two models, two prompts on one model, "
        "pruned vs unpruned — side by side, aligned by position (and by relative depth across models), with "
        "a difference view (B minus A). Same as `explorer compare RUN_A RUN_B`."
    )
    with gr.Row():
        run_a = gr.Dropdown(choices=[], allow_custom_value=True, label="Run A", elem_id="compare-a", scale=3)
        run_b = gr.Dropdown(choices=[], allow_custom_value=True, label="Run B", elem_id="compare-b", scale=3)
        go_btn = gr.Button("Compare", variant="primary", scale=1)
    summary = gr.Markdown()
    with gr.Row(elem_classes=["export-row"]):
        link_btn = gr.Button("Link", size="sm", min_width=60, elem_classes=["share-link-button"])
        link_box = gr.Textbox(
            label="Share link (opens this comparison)",
            buttons=["copy"],
            interactive=False,
            visible=False,
            elem_id="compare-share",
            elem_classes=["share-link"],
        )
    difference = gr.Dropdown(choices=[], label="Difference view")
    diff_plot = gr.Plot(label="Difference (B − A)", elem_id="compare-diff", elem_classes=["scroll-plot"])
    figure = gr.Dropdown(choices=[], label="Aligned figure (the same view of both runs)")
    with gr.Row():
        plot_a = gr.Plot(label="A", elem_id="compare-plot-a", elem_classes=["scroll-plot"])
        plot_b = gr.Plot(label="B", elem_id="compare-plot-b", elem_classes=["scroll-plot"])

    def side_by_side(c: RunComparison | None, name: str | None) -> tuple[Any, Any]:
        if c is None or not name:
            return None, None
        store = ctx.store()
        ra, rb = store.load(c.run_a.run_id), store.load(c.run_b.run_id)
        return figure_spec(ra, name).build(ra), figure_spec(rb, name).build(rb)

    @user_errors
    def on_compare(a: str, b: str) -> tuple[Any, ...]:
        if not (a or "").strip() or not (b or "").strip():
            raise gr.Error("Choose two runs (A and B) first.")
        c = compare_runs(ctx.store(), a, b)
        names = list(c.matrices)
        first = names[0] if names else None
        specs = figures_for(ctx.store().load(c.run_a.run_id))
        fig_name = specs[0].name if specs else None
        fa, fb = side_by_side(c, fig_name)
        return (
            c,
            summary_markdown(c),
            gr.Dropdown(choices=[(TITLES.get(n, n), n) for n in names], value=first),
            difference_figure(c, first) if first else None,
            gr.Dropdown(choices=[(s.title, s.name) for s in specs], value=fig_name),
            fa,
            fb,
        )

    outputs = [comparison, summary, difference, diff_plot, figure, plot_a, plot_b]
    go_btn.click(on_compare, [run_a, run_b], outputs, api_name="compare_runs")
    difference.change(
        user_errors(lambda c, n: difference_figure(c, n) if c is not None and n else None),
        [comparison, difference],
        diff_plot,
        api_visibility="private",
    )
    figure.change(user_errors(side_by_side), [comparison, figure], [plot_a, plot_b], api_visibility="private")

    @user_errors
    def on_tab() -> tuple[Any, Any]:
        choices = run_choices(ctx)
        return gr.Dropdown(choices=choices), gr.Dropdown(choices=choices)

    @user_errors
    def on_link(c: RunComparison | None, view: str | None, request: gr.Request) -> Any:
        if c is None:
            raise gr.Error("Compare two runs first: there is nothing to link to yet.")
        return gr.Textbox(value=compare_link(request, c.run_a.run_id, c.run_b.run_id, view), visible=True)

    link_btn.click(on_link, [comparison, difference], link_box, api_visibility="private")

    def on_load(request: gr.Request) -> tuple[Any, ...]:
        """A shared link `/?run=A&compare=B&tab=compare_tab[&view=DIFFERENCE]` reopens the comparison."""
        params = dict(request.query_params) if request is not None else {}
        a, b = (params.get("run") or "").strip(), (params.get("compare") or "").strip()
        n_out = len(outputs) + 4
        if not a or not b:
            return tuple(gr.skip() for _ in range(n_out))
        try:
            shown = list(on_compare(a, b))
        except gr.Error as exc:
            message = f"**Cannot open the shared comparison:** {exc.message}"
            return (gr.Tabs(selected=COMPARE_TAB_ID), a, b, gr.skip(), gr.skip(), message,
                    *[gr.skip()] * (len(outputs) - 2))  # fmt: skip
        view = params.get("view")
        c = shown[0]
        if view and view in c.matrices:
            shown[2] = gr.Dropdown(choices=[(TITLES.get(n, n), n) for n in c.matrices], value=view)
            shown[3] = difference_figure(c, view)
        link = gr.Textbox(value=compare_link(request, a, b, view), visible=True)
        return (gr.Tabs(selected=COMPARE_TAB_ID), a, b, link, *shown)

    def wire(tab: gr.Tab) -> None:
        tab.select(on_tab, None, [run_a, run_b], api_visibility="private")
        root = gr.context.Context.root_block
        tabs = getattr(tab, "parent", None)
        if root is not None and isinstance(tabs, gr.Tabs):
            root.load(on_load, None, [tabs, run_a, run_b, link_box, *outputs], api_visibility="private")

    return wire
