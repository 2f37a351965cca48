"""Token atlas figures: the token-state map (UMAP / PCA) with layer focus and trajectories."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.analysis.atlas.token_map import TokenMapResult
from explorer.plots import base_layout, register_figure, token_label

CATEGORICAL = ("token_type", "modality", "prompt")
TYPE_COLOURS = {
    "word": "#4c78a8",
    "number": "#72b7b2",
    "punctuation": "#e45756",
    "whitespace": "#bab0ac",
    "special": "#000000",
    "stopword": "#f58518",
    "visual": "#b279a2",
    "text": "#4c78a8",
}
PALETTE = ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d")
WEBGL_ABOVE = 4000  # points; below this SVG markers export as vectors


def _scatter(n: int) -> type[go.Scatter] | type[go.Scattergl]:
    return go.Scattergl if n > WEBGL_ABOVE else go.Scatter


def _custom(r: TokenMapResult, idx: np.ndarray) -> np.ndarray:
    return np.array(
        [
            [int(i), token_label(r.token[i]), token_label(r.context[i]), int(r.layer[i]), int(r.position[i])]
            for i in idx
        ],
        dtype=object,
    ).reshape(len(idx), 5)


HOVER = "<b>%{customdata[1]}</b> · layer %{customdata[3]} · position %{customdata[4]}<br>%{customdata[2]}"


def colour_values(r: TokenMapResult, colour: str, scores: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Per-point colour values for `colour` (a built-in name or a key of `scores`)."""
    if colour == "layer":
        return r.layer.astype(float)
    if colour == "position":
        return r.position.astype(float)
    if colour == "norm":
        return r.norm.astype(float)
    if colour == "token_type":
        return np.asarray(r.token_type, dtype=object)
    if colour == "modality":
        return np.asarray(r.modality, dtype=object)
    if colour == "prompt":
        return np.asarray([f"prompt {p}" for p in r.prompt_index], dtype=object)
    if scores and colour in scores:
        return np.asarray(scores[colour], dtype=float)
    from explorer.errors import InputError

    raise InputError(
        f"unknown colour {colour!r}; choose from layer, position, norm, token_type, modality, prompt"
    )


_UNSET: Any = object()


