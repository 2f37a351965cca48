"""Attribution figures: coloured-token text heatmaps, the faithfulness/time comparison with the
best method per metric marked, and the generation steps x sources heatmap."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.analysis.attribution.result import (
    METRIC_LABELS,
    AttributionComparison,
    AttributionResult,
    GenerationAttributionResult,
)
from explorer.plots import base_layout, register_figure

TOKENS_PER_ROW = 14
SCALE = "Blues"


def _visible(token: str) -> str:
    """Tokens as text: spaces shown as '·', newlines as '⏎' so every token is visible."""
    return token.replace("\n", "⏎").replace(" ", "·") or "∅"


def _normalised(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = float(np.min(s)), float(np.max(s))
    return (s - lo) / (hi - lo) if hi - lo > 1e-12 else np.full_like(s, 0.5)


def text_heatmap(result: AttributionResult, tokens_per_row: int = TOKENS_PER_ROW) -> go.Figure:
    """One method's scores as coloured tokens, wrapped into rows of `tokens_per_row`."""
    p = len(result.tokens)
    rows = max(1, math.ceil(p / tokens_per_row))
    z = np.full((rows, tokens_per_row), np.nan)
    text = np.full((rows, tokens_per_row), "", dtype=object)
    hover = np.full((rows, tokens_per_row), "", dtype=object)
    norm = _normalised(result.scores)
    for i, tok in enumerate(result.tokens):
        r, c = divmod(i, tokens_per_row)
        z[r, c] = norm[i]
        text[r, c] = _visible(tok)
        hover[r, c] = f"#{i} {tok!r}<br>score {result.scores[i]:.4g}<br>normalised {norm[i]:.2f}"
    fig = go.Figure(
        go.Heatmap(
            z=z[::-1],
            text=text[::-1],
            customdata=hover[::-1],
            texttemplate="%{text}",
            hovertemplate="%{customdata}<extra></extra>",
            colorscale=SCALE,
            zmin=0,
            zmax=1,
            xgap=2,
            ygap=2,
            colorbar={"title": {"text": "importance<br>(min-max)"}},
        )
    )
    fig.update_xaxes(title_text="token in row", showticklabels=False)
    fig.update_yaxes(
        title_text="row",
        tickvals=list(range(rows)),
        ticktext=[str(rows - r) for r in range(rows)],
    )
    target = result.target.get("token", "")
    return base_layout(fig, f"{result.method}: importance for {target!r}", height=140 + 45 * rows)


def comparison_heatmap(comp: AttributionComparison) -> go.Figure:
    """All methods' scores (min-max per method) as coloured tokens: methods x tokens."""
    tokens = comp.tokens
    z = np.array([_normalised(r.scores) for r in comp.results]) if comp.results else np.zeros((0, 0))
    text = [[_visible(t) for t in tokens] for _ in comp.results]
    hover = [
        [f"{r.method}<br>#{i} {t!r}<br>score {r.scores[i]:.4g}" for i, t in enumerate(tokens)]
        for r in comp.results
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(len(tokens))),
            y=comp.methods,
            text=text,
            customdata=hover,
            texttemplate="%{text}",
            hovertemplate="%{customdata}<extra></extra>",
            colorscale=SCALE,
            zmin=0,
            zmax=1,
            xgap=2,
            ygap=2,
            colorbar={"title": {"text": "importance<br>(min-max per method)"}},
        )
    )
    fig.update_xaxes(
        title_text="prompt token (position)",
        tickvals=list(range(len(tokens))),
        ticktext=[_visible(t) for t in tokens],
    )
    fig.update_yaxes(title_text="method", autorange="reversed")
    target = comp.results[0].target.get("token", "") if comp.results else ""
    return base_layout(
        fig, f"Attribution of {target!r}: every method", height=160 + 40 * max(1, len(comp.results))
    )


