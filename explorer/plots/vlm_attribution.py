"""Figures of "vlm_attribution" runs: which image patches the VLM's answer depends on.

- `patch_attribution`: the image as the model saw it, cut into its visual-token grid, each
  cell coloured by the patch's importance (occlusion: the drop in log p(answer) when the patch
  is replaced, signed; ReAGent: a distribution over patches); the top-5 patches are numbered.
- `deletion_curve`: the answer's probability as more and more patches are replaced, in the
  order of importance vs random order (lower under the importance curve = more faithful).
- `deletion_table`: the probability drop after replacing the top k% vs random k% patches.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.analysis.vlm_attribution import VLMAttributionResult
from explorer.plots import base_layout, register_figure, token_label
from explorer.plots.image_grid import image_axes, image_trace, patch_geometry

KIND = VLMAttributionResult.kind
SEQUENTIAL = [
    [0.0, "rgba(255,255,255,0.0)"],
    [0.3, "rgba(253,174,97,0.35)"],
    [0.7, "rgba(244,109,67,0.6)"],
    [1.0, "rgba(165,0,38,0.8)"],
]
DIVERGING = [
    [0.0, "rgba(49,54,149,0.8)"],
    [0.35, "rgba(116,173,209,0.45)"],
    [0.5, "rgba(255,255,255,0.0)"],
    [0.65, "rgba(244,109,67,0.45)"],
    [1.0, "rgba(165,0,38,0.8)"],
]


def _answer(result: VLMAttributionResult) -> str:
    return token_label(result.answer)


def patch_attribution(result: VLMAttributionResult) -> go.Figure:
    """The image with each patch coloured by its importance for the answer."""
    rows, cols = int(result.grid[0]), int(result.grid[1])
    image = result.image()
    scores = result.score_grid()
    ranking = result.ranking()
    rank_of = {p: i + 1 for i, p in enumerate(ranking)}
    text = np.full((rows, cols), "", dtype=object)
    hover = np.empty((rows, cols), dtype=object)
    for i in range(rows * cols):
        r, c = divmod(i, cols)
        hover[r, c] = (
            f"patch row {r}, col {c}<br>importance {scores[r, c]:.4g}<br>rank {rank_of[i]} of {rows * cols}"
        )
        if rank_of[i] <= 5:
            text[r, c] = f"#{rank_of[i]}"
    signed = bool((scores < 0).any())
    bound = float(max(np.abs(scores).max(), 1e-12))
    fig = go.Figure(
        [
            image_trace(image),
            go.Heatmap(
                z=scores,
                zmin=-bound if signed else 0.0,
                zmax=bound,
                colorscale=DIVERGING if signed else SEQUENTIAL,
                text=text,
                texttemplate="%{text}",
                textfont={"size": 12, "color": "black"},
                hovertext=hover,
                hovertemplate="%{hovertext}<extra></extra>",
                colorbar={"title": {"text": "importance", "side": "right"}},
                xgap=1,
                ygap=1,
                **patch_geometry(image.size, result.grid),
            ),
        ]
    )
    image_axes(fig, image.size, result.grid)
    what = "Δ log p when replaced" if result.method == "occlusion" else "ReAGent importance (sums to 1)"
    title = f"{result.method} ({result.baseline} patch) for the answer {_answer(result)}: {what}"
    return base_layout(fig, title, height=620)


def patches_data(result: VLMAttributionResult) -> pa.Table:
    cols = int(result.grid[1])
    idx = np.arange(len(result.scores))
    rank = np.empty(len(idx), dtype=np.int64)
    rank[result.ranking()] = np.arange(1, len(idx) + 1)
    return pa.table(
        {"patch": idx, "row": idx // cols, "col": idx % cols, "score": result.scores, "rank": rank}
    )


def deletion_curve(result: VLMAttributionResult) -> go.Figure:
    """p(answer) as the top-k patches (importance order) or random patches are replaced."""
    c = result.curve
    f = result.faithfulness
    x = np.asarray(c["fraction"], dtype=float)
    fig = go.Figure(
        [
            go.Scatter(
                x=x,
                y=np.asarray(c["importance"], dtype=float),
                mode="lines+markers",
                name=f"most important first (area {f['auc_importance']:.3f})",
                customdata=np.asarray(c["patches"]),
                hovertemplate="%{customdata} patches replaced: p = %{y:.4f}<extra>importance</extra>",
            ),
            go.Scatter(
                x=x,
                y=np.asarray(c["random"], dtype=float),
                mode="lines+markers",
                line={"dash": "dash"},
                name=f"random order, mean of {f['random_trials']} (area {f['auc_random']:.3f})",
                customdata=np.asarray(c["patches"]),
                hovertemplate="%{customdata} patches replaced: p = %{y:.4f}<extra>random</extra>",
            ),
        ]
    )
    fig.update_layout(legend={"orientation": "h", "y": -0.3})
    # a little room left of 0: the x and y axes' "0" labels would meet at the corner
    fig.update_xaxes(title="fraction of patches replaced", range=[-0.03, 1.03])
    fig.update_yaxes(title=f"p({_answer(result)})", rangemode="tozero")
    return base_layout(
        fig,
        "Patch deletion: the answer's probability falls faster in importance order = faithful",
        height=440,
    )


def curve_data(result: VLMAttributionResult) -> pa.Table:
    return pa.table({k: np.asarray(v) for k, v in result.curve.items()})


def deletion_table(result: VLMAttributionResult) -> go.Figure:
    rows = result.faithfulness["deletion"]
    better = [r["top_drop"] > r["random_drop"] for r in rows]
    fill = ["#e3f4e1" if b else "white" for b in better]
    fig = go.Figure(
        go.Table(
            header={
                "values": [
                    "patches replaced",
                    "drop: top by importance",
                    "drop: random (mean)",
                    "importance wins",
                ],
                "align": "left",
                "fill_color": "#eef2f7",
                "height": 28,
            },
            cells={
                "values": [
                    [f"{r['fraction']:.0%} ({r['patches']})" for r in rows],
                    [f"{r['top_drop']:.4f}" for r in rows],
                    [f"{r['random_drop']:.4f}" for r in rows],
                    ["yes" if b else "no" for b in better],
                ],
                "align": "left",
                "height": 26,
                "fill_color": [["white"] * len(rows), fill, ["white"] * len(rows), fill],
            },
        )
    )
    p0 = result.faithfulness["answer_prob"]
    fig = base_layout(
        fig, f"Drop of p({_answer(result)}) = {p0:.4f} after replacing patches (↑ larger for top = faithful)",
        height=60 + 28 + 26 * len(rows) + 30,
    )  # fmt: skip
    return fig.update_layout(margin={"l": 20, "r": 20, "t": 60, "b": 10})


def deletion_data(result: VLMAttributionResult) -> pa.Table:
    return pa.Table.from_pylist(result.faithfulness["deletion"])


register_figure(KIND, "patch_attribution", "Attribution on the image", patch_attribution, patches_data)
register_figure(KIND, "deletion_curve", "Patch deletion curve", deletion_curve, curve_data)
register_figure(KIND, "deletion_table", "Patch deletion table", deletion_table, deletion_data)
