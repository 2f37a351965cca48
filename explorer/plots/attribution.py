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
GOOD_FILL = "#dcefdc"


def _visible(token: str) -> str:
    """Tokens as text: spaces shown as '·', newlines as '⏎' so every token is visible."""
    return token.replace("\n", "⏎").replace(" ", "·") or "∅"


def _normalised(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = float(np.min(s)), float(np.max(s))
    return (s - lo) / (hi - lo) if hi - lo > 1e-12 else np.full_like(s, 0.5)


def text_heatmap(result: AttributionResult, tokens_per_row: int = TOKENS_PER_ROW) -> go.Figure:
    """One method's scores as coloured tokens, wrapped into rows of `tokens_per_row`: darker =
    more important (min-max scaled; the colour bar is the legend); hover gives the raw score."""
    p = len(result.tokens)
    rows = max(1, math.ceil(p / tokens_per_row))
    cols = min(p, tokens_per_row) or 1
    z = np.full((rows, cols), np.nan)
    text = np.full((rows, cols), "", dtype=object)
    hover = np.full((rows, cols), "", dtype=object)
    norm = _normalised(result.scores)
    for i, tok in enumerate(result.tokens):
        r, c = divmod(i, cols)
        z[r, c] = norm[i]
        text[r, c] = _visible(tok)
        hover[r, c] = f"#{i} {tok!r}<br>score {result.scores[i]:.4g}<br>normalised {norm[i]:.2f}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            text=text,
            customdata=hover,
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
    fig.update_xaxes(
        title_text="tokens in reading order", showticklabels=False, showgrid=False, zeroline=False
    )
    fig.update_yaxes(
        title_text="row",
        tickvals=list(range(rows)),
        ticktext=[str(r + 1) for r in range(rows)] if rows > 1 else [""],
        autorange="reversed",
        showgrid=False,
        zeroline=False,
    )
    target = result.target.get("token", "")
    fig = base_layout(
        fig, f"{result.method}: importance of each token for {target!r}", height=80 + max(120, 42 * rows)
    )
    return fig.update_layout(margin={"t": 60, "b": 20})


def comparison_heatmap(comp: AttributionComparison) -> go.Figure:
    """All methods' scores (min-max per method) as coloured tokens: methods x tokens. One
    method alone is shown as its wrapped coloured text (`text_heatmap`)."""
    if len(comp.results) == 1:
        return text_heatmap(comp.results[0])
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


def _metric_value(result: AttributionResult, key: str) -> float:
    value = result.seconds if key == "seconds" else result.faithfulness.get(key)
    return float("nan") if value is None else float(value)


def _fmt(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "n/a"


def method_faithfulness(
    result: AttributionResult, references: list[AttributionResult] | tuple[()] = ()
) -> go.Figure:
    """One method's own faithfulness values and wall time as a table, beside reference methods
    run on the same prompt and target (e.g. occlusion) and the difference to the first one.
    A cell is green where this method does at least as well as that reference."""
    keys = [*METRIC_LABELS, "seconds"]
    labels = [f"{METRIC_LABELS[k]} ↑" for k in METRIC_LABELS] + ["wall time, s ↓"]
    own = [_metric_value(result, k) for k in keys]
    header = ["metric", f"<b>{result.method}</b>"]
    columns: list[list[str]] = [labels, [_fmt(v) for v in own]]
    fill = ["white"] * len(keys)
    for ref in references:
        header.append(f"{ref.method} (reference)")
        columns.append([_fmt(_metric_value(ref, k)) for k in keys])
    if references:
        ref_vals = [_metric_value(references[0], k) for k in keys]
        diff = [round(o - r, 3) + 0.0 for o, r in zip(own, ref_vals, strict=True)]  # + 0.0: no "-0.000"
        header.append(f"difference to {references[0].method}")
        columns.append([("n/a" if not math.isfinite(d) else f"{d:+.3f}") for d in diff])
        better = [
            math.isfinite(d) and (d <= 0 if k == "seconds" else d >= 0)
            for d, k in zip(diff, keys, strict=True)
        ]
        fill = [GOOD_FILL if b else "white" for b in better]
    n_cols = len(header)
    fig = go.Figure(
        go.Table(
            header={"values": header, "align": "left", "fill_color": "#eef2f7", "height": 28},
            cells={
                "values": columns,
                "align": "left",
                "height": 26,
                "fill_color": [["white"] * len(keys), fill] + [["white"] * len(keys)] * (n_cols - 2),
            },
        )
    )
    target = result.target.get("token", "")
    title = f"Faithfulness of {result.method} for {target!r} (↑ higher is better)"
    fig = base_layout(fig, title, height=60 + 28 + 26 * len(keys) + 20)
    return fig.update_layout(margin={"l": 20, "r": 20, "t": 60, "b": 10})


def faithfulness_table(comp: AttributionComparison) -> go.Figure:
    """Methods x (faithfulness metrics, seconds): colour = value relative to the column's
    range (darker = better; for seconds, faster = better); the best in each column is starred.
    One method alone is shown as a table of its own values beside its references
    (`method_faithfulness`): "best" means nothing with one method."""
    if len(comp.results) == 1:
        return method_faithfulness(comp.results[0], comp.references)
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


def _faithfulness_data(result: AttributionResult) -> pa.Table:
    return AttributionComparison(results=[result]).table()


register_figure("attribution", "text_heatmap", "Coloured tokens", text_heatmap, _result_data, _always)
register_figure(
    "attribution",
    "faithfulness",
    "Faithfulness and wall time",
    method_faithfulness,
    _faithfulness_data,
    _always,
)
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