def faithfulness_table(comp: AttributionComparison) -> go.Figure:
    """Methods x (faithfulness metrics, seconds): colour = value relative to the column's
    range (darker = better; for seconds, faster = better); the best in each column is starred."""
    metrics = list(METRIC_LABELS)
    cols = [METRIC_LABELS[m] for m in metrics] + ["Seconds"]
    best = comp.best()
    z = np.full((len(comp.results), len(cols)), np.nan)
    text = np.full(z.shape, "", dtype=object)
    for j, key in enumerate(metrics + ["seconds"]):
        vals = np.array(
            [
                (
                    r.seconds
                    if key == "seconds"
                    else (np.nan if r.faithfulness.get(key) is None else r.faithfulness[key])
                )
                for r in comp.results
            ],
            dtype=np.float64,
        )
        finite = np.isfinite(vals)
        if finite.any():
            lo, hi = np.nanmin(vals), np.nanmax(vals)
            rel = (vals - lo) / (hi - lo) if hi - lo > 1e-12 else np.ones_like(vals)
            z[:, j] = 1 - rel if key == "seconds" else rel
        for i, r in enumerate(comp.results):
            star = " ★" if best.get(key) == r.method else ""
            text[i, j] = ("n/a" if not finite[i] else f"{vals[i]:.3f}") + star
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=cols,
            y=comp.methods,
            text=text,
            texttemplate="%{text}",
            hovertemplate="%{y}<br>%{x}: %{text}<extra></extra>",
            colorscale="Greens",
            zmin=0,
            zmax=1,
            xgap=2,
            ygap=2,
            colorbar={"title": {"text": "relative<br>(1 = best)"}},
        )
    )
    fig.update_xaxes(title_text="metric (higher is better; seconds: lower is better) — ★ best", side="top")
    fig.update_yaxes(title_text="method", autorange="reversed")
    return base_layout(fig, "Faithfulness and wall time", height=170 + 40 * max(1, len(comp.results)))


def generation_heatmap(result: GenerationAttributionResult) -> go.Figure:
    """Steps x sources: row s = generated token s, columns = every earlier token."""
    sources = [_visible(t) for t in result.sources]
    steps = [f"{s}: {_visible(t)}" for s, t in enumerate(result.generated)]
    norm = np.full(result.matrix.shape, np.nan)
    for s in range(result.matrix.shape[0]):
        row = result.matrix[s]
        ok = np.isfinite(row)
        if ok.any():
            norm[s, ok] = _normalised(row[ok])
    fig = go.Figure(
        go.Heatmap(
            z=norm,
            x=list(range(len(sources))),
            y=list(range(len(steps))),
            customdata=np.where(np.isfinite(result.matrix), np.round(result.matrix, 4).astype(str), ""),
            colorscale=SCALE,
            zmin=0,
            zmax=1,
            hovertemplate="step %{y} ← source %{x}<br>score %{customdata}<extra></extra>",
            colorbar={"title": {"text": "importance<br>(min-max per step)"}},
        )
    )
    fig.update_xaxes(
        title_text="source token", tickvals=list(range(len(sources))), ticktext=sources, tickangle=-60
    )
    fig.update_yaxes(
        title_text="generated token (step)",
        tickvals=list(range(len(steps))),
        ticktext=steps,
        autorange="reversed",
    )
    return base_layout(
        fig,
        f"{result.method}: each generated token attributed to all preceding tokens",
        height=220 + 22 * len(steps),
    )


def _result_data(result: AttributionResult) -> pa.Table:
    return result.to_tables()["scores"].append_column("normalised", pa.array(_normalised(result.scores)))


def _generation_data(result: GenerationAttributionResult) -> pa.Table:
    cells = result.to_tables()["cells"]
    src = result.sources
    return cells.append_column(
        "source_token", pa.array([src[i] for i in cells["source"].to_pylist()])
    ).append_column("generated_token", pa.array([result.generated[i] for i in cells["step"].to_pylist()]))


def _always(result: Any) -> bool:
    return True


register_figure("attribution", "text_heatmap", "Coloured tokens", text_heatmap, _result_data, _always)
register_figure(
    "attribution_comparison",
    "text_heatmap",
    "Coloured tokens, every method",
    comparison_heatmap,
    lambda c: c.scores_table(),
    _always,
)
register_figure(
    "attribution_comparison",
    "faithfulness_table",
    "Faithfulness and wall time",
    faithfulness_table,
    lambda c: c.table(),
    _always,
)
register_figure(
    "attribution_generation",
    "steps_heatmap",
    "Steps x sources",
    generation_heatmap,
    _generation_data,
    _always,
)
