"""Figures of "vista_patterns" runs: VISTA's three token-ranking patterns over a set of scenes.

- `information_loss`: each word category's final-layer lens rank in the early / mid / late thirds
  of the captions (the paper's Fig. 1 left; log axis, 95% bootstrap intervals over scenes).
- `layer_ranks`: each category's rank per layer, averaged over the steps (the paper's Fig. 1 right).
- `early_excitation`: where the emitted token's lens probability peaks (layer >= 1), by token type.
- `hidden_genuine`: the share of words that stay in the top k over the steps, by category.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.plots import base_layout, register_figure
from explorer.plots.paper import DASHES, OKABE_ITO
from explorer.vlm.vista_patterns import (
    CATEGORIES,
    CATEGORY_LABELS,
    EMITTED_SCHEMA,
    RANK_SCHEMA,
    STAGES,
    TOKEN_TYPES,
    VistaPatternsResult,
)

KIND = VistaPatternsResult.kind
SHORT_LABELS = {
    "decoded_genuine": "decoded",
    "hidden_genuine": "hidden",
    "hallucinated": "halluc.",
    "absent": "absent",
}
LEGEND = {"orientation": "h", "y": -0.22, "x": 0.5, "xanchor": "center", "yanchor": "top"}


def _style(i: int) -> dict[str, Any]:
    return {"color": OKABE_ITO[i % len(OKABE_ITO)], "dash": DASHES[i % len(DASHES)], "width": 2}


def _interval(e: dict[str, Any]) -> tuple[float, float, float] | None:
    if not e or e.get("value") is None:
        return None
    return float(e["value"]), float(e["low"]), float(e["high"])


def rank_ticks(values: list[float | None]) -> dict[str, Any]:
    """Tick settings of a log rank axis: decades when the ranks span at least 1.5 of them, else
    explicit 1-2-5 (or finer) ticks inside the data's range, so the axis never shows a lone label."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x)) and float(x) > 0]
    if not v or math.log10(max(v)) - math.log10(min(v)) >= 1.5:
        return {"dtick": 1}
    lo, hi = min(v) / 1.15, max(v) * 1.15  # about plotly's autorange padding
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks: list[float] = []
    for steps in ((1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10**e for e in decades for m in steps if lo <= m * 10**e <= hi]
        if len(ticks) >= 3:
            break
    if len(ticks) < 2:
        return {"dtick": 1}
    text = [f"{t / 1000:g}k" if t >= 10_000 else f"{t:g}" for t in ticks]
    return {"tickmode": "array", "tickvals": ticks, "ticktext": text}


def _present(
    points: list[tuple[str, tuple[float, float, float] | None]],
) -> list[tuple[str, tuple[float, float, float]]]:
    return [(x, p) for x, p in points if p is not None]


def information_loss(result: VistaPatternsResult) -> go.Figure:
    loss = result.summary["information_loss"]["final"]
    fig = go.Figure()
    for i, cat in enumerate(CATEGORIES):
        points = _present([(s, _interval(loss.get(cat, {}).get(s, {}))) for s in STAGES])
        if not points:
            continue
        values = [p[0] for _, p in points]
        fig.add_scatter(
            x=[s for s, _ in points],
            y=values,
            mode="lines+markers",
            name=CATEGORY_LABELS[cat],
            line=_style(i),
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [p[2] - p[0] for _, p in points],
                "arrayminus": [p[0] - p[1] for _, p in points],
            },
            hovertemplate="%{x}: mean rank %{y:.0f}<extra>%{fullData.name}</extra>",
        )
    ranks = [v for t in fig.data for v, up, down in zip(t.y, t.error_y.array, t.error_y.arrayminus, strict=True)
             for v in (v, v + up, v - down)]  # fmt: skip
    fig.update_yaxes(
        title="mean final-layer rank (1 = top)", type="log", autorange="reversed", **rank_ticks(ranks)
    )
    fig.update_xaxes(title="caption third")
    fig.update_layout(legend=LEGEND)
    n = len(result.captions)
    return base_layout(
        fig, f"Visual information loss over generation ({n} scene{'' if n == 1 else 's'})", height=460
    )


