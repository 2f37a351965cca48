"""Figures of "vlm_prune" runs: retention curves, the figure each visual-token pruning paper has.

- `retention`: accuracy over all samples against the % of visual tokens kept, one line per
  strategy (Okabe-Ito colours and dash styles, so lines stay apart in greyscale), with its 95%
  bootstrap interval as a band.
- `agreement`: the share of answers equal to the unpruned model's, same layout.
- `prefill_cost`: prefill FLOPs and measured time relative to the unpruned model, per strategy.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pyarrow as pa

from explorer.plots import base_layout, register_figure
from explorer.plots.paper import DASHES, OKABE_ITO
from explorer.vlm.prune_eval import VLMPruneResult

KIND = VLMPruneResult.kind


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _label(result: VLMPruneResult, name: str) -> str:
    return str(result.strategies.get(name, {}).get("label") or name)


def _curves(result: VLMPruneResult, group: str, metric: str, title: str, y_title: str) -> go.Figure:
    fig = go.Figure()
    curves = result.curve(group, metric)
    for i, (name, points) in enumerate(curves.items()):
        colour = OKABE_ITO[i % len(OKABE_ITO)]
        xs = [100 * p["keep_ratio"] for p in points]
        lows = [p["low"] for p in points]
        highs = [p["high"] for p in points]
        fig.add_scatter(  # the band: mode "none" so the paper styler leaves it a band
            x=xs + xs[::-1],
            y=highs + lows[::-1],
            fill="toself",
            fillcolor=_rgba(colour, 0.15),
            mode="none",
            hoverinfo="skip",
            showlegend=False,
            name=f"{_label(result, name)} 95% interval",
        )
        fig.add_scatter(
            x=xs,
            y=[p["value"] for p in points],
            mode="lines+markers",
            name=_label(result, name),
            line={"color": colour, "dash": DASHES[i % len(DASHES)], "width": 2},
            customdata=[[p["low"], p["high"], p["n"]] for p in points],
            hovertemplate="%{x:.0f}% kept: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            "<br>n = %{customdata[2]}<extra>%{fullData.name}</extra>",
        )
    fig.update_xaxes(title="visual tokens kept (%)", autorange="reversed")
    fig.update_yaxes(title=y_title, range=[0, 1.02])
    fig.update_layout(legend={"orientation": "h", "y": -0.22, "x": 0.5, "xanchor": "center"})
    return base_layout(fig, title, height=500)


def retention(result: VLMPruneResult) -> go.Figure:
    return _curves(
        result,
        "all",
        "accuracy",
        f"Retention: accuracy vs visual tokens kept ({result.model}, {result.dataset}, {result.n_prompts} prompts)",
        "accuracy (95% bootstrap band)",
    )


def agreement(result: VLMPruneResult) -> go.Figure:
    return _curves(
        result,
        "agreement",
        "rate",
        f"Agreement with the unpruned answers ({result.model}, {result.dataset})",
        "same answer as unpruned (95% band)",
    )


def prefill_cost(result: VLMPruneResult) -> go.Figure:
    fig = go.Figure()
    names = list(dict.fromkeys(c["strategy"] for c in result.costs))
    for i, name in enumerate(names):
        rows = sorted((c for c in result.costs if c["strategy"] == name), key=lambda c: c["keep_ratio"])
        fig.add_scatter(
            x=[100 * c["keep_ratio"] for c in rows],
            y=[c["flops_ratio"] for c in rows],
            mode="lines+markers",
            name=_label(result, name),
            line={"color": OKABE_ITO[i % len(OKABE_ITO)], "dash": DASHES[i % len(DASHES)], "width": 2},
            customdata=[[c["time_ratio"], c["scoring_seconds"] * 1000] for c in rows],
            hovertemplate="%{x:.0f}% kept: FLOPs ×%{y:.3f}, time ×%{customdata[0]:.2f} "
            "(scoring %{customdata[1]:.1f} ms/prompt)<extra>%{fullData.name}</extra>",
        )
    fig.update_xaxes(title="visual tokens kept (%)", autorange="reversed")
    fig.update_yaxes(title="prefill FLOPs / unpruned", rangemode="tozero")
    fig.update_layout(legend={"orientation": "h", "y": -0.22, "x": 0.5, "xanchor": "center"})
    return base_layout(fig, f"Prefill cost of pruning ({result.model})", height=480)


def _metric_data(group: str, metric: str) -> Any:
    def build(result: VLMPruneResult) -> pa.Table:
        rows = [r for r in result.metrics if r["group"] == group and r["metric"] == metric]
        return pa.Table.from_pylist(rows)

    return build


def _cost_data(result: VLMPruneResult) -> pa.Table:
    return pa.Table.from_pylist(result.costs)


register_figure(
    KIND,
    "retention",
    "Retention curves (accuracy vs % visual tokens kept)",
    retention,
    _metric_data("all", "accuracy"),
)
register_figure(
    KIND, "agreement", "Agreement with the unpruned model", agreement, _metric_data("agreement", "rate")
)
register_figure(KIND, "prefill_cost", "Prefill FLOPs vs % kept", prefill_cost, _cost_data)