def token_map_figure(
    r: TokenMapResult,
    colour: str | None = None,
    layer: int | None = _UNSET,
    trajectory: int | None = _UNSET,
    prompt_index: int | None = None,
    scores: dict[str, np.ndarray] | None = None,
    height: int = 620,
) -> go.Figure:
    """Scatter of the map. `layer`: show only that layer's points in colour (the others as a grey
    backdrop, so a slider moves through one aligned map). `trajectory`: a token position of
    `prompt_index` whose path across the layers is drawn as a line. Unset options come from
    `r.view` (the UI's current choices), so an export shows what the user sees."""
    view = r.view
    colour = colour or view.get("colour", "layer")
    layer = view.get("layer") if layer is _UNSET else layer
    trajectory = view.get("trajectory") if trajectory is _UNSET else trajectory
    prompt_index = int(view.get("prompt_index", 0)) if prompt_index is None else prompt_index
    scores = scores if scores is not None else view.get("scores")
    fig = go.Figure()
    n = r.n_points
    focus = np.ones(n, dtype=bool) if layer is None else (r.layer == int(layer))
    if layer is not None and not focus.any():
        focus = np.ones(n, dtype=bool)
    back = np.flatnonzero(~focus)
    if back.size:
        fig.add_trace(
            _scatter(back.size)(
                x=r.coords[back, 0],
                y=r.coords[back, 1],
                mode="markers",
                marker={"size": 4, "color": "#d9d9d9"},
                name="other layers",
                customdata=_custom(r, back),
                hovertemplate=HOVER + "<extra></extra>",
            )
        )
    idx = np.flatnonzero(focus)
    values = colour_values(r, colour, scores)
    if colour in CATEGORICAL:
        cats = list(dict.fromkeys(values[idx].tolist()))
        for ci, cat in enumerate(cats):
            sel = idx[values[idx] == cat]
            fig.add_trace(
                _scatter(sel.size)(
                    x=r.coords[sel, 0],
                    y=r.coords[sel, 1],
                    mode="markers",
                    marker={"size": 7, "color": TYPE_COLOURS.get(str(cat), PALETTE[ci % len(PALETTE)])},
                    name=str(cat),
                    customdata=_custom(r, sel),
                    hovertemplate=HOVER + "<extra>" + str(cat) + "</extra>",
                )
            )
    else:
        vals = values[idx].astype(float)
        missing = np.isnan(vals)
        if missing.any():
            sel = idx[missing]
            fig.add_trace(
                _scatter(sel.size)(
                    x=r.coords[sel, 0],
                    y=r.coords[sel, 1],
                    mode="markers",
                    marker={"size": 6, "color": "#bdbdbd", "symbol": "x"},
                    name="no value",
                    customdata=_custom(r, sel),
                    hovertemplate=HOVER + "<extra>no value</extra>",
                )
            )
        sel = idx[~missing]
        fig.add_trace(
            _scatter(sel.size)(
                x=r.coords[sel, 0],
                y=r.coords[sel, 1],
                mode="markers",
                marker={
                    "size": 7,
                    "color": vals[~missing],
                    "colorscale": "Viridis",
                    "showscale": True,
                    "colorbar": {"title": {"text": colour[:24]}},
                },
                name=colour,
                customdata=_custom(r, sel),
                hovertemplate=HOVER + "<br>" + colour[:40] + " = %{marker.color:.4g}<extra></extra>",
                showlegend=False,
            )
        )
    if trajectory is not None:
        path = r.trajectory(prompt_index, int(trajectory))
        if path.size:
            fig.add_trace(
                go.Scatter(
                    x=r.coords[path, 0],
                    y=r.coords[path, 1],
                    mode="lines+markers+text",
                    line={"color": "#d62728", "width": 2},
                    marker={"size": 9, "color": "#d62728", "symbol": "circle-open"},
                    text=[str(int(r.layer[i])) for i in path],
                    textposition="top center",
                    name=f"path of {token_label(r.token[path[0]])} (pos {trajectory})",
                    customdata=_custom(r, path),
                    hovertemplate=HOVER + "<extra>trajectory</extra>",
                )
            )
    where = "all layers (one aligned fit)" if r.layer_mode == "all" else f"layer {r.layer_mode}"
    shown = "" if layer is None else f" · showing layer {layer}"
    base_layout(fig, f"{r.method.upper()} of token states, {where}{shown} · {r.model}", height=height)
    fig.update_layout(
        dragmode="lasso",
        xaxis={"title": f"{r.method.upper()} 1", "showticklabels": False, "zeroline": False},
        yaxis={"title": f"{r.method.upper()} 2", "showticklabels": False, "zeroline": False},
        legend={"itemsizing": "constant"},
    )
    return fig


def token_map_data(r: TokenMapResult) -> pa.Table:
    return r.points_table()


def trajectory_figure(
    r: TokenMapResult, prompt_index: int | None = None, position: int | None = None
) -> go.Figure:
    """The map with one token's path across layers (default: the chosen token, else the last one)."""
    pi = int(r.view.get("prompt_index", 0)) if prompt_index is None else prompt_index
    if position is None:
        chosen = r.view.get("trajectory")
        position = len(r.tokens[pi]) - 1 if chosen is None else int(chosen)
    return token_map_figure(r, colour="layer", layer=None, trajectory=position, prompt_index=pi)


def _all_layers(r: Any) -> bool:
    return bool(r.layer_mode == "all")


register_figure("token_map", "map", "Map of token states", token_map_figure, token_map_data)
register_figure(
    "token_map", "trajectory", "A token's path across layers", trajectory_figure, token_map_data, _all_layers
)
