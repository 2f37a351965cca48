"""Figures of "sweep" runs: the aggregate over a dataset, one panel per measure.

- `aggregate`: measures with an axis (the layer for lens and attention, the % kept for prune)
  are lines, one per group (and condition), with the 95% bootstrap interval as a band; measures
  without one (attribution faithfulness, vlm-eval metrics) are bars with interval whiskers.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pyarrow as pa
from plotly.subplots import make_subplots

from explorer.plots import base_layout, register_figure
from explorer.plots.paper import DASHES, OKABE_ITO
from explorer.sweeps.result import SweepResult

KIND = SweepResult.kind
MAX_PANELS = 12
X_TITLES = {"lens": "layer", "attention": "layer", "prune": "% of the input kept"}


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _series_name(row: dict[str, Any]) -> str:
    return " · ".join(p for p in (row.get("condition") or "", row["group"]) if p)


def aggregate_figure(result: SweepResult, **_: Any) -> go.Figure:
    rows = result.aggregate
    measures = list(dict.fromkeys(r["measure"] for r in rows))[:MAX_PANELS]
    title = (
        f"{result.analysis} over {result.n_done}/{result.n_rows} rows of {result.dataset.split('/')[-1]}"
        f" · {result.model} (mean, 95% bootstrap interval)"
    )
    if not measures:
        fig = go.Figure()
        fig.add_annotation(text="no rows done yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return base_layout(fig, title)
    with_x = [m for m in measures if any(r["x"] is not None for r in rows if r["measure"] == m)]
    shared = len(with_x) == len(measures)
    fig = make_subplots(
        rows=len(measures),
        cols=1,
        subplot_titles=[m.replace("_", " ") for m in measures],
        vertical_spacing=min(0.12, 0.5 / len(measures)),
        shared_xaxes=shared,
    )
    scale = 100.0 if result.analysis == "prune" else 1.0
    colours: dict[str, str] = {}
    for panel, measure in enumerate(measures, start=1):
        mine = [r for r in rows if r["measure"] == measure]
        series = list(dict.fromkeys(_series_name(r) for r in mine))
        for name in series:
            colour = colours.setdefault(name, OKABE_ITO[len(colours) % len(OKABE_ITO)])
            points = [r for r in mine if _series_name(r) == name]
            first = panel == min(
                i
                for i, m in enumerate(measures, 1)
                if any(_series_name(r) == name for r in rows if r["measure"] == m)
            )
            if all(p["x"] is None for p in points):
                fig.add_bar(
                    x=[name], y=[points[0]["value"]], name=name, marker_color=colour, legendgroup=name,
                    showlegend=first,
                    error_y={"type": "data", "symmetric": False,
                             "array": [points[0]["high"] - points[0]["value"]],
                             "arrayminus": [points[0]["value"] - points[0]["low"]]},
                    hovertemplate=f"{name}: %{{y:.3f}} (n = {points[0]['n']})<extra>{measure}</extra>",
                    row=panel, col=1,
                )  # fmt: skip
                continue
            points = sorted((p for p in points if p["x"] is not None), key=lambda p: p["x"])
            xs = [scale * p["x"] for p in points]
            fig.add_scatter(
                x=xs + xs[::-1], y=[p["high"] for p in points] + [p["low"] for p in points][::-1],
                fill="toself", fillcolor=_rgba(colour, 0.15), mode="none", hoverinfo="skip",
                showlegend=False, legendgroup=name, name=f"{name} 95% interval", row=panel, col=1,
            )  # fmt: skip
            fig.add_scatter(
                x=xs, y=[p["value"] for p in points], mode="lines+markers", name=name,
                legendgroup=name, showlegend=first,
                line={"color": colour, "dash": DASHES[len(colours) % len(DASHES)], "width": 2},
                customdata=[[p["low"], p["high"], p["n"]] for p in points],
                hovertemplate="x = %{x:.3g}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                "<br>n = %{customdata[2]}<extra>%{fullData.name}</extra>",
                row=panel, col=1,
            )  # fmt: skip
        if measure in with_x and (not shared or panel == len(measures)):
            fig.update_xaxes(title_text=X_TITLES.get(result.analysis, "x"), row=panel, col=1)
    return base_layout(fig, title, height=max(360, 260 * len(measures)))


def aggregate_data(result: SweepResult) -> pa.Table:
    return result.to_tables()["aggregate"]


register_figure(KIND, "aggregate", "Aggregate over the dataset", aggregate_figure, aggregate_data)
