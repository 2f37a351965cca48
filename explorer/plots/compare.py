"""RunComparison -> Plotly figures: one difference heatmap per matrix (B minus A, diverging colours)."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from explorer.compare import RunComparison
from explorer.plots import token_label

TITLES = {
    "top1_agree": "Lens top-1 agreement (1 = same token in A and B)",
    "next_log_rank_delta": "Δ log10 rank of the next input token (B − A; negative = B ranks it higher)",
    "final_prob_delta": "Δ probability of each run's final prediction (B − A)",
    "attention_delta": "Δ attention, mean over layers and heads (B − A; query × key)",
    "head_delta": "Mean |B − A| attention per head",
    "entropy_delta": "Δ attention entropy per head (bits, B − A)",
}


def difference_figure(comparison: RunComparison, name: str) -> go.Figure:
    """Heatmap of `comparison.matrices[name]`; axes are layers × positions, positions × positions or
    layers × heads depending on the matrix."""
    matrix = np.asarray(comparison.matrices[name], dtype=float)
    n = comparison.aligned_positions
    labels = [
        f"{i}:{token_label(a)}" + ("" if a == b else f"|{token_label(b)}")
        for i, (a, b) in enumerate(zip(comparison.tokens_a[:n], comparison.tokens_b[:n], strict=False))
    ]
    x: list[Any]
    y: list[Any]
    if name in ("head_delta", "entropy_delta"):
        x, y, x_title, y_title = list(range(matrix.shape[1])), list(range(matrix.shape[0])), "head", "layer"
    elif name == "attention_delta":
        x, y, x_title, y_title = labels, labels, "key", "query"
    else:
        x, y, x_title, y_title = labels, list(range(matrix.shape[0])), "position", "layer"
    if name == "top1_agree":
        colors, zmid = "Greens", None
    elif name == "head_delta":
        colors, zmid = "Reds", None
    else:
        colors, zmid = "RdBu_r", 0.0
    finite = matrix[np.isfinite(matrix)]
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=[[float(v) if np.isfinite(v) else None for v in row] for row in matrix],
            x=x,
            y=y,
            colorscale=colors,
            zmid=zmid,
            zmin=-bound if zmid is not None else None,
            zmax=bound if zmid is not None else None,
            hovertemplate=f"{y_title} %{{y}}<br>{x_title} %{{x}}<br>%{{z:.4f}}<extra></extra>",
        )
    )
    a, b = comparison.run_a, comparison.run_b
    fig.update_layout(
        title=f"{TITLES.get(name, name)}<br><sup>A = {a.run_id} ({a.model_id}) · B = {b.run_id} ({b.model_id})</sup>",
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=max(360, 22 * len(y) + 160),
        margin=dict(l=60, r=20, t=80, b=60),
    )
    if name == "attention_delta":
        fig.update_yaxes(autorange="reversed")
    return fig