def layer_ranks(result: VistaPatternsResult) -> go.Figure:
    per: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in result.ranks:
        per[(r["category"], r["layer"])][r["sample"]].append(r["mean_rank"])
    fig = go.Figure()
    layers = list(range(1, result.n_layers))
    for i, cat in enumerate(CATEGORIES):
        ys = []
        for layer in layers:
            vals = [v for vs in per[(cat, layer)].values() for v in vs]
            ys.append(float(np.mean(vals)) if vals else None)
        if all(y is None for y in ys):
            continue
        fig.add_scatter(
            x=layers,
            y=ys,
            mode="lines",
            name=CATEGORY_LABELS[cat],
            line=_style(i),
            hovertemplate="layer %{x}: mean rank %{y:.0f}<extra>%{fullData.name}</extra>",
        )
    ranks = [v for t in fig.data for v in t.y]
    fig.update_yaxes(
        title="mean rank over steps (1 = top)", type="log", autorange="reversed", **rank_ticks(ranks)
    )
    fig.update_xaxes(title="layer (logit lens)")
    fig.update_layout(legend=LEGEND)
    return base_layout(fig, "Token ranks across layers (averaged over steps)", height=460)


def early_excitation(result: VistaPatternsResult) -> go.Figure:
    final = result.n_layers - 1
    by_type: dict[str, list[int]] = defaultdict(list)
    for e in result.emitted:
        by_type[e["token_type"]].append(int(e["peak_layer"]))
    fig = go.Figure()
    bins = np.arange(1, final + 2)
    for i, t in enumerate(TOKEN_TYPES):
        peaks = by_type.get(t)
        if not peaks:
            continue
        counts, _ = np.histogram(peaks, bins=bins)
        fig.add_scatter(
            x=bins[:-1].tolist(),
            y=(counts / counts.sum()).tolist(),
            mode="lines+markers",
            name=f"{t} (n={len(peaks)})",
            line=_style(i),
            hovertemplate="peak at layer %{x}: %{y:.1%}<extra>%{fullData.name}</extra>",
        )
    fig.update_yaxes(title="share of emitted tokens", tickformat=".0%")
    fig.update_xaxes(title="peak layer")
    fig.update_layout(legend=LEGEND)
    return base_layout(fig, "Early excitation: peak layer of each emitted token", height=460)


def hidden_genuine(result: VistaPatternsResult) -> go.Figure:
    hidden = result.summary["hidden_genuine"]
    k = hidden["top_k"]
    fig = go.Figure()
    cats = [c for c in CATEGORIES if c in hidden]
    for j, metric in enumerate(("share_staying_in_top_k", "share_ever_in_top_k")):
        points = _present([(SHORT_LABELS[c], _interval(hidden[c][metric])) for c in cats])
        fig.add_bar(
            x=[c for c, _ in points],
            y=[p[0] for _, p in points],
            name="median rank over steps ≤ k" if j == 0 else "in the top k at some step",
            marker_color=OKABE_ITO[j],
            marker_pattern_shape="" if j == 0 else "/",
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [p[2] - p[0] for _, p in points],
                "arrayminus": [p[0] - p[1] for _, p in points],
            },
            hovertemplate="%{x}: %{y:.1%}<extra>%{fullData.name}</extra>",
        )
    fig.update_layout(barmode="group", legend=LEGEND)
    fig.update_yaxes(title=f"share of words in the top {k}", tickformat=".0%", range=[0, 1.05])
    fig.update_xaxes(title="word category")
    return base_layout(fig, f"Hidden genuine information: words in the top {k}", height=460)


def _ranks_data(result: VistaPatternsResult) -> pa.Table:
    return pa.Table.from_pylist(result.ranks, schema=RANK_SCHEMA)


def _emitted_data(result: VistaPatternsResult) -> pa.Table:
    return pa.Table.from_pylist(result.emitted, schema=EMITTED_SCHEMA)


def _words_data(result: VistaPatternsResult) -> pa.Table:
    return pa.Table.from_pylist(result.words)


register_figure(KIND, "information_loss", "Pattern 1: visual information loss", information_loss, _ranks_data)
register_figure(KIND, "layer_ranks", "Ranks across layers", layer_ranks, _ranks_data)
register_figure(KIND, "early_excitation", "Pattern 2: early excitation", early_excitation, _emitted_data)
register_figure(KIND, "hidden_genuine", "Pattern 3: hidden genuine information", hidden_genuine, _words_data)
