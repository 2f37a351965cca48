"""Figures of vision-language runs: what the LM reads in each image patch, layer by layer.

- `patch_lens_overlay`: the image as the model saw it, cut into its patch grid; each cell
  shows the logit lens's top-1 token at that visual token and is coloured by its probability
  (or by a tracked target's probability). A slider inside the figure steps through the
  layers (0 = the projected patch embeddings as the LM receives them).
- `target_surfacing`: a tracked target's probability across layers over the image tokens
  (max and mean over patches) and at the last prompt position: where "red" surfaces.
The text-lens figures (heatmap, tracked ranks, generation, hidden candidates) are registered
for "vlm_lens" runs too: a VLMLensResult is a LensResult.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.backends.images import image_to_png
from explorer.errors import InputError
from explorer.plots import base_layout, register_figure, token_label
from explorer.plots import lens as lens_plots
from explorer.vlm.lens import VLMLensResult

KIND = VLMLensResult.kind
CELL_SCALE = [
    [0.0, "rgba(68,1,84,0.05)"],
    [0.25, "rgba(59,82,139,0.35)"],
    [0.5, "rgba(33,145,140,0.5)"],
    [0.75, "rgba(94,201,98,0.6)"],
    [1.0, "rgba(253,231,37,0.7)"],
]


def _layer(result: VLMLensResult, layer: Any) -> int:
    n = result.n_layers
    value = n if layer is None else int(layer)
    if value < 0:
        value += n + 1
    if not 0 <= value <= n:
        raise InputError(f"layer {value} does not exist (0..{n})")
    return value


def _target(result: VLMLensResult, target: str | None) -> str | None:
    return None if target is None else result.target_name(target)


def _require_image(result: VLMLensResult) -> tuple[int, int]:
    if result.grid is None or result.image_png is None:
        raise InputError("this run has no image, so there is no patch grid to draw")
    return int(result.grid[0]), int(result.grid[1])


def _cells(
    result: VLMLensResult, layer: int, target: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, cell text, hover) for one layer: each (rows, cols)."""
    rows, cols = _require_image(result)
    tokens, probs = result.patch_top_tokens(layer)
    values = probs.astype(float) if target is None else result.patch_target(target)[layer]
    pos = result.grid_positions
    k = min(5, result.topk_ids.shape[2])
    hover = np.empty((rows, cols), dtype=object)
    text = np.empty((rows, cols), dtype=object)
    for i, p in enumerate(pos):
        r, c = divmod(i, cols)
        top = "<br>".join(
            f"{j + 1}. {token_label(str(result.topk_tokens[layer, p, j]))}  {result.topk_probs[layer, p, j]:.3f}"
            for j in range(k)
        )
        extra = f'<br>P("{token_label(target)}") = {values[r, c]:.4f}' if target is not None else ""
        hover[r, c] = f"patch row {r}, col {c} · layer {layer}{extra}<br>{top}"
        text[r, c] = token_label(str(tokens[r, c]))[:7]
    return values, text, hover


def patch_lens_overlay(
    result: VLMLensResult, layer: int | None = None, target: str | None = None
) -> go.Figure:
    """The image with its patch grid; each cell: the lens top-1 token at that visual token.

    Colour: the top-1 probability, or `target`'s probability. The slider steps through layers
    0..n_layers (the figure opens at `layer`, default the last)."""
    rows, cols = _require_image(result)
    target = _target(result, target)
    start = _layer(result, layer)
    image = result.image()
    assert image is not None
    width, height = image.size
    dx, dy = width / cols, height / rows
    zmax = 1.0 if target is None else float(max(np.nanmax(result.patch_target(target)), 1e-6))
    label = "top-1 probability" if target is None else f'P("{token_label(target)}")'

    def heat(layer_index: int) -> go.Heatmap:
        values, text, hover = _cells(result, layer_index, target)
        return go.Heatmap(
            z=values,
            x0=dx / 2,
            dx=dx,
            y0=dy / 2,
            dy=dy,
            zmin=0.0,
            zmax=zmax,
            text=text,
            texttemplate="%{text}",
            textfont={"size": 10, "color": "black"},
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=CELL_SCALE,
            colorbar={"title": {"text": label, "side": "right"}},
            xgap=1,
            ygap=1,
            name=f"layer {layer_index}",
        )

    png = base64.b64encode(image_to_png(image)).decode("ascii")
    fig = go.Figure(
        data=[
            go.Image(source="data:image/png;base64," + png, x0=0, y0=0, dx=1, dy=1, hoverinfo="skip"),
            heat(start),
        ]
    )
    layers = list(range(result.n_layers + 1))
    fig.frames = [go.Frame(data=[heat(li)], traces=[1], name=str(li)) for li in layers]
    fig.update_layout(
        sliders=[
            {
                "active": start,
                "currentvalue": {"prefix": "layer "},
                "pad": {"t": 40},
                "steps": [
                    {
                        "label": str(li),
                        "method": "animate",
                        "args": [[str(li)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True}}],
                    }
                    for li in layers
                ],
            }
        ]
    )
    fig.update_xaxes(
        title=f"x (pixels; {cols} visual-token columns)", range=[0, width], showgrid=False, zeroline=False
    )
    fig.update_yaxes(
        title=f"y (pixels; {rows} rows)",
        range=[height, 0],
        showgrid=False,
        zeroline=False,
        scaleanchor="x",
        constrain="domain",
    )
    what = "top-1 token" if target is None else f'top-1 token, coloured by P("{token_label(target)}")'
    return base_layout(fig, f"Logit lens on the image tokens: {what} (layer slider)", height=640)


