"""Figures of "vlm_latent" runs: the nearest contextual text token of every visual token.

- `latent_neighbours_overlay`: the image as the model saw it, cut into its visual-token grid;
  each cell shows its nearest text token at one layer and is coloured by the cosine
  similarity; hovering lists the k neighbours with their similarities, text layers and
  contexts. A slider steps through the layers searched.
- `latent_similarity_by_layer`: per layer, the mean and max over patches of the top-1
  similarity: where visual tokens come closest to text.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.plots import base_layout, register_figure, token_label
from explorer.plots.vlm_tokens import image_grid_slider
from explorer.vlm.latent import MATCH_SAME, LatentNeighboursResult

KIND = LatentNeighboursResult.kind
SIM_SCALE = [
    [0.0, "rgba(68,1,84,0.05)"],
    [0.35, "rgba(59,82,139,0.35)"],
    [0.7, "rgba(33,145,140,0.5)"],
    [1.0, "rgba(253,231,37,0.75)"],
]


def _hover(result: LatentNeighboursResult, li: int, patch: int) -> str:
    layer = result.layers[li]
    r, c = divmod(patch, result.grid[1])
    lines = [f"patch row {r}, col {c} · visual layer {layer}"]
    for j in range(result.k):
        context = html.escape(result.contexts[li][patch][j][-40:], quote=False)
        lines.append(
            f"{j + 1}. <b>{token_label(result.neighbours[li][patch][j])}</b>  "
            f"{result.similarity[li, patch, j]:.3f}  (text layer {int(result.bank_layer[li, patch, j])}) "
            f"<i>…{context}</i>"
        )
    return "<br>".join(lines)


def latent_neighbours_overlay(result: LatentNeighboursResult, layer: int | None = None) -> go.Figure:
    """Nearest text token per patch at one layer (slider over the layers searched)."""
    rows, cols = result.grid
    width, height = result.image().size
    geo = {"x0": width / cols / 2, "dx": width / cols, "y0": height / rows / 2, "dy": height / rows}
    start = result.layer_index(layer)
    lo = float(min(0.0, result.similarity[:, :, 0].min()))
    hi = float(max(result.similarity[:, :, 0].max(), 1e-6))

    def heat(li: int) -> go.Heatmap:
        text = np.empty((rows, cols), dtype=object)
        hover = np.empty((rows, cols), dtype=object)
        for p in range(result.n_image):
            r, c = divmod(p, cols)
            text[r, c] = token_label(result.neighbours[li][p][0])[:8]
            hover[r, c] = _hover(result, li, p)
        return go.Heatmap(
            z=result.similarity[li, :, 0].reshape(rows, cols),
            zmin=lo,
            zmax=hi,
            text=text,
            texttemplate="%{text}",
            textfont={"size": 10, "color": "black"},
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=SIM_SCALE,
            colorbar={"title": {"text": "cosine (top 1)", "side": "right"}},
            xgap=1,
            ygap=1,
            **geo,
        )

    match = result.params.get("match", MATCH_SAME)
    where = "the same layer" if match == MATCH_SAME else "all stored layers (cross-layer, as in the paper)"
    title = f"Nearest contextual text token per visual token (LatentLens; cosine; text from {where})"
    return image_grid_slider(
        result,
        lambda layer: heat(result.layers.index(layer)),
        result.layers[start],
        title,
        steps=result.layers,
        prefix="layer ",
    )


def neighbours_data(result: LatentNeighboursResult) -> pa.Table:
    n_l, n_img, k = result.similarity.shape
    li, pi, ri = np.meshgrid(np.arange(n_l), np.arange(n_img), np.arange(k), indexing="ij")
    cols = result.grid[1]
    return pa.table(
        {
            "layer": np.asarray(result.layers)[li.ravel()],
            "patch": pi.ravel(),
            "row": pi.ravel() // cols,
            "col": pi.ravel() % cols,
            "rank": ri.ravel() + 1,
            "token": [
                result.neighbours[a][b][c] for a, b, c in zip(li.ravel(), pi.ravel(), ri.ravel(), strict=True)
            ],
            "similarity": result.similarity.ravel(),
            "text_layer": result.bank_layer.ravel(),
            "context": [
                result.contexts[a][b][c] for a, b, c in zip(li.ravel(), pi.ravel(), ri.ravel(), strict=True)
            ],
        }
    )


def latent_similarity_by_layer(result: LatentNeighboursResult) -> go.Figure:
    """Mean and max over patches of the top-1 cosine similarity, per visual layer."""
    top1 = result.similarity[:, :, 0]
    fig = go.Figure(
        [
            go.Scatter(x=result.layers, y=top1.mean(axis=1), mode="lines+markers", name="mean over patches"),
            go.Scatter(x=result.layers, y=top1.max(axis=1), mode="lines+markers", name="max over patches"),
        ]
    )
    fig.update_xaxes(title="visual-token layer")
    fig.update_yaxes(title="cosine similarity of the nearest text token")
    return base_layout(fig, "How close visual tokens come to contextual text, by layer", height=400)


def similarity_data(result: LatentNeighboursResult) -> pa.Table:
    top1 = result.similarity[:, :, 0]
    return pa.table({"layer": result.layers, "mean_top1": top1.mean(axis=1), "max_top1": top1.max(axis=1)})


def _has_image(result: Any) -> bool:
    return bool(getattr(result, "image_png", ""))


register_figure(
    KIND,
    "latent_neighbours",
    "Nearest text token per patch (LatentLens)",
    latent_neighbours_overlay,
    neighbours_data,
    _has_image,
)
register_figure(
    KIND, "latent_similarity", "Top-1 similarity by layer", latent_similarity_by_layer, similarity_data
)
