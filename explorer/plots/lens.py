"""Figures for logit-lens results: layer x position heatmap, tracked ranks across layers,
generation steps x layers ranks, and never-emitted candidates (related to, but not the same statistic as, VISTA's "hidden genuine information")."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.analysis.logit_lens import ROLE_FINAL, ROLE_NEXT, ROLE_TARGET, LensResult
from explorer.plots import base_layout, register_figure, token_label

MAX_CELL_TEXT_POSITIONS = 40  # above this, cells carry no text (hover still has everything)
COLUMN_PX = 44
HOVER_K = 5

ROLE_LABEL = {ROLE_FINAL: "final prediction", ROLE_NEXT: "next input token", ROLE_TARGET: "target"}


_esc = token_label


def _tick_labels(tokens: list[str], positions: list[int]) -> list[str]:
    return [f"{p}:{_esc(tokens[p])[:12]}" for p in positions]


def _hover_topk(result: LensResult, layers: list[int], positions: list[int]) -> list[list[str]]:
    k = min(HOVER_K, result.topk_ids.shape[2])
    rows = []
    for layer in layers:
        row = []
        for p in positions:
            lines = [
                f"{j + 1}. {_esc(str(result.topk_tokens[layer, p, j]))} ({result.topk_probs[layer, p, j]:.3f})"
                for j in range(k)
            ]
            row.append("<br>".join(lines))
        rows.append(row)
    return rows


def position_window(result: LensResult, start: int | None, width: int | None) -> list[int]:
    """Positions to draw: all, or a window (long prompts stay readable)."""
    seq = result.seq_len
    if width is None or width >= seq:
        return list(range(seq))
    start = 0 if start is None else max(0, min(start, seq - width))
    return list(range(start, start + width))


def lens_heatmap(
    result: LensResult,
    metric: str = "prob",
    role: str = ROLE_FINAL,
    start: int | None = None,
    width: int | None = None,
) -> go.Figure:
    """Layers (y) x positions (x). Colour: probability (or log10 rank) of the chosen token —
    the model's final prediction (default) or the actual next input token. Cell text: the
    lens's own top-1 token; hover: the lens top-5 with probabilities."""
    positions = position_window(result, start, width)
    layers = list(range(result.n_layers + 1))
    value = "prob" if metric == "prob" else "rank"
    mat = result.tracked_matrix(role, value)[:, positions]
    if metric != "prob":
        mat = np.log10(mat)
    top1 = [[_esc(str(result.topk_tokens[layer, p, 0]))[:8] for p in positions] for layer in layers]
    hover = _hover_topk(result, layers, positions)
    chosen = [
        [
            _esc(str(result.summaries[p].token))
            if role == ROLE_FINAL
            else _esc(result.tokens[p + 1])
            if p + 1 < result.seq_len
            else "—"
            for p in positions
        ]
        for _ in layers
    ]
    colorbar_title = "probability" if metric == "prob" else "log10 rank"
    fig = go.Figure(
        go.Heatmap(
            z=mat,
            x=list(range(len(positions))),
            y=layers,
            text=top1 if len(positions) <= MAX_CELL_TEXT_POSITIONS else None,
            texttemplate="%{text}" if len(positions) <= MAX_CELL_TEXT_POSITIONS else None,
            textfont={"size": 9},
            customdata=np.dstack([np.array(hover, dtype=object), np.array(chosen, dtype=object)]),
            hovertemplate=(
                "layer %{y}, position %{x}<br>"
                + ROLE_LABEL.get(role, role)
                + " %{customdata[1]}: "
                + ("p=%{z:.3f}" if metric == "prob" else "log10 rank=%{z:.2f}")
                + "<br><b>lens top-5</b><br>%{customdata[0]}<extra></extra>"
            ),
            colorscale="Viridis" if metric == "prob" else "Viridis_r",
            zmin=0 if metric == "prob" else None,
            zmax=1 if metric == "prob" else None,
            colorbar={"title": {"text": colorbar_title}},
        )
    )
    fig.update_xaxes(
        title="position : input token",
        tickmode="array",
        tickvals=list(range(len(positions))),
        ticktext=_tick_labels(result.tokens, positions),
        tickangle=-60,
        showgrid=False,
    )
    fig.update_yaxes(title="layer (0 = embeddings)", showgrid=False)
    what = "final prediction" if role == ROLE_FINAL else "next input token"
    title = f"Logit lens: {'probability' if metric == 'prob' else 'rank'} of the {what} per layer (cells: lens top-1)"
    height = max(380, 18 * len(layers) + 160)
    width_px = max(700, COLUMN_PX * len(positions) + 160) if len(positions) > 16 else None
    return base_layout(fig, title, height=height, width=width_px)


def lens_heatmap_data(result: LensResult) -> pa.Table:
    t = result.tracked
    return pa.table(
        {
            "role": t["role"].astype(str),
            "token": t["token"].astype(str),
            "token_id": t["id"],
            "position": t["position"],
            "input_token": [result.tokens[int(p)] for p in t["position"]],
            "layer": t["layer"],
            "rank": t["rank"],
            "prob": t["prob"],
            "logit": t["logit"],
        }
    )