def patch_lens_data(result: VLMLensResult) -> pa.Table:
    """Every (layer, visual token): grid row/col, lens top-1 token and probability."""
    rows, cols = _require_image(result)
    pos = np.asarray(result.grid_positions)
    n_l = result.n_layers + 1
    layer = np.repeat(np.arange(n_l), len(pos))
    idx = np.tile(np.arange(len(pos)), n_l)
    return pa.table(
        {
            "layer": layer,
            "position": pos[idx],
            "row": idx // cols,
            "col": idx % cols,
            "top1_token": [str(result.topk_tokens[li, pos[i], 0]) for li, i in zip(layer, idx, strict=True)],
            "top1_prob": result.topk_probs[layer, pos[idx], 0].astype(np.float32),
        }
    )


def surfacing_curves(result: VLMLensResult, target: str) -> dict[str, np.ndarray]:
    """Per layer: max and mean over image tokens of P(target), and P(target) at the last prompt position."""
    per_patch = result.patch_target(target).reshape(result.n_layers + 1, -1)
    last = result.tracked_matrix("target", "prob", target=target)[:, result.prompt_len - 1]
    return {"max": np.nanmax(per_patch, axis=1), "mean": np.nanmean(per_patch, axis=1), "answer": last}


def target_surfacing(result: VLMLensResult, target: str | None = None) -> go.Figure:
    """Where a tracked target (e.g. " red") surfaces: its lens probability per layer over the image
    tokens (max and mean over patches) and at the position that answers."""
    _require_image(result)
    targets = result.target_tokens
    if not targets:
        raise InputError("track a target token (e.g. ' red') to see where it surfaces")
    chosen = _target(result, target) or targets[0]
    curves = surfacing_curves(result, chosen)
    layers = np.arange(result.n_layers + 1)
    fig = go.Figure()
    styles = {
        "max": ("max over image tokens", "solid", "circle"),
        "mean": ("mean over image tokens", "dash", "square"),
        "answer": ("last prompt position (the answer)", "dot", "diamond"),
    }
    for key, (name, dash, symbol) in styles.items():
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=curves[key],
                mode="lines+markers",
                name=name,
                line={"dash": dash},
                marker={"symbol": symbol, "size": 6},
                hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.4f}}<extra></extra>",
            )
        )
    fig.update_xaxes(title="layer (0 = input embeddings)")
    fig.update_yaxes(title=f'lens probability of "{token_label(chosen)}"', rangemode="tozero")
    fig.update_layout(legend={"orientation": "h", "y": -0.25})
    return base_layout(fig, f'Where "{token_label(chosen)}" surfaces, layer by layer', height=420)


def surfacing_data(result: VLMLensResult) -> pa.Table:
    targets = result.target_tokens
    cols: dict[str, list[Any]] = {"target": [], "layer": [], "max_image": [], "mean_image": [], "answer": []}
    for t in targets:
        c = surfacing_curves(result, t)
        for li in range(result.n_layers + 1):
            cols["target"].append(t)
            cols["layer"].append(li)
            cols["max_image"].append(float(c["max"][li]))
            cols["mean_image"].append(float(c["mean"][li]))
            cols["answer"].append(float(c["answer"][li]))
    return pa.table(cols)


def _has_image(result: Any) -> bool:
    return getattr(result, "grid", None) is not None


def _has_image_and_target(result: Any) -> bool:
    return _has_image(result) and bool((result.tracked["role"] == "target").any())


register_figure(
    KIND, "patches", "Lens top-1 on the image patches", patch_lens_overlay, patch_lens_data, _has_image
)
register_figure(
    KIND, "surfacing", "Where a target surfaces", target_surfacing, surfacing_data, _has_image_and_target
)
register_figure(
    KIND, "heatmap", "Layer x position heatmap", lens_plots.lens_heatmap, lens_plots.lens_heatmap_data
)
register_figure(
    KIND, "tracked", "Tracked tokens across layers", lens_plots.tracked_ranks, lens_plots.lens_heatmap_data
)
register_figure(
    KIND,
    "generation",
    "Emitted tokens: steps x layers",
    lens_plots.generation_ranks,
    lens_plots.generation_data,
    lambda r: bool(r.generated),
)
