"""Figures in the page: a figure that cannot be built or would show nothing becomes a message in
its place (and a log line); short figures get room for what gr.Plot adds; a single attribution
method gets its own coloured text and faithfulness table."""

from __future__ import annotations

import logging

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer.analysis.attribution.result import AttributionComparison, AttributionResult
from explorer.plots import attribution as attribution_plots
from explorer.plots import figure_spec, figures_for
from explorer.ui.common import GRADIO_TITLED_TOP_MARGIN, MIN_PLOT_AREA, figure_problem, ui_figure


def _result(
    method: str, scores: list[float], faith: dict[str, float | None] | None = None
) -> AttributionResult:
    tokens = ["The", " capital", " of", " France", " is"][: len(scores)]
    return AttributionResult(
        model="tiny",
        method=method,
        tokens=tokens,
        input_ids=list(range(len(tokens))),
        scores=np.array(scores, dtype=np.float64),
        target={"token": " Paris", "id": 9},
        faithfulness=faith or {"soft_nc": 0.5, "soft_ns": 0.01, "comprehensiveness": 0.3, "sufficiency": 0.4},
        seconds=1.5,
        params={},
        run_id=f"run-{method}",
    )


def test_a_builder_that_raises_becomes_a_message_and_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    def broken(result: object) -> go.Figure:
        raise ZeroDivisionError("no layers")

    with caplog.at_level(logging.ERROR, logger="explorer.ui.common"):
        fig = ui_figure("heatmap", broken, object())
    meta = fig.layout.meta
    assert meta["figure"] == "heatmap" and "ZeroDivisionError: no layers" in meta["figure_error"]
    assert "could not be drawn" in fig.layout.annotations[0].text
    assert any("heatmap" in r.getMessage() and "ZeroDivisionError" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "fig",
    [
        go.Figure(),
        go.Figure(go.Heatmap(z=[[np.nan, np.nan], [np.nan, np.nan]])),
        go.Figure(go.Scatter(x=[1, 2], y=[np.nan, np.nan])),
    ],
    ids=["no-traces", "nan-heatmap", "nan-line"],
)
def test_a_figure_with_nothing_to_show_becomes_a_message(fig: go.Figure) -> None:
    assert figure_problem(fig) is not None
    shown = ui_figure("empty", lambda: fig)
    assert "nothing to show" in shown.layout.meta["figure_error"]


@pytest.mark.parametrize(
    "fig",
    [
        go.Figure(go.Heatmap(z=[[np.nan, 1.0]])),
        go.Figure(go.Scatter(x=["a", "b"], y=[1, 2])),
        go.Figure(go.Table(cells={"values": [["x"]]})),
        go.Figure(go.Bar(x=["a"], y=["b"])),
    ],
    ids=["partly-nan", "categorical-x", "table", "labels-only"],
)
def test_figures_with_content_pass(fig: go.Figure) -> None:
    assert figure_problem(fig) is None


def test_a_short_titled_figure_keeps_its_plot_area_under_gradios_top_margin() -> None:
    """gr.Plot raises a titled figure's top margin to 100 px: a 200 px figure with 60 + 70 px
    margins would keep 30 px of plot, and autoexpanding margins then crash plotly's axis scaling."""
    fig = go.Figure(go.Heatmap(z=[[1, 2, 3]]))
    fig.update_layout(title="one row", height=200, margin={"t": 60, "b": 70})
    shown = ui_figure("row", lambda: fig)
    area = shown.layout.height - max(GRADIO_TITLED_TOP_MARGIN, shown.layout.margin.t) - shown.layout.margin.b
    assert area >= MIN_PLOT_AREA


def test_single_method_shows_coloured_text_and_its_own_faithfulness_beside_a_reference() -> None:
    main = _result("reagent", [0.1, 0.5, 0.2, 0.9, 0.3])
    ref = _result(
        "occlusion",
        [0.2, 0.1, 0.0, 0.8, 0.1],
        {"soft_nc": 0.4, "soft_ns": 0.02, "comprehensiveness": 0.3, "sufficiency": 0.5},
    )
    comp = AttributionComparison(results=[main], references=[ref])
    tokens = figure_spec(comp, "text_heatmap").build(comp)
    heat = tokens.data[0]
    assert heat.type == "heatmap" and heat.showscale is not False and "customdata" in heat.hovertemplate
    assert np.isfinite(np.asarray(heat.z, dtype=float)).sum() == 5
    table = figure_spec(comp, "faithfulness_table").build(comp).data[0]
    assert table.type == "table"
    assert list(table.header.values) == [
        "metric",
        "<b>reagent</b>",
        "occlusion (reference)",
        "difference to occlusion",
    ]
    own, refs, diff = (list(c) for c in table.cells.values[1:])
    assert own[0] == "0.500" and refs[0] == "0.400" and diff[0] == "+0.100"
    assert diff[2] == "+0.000"  # equal values: no "-0.000"
    # green where this method does at least as well as the reference (seconds: lower is better)
    fills = list(table.cells.fill.color[1])
    assert (
        fills[0] == attribution_plots.GOOD_FILL
        and fills[1] == "white"
        and fills[4] == attribution_plots.GOOD_FILL
    )


def test_a_stored_single_method_run_has_both_figures() -> None:
    result = _result("saliency", [0.3, 0.1, 0.4])
    names = [spec.name for spec in figures_for(result)]
    assert names == ["text_heatmap", "faithfulness"]
    table = figure_spec(result, "faithfulness").build(result).data[0]
    assert list(table.header.values) == ["metric", "<b>saliency</b>"]
    assert figure_spec(result, "faithfulness").data(result).num_rows == 1


def test_several_methods_keep_the_best_per_metric_table() -> None:
    comp = AttributionComparison(results=[_result("a", [0.1, 0.2]), _result("b", [0.3, 0.1])])
    heat = figure_spec(comp, "faithfulness_table").build(comp).data[0]
    assert heat.type == "heatmap" and any("★" in t for row in heat.text for t in row)
