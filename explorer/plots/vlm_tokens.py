"""Figures of "vlm_tokens" runs: which visual tokens are sinks, dead or alive, and where text looks.

- `token_categories`: the image cut into its visual-token grid, each cell coloured sink / dead /
  alive at one LM block (slider over blocks); hover: norm, norm / median, received attention
  share and the ablation effects.
- `category_counts`: per block, how many visual tokens are alive / dead / sink (stacked bars).
- `text_to_image_attention`: the attention one text query (default: the last) gives each patch,
  one head, the mean over heads or the rollout, as an overlay with a block slider.
- `attention_shares`: per block, the share of the text queries' attention on image, text and
  sink tokens (stacked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.errors import InputError
from explorer.plots import base_layout, register_figure, token_label
from explorer.plots.image_grid import image_axes, image_trace, patch_geometry
from explorer.vlm.attention import VLMAttentionResult
from explorer.vlm.tokens import ALIVE, CATEGORY_NAMES, DEAD, SINK, VisualTokensResult

# The attention figures draw both kinds: a "vlm_tokens" run and a "vlm_attention" run (Attention tab).
TextImageResult = VisualTokensResult | VLMAttentionResult

KIND = VisualTokensResult.kind
CATEGORY_COLOURS = {ALIVE: "rgba(44,160,44,0.25)", DEAD: "rgba(90,90,90,0.75)", SINK: "rgba(214,39,40,0.75)"}
ATTENTION_SCALE = [
    [0.0, "rgba(68,1,84,0.0)"],
    [0.3, "rgba(59,82,139,0.35)"],
    [0.6, "rgba(33,145,140,0.55)"],
    [1.0, "rgba(253,231,37,0.8)"],
]


def _block(result: TextImageResult, layer: Any) -> int:
    """A block number 1..n_layers (negative counts from the end; default the last)."""
    n = result.n_layers
    value = n if layer is None else int(layer)
    if value < 0:
        value += n + 1
    if not 1 <= value <= n:
        raise InputError(f"block {value} does not exist (1..{n})")
    return value


def image_grid_slider(
    result: Any,
    heat: Callable[[int], go.Heatmap],
    start: int,
    title: str,
    steps: list[int] | None = None,
    prefix: str = "block ",
) -> go.Figure:
    """The run's image with one heatmap trace over its patch grid and a slider over `steps`
    (default: blocks 1..n); `heat(step)` draws one step. `result` has `.grid`, `.n_layers`, `.image()`."""
    image = result.image()
    fig = go.Figure(data=[image_trace(image), heat(start)])
    blocks = steps if steps is not None else list(range(1, result.n_layers + 1))
    fig.frames = [go.Frame(data=[heat(b)], traces=[1], name=str(b)) for b in blocks]
    fig.update_layout(
        sliders=[
            {
                "active": blocks.index(start),
                "currentvalue": {"prefix": prefix},
                "pad": {"t": 40},
                "steps": [
                    {
                        "label": str(b),
                        "method": "animate",
                        "args": [[str(b)], {"mode": "immediate", "frame": {"duration": 0, "redraw": True}}],
                    }
                    for b in blocks
                ],
            }
        ]
    )
    image_axes(fig, image.size, result.grid)
    return base_layout(fig, title, height=640)


def _geometry(result: TextImageResult) -> dict[str, float]:
    return patch_geometry(result.image().size, result.grid)


def token_categories(result: VisualTokensResult, layer: int | None = None) -> go.Figure:
    """Sink / dead / alive per visual token, one LM block at a time (slider)."""
    rows, cols = result.grid
    geo = _geometry(result)
    start = _block(result, layer)
    scale = []
    for c in (ALIVE, DEAD, SINK):
        scale += [[c / 3, CATEGORY_COLOURS[c]], [(c + 1) / 3, CATEGORY_COLOURS[c]]]
    median = np.median(result.norms, axis=1)

    def heat(block: int) -> go.Heatmap:
        cats = result.categories[block - 1]
        hover = np.empty((rows, cols), dtype=object)
        text = np.empty((rows, cols), dtype=object)
        for i in range(result.n_image):
            r, c = divmod(i, cols)
            norm = result.norms[block - 1, i]
            hover[r, c] = (
                f"patch row {r}, col {c} · block {block}: <b>{CATEGORY_NAMES[int(cats[i])]}</b><br>"
                f"input norm {norm:.2f} ({norm / max(median[block - 1], 1e-12):.1f}x median)<br>"
                f"attention share received {result.received[block - 1, i]:.3f} "
                f"(uniform {1 / result.n_image:.3f})<br>"
                f"drop it: |Δ log p(answer)| {result.delta_logprob[i]:.4f}, "
                f"output change {result.delta_hidden[i]:.4f}"
            )
            text[r, c] = CATEGORY_NAMES[int(cats[i])][0].upper()
        return go.Heatmap(
            z=cats.reshape(rows, cols).astype(float) + 0.5,
            zmin=0.0,
            zmax=3.0,
            text=text,
            texttemplate="%{text}",
            textfont={"size": 10, "color": "black"},
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=scale,
            colorbar={
                "tickvals": [0.5, 1.5, 2.5],
                "ticktext": list(CATEGORY_NAMES),
                "title": {"text": "category", "side": "right"},
            },
            xgap=1,
            ygap=1,
            **geo,
        )

    p = result.params
    title = (
        f"Visual tokens: sink (norm > {p['sink_norm_k']}x median and attention > {p['sink_share_k']}x uniform), "
        f"dead (ablation < ε), alive"
    )
    return image_grid_slider(result, heat, start, title)


def categories_data(result: VisualTokensResult) -> pa.Table:
    L, n = result.categories.shape
    cols = result.grid[1]
    block, patch = np.meshgrid(np.arange(1, L + 1), np.arange(n), indexing="ij")
    idx = patch.ravel()
    return pa.table(
        {
            "block": block.ravel(),
            "patch": idx,
            "row": idx // cols,
            "col": idx % cols,
            "category": [CATEGORY_NAMES[int(c)] for c in result.categories.ravel()],
            "input_norm": result.norms[:-1].ravel(),
            "received_share": result.received.ravel(),
            "delta_logprob": result.delta_logprob[idx],
            "delta_output": result.delta_hidden[idx],
        }
    )


def category_counts(result: VisualTokensResult) -> go.Figure:
    counts = result.counts()
    blocks = [c["layer"] for c in counts]
    fig = go.Figure(
        [
            go.Bar(
                x=blocks,
                y=[c[name] for c in counts],
                name=name,
                marker_color=CATEGORY_COLOURS[code].replace("0.25", "0.8"),
                hovertemplate=f"block %{{x}}: %{{y}} {name}<extra></extra>",
            )
            for code, name in enumerate(CATEGORY_NAMES)
        ]
    )
    fig.update_layout(barmode="stack", legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(title="LM block")
    fig.update_yaxes(title=f"visual tokens (of {result.n_image})")
    return base_layout(fig, "Sink / dead / alive visual tokens per block", height=420)


def counts_data(result: VisualTokensResult) -> pa.Table:
    return pa.Table.from_pylist(result.counts())


VIEWS = ("mean", "head", "rollout")


def text_to_image_attention(
    result: TextImageResult,
    layer: int | None = None,
    query: int | None = None,
    view: str = "mean",
    head: int = 0,
) -> go.Figure:
    """Attention from one text query position to every image patch (mean over heads, one head,
    or the rollout), per block with a slider."""
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}; choose from {VIEWS}")
    if view == "head" and not 0 <= head < result.n_heads:
        raise InputError(f"head {head} does not exist (0..{result.n_heads - 1})")
    rows, cols = result.grid
    qi = result.query_index(query)
    start = _block(result, layer)
    geo = _geometry(result)

    def values(block: int) -> np.ndarray:
        if view == "rollout":
            return result.rollout[block - 1, qi]
        if view == "head":
            return result.attention[block - 1, head, qi]
        return result.attention[block - 1, :, qi].mean(axis=0)

    zmax = float(max(max(values(b).max() for b in range(1, result.n_layers + 1)), 1e-9))

    def heat(block: int) -> go.Heatmap:
        v = values(block).reshape(rows, cols)
        hover = np.array(
            [
                [f"patch row {r}, col {c} · block {block}<br>attention {v[r, c]:.4f}" for c in range(cols)]
                for r in range(rows)
            ]
        )
        return go.Heatmap(
            z=v,
            zmin=0.0,
            zmax=zmax,
            hovertext=hover,
            hovertemplate="%{hovertext}<extra></extra>",
            colorscale=ATTENTION_SCALE,
            colorbar={"title": {"text": "attention", "side": "right"}},
            xgap=1,
            ygap=1,
            **geo,
        )

    q, last = result.query_units[qi]
    what = {"mean": "mean over heads", "head": f"head {head}", "rollout": "rollout"}[view]
    source = (
        f"{token_label(result.tokens[q])} (position {q})"
        if last == q
        else f"positions {q}–{last} (mean of {last - q + 1} text tokens)"
    )
    title = f"Attention from {source} to the image: {what}"
    return image_grid_slider(result, heat, start, title)


def attention_data(result: TextImageResult) -> pa.Table:
    L, H, Q, n = result.attention.shape
    li, hi, qi, pi = np.meshgrid(np.arange(L), np.arange(H), np.arange(Q), np.arange(n), indexing="ij")
    units = np.asarray(result.query_units)  # (Q, 2): one query, or a long run's block of them
    pos, last = units[qi.ravel(), 0], units[qi.ravel(), 1]
    return pa.table(
        {
            "block": li.ravel() + 1,
            "head": hi.ravel(),
            "query_position": pos,
            "query_last_position": last,
            "query_token": [result.tokens[p] for p in pos],
            "patch": pi.ravel(),
            "attention": result.attention.ravel(),
            "rollout": result.rollout[li.ravel(), qi.ravel(), pi.ravel()],
        }
    )


def attention_shares(result: TextImageResult) -> go.Figure:
    blocks = np.arange(1, result.n_layers + 1)
    colours = {"image": "rgba(31,119,180,0.8)", "text": "rgba(255,127,14,0.8)", "sink": "rgba(214,39,40,0.8)"}
    fig = go.Figure(
        [
            go.Bar(
                x=blocks,
                y=result.shares[:, i],
                name=name,
                marker_color=colours[name],
                hovertemplate=f"block %{{x}}: %{{y:.3f}} on {name}<extra></extra>",
            )
            for i, name in enumerate(("image", "text", "sink"))
        ]
    )
    fig.update_layout(barmode="stack", legend={"orientation": "h", "y": -0.25})
    fig.update_xaxes(title="LM block")
    fig.update_yaxes(title="share of the text queries' attention", range=[0, 1])
    return base_layout(
        fig, "Where text tokens look: image, text, sinks (position 0 + visual sinks)", height=420
    )


def shares_data(result: TextImageResult) -> pa.Table:
    return pa.table(
        {
            "block": np.arange(1, result.n_layers + 1),
            "image": result.shares[:, 0],
            "text": result.shares[:, 1],
            "sink": result.shares[:, 2],
        }
    )


register_figure(
    KIND, "token_categories", "Sink / dead / alive on the image", token_categories, categories_data
)
register_figure(KIND, "category_counts", "Category counts per block", category_counts, counts_data)
register_figure(
    KIND, "text_to_image_attention", "Text -> image attention", text_to_image_attention, attention_data
)
register_figure(
    KIND, "attention_shares", "Attention shares: image / text / sink", attention_shares, shares_data
)
