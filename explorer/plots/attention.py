"""Figures for attention results: kind "attention" (causal LMs) and kind "vision_attention"
(vision transformers: [CLS] -> patch attention and rollout overlaid on the image, entropy).

Every figure reads the stored `AttentionResult` only (no model): one head's query x key
heatmap with the causal mask greyed, a thumbnail grid of all heads, the mean over heads, a
token-centred view (what a token attends to / what attends to it, per layer), rollout,
attention flow, per-head entropy and sink shares (layers x heads).

Display choices (layer, head, token, sink positions, rollout layer) are keyword options of the
figure and data builders (the UI passes its controls' values, and so does its export, so an export
shows what the user sees); they are never part of the result.
Long prompts are aggregated for display (`block_aggregate`: mean over query blocks, total over
key blocks, rows still sum to 1): at most `MAX_MATRIX_POSITIONS` per axis for one matrix and
at most `MAX_THUMB_POSITIONS` per thumbnail, within a total cell budget, so the browser
never receives millions of cells. The stored result and the data exports keep full resolution.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa
from plotly.subplots import make_subplots

from explorer.analysis.attention import AttentionResult, block_aggregate, compose_spans
from explorer.analysis.vision_attention import upsample_map
from explorer.analysis.vision_attention_result import VisionAttentionResult
from explorer.errors import InputError
from explorer.plots import base_layout, register_figure, token_label

KIND = AttentionResult.kind
MAX_MATRIX_POSITIONS = 128
MAX_THUMB_POSITIONS = 64
THUMB_CELL_BUDGET = 250_000  # cells over the whole thumbnail grid
MAX_TOKEN_AXIS_POSITIONS = 256
MASK_GREY = "#d0d0d0"
ATTENTION_SCALE = "Viridis"


# ---- labels ------------------------------------------------------------------------------
_esc = token_label


def _span_labels(tokens: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[str]:
    """Tick text per display position: "p:token", or "a–b" for an aggregated block."""
    return [f"{a}:{_esc(tokens[a])[:12]}" if a == b else f"{a}–{b}" for a, b in spans]


def _span_hover(tokens: Sequence[str], spans: Sequence[tuple[int, int]]) -> list[str]:
    return [
        f"{a} {_esc(tokens[a])!s}" if a == b else f"{a}–{b} ({_esc(tokens[a])} … {_esc(tokens[b])})"
        for a, b in spans
    ]


def _view(options: dict[str, Any], key: str, default: Any) -> Any:
    """A display option, or its default when not given (None)."""
    value = options.get(key)
    return default if value is None else value


def _layer(result: AttentionResult, options: dict[str, Any]) -> int:
    layer = int(_view(options, "layer", 0))
    if not 0 <= layer < result.n_layers:
        raise InputError(f"layer {layer} does not exist (0..{result.n_layers - 1})")
    return layer


def _head(result: AttentionResult, options: dict[str, Any]) -> int | None:
    """A head index, or None for the mean over heads ("mean" or -1)."""
    head = _view(options, "head", 0)
    if head in ("mean", -1, None):
        return None
    head = int(head)
    if not 0 <= head < result.n_heads:
        raise InputError(f"head {head} does not exist (0..{result.n_heads - 1})")
    return head


def _token(result: AttentionResult, options: dict[str, Any]) -> int:
    pos = int(_view(options, "token", result.seq_len - 1))
    if pos < 0:
        pos += result.seq_len
    if not 0 <= pos < result.seq_len:
        raise InputError(f"token position {pos} is outside the prompt (0..{result.seq_len - 1})")
    return pos


def _sinks(result: AttentionResult, options: dict[str, Any]) -> list[int]:
    sinks = _view(options, "sinks", [0])
    positions = sorted({int(p) for p in sinks})
    bad = [p for p in positions if not 0 <= p < result.seq_len]
    if bad:
        raise InputError(f"sink positions {bad} are outside the prompt (0..{result.seq_len - 1})")
    return positions


# ---- one matrix --------------------------------------------------------------------------
def _matrix_traces(
    matrix: np.ndarray,
    tokens: Sequence[str],
    max_positions: int,
    *,
    colorbar_title: str,
    hover_prefix: str = "",
    unit_spans: Sequence[tuple[int, int]] | None = None,
) -> tuple[list[go.Heatmap], list[tuple[int, int]]]:
    """A (seq, seq) query x key matrix as heatmap traces: the values (future cells blank) and a
    grey trace over the masked cells, so the causal mask stays visible in exports. The x/y
    coordinates are display indices 0..n-1. `unit_spans`: the token spans of the matrix's rows when
    it is already block-level (a long prompt's stored result); the returned spans are always in
    token positions."""
    shown, unit_display = block_aggregate(matrix, max_positions)
    spans = compose_spans(unit_display, unit_spans)
    n = len(spans)
    masked = _masked_cells(spans)
    z = np.where(masked, np.nan, shown).astype(np.float32)
    labels = _span_hover(tokens, spans)
    custom = np.empty((n, n, 2), dtype=object)
    custom[:, :, 0] = np.array(labels, dtype=object)[:, None]
    custom[:, :, 1] = np.array(labels, dtype=object)[None, :]
    value = go.Heatmap(
        z=z,
        x=np.arange(n),
        y=np.arange(n),
        customdata=custom,
        hovertemplate=hover_prefix
        + "query %{customdata[0]}<br>key %{customdata[1]}<br>attention %{z:.4f}<extra></extra>",
        hoverongaps=False,
        colorscale=ATTENTION_SCALE,
        zmin=0.0,
        colorbar={"title": {"text": colorbar_title}},
    )
    traces = [value]
    if masked.any():
        traces.append(
            go.Heatmap(
                z=np.where(masked, 1.0, np.nan).astype(np.float32),
                x=np.arange(n),
                y=np.arange(n),
                colorscale=[[0, MASK_GREY], [1, MASK_GREY]],
                showscale=False,
                hoverongaps=False,
                hovertemplate="future key (causal mask): query cannot attend<extra></extra>",
                name="causal mask",
            )
        )
    return traces, spans


def _masked_cells(spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """(n, n) bool: display cell (query block, key block) lies wholly in the future."""
    first = np.array([a for a, _ in spans])
    last = np.array([b for _, b in spans])
    return first[None, :] > last[:, None]  # type: ignore[no-any-return]


def _matrix_axes(
    fig: go.Figure, tokens: Sequence[str], spans: Sequence[tuple[int, int]], **where: Any
) -> None:
    ticks = _span_labels(tokens, spans)
    step = max(1, len(spans) // 48)  # at most ~48 tick labels per axis
    vals = list(range(0, len(spans), step))
    fig.update_xaxes(
        title="key (attended-to token)",
        tickmode="array",
        tickvals=vals,
        ticktext=[ticks[i] for i in vals],
        tickangle=-60,
        showgrid=False,
        **where,
    )
    fig.update_yaxes(
        title="query (attending token)",
        tickmode="array",
        tickvals=vals,
        ticktext=[ticks[i] for i in vals],
        autorange="reversed",
        showgrid=False,
        **where,
    )


def _no_zero_lines(fig: go.Figure) -> go.Figure:
    fig.update_xaxes(zeroline=False)
    fig.update_yaxes(zeroline=False)
    return fig


def _matrix_figure(
    result: AttentionResult, matrix: np.ndarray, title: str, colorbar: str, hover_prefix: str
) -> go.Figure:
    traces, spans = _matrix_traces(
        matrix,
        result.tokens,
        MAX_MATRIX_POSITIONS,
        colorbar_title=colorbar,
        hover_prefix=hover_prefix,
        unit_spans=result.spans,
    )
    fig = go.Figure(traces)
    _matrix_axes(fig, result.tokens, spans)
    if len(spans) < result.seq_len:
        title += f" (display: {result.seq_len} tokens in {len(spans)} blocks)"
    size = max(480, min(900, 14 * len(spans) + 200))
    return base_layout(_no_zero_lines(fig), title, height=size)


def head_heatmap(result: AttentionResult, **options: Any) -> go.Figure:
    """One head of one layer: query (y) x key (x); grey cells are future tokens (causal mask)."""
    layer, head = _layer(result, options), _head(result, options)
    matrix = result.head_matrix(layer, head)
    which = "mean over heads" if head is None else f"head {head}"
    return _matrix_figure(
        result, matrix, f"Attention, layer {layer}, {which}", "attention", f"layer {layer}, {which}<br>"
    )


def mean_heatmap(result: AttentionResult, **options: Any) -> go.Figure:
    """Mean over all heads of one layer: query x key."""
    layer = _layer(result, options)
    return _matrix_figure(
        result,
        result.head_matrix(layer, None),
        f"Attention, layer {layer}, mean over {result.n_heads} heads",
        "mean attention",
        f"layer {layer}, mean over heads<br>",
    )


def rollout_heatmap(result: AttentionResult, **options: Any) -> go.Figure:
    """Attention rollout after a layer (default: the last): query x input token."""
    layer = int(_view(options, "rollout_layer", result.n_layers - 1))
    if not 0 <= layer < result.n_layers:
        raise InputError(f"rollout layer {layer} does not exist (0..{result.n_layers - 1})")
    fig = _matrix_figure(
        result,
        result.rollout[layer],
        f"Attention rollout through layers 0..{layer} (0.5·mean attention + 0.5·I per layer)",
        "rollout",
        f"rollout after layer {layer}<br>",
    )
    fig.update_xaxes(title="input token (key)")
    fig.update_yaxes(title="position after the layer (query)")
    return fig


# ---- all heads -------------------------------------------------------------------------
def window_heatmap(
    result: AttentionResult, matrix: np.ndarray, start: int, layer: int, head: int | None, source: str
) -> go.Figure:
    """An exact window (queries and keys start..start+n-1) of one head of a long prompt: recomputed
    from the model, or spread from the stored block aggregate (`source` says which)."""
    n = matrix.shape[0]
    spans = [(start + i, start + i) for i in range(n)]
    causal = np.arange(n)[None, :] <= np.arange(n)[:, None]
    labels = _span_hover(result.tokens, spans)
    custom = np.empty((n, n, 2), dtype=object)
    custom[:, :, 0] = np.array(labels, dtype=object)[:, None]
    custom[:, :, 1] = np.array(labels, dtype=object)[None, :]
    which = "mean over heads" if head is None else f"head {head}"
    fig = go.Figure(
        go.Heatmap(
            z=np.where(causal, matrix, np.nan).astype(np.float32),
            x=np.arange(n),
            y=np.arange(n),
            customdata=custom,
            colorscale=ATTENTION_SCALE,
            zmin=0.0,
            hoverongaps=False,
            hovertemplate="query %{customdata[0]}<br>key %{customdata[1]}<br>attention %{z:.4f}<extra></extra>",
            colorbar={"title": {"text": "attention"}},
        )
    )
    _matrix_axes(fig, result.tokens, spans)
    fig.update_layout(plot_bgcolor=MASK_GREY)
    title = f"Layer {layer}, {which}: positions {start}–{start + n - 1} ({source})"
    return base_layout(_no_zero_lines(fig), title, height=max(480, min(900, 14 * n + 200)))


# ---- all heads -------------------------------------------------------------------------


def thumb_positions(result: AttentionResult) -> int:
    """Positions per thumbnail axis: <= MAX_THUMB_POSITIONS and within THUMB_CELL_BUDGET overall."""
    budget = int(np.sqrt(THUMB_CELL_BUDGET / (result.n_layers * result.n_heads)))
    return max(4, min(MAX_THUMB_POSITIONS, result.seq_len, budget))


def heads_grid(result: AttentionResult, **options: Any) -> go.Figure:
    """Every head of every layer as a thumbnail (rows: layers, columns: heads), one shared
    colour scale; long prompts are block-aggregated (see `thumb_positions`).

    The thumbnails are tiles of one heatmap (a one-cell gap between tiles) on one pair of axes,
    with the causal mask as a second, grey heatmap: a figure of hundreds of heads is then two
    traces, not hundreds of subplots, and draws and exports in a fraction of the time. Hover
    gives layer, head, query and key (block) of every cell (`customdata`)."""
    n_l, n_h = result.n_layers, result.n_heads
    size = thumb_positions(result)
    first, unit_display = block_aggregate(result.attentions[0, 0], size)
    spans = compose_spans(unit_display, result.spans)
    n = len(spans)
    pitch = n + 1
    rows, cols = n_l * pitch - 1, n_h * pitch - 1
    values = np.full((rows, cols), np.nan, dtype=np.float32)
    mask = np.full((rows, cols), np.nan, dtype=np.float32)
    custom = np.zeros((rows, cols, 4), dtype=np.uint16)  # layer, head, query block, key block
    masked = _masked_cells(spans)
    qi, ki = np.indices((n, n))
    for layer in range(n_l):
        for head in range(n_h):
            shown = first if layer == head == 0 else block_aggregate(result.attentions[layer, head], size)[0]
            r0, c0 = layer * pitch, head * pitch
            values[r0 : r0 + n, c0 : c0 + n] = np.where(masked, np.nan, shown)
            mask[r0 : r0 + n, c0 : c0 + n] = np.where(masked, 1.0, np.nan)
            custom[r0 : r0 + n, c0 : c0 + n] = np.stack(
                [np.full_like(qi, layer), np.full_like(qi, head), qi, ki], -1
            )
    unit = "position" if n == result.seq_len else "block"
    fig = go.Figure(
        [
            go.Heatmap(
                z=values,
                customdata=custom,
                hovertemplate=f"layer %{{customdata[0]}}, head %{{customdata[1]}}<br>query {unit} "
                f"%{{customdata[2]}}, key {unit} %{{customdata[3]}}<br>attention %{{z:.4f}}<extra></extra>",
                hoverongaps=False,
                colorscale=ATTENTION_SCALE,
                zmin=0.0,
                colorbar={"title": {"text": "attention"}},
            ),
            go.Heatmap(
                z=mask,
                colorscale=[[0, MASK_GREY], [1, MASK_GREY]],
                showscale=False,
                hoverinfo="skip",
                name="causal mask",
            ),
        ]
    )
    centres = [i * pitch + (n - 1) / 2 for i in range(max(n_l, n_h))]
    fig.update_xaxes(
        title="head (key → within each)", tickmode="array", tickvals=centres[:n_h],
        ticktext=[str(h) for h in range(n_h)], showgrid=False, zeroline=False, side="top", constrain="domain",
    )  # fmt: skip
    fig.update_yaxes(
        title="layer (query ↓ within each)", tickmode="array", tickvals=centres[:n_l],
        ticktext=[str(layer) for layer in range(n_l)], showgrid=False, zeroline=False, autorange="reversed",
        scaleanchor="x", constrain="domain",
    )  # fmt: skip
    title = "All heads (rows: layers, columns: heads; query ↓ × key →, grey = causal mask)"
    if n < result.seq_len:
        title += f"; {result.seq_len} tokens shown in {n} blocks"
    thumb_px = 70 if n_h > 6 else 100
    return base_layout(
        fig, title, height=max(400, n_l * thumb_px + 140), width=max(600, n_h * thumb_px + 200)
    )


# ---- token-centred view --------------------------------------------------------------
def token_view(result: AttentionResult, **options: Any) -> go.Figure:
    """For one token: what it attends to (keys, left) and what attends to it (queries, right),
    per layer (rows), for one head or the mean over heads."""
    pos, head = _token(result, options), _head(result, options)
    attends_to, attended_by = result.token_view(pos, head)  # (L, seq) each
    seq = result.seq_len
    # long prompts: aggregate positions into blocks (sum over keys / mean is not needed: rows are
    # per layer, so blocks add up the attention to or from the block's tokens)
    edges = np.linspace(0, seq, min(seq, MAX_TOKEN_AXIS_POSITIONS) + 1).round().astype(int)
    starts = edges[:-1][np.diff(edges) > 0]
    spans = [(int(a), int(b) - 1) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    to_shown = np.add.reduceat(attends_to, starts, axis=1)
    by_shown = np.add.reduceat(attended_by, starts, axis=1)
    span_first = np.array([a for a, _ in spans])
    span_last = np.array([b for _, b in spans])
    to_shown = np.where(span_first[None, :] > pos, np.nan, to_shown)  # future keys: masked
    by_shown = np.where(span_last[None, :] < pos, np.nan, by_shown)  # earlier queries cannot see it
    which = "mean over heads" if head is None else f"head {head}"
    label = f"{pos}:{_esc(result.tokens[pos])}"
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=[f"{label} attends to (keys)", f"{label} is attended to by (queries)"],
        horizontal_spacing=0.08,
    )
    layers = np.arange(result.n_layers)
    hover = _span_hover(result.tokens, spans)
    custom = np.broadcast_to(np.array(hover, dtype=object)[None, :], (result.n_layers, len(spans)))
    fig.add_trace(
        go.Heatmap(
            z=to_shown.astype(np.float32),
            x=np.arange(len(spans)),
            y=layers,
            customdata=custom,
            coloraxis="coloraxis",
            hoverongaps=False,
            hovertemplate=f"layer %{{y}}, {which}<br>{label} → key %{{customdata}}<br>attention %{{z:.4f}}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Heatmap(
            z=by_shown.astype(np.float32),
            x=np.arange(len(spans)),
            y=layers,
            customdata=custom,
            coloraxis="coloraxis",
            hoverongaps=False,
            hovertemplate=f"layer %{{y}}, {which}<br>query %{{customdata}} → {label}<br>attention %{{z:.4f}}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    ticks = _span_labels(result.tokens, spans)
    step = max(1, len(spans) // 40)
    vals = list(range(0, len(spans), step))
    fig.update_xaxes(
        tickmode="array", tickvals=vals, ticktext=[ticks[i] for i in vals], tickangle=-60, showgrid=False
    )
    fig.update_xaxes(title="key token", row=1, col=1)
    fig.update_xaxes(title="query token", row=1, col=2)
    fig.update_yaxes(title="layer", showgrid=False, row=1, col=1)
    fig.update_yaxes(showgrid=False, row=1, col=2)
    fig.update_layout(
        coloraxis={"colorscale": ATTENTION_SCALE, "cmin": 0.0, "colorbar": {"title": {"text": "attention"}}},
        plot_bgcolor=MASK_GREY,
    )
    return base_layout(
        _no_zero_lines(fig),
        f"Token-centred attention for {label} ({which}; blank = not allowed by the causal mask)",
        height=max(420, 16 * result.n_layers + 200),
    )


# ---- layers x heads ----------------------------------------------------------------------
def _layer_head_heatmap(
    values: np.ndarray, title: str, colorbar: str, value_label: str, fmt: str, zmax: float | None
) -> go.Figure:
    n_l, n_h = values.shape
    fig = go.Figure(
        go.Heatmap(
            z=values.astype(np.float32),
            x=np.arange(n_h),
            y=np.arange(n_l),
            colorscale=ATTENTION_SCALE,
            zmin=0.0,
            zmax=zmax,
            colorbar={"title": {"text": colorbar}},
            hovertemplate=f"layer %{{y}}, head %{{x}}<br>{value_label} %{{z:{fmt}}}<extra></extra>",
        )
    )
    fig.update_xaxes(title="head", tickmode="linear", dtick=1 if n_h <= 32 else None, showgrid=False)
    fig.update_yaxes(title="layer", showgrid=False)
    return base_layout(fig, title, height=max(420, 16 * n_l + 180))


def entropy_heatmap(result: AttentionResult, **options: Any) -> go.Figure:
    """Mean attention entropy (bits) of each head: low = focused, high = spread out."""
    max_bits = float(np.log2(np.arange(2, result.seq_len + 1)).mean())
    return _layer_head_heatmap(
        result.entropy,
        f"Attention entropy per head (bits, mean over queries; uniform attention = {max_bits:.2f})",
        "entropy (bits)",
        "entropy (bits)",
        ".3f",
        None,
    )


def sink_heatmap(result: AttentionResult, **options: Any) -> go.Figure:
    """Share of attention each head gives the chosen sink tokens (default: the first token)."""
    sinks = _sinks(result, options)
    values = result.sink_share if sinks == [0] else result.sink_share_for(sinks)
    names = ", ".join(f"{p}:{_esc(result.tokens[p])}" for p in sinks[:6]) + (" …" if len(sinks) > 6 else "")
    return _layer_head_heatmap(
        values,
        f"Attention-sink share per head: attention to {names or 'no tokens'} (mean over queries 1..n)",
        "sink share",
        "share to sinks",
        ".3f",
        1.0,
    )


def flow_heatmap(result: AttentionResult, **options: Any) -> go.Figure:
    """Attention flow (left) next to rollout (right) for the flow's output positions x input tokens."""
    if result.flow is None:
        raise InputError("this run has no attention flow: rerun with flow enabled")
    positions = result.flow_positions
    roll = result.rollout[-1][positions]  # (P, seq)
    seq = result.seq_len
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=["attention flow (max-flow)", "attention rollout"],
        horizontal_spacing=0.08,
    )
    labels = [f"{p}:{_esc(result.tokens[p])}" for p in positions]
    key_labels = [f"{k}:{_esc(result.tokens[k])}" for k in range(seq)]
    custom = np.empty((len(positions), seq, 2), dtype=object)
    custom[:, :, 0] = np.array(labels, dtype=object)[:, None]
    custom[:, :, 1] = np.array(key_labels, dtype=object)[None, :]
    for col, (values, name) in enumerate(((result.flow, "flow"), (roll, "rollout")), start=1):
        future = np.arange(seq)[None, :] > np.asarray(positions)[:, None]
        fig.add_trace(
            go.Heatmap(
                z=np.where(future, np.nan, values).astype(np.float32),
                x=np.arange(seq),
                y=np.arange(len(positions)),
                customdata=custom,
                coloraxis="coloraxis",
                hoverongaps=False,
                hovertemplate=f"output %{{customdata[0]}}<br>input %{{customdata[1]}}<br>{name} %{{z:.4f}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
    step = max(1, seq // 40)
    vals = list(range(0, seq, step))
    fig.update_xaxes(
        title="input token",
        tickmode="array",
        tickvals=vals,
        ticktext=[key_labels[i] for i in vals],
        tickangle=-60,
        showgrid=False,
    )
    fig.update_yaxes(
        tickmode="array",
        tickvals=list(range(len(positions))),
        ticktext=labels,
        showgrid=False,
        autorange="reversed",
    )
    fig.update_yaxes(title="output position", row=1, col=1)
    fig.update_layout(
        coloraxis={
            "colorscale": ATTENTION_SCALE,
            "cmin": 0.0,
            "colorbar": {"title": {"text": "share of input"}},
        },
        plot_bgcolor=MASK_GREY,
    )
    return base_layout(
        _no_zero_lines(fig),
        "Attention flow vs rollout (rows sum to 1; blank = future tokens)",
        height=max(440, 40 * len(positions) + 300),
    )


# ---- data behind each figure (full resolution, long form) -------------------------------
def _matrix_table(result: AttentionResult, matrix: np.ndarray, **extra: Any) -> pa.Table:
    """Long form of a query x key matrix. A long prompt's matrices are block-level: each row is
    then a block pair, `query`/`key` its first positions and `query_last`/`key_last` its last."""
    side = matrix.shape[-1]
    spans = result.spans if result.spans is not None else [(i, i) for i in range(side)]
    first = np.array([a for a, _ in spans])
    last = np.array([b for _, b in spans])
    q, k = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    keep = first[k] <= last[q]
    cols: dict[str, Any] = {name: np.full(int(keep.sum()), value) for name, value in extra.items()}
    cols.update(
        {
            "query": first[q[keep]].astype(np.int32),
            "query_token": np.asarray(result.tokens, dtype=object)[first[q[keep]]].astype(str),
            "key": first[k[keep]].astype(np.int32),
            "key_token": np.asarray(result.tokens, dtype=object)[first[k[keep]]].astype(str),
            "weight": matrix[keep].astype(np.float32),
        }
    )
    if result.spans is not None:
        cols["query_last"] = last[q[keep]].astype(np.int32)
        cols["key_last"] = last[k[keep]].astype(np.int32)
    return pa.table(cols)


def head_data(result: AttentionResult, **options: Any) -> pa.Table:
    layer, head = _layer(result, options), _head(result, options)
    return _matrix_table(
        result, result.head_matrix(layer, head), layer=layer, head=-1 if head is None else head
    )


def mean_data(result: AttentionResult, **options: Any) -> pa.Table:
    layer = _layer(result, options)
    return _matrix_table(result, result.head_matrix(layer, None), layer=layer)


def rollout_data(result: AttentionResult, **options: Any) -> pa.Table:
    layer = int(_view(options, "rollout_layer", result.n_layers - 1))
    return _matrix_table(result, result.rollout[layer], through_layer=layer)


def grid_data(result: AttentionResult) -> pa.Table:
    tables = [
        _matrix_table(result, result.attentions[layer, head], layer=layer, head=head)
        for layer in range(result.n_layers)
        for head in range(result.n_heads)
    ]
    return pa.concat_tables(tables)


def token_data(result: AttentionResult, **options: Any) -> pa.Table:
    pos, head = _token(result, options), _head(result, options)
    attends_to, attended_by = result.token_view(pos, head)
    n_l, seq = attends_to.shape
    layer, other = np.meshgrid(np.arange(n_l), np.arange(seq), indexing="ij")
    parts = []
    for direction, values, keep in (
        ("attends_to", attends_to, other <= pos),
        ("attended_by", attended_by, other >= pos),
    ):
        parts.append(
            pa.table(
                {
                    "token_position": np.full(int(keep.sum()), pos, dtype=np.int32),
                    "head": np.full(int(keep.sum()), -1 if head is None else head, dtype=np.int32),
                    "direction": np.full(int(keep.sum()), direction, dtype=object).astype(str),
                    "layer": layer[keep].astype(np.int16),
                    "other_position": other[keep].astype(np.int32),
                    "other_token": np.asarray(result.tokens, dtype=object)[other[keep]].astype(str),
                    "weight": values[keep].astype(np.float32),
                }
            )
        )
    return pa.concat_tables(parts)


def _layer_head_table(result: AttentionResult, **columns: np.ndarray) -> pa.Table:
    layer, head = np.meshgrid(np.arange(result.n_layers), np.arange(result.n_heads), indexing="ij")
    cols: dict[str, Any] = {"layer": layer.ravel().astype(np.int16), "head": head.ravel().astype(np.int16)}
    cols.update({name: values.ravel().astype(np.float32) for name, values in columns.items()})
    return pa.table(cols)


def entropy_data(result: AttentionResult) -> pa.Table:
    return _layer_head_table(result, entropy_bits=result.entropy)


def sink_data(result: AttentionResult, **options: Any) -> pa.Table:
    sinks = _sinks(result, options)
    table = _layer_head_table(
        result,
        sink_share=result.sink_share_for(sinks),
        first_token_share=result.sink_share,
        delimiter_share=result.delimiter_share,
    )
    return table.append_column("sink_positions", pa.array([",".join(map(str, sinks))] * table.num_rows))


def flow_data(result: AttentionResult) -> pa.Table:
    if result.flow is None or result.flow_raw is None:
        raise InputError("this run has no attention flow: rerun with flow enabled")
    positions = result.flow_positions
    out, key = np.meshgrid(np.arange(len(positions)), np.arange(result.seq_len), indexing="ij")
    keep = key <= np.asarray(positions)[out]
    return pa.table(
        {
            "output_position": np.asarray(positions, dtype=np.int32)[out[keep]],
            "input_position": key[keep].astype(np.int32),
            "input_token": np.asarray(result.tokens, dtype=object)[key[keep]].astype(str),
            "flow": result.flow[out[keep], key[keep]].astype(np.float32),
            "flow_raw": result.flow_raw[out[keep], key[keep]].astype(np.float32),
            "rollout": result.rollout[-1][np.asarray(positions)[out[keep]], key[keep]].astype(np.float32),
        }
    )


register_figure(KIND, "head", "Attention of one head (query × key)", head_heatmap, head_data)
register_figure(KIND, "heads_grid", "All heads (thumbnails)", heads_grid, grid_data)
register_figure(KIND, "mean_heads", "Mean over heads", mean_heatmap, mean_data)
register_figure(KIND, "token", "Token-centred view", token_view, token_data)
register_figure(KIND, "rollout", "Attention rollout", rollout_heatmap, rollout_data)
register_figure(
    KIND, "flow", "Attention flow vs rollout", flow_heatmap, flow_data, applies=lambda r: r.flow is not None
)
register_figure(KIND, "entropy", "Entropy per head", entropy_heatmap, entropy_data)
register_figure(KIND, "sinks", "Attention-sink share per head", sink_heatmap, sink_data)


# ==== vision transformers (kind "vision_attention") ======================================
# Overlays draw the stored model's view of the image (a `go.Image` from the run's PNG) under a
# heatmap of a patch map bilinearly upsampled to the image size. The colour scale fades to
# transparent at 0, so the picture stays visible where attention is low. Hover shows the
# patch under the pointer and its exact (not interpolated) value.
VISION_KIND = VisionAttentionResult.kind
MAX_OVERLAY_SIDE = 112  # heatmap cells per side sent to the browser (224 px: a cell is 2x2 px)
OVERLAY_SCALE = [
    [0.0, "rgba(0,0,4,0.0)"],
    [0.15, "rgba(40,11,84,0.35)"],
    [0.35, "rgba(120,28,109,0.5)"],
    [0.55, "rgba(188,55,84,0.6)"],
    [0.75, "rgba(249,142,9,0.7)"],
    [1.0, "rgba(252,255,164,0.8)"],
]


def _vision_layer(result: VisionAttentionResult, options: dict[str, Any]) -> int:
    layer = int(_view(options, "layer", result.n_layers - 1))
    if layer < 0:
        layer += result.n_layers
    if not 0 <= layer < result.n_layers:
        raise InputError(f"layer {layer} does not exist (0..{result.n_layers - 1})")
    return layer


def _vision_head(result: VisionAttentionResult, options: dict[str, Any]) -> int | None:
    """A head index, or None for the mean over heads ("mean" or -1; the default)."""
    head = _view(options, "head", "mean")
    if head in ("mean", -1, None):
        return None
    head = int(head)
    if not 0 <= head < result.n_heads:
        raise InputError(f"head {head} does not exist (0..{result.n_heads - 1})")
    return head


def _png_data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _patch_extent(result: VisionAttentionResult, height: int, width: int) -> tuple[int, int]:
    """Pixels (rows, cols) covered by the patch grid: grid * patch size (<= the image size)."""
    gh, gw = result.grid
    return gh * (height // gh), gw * (width // gw)


def overlay_figure(
    result: VisionAttentionResult, values: np.ndarray, title: str, colorbar: str, value_label: str
) -> go.Figure:
    """The model's view of the image with a (grid_h, grid_w) patch map overlaid.

    values: (grid_h, grid_w) float. The map is upsampled bilinearly to the pixels the patch grid
    covers (at most MAX_OVERLAY_SIDE cells per side) and drawn with a colour scale that is
    transparent at 0; hover reports the patch and its exact value."""
    image = result.image_array()  # (H, W, 3) uint8
    height, width = int(image.shape[0]), int(image.shape[1])
    cover_h, cover_w = _patch_extent(result, height, width)
    cells_h, cells_w = min(cover_h, MAX_OVERLAY_SIDE), min(cover_w, MAX_OVERLAY_SIDE)
    smooth = upsample_map(values.astype(np.float32), (cells_h, cells_w))  # (cells_h, cells_w)
    gh, gw = result.grid
    rows = (np.arange(cells_h) * gh // cells_h).astype(np.int64)  # patch row of each cell
    cols = (np.arange(cells_w) * gw // cells_w).astype(np.int64)
    custom = np.empty((cells_h, cells_w, 3), dtype=np.float32)
    custom[..., 0] = rows[:, None]
    custom[..., 1] = cols[None, :]
    custom[..., 2] = values[rows[:, None], cols[None, :]]
    dy, dx = cover_h / cells_h, cover_w / cells_w
    zmax = float(max(values.max(), 1e-12))
    fig = go.Figure()
    fig.add_trace(
        go.Image(
            source=_png_data_uri(result.image_png),
            x0=0,
            y0=0,
            dx=1,
            dy=1,
            hoverinfo="skip",
            name="image (model's view)",
        )
    )
    fig.add_trace(
        go.Heatmap(
            z=smooth,
            x0=-0.5 + dx / 2,
            dx=dx,
            y0=-0.5 + dy / 2,
            dy=dy,
            customdata=custom,
            zmin=0.0,
            zmax=zmax,
            colorscale=OVERLAY_SCALE,
            colorbar={"title": {"text": colorbar}},
            hovertemplate="pixel x %{x:.0f}, y %{y:.0f}<br>patch row %{customdata[0]:.0f}, column "
            f"%{{customdata[1]:.0f}}<br>{value_label} %{{customdata[2]:.4f}}<extra></extra>",
            name=value_label,
        )
    )
    fig.update_xaxes(
        title=f"x (pixels; {gw} patch columns)", range=[-0.5, width - 0.5], showgrid=False, zeroline=False
    )
    fig.update_yaxes(
        title=f"y (pixels; {gh} patch rows)",
        range=[height - 0.5, -0.5],
        showgrid=False,
        zeroline=False,
        scaleanchor="x",
        constrain="domain",
    )
    fig.update_xaxes(constrain="domain")
    return base_layout(fig, title, height=560)


def cls_overlay(result: VisionAttentionResult, **options: Any) -> go.Figure:
    """[CLS] -> patch attention of one layer and head (or the mean over heads) over the image."""
    layer, head = _vision_layer(result, options), _vision_head(result, options)
    which = f"mean over {result.n_heads} heads" if head is None else f"head {head}"
    values = result.cls_map(layer, head)
    return overlay_figure(
        result,
        values,
        f"[CLS] → patch attention, layer {layer}, {which} (patches get {values.sum():.2f} of the row)",
        "[CLS] → patch attention",
        f"layer {layer}, {which}: attention",
    )


def rollout_overlay(result: VisionAttentionResult, **options: Any) -> go.Figure:
    """Attention rollout of [CLS] over the patches (through every layer) over the image."""
    w = float(result.params.get("residual_weight", 0.5))
    return overlay_figure(
        result,
        result.rollout,
        f"Attention rollout of [CLS], {result.n_layers} layers ({w:g}·I + {1 - w:g}·mean attention)",
        "rollout relevance",
        "rollout relevance",
    )


def vision_entropy_heatmap(result: VisionAttentionResult, **options: Any) -> go.Figure:
    """Entropy (bits) of each head's [CLS] query row: low = focused on a few tokens."""
    n_l, n_h = result.entropy.shape
    uniform = float(np.log2(result.n_tokens))
    custom = result.prefix_share.astype(np.float32)
    fig = go.Figure(
        go.Heatmap(
            z=result.entropy.astype(np.float32),
            x=np.arange(n_h),
            y=np.arange(n_l),
            customdata=custom,
            colorscale=ATTENTION_SCALE,
            zmin=0.0,
            zmax=uniform,
            colorbar={"title": {"text": "entropy (bits)"}},
            hovertemplate="layer %{y}, head %{x}<br>entropy of the [CLS] row %{z:.3f} bits"
            "<br>share to [CLS]/registers %{customdata:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="head", tickmode="linear", dtick=1 if n_h <= 32 else None, showgrid=False)
    fig.update_yaxes(
        title="layer", tickmode="linear", dtick=1 if n_l <= 40 else None, showgrid=False, autorange="reversed"
    )
    row = "[CLS] query row" if result.has_cls else "query rows (mean; no [CLS])"
    return base_layout(
        fig,
        f"Entropy of each head's {row} over {result.n_tokens} tokens (uniform = {uniform:.2f} bits)",
        height=max(420, 22 * n_l + 180),
    )


def _patch_table(
    result: VisionAttentionResult, values: np.ndarray, value_name: str, **extra: Any
) -> pa.Table:
    """Long form, one row per patch: extra columns, patch index/row/col, its pixel box in the
    model's view (x0, y0 inclusive; x1, y1 exclusive) and `value_name` = values[row, col]."""
    gh, gw = result.grid
    image = result.image_array()
    cover_h, cover_w = _patch_extent(result, int(image.shape[0]), int(image.shape[1]))
    ph, pw = cover_h // gh, cover_w // gw
    row, col = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    n = gh * gw
    cols: dict[str, Any] = {name: np.full(n, value) for name, value in extra.items()}
    cols.update(
        {
            "patch_index": (row * gw + col).ravel().astype(np.int32),
            "patch_row": row.ravel().astype(np.int16),
            "patch_col": col.ravel().astype(np.int16),
            "x0": (col * pw).ravel().astype(np.int32),
            "y0": (row * ph).ravel().astype(np.int32),
            "x1": ((col + 1) * pw).ravel().astype(np.int32),
            "y1": ((row + 1) * ph).ravel().astype(np.int32),
        }
    )
    cols[value_name] = np.asarray(values).ravel().astype(np.float32)
    return pa.table(cols)


def cls_overlay_data(result: VisionAttentionResult, **options: Any) -> pa.Table:
    layer, head = _vision_layer(result, options), _vision_head(result, options)
    return _patch_table(
        result, result.cls_map(layer, head), "cls_attention", layer=layer, head=-1 if head is None else head
    )


def rollout_overlay_data(result: VisionAttentionResult) -> pa.Table:
    return _patch_table(result, result.rollout, "rollout_relevance")


def vision_entropy_data(result: VisionAttentionResult) -> pa.Table:
    layer, head = np.meshgrid(np.arange(result.n_layers), np.arange(result.n_heads), indexing="ij")
    return pa.table(
        {
            "layer": layer.ravel().astype(np.int16),
            "head": head.ravel().astype(np.int16),
            "entropy_bits": result.entropy.ravel().astype(np.float32),
            "prefix_share": result.prefix_share.ravel().astype(np.float32),
        }
    )


register_figure(VISION_KIND, "cls_overlay", "[CLS] → patch attention overlay", cls_overlay, cls_overlay_data)
register_figure(
    VISION_KIND, "rollout_overlay", "Attention rollout overlay", rollout_overlay, rollout_overlay_data
)
register_figure(
    VISION_KIND, "entropy", "Entropy of the [CLS] row per head", vision_entropy_heatmap, vision_entropy_data
)
