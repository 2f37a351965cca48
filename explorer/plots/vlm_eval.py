"""Figures of "vlm_eval" runs: every metric as a bar with its 95% bootstrap interval.

- `eval_metrics`: accuracy per question type, POPE metrics per split and CHAIR, one bar per
  condition (plain / VISTA) with the interval as an error bar.
- `eval_hallucination`: only the hallucination metrics (POPE F1 and yes-ratio per split, CHAIR_s,
  CHAIR_i), plain next to VISTA when the run has both.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import pyarrow as pa

from explorer.plots import base_layout, register_figure
from explorer.vlm.vlm_eval import VLMEvalResult, metrics_table

KIND = VLMEvalResult.kind
CONDITION_COLOURS = {"plain": "#4c78a8", "vista": "#f58518"}
HALLUCINATION = {"f1", "yes_ratio", "chair_s", "chair_i"}
LOWER_IS_BETTER = {"chair_s", "chair_i"}


def _rows(result: VLMEvalResult, hallucination_only: bool) -> list[dict[str, Any]]:
    rows = [r for r in result.metrics if r["value"] == r["value"]]  # drop NaN (empty groups)
    if hallucination_only:
        rows = [r for r in rows if r["metric"] in HALLUCINATION]
    return rows


def _label(row: dict[str, Any]) -> str:
    arrow = " ↓" if row["metric"] in LOWER_IS_BETTER else ""
    return f"{row['group']} · {row['metric']}{arrow}"


def _bars(result: VLMEvalResult, title: str, hallucination_only: bool) -> go.Figure:
    rows = _rows(result, hallucination_only)
    fig = go.Figure()
    labels = list(dict.fromkeys(_label(r) for r in rows))
    for condition in result.conditions:
        mine = {_label(r): r for r in rows if r["condition"] == condition}
        xs = [x for x in labels if x in mine]
        values = [mine[x]["value"] for x in xs]
        fig.add_bar(
            x=xs,
            y=values,
            name="VISTA" if condition == "vista" else "plain",
            marker_color=CONDITION_COLOURS.get(condition),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [mine[x]["high"] - mine[x]["value"] for x in xs],
                "arrayminus": [mine[x]["value"] - mine[x]["low"] for x in xs],
            },
            customdata=[[mine[x]["low"], mine[x]["high"], mine[x]["n"]] for x in xs],
            hovertemplate="%{x}<br>%{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            "<br>n = %{customdata[2]}<extra>%{fullData.name}</extra>",
        )
    fig.update_layout(barmode="group", legend={"orientation": "h", "y": 1.08, "x": 0.5, "xanchor": "center"})
    fig.update_yaxes(title="value (95% bootstrap interval)", range=[0, 1.05])
    fig.update_xaxes(tickangle=-35)
    return base_layout(fig, title, height=520, width=max(700, 60 * len(labels) + 200))


def eval_metrics(result: VLMEvalResult) -> go.Figure:
    n = len({s["sample_id"] for s in result.samples})
    return _bars(result, f"{result.model} on {result.dataset}: {n} samples", hallucination_only=False)


def eval_hallucination(result: VLMEvalResult) -> go.Figure:
    ratio = result.latency_ratio
    extra = f" · VISTA latency ×{ratio:.2f}" if ratio else ""
    return _bars(result, f"Hallucination: POPE and CHAIR ({result.model}){extra}", hallucination_only=True)


def _data(hallucination_only: bool) -> Any:
    def build(result: VLMEvalResult) -> pa.Table:
        return metrics_table(_rows(result, hallucination_only))

    return build


register_figure(KIND, "eval_metrics", "Metrics with 95% intervals", eval_metrics, _data(False))
register_figure(
    KIND,
    "eval_hallucination",
    "POPE and CHAIR (plain vs VISTA)",
    eval_hallucination,
    _data(True),
    applies=lambda r: any(m["metric"] in HALLUCINATION for m in r.metrics),
)
