"""Figures of "sweep" runs: the aggregate over a dataset.

- `aggregate`: one measure (the analysis's headline, or `measure=`) over its axis — the layer for
  lens and attention, the % kept for prune — one line per group (and condition) with the 95%
  bootstrap interval as a band. Measures without an axis (attribution faithfulness, vlm-eval's
  metrics) are bars with interval whiskers, one per (group, measure). The data behind it is the
  whole aggregate (every measure), as is the run's `aggregate` table.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pyarrow as pa

from explorer.plots import base_layout, register_figure
from explorer.plots.paper import DASHES, OKABE_ITO
from explorer.sweeps.result import SweepResult

KIND = SweepResult.kind
X_TITLES = {"lens": "layer", "attention": "layer", "prune": "% of the input kept"}
# the measure drawn by default, in order of preference (text pruning, image pruning, ...)
HEADLINE = {
    "lens": ("is top-1",),
    "attention": ("entropy", "image share"),
    "prune": ("kl", "cls_cosine"),
}
MAX_BARS = 40


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _series_name(row: dict[str, Any]) -> str:
    return " · ".join(p for p in (row.get("condition") or "", row["group"]) if p)


def headline_measure(result: SweepResult) -> str | None:
    """The measure the figure draws by default: the analysis's headline if present, else the
    first measure with an axis, else None (only bars)."""
    with_x = [r["measure"] for r in result.aggregate if r["x"] is not None]
    for name in HEADLINE.get(result.analysis, ()):
        if name in with_x:
            return name
    return with_x[0] if with_x else None


def aggregate_figure(result: SweepResult, measure: str | None = None, **_: Any) -> go.Figure:
    rows = result.aggregate
    chosen = measure or headline_measure(result)
    where = f"{result.n_done}/{result.n_rows} rows of {result.dataset.split('/')[-1]}"
    if chosen is None:
        return _bars(result, rows, f"{result.analysis} over {where} (95% interval)")
    fig = go.Figure()
    mine = [r for r in rows if r["measure"] == chosen and r["x"] is not None]
    scale = 100.0 if result.analysis == "prune" else 1.0
    for i, name in enumerate(dict.fromkeys(_series_name(r) for r in mine)):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        points = sorted((p for p in mine if _series_name(p) == name), key=lambda p: p["x"])
        xs = [scale * p["x"] for p in points]
        fig.add_scatter(
            x=xs + xs[::-1], y=[p["high"] for p in points] + [p["low"] for p in points][::-1],
            fill="toself", fillcolor=_rgba(colour, 0.15), mode="none", hoverinfo="skip",
            showlegend=False, name=f"{name} 95% interval",
        )  # fmt: skip
        fig.add_scatter(
            x=xs, y=[p["value"] for p in points], mode="lines+markers", name=name,
            line={"color": colour, "dash": DASHES[i % len(DASHES)], "width": 2},
            customdata=[[p["low"], p["high"], p["n"]] for p in points],
            hovertemplate="x = %{x:.3g}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            "<br>n = %{customdata[2]}<extra>%{fullData.name}</extra>",
        )  # fmt: skip
    fig.update_xaxes(title_text=X_TITLES.get(result.analysis, "x"))
    fig.update_yaxes(title_text=chosen.replace("_", " "))
    return base_layout(fig, f"{result.analysis}: {chosen.replace('_', ' ')} over {where} (95% interval)")


def _bars(result: SweepResult, rows: list[dict[str, Any]], title: str) -> go.Figure:
    fig = go.Figure()
    bars = [r for r in rows if r["x"] is None][:MAX_BARS]
    conditions = list(dict.fromkeys(r.get("condition") or "" for r in bars))
    for i, condition in enumerate(conditions):
        mine = [r for r in bars if (r.get("condition") or "") == condition]
        fig.add_bar(
            x=[f"{r['group']} {r['measure']}".replace("_", " ") if r["group"] != "faithfulness"
               else r["measure"].replace("_", " ") for r in mine],
            y=[r["value"] for r in mine],
            name=condition or result.analysis,
            marker_color=OKABE_ITO[i % len(OKABE_ITO)],
            error_y={"type": "data", "symmetric": False,
                     "array": [r["high"] - r["value"] for r in mine],
                     "arrayminus": [r["value"] - r["low"] for r in mine]},
            customdata=[[r["n"]] for r in mine],
            hovertemplate="%{x}: %{y:.3f} (n = %{customdata[0]})<extra>%{fullData.name}</extra>",
        )  # fmt: skip
    fig.update_layout(barmode="group", showlegend=len(conditions) > 1)
    return base_layout(fig, title)


def aggregate_data(result: SweepResult) -> pa.Table:
    return result.to_tables()["aggregate"]


register_figure(KIND, "aggregate", "Aggregate over the dataset", aggregate_figure, aggregate_data)