def tracked_ranks(result: LensResult, position: int | None = None) -> go.Figure:
    """Rank (log axis) of each tracked token across layers at one position (default: the last
    prompt position)."""
    pos = result.prompt_len - 1 if position is None else int(position)
    pos = max(0, min(pos, result.seq_len - 1))
    t = result.tracked
    fig = go.Figure()
    series: list[tuple[str, str]] = [(ROLE_FINAL, ""), (ROLE_NEXT, "")]
    series += [(ROLE_TARGET, str(tok)) for tok in dict.fromkeys(t["token"][t["role"] == ROLE_TARGET])]
    for role, token in series:
        mask = (t["role"] == role) & (t["position"] == pos)
        if token:
            mask &= t["token"] == token
        if not mask.any():
            continue
        order = np.argsort(t["layer"][mask])
        layers = t["layer"][mask][order]
        ranks = t["rank"][mask][order]
        probs = t["prob"][mask][order]
        tok = str(t["token"][mask][0])
        name = f"{ROLE_LABEL[role]}: {_esc(tok)}"
        fig.add_trace(
            go.Scatter(
                x=layers,
                y=ranks,
                mode="lines+markers",
                name=name,
                customdata=probs,
                hovertemplate=f"{name}<br>layer %{{x}}: rank %{{y}}, p=%{{customdata:.4f}}<extra></extra>",
            )
        )
    fig.update_yaxes(type="log", autorange="reversed", title="rank in vocabulary (1 = top, log scale)")
    fig.update_xaxes(title="layer (0 = embeddings)")
    fig.update_layout(showlegend=True, legend={"title": {"text": "tracked token"}})
    title = f"Tracked tokens' ranks across layers at position {pos} ({_esc(result.tokens[pos])!s})"
    return base_layout(fig, title, height=440)


def generation_ranks(result: LensResult) -> go.Figure:
    """Generation steps (x) x layers (y): log10 rank of the token emitted at each step."""
    steps = result.generation_positions
    mat = np.log10(result.tracked_matrix(ROLE_NEXT, "rank")[:, steps])
    probs = result.tracked_matrix(ROLE_NEXT, "prob")[:, steps]
    layers = list(range(result.n_layers + 1))
    hover = _hover_topk(result, layers, steps)
    custom = np.dstack([np.array(hover, dtype=object), probs.astype(object)])
    fig = go.Figure(
        go.Heatmap(
            z=mat,
            x=list(range(len(steps))),
            y=layers,
            customdata=custom,
            colorscale="Viridis_r",
            colorbar={"title": {"text": "log10 rank"}},
            hovertemplate=(
                "step %{x}, layer %{y}<br>emitted token: log10 rank %{z:.2f}, p=%{customdata[1]:.3f}"
                "<br><b>lens top-5</b><br>%{customdata[0]}<extra></extra>"
            ),
        )
    )
    fig.update_xaxes(
        title="generation step : emitted token",
        tickmode="array",
        tickvals=list(range(len(steps))),
        ticktext=[f"{s}:{_esc(g)[:12]}" for s, g in enumerate(result.generated)],
        tickangle=-60,
    )
    fig.update_yaxes(title="layer (0 = embeddings)")
    return base_layout(
        fig,
        "Rank of each emitted token across layers and generation steps",
        height=max(380, 16 * len(layers) + 160),
    )


def generation_data(result: LensResult) -> pa.Table:
    steps = result.generation_positions
    t = result.tracked
    mask = (t["role"] == ROLE_NEXT) & np.isin(t["position"], steps)
    return pa.table(
        {
            "step": t["position"][mask] - (result.prompt_len - 1),
            "position": t["position"][mask],
            "layer": t["layer"][mask],
            "token": t["token"][mask].astype(str),
            "token_id": t["id"][mask],
            "rank": t["rank"][mask],
            "prob": t["prob"][mask],
        }
    )


def never_emitted_figure(result: LensResult) -> go.Figure:
    """Top-10 lens candidates that were never emitted: how many (layer, step) cells they occupy."""
    rows = result.never_emitted[:15]
    labels = [_esc(r["token"]) for r in rows][::-1]
    cells = [r["cells"] for r in rows][::-1]
    hover = [
        f"best rank {r['best_rank']}, max p={r['max_prob']:.3f}, in {r['n_steps']} of {len(result.generated)} steps"
        for r in rows
    ][::-1]
    fig = go.Figure(
        go.Bar(
            x=cells,
            y=[f"{lab} " for lab in labels],
            orientation="h",
            customdata=hover,
            hovertemplate="%{y}: %{x} cells<br>%{customdata}<extra></extra>",
            marker={"color": "#6a51a3"},
            name="never emitted",
        )
    )
    fig.update_xaxes(title="(layer, step) cells where the token is in the lens top-10")
    fig.update_yaxes(title="candidate token (never emitted)")
    return base_layout(fig, "Hidden candidates: highly ranked at some layer, never emitted", height=460)


def hidden_data(result: LensResult) -> pa.Table:
    rows = result.never_emitted
    return pa.table(
        {
            "token": [r["token"] for r in rows],
            "token_id": [r["id"] for r in rows],
            "cells": [r["cells"] for r in rows],
            "best_rank": [r["best_rank"] for r in rows],
            "max_prob": [r["max_prob"] for r in rows],
            "steps": [r["steps"] for r in rows],
        }
    )


def summary_data(result: LensResult) -> pa.Table:
    rows: list[dict[str, Any]] = [s.__dict__ for s in result.summaries]
    return pa.Table.from_pylist(rows)


def _has_generation(result: Any) -> bool:
    return bool(result.generated)


register_figure("lens", "heatmap", "Layer x position heatmap", lens_heatmap, lens_heatmap_data)
register_figure("lens", "tracked", "Tracked tokens across layers", tracked_ranks, lens_heatmap_data)
register_figure(
    "lens", "generation", "Emitted tokens: steps x layers", generation_ranks, generation_data, _has_generation
)
register_figure(
    "lens", "hidden", "Never-emitted candidates", never_emitted_figure, hidden_data, _has_generation
)
