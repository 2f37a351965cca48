"""Figures for pruning sweeps, text ("prune_text") and image ("prune_image").

Text: retention curves (one line per strategy, keep ratio from 1.0 down to the smallest),
the prompt with dropped tokens struck through per strategy x ratio, and the outputs side by
side. Image: the image with the kept patches highlighted per strategy, saliency maps before
and after pruning, and retention curves. Each figure has a `data` function returning the table
behind it (CSV/Parquet export).
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa
from plotly.subplots import make_subplots

from explorer.analysis.pruning.text import FIDELITY_KEYS, TextPruningResult
from explorer.errors import InputError
from explorer.plots import base_layout, register_figure

TEXT_METRICS: dict[str, tuple[str, str]] = {
    "kl": ("KL(unpruned ‖ pruned), nats", "lower is better"),
    "target_prob_after": ("target probability after pruning", "higher is better"),
    "target_rank_after": ("target rank after pruning", "lower is better"),
    "continuation_agreement": ("greedy continuation agreement", "higher is better"),
    "semantic_similarity": ("continuation similarity (MiniLM cosine)", "higher is better"),
    "prefill_time_saved": ("prefill time saved (fraction)", "higher is faster"),
    "flops_ratio": ("FLOPs, pruned / unpruned", "lower is cheaper"),
}
IMAGE_METRICS: dict[str, tuple[str, str]] = {
    "cls_cosine": ("image embedding cosine to unpruned", "higher is better"),
    "patch_cosine": ("kept patches' cosine to unpruned", "higher is better"),
    "saliency_corr": ("saliency map correlation", "higher is better"),
    "saliency_iou": ("saliency top-20% IoU", "higher is better"),
    "flops_ratio": ("FLOPs, pruned / unpruned", "lower is cheaper"),
    "time_ratio": ("wall time, pruned / unpruned", "lower is faster"),
}
MAX_TEXT_CELL_TOKENS = 80  # above this many tokens, cells carry no text (hover still does)
DIM = 0.25  # brightness of dropped patches


def _esc(token: str) -> str:
    if not token.strip(" "):
        return "␣" * len(token) if token else "∅"
    return html.escape(token.replace("\n", "\\n").replace("\t", "\\t"))


def _ratio_order(ratios: list[float]) -> list[float]:
    return sorted(set(ratios), reverse=True)


def retention_figure(result: Any, metric: str | None = None) -> go.Figure:
    """Keep ratio (x, 1.0 on the left down to the smallest) vs a fidelity measure, one line per strategy."""
    metrics = TEXT_METRICS if result.kind == "prune_text" else IMAGE_METRICS
    metric = metric or next(iter(metrics))
    if metric not in metrics:
        raise InputError(f"unknown retention metric {metric!r}; choose from {list(metrics)}")
    label, direction = metrics[metric]
    curves = result.retention_curve(metric)
    fig = go.Figure()
    for strategy, points in curves.items():
        xs = [p[0] for p in points]
        ys = [np.nan if p[1] is None else p[1] for p in points]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=strategy,
                hovertemplate=f"<b>{html.escape(strategy)}</b><br>keep ratio %{{x:g}}<br>{label}: %{{y:.4g}}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="keep ratio (fraction of tokens kept)", autorange="reversed")
    fig.update_yaxes(title_text=f"{label} ({direction})")
    if result.kind == "prune_text" and metric in ("kl", "target_rank_after"):
        fig.update_yaxes(type="log" if metric == "target_rank_after" else "linear")
    fig.update_layout(legend_title_text="strategy")
    return base_layout(fig, f"Retention: {label} vs keep ratio", height=460)


def retention_data(result: Any) -> pa.Table:
    """Long form: strategy, keep_ratio, metric, value for every measure."""
    metrics = TEXT_METRICS if result.kind == "prune_text" else IMAGE_METRICS
    cols: dict[str, list[Any]] = {"strategy": [], "keep_ratio": [], "metric": [], "value": []}
    for metric in metrics:
        for strategy, points in result.retention_curve(metric).items():
            for ratio, value in points:
                cols["strategy"].append(strategy)
                cols["keep_ratio"].append(ratio)
                cols["metric"].append(metric)
                cols["value"].append(value)
    return pa.table(
        {
            "strategy": pa.array(cols["strategy"], pa.string()),
            "keep_ratio": pa.array(cols["keep_ratio"], pa.float64()),
            "metric": pa.array(cols["metric"], pa.string()),
            "value": pa.array(cols["value"], pa.float64()),
        }
    )


# ---- text ---------------------------------------------------------------------------------
def _row_label(strategy: str, ratio: float) -> str:
    return f"{strategy} @ {ratio:g}"


def pruned_prompt_figure(result: TextPruningResult, keep_ratios: list[float] | None = None) -> go.Figure:
    """Positions (x) x strategy@ratio (y): kept tokens dark, dropped tokens light and struck through."""
    ratios = _ratio_order(keep_ratios or result.keep_ratios)
    rows = [r for s in result.strategies for r in result.rows if r.strategy == s and r.keep_ratio in ratios]
    n = result.n_tokens
    z = np.zeros((len(rows), n))
    hover = []
    for i, r in enumerate(rows):
        z[i, r.kept] = 1.0
        hover.append(
            [
                f"{_esc(result.tokens[p])} (position {p})<br>{'kept' if z[i, p] else 'dropped'} by "
                f"{html.escape(r.strategy)} at keep ratio {r.keep_ratio:g}"
                for p in range(n)
            ]
        )
    labels = [_row_label(r.strategy, r.keep_ratio) for r in rows]
    show_text = n <= MAX_TEXT_CELL_TOKENS
    text = [[_esc(t)[:10] for t in result.tokens] for _ in rows] if show_text else None
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n)),
            y=labels,
            text=text,
            texttemplate="%{text}" if show_text else None,
            textfont={"size": 10},
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            colorscale=[[0.0, "#f2f2f2"], [1.0, "#6baed6"]],
            zmin=0,
            zmax=1,
            xgap=1,
            ygap=2,
            colorbar={"title": {"text": "token"}, "tickvals": [0, 1], "ticktext": ["dropped", "kept"]},
        )
    )
    if show_text:  # strike through the dropped tokens
        xs: list[float | None] = []
        ys: list[str | None] = []
        for i in range(len(rows)):
            for p in range(n):
                if not z[i, p]:
                    xs += [p - 0.4, p + 0.4, None]
                    ys += [labels[i], labels[i], None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": "#b22222", "width": 1.5},
                name="dropped",
                hoverinfo="skip",
            )
        )
    fig.update_xaxes(title_text="prompt position", tickmode="array", tickvals=list(range(n)))
    fig.update_yaxes(title_text="strategy @ keep ratio", autorange="reversed", type="category")
    fig.update_layout(showlegend=False)
    return base_layout(
        fig, "Pruned prompts (dropped tokens struck through)", height=max(320, 90 + 26 * len(rows))
    )


def pruned_prompt_data(result: TextPruningResult) -> pa.Table:
    cols: dict[str, list[Any]] = {k: [] for k in ("strategy", "keep_ratio", "position", "token", "kept")}
    for r in result.rows:
        kept = set(r.kept)
        for p, tok in enumerate(result.tokens):
            cols["strategy"].append(r.strategy)
            cols["keep_ratio"].append(r.keep_ratio)
            cols["position"].append(p)
            cols["token"].append(tok)
            cols["kept"].append(p in kept)
    return pa.table(cols)


def outputs_figure(result: TextPruningResult, keep_ratios: list[float] | None = None) -> go.Figure:
    """A table: the unpruned output, then each strategy@ratio's next token and continuation side by side."""
    ratios = _ratio_order(keep_ratios or result.keep_ratios)
    rows = [r for s in result.strategies for r in result.rows if r.strategy == s and r.keep_ratio in ratios]

    def fmt(v: float | None, digits: int = 3) -> str:
        return "—" if v is None else f"{v:.{digits}g}"

    def one_line(text: str) -> str:
        """Line breaks shown as ⏎ so every row is one line tall and the table height is exact."""
        return html.escape(text.replace("\r", "").replace("\n", " ⏎ "))

    cols = [
        ["unpruned"] + [r.strategy for r in rows],
        ["1"] + [f"{r.keep_ratio:g} ({r.keep_count})" for r in rows],
        [html.escape(result.reference["top_token"])] + [html.escape(r.top_token) for r in rows],
        [one_line(result.reference["continuation"])] + [one_line(r.continuation) for r in rows],
        ["0"] + [fmt(r.fidelity.get("kl")) for r in rows],
        [fmt(result.rows[0].fidelity.get("target_prob_before")) if result.rows else "—"]
        + [fmt(r.fidelity.get("target_prob_after")) for r in rows],
        ["1"] + [fmt(r.fidelity.get("continuation_agreement")) for r in rows],
        ["1"] + [fmt(r.fidelity.get("semantic_similarity")) for r in rows],
    ]
    header = [
        "strategy",
        "keep ratio (tokens)",
        "next token",
        f"greedy continuation ({result.continuation_tokens} tokens)",
        "KL",
        f"p({html.escape(result.target['token'])})",
        "agreement",
        "similarity",
    ]
    fig = go.Figure(
        go.Table(
            columnwidth=[150, 80, 80, 360, 60, 70, 70, 70],
            header={"values": [f"<b>{h}</b>" for h in header], "fill_color": "#deebf7", "align": "left"},
            cells={"values": cols, "align": "left", "height": 24},
        )
    )
    # margins (60 + 70) + a two-line header (~50) + one 24-px line per row, with slack for wrapping
    fig = base_layout(fig, "Outputs side by side", height=max(320, 200 + 28 * (len(rows) + 1)))
    fig.update_layout(margin={"b": 20})
    return fig


def outputs_data(result: TextPruningResult) -> pa.Table:
    return pa.table(
        {
            "strategy": ["unpruned"] + [r.strategy for r in result.rows],
            "keep_ratio": [1.0] + [r.keep_ratio for r in result.rows],
            "keep_count": [result.n_tokens] + [r.keep_count for r in result.rows],
            "top_token": [result.reference["top_token"]] + [r.top_token for r in result.rows],
            "continuation": [result.reference["continuation"]] + [r.continuation for r in result.rows],
            **{
                k: pa.array([None] + [r.fidelity.get(k) for r in result.rows], pa.float64())
                for k in FIDELITY_KEYS
            },
        }
    )


def struck_prompt_html(result: TextPruningResult, strategy: str, keep_ratio: float) -> str:
    """The prompt as HTML, dropped tokens in <s>…</s> (for the UI's side-by-side view)."""
    kept = set(result.row(strategy, keep_ratio).kept)
    parts = []
    for p, tok in enumerate(result.tokens):
        text = html.escape(tok).replace("\n", "↵")
        parts.append(text if p in kept else f"<s style='color:#b22222;opacity:.6'>{text}</s>")
    return "".join(parts)


# ---- image --------------------------------------------------------------------------------
def default_ratio(result: Any) -> float:
    ratios = sorted({r.keep_ratio for r in result.rows})
    below = [r for r in ratios if r < 1.0]
    return below[len(below) // 2] if below else ratios[0]


def _strategies(result: Any) -> list[str]:
    return list(dict.fromkeys(r.strategy for r in result.rows))


def _grid_shape(count: int, cols: int = 4) -> tuple[int, int]:
    cols = min(cols, max(1, count))
    return (count + cols - 1) // cols, cols


def kept_patches_figure(result: Any, keep_ratio: float | None = None) -> go.Figure:
    """The model's view of the image per strategy at one keep ratio: kept patches bright, dropped dimmed."""
    ratio = default_ratio(result) if keep_ratio is None else float(keep_ratio)
    image = result.image_array().astype(np.float32)  # (H, W, 3)
    names = _strategies(result)
    n_rows, n_cols = _grid_shape(len(names))
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=names, horizontal_spacing=0.02, vertical_spacing=0.08
    )
    gh, gw = result.grid
    ph, pw = image.shape[0] // gh, image.shape[1] // gw
    for i, name in enumerate(names):
        mask = result.kept_mask(name, ratio)  # (gh, gw)
        pixel_mask = np.kron(mask, np.ones((ph, pw), dtype=bool))
        shown = image.copy()
        h, w = pixel_mask.shape
        shown[:h, :w][~pixel_mask] *= DIM
        fig.add_trace(
            go.Image(
                z=shown.clip(0, 255).astype(np.uint8),
                hovertemplate=f"{html.escape(name)} @ {ratio:g}<br>x %{{x}}, y %{{y}}<extra></extra>",
            ),
            row=i // n_cols + 1,
            col=i % n_cols + 1,
        )
    fig.update_xaxes(showticklabels=False, title_text="")
    fig.update_yaxes(showticklabels=False, title_text="")
    fig.add_annotation(
        text=f"bright = kept patches, dim = dropped (keep ratio {ratio:g}, layer {result.layer})",
        xref="paper",
        yref="paper",
        x=0,
        y=0,
        yshift=-12,
        yanchor="top",
        showarrow=False,
    )
    return base_layout(fig, f"Kept patches per strategy (keep ratio {ratio:g})", height=260 * n_rows + 80)


def kept_patches_data(result: Any) -> pa.Table:
    gh, gw = result.grid
    cols: dict[str, list[Any]] = {k: [] for k in ("strategy", "keep_ratio", "patch", "row", "col", "kept")}
    for r in result.rows:
        kept = set(r.kept)
        for p in range(gh * gw):
            cols["strategy"].append(r.strategy)
            cols["keep_ratio"].append(r.keep_ratio)
            cols["patch"].append(p)
            cols["row"].append(p // gw)
            cols["col"].append(p % gw)
            cols["kept"].append(p in kept)
    return pa.table(cols)


def saliency_figure(result: Any, keep_ratio: float | None = None) -> go.Figure:
    """Saliency before (unpruned) and after pruning with each strategy at one keep ratio."""
    if result.reference_saliency is None:
        raise InputError("this run has no saliency maps (the model has no saliency decoder)")
    ratio = default_ratio(result) if keep_ratio is None else float(keep_ratio)
    maps = [("unpruned", result.reference_saliency)]
    maps += [
        (name, result.saliency_maps[(name, ratio)])
        for name in _strategies(result)
        if (name, ratio) in result.saliency_maps
    ]
    n_rows, n_cols = _grid_shape(len(maps))
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[m[0] for m in maps],
        horizontal_spacing=0.03,
        vertical_spacing=0.08,
    )
    for i, (name, values) in enumerate(maps):
        fig.add_trace(
            go.Heatmap(
                z=values,
                zmin=0,
                zmax=1,
                colorscale="Inferno",
                showscale=i == 0,
                colorbar={"title": {"text": "saliency"}},
                hovertemplate=f"{html.escape(name)}<br>x %{{x}}, y %{{y}}<br>saliency %{{z:.3f}}<extra></extra>",
            ),
            row=i // n_cols + 1,
            col=i % n_cols + 1,
        )
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(showticklabels=False, constrain="domain")
    for i in range(len(maps)):  # square pixels: each map keeps the view's aspect ratio
        suffix = "" if i == 0 else str(i + 1)
        fig.update_layout({f"yaxis{suffix}": {"scaleanchor": f"x{suffix}", "constrain": "domain"}})
    fig.add_annotation(
        text="x, y: pixels of the model's view",
        xref="paper",
        yref="paper",
        x=0,
        y=0,
        yshift=-12,
        yanchor="top",
        showarrow=False,
    )
    return base_layout(
        fig, f"Saliency before / after pruning (keep ratio {ratio:g})", height=260 * n_rows + 80
    )


def saliency_data(result: Any) -> pa.Table:
    cols: dict[str, list[Any]] = {k: [] for k in ("strategy", "keep_ratio", "y", "x", "saliency")}
    maps: list[tuple[str, float, np.ndarray]] = []
    if result.reference_saliency is not None:
        maps.append(("unpruned", 1.0, result.reference_saliency))
    maps += [(s, r, m) for (s, r), m in result.saliency_maps.items()]
    for name, ratio, values in maps:
        ys, xs = np.indices(values.shape)
        cols["strategy"] += [name] * values.size
        cols["keep_ratio"] += [ratio] * values.size
        cols["y"] += ys.ravel().tolist()
        cols["x"] += xs.ravel().tolist()
        cols["saliency"] += values.ravel().astype(float).tolist()
    return pa.table(cols)


register_figure("prune_text", "retention", "Retention curves", retention_figure, retention_data)
register_figure("prune_text", "pruned_prompt", "Pruned prompts", pruned_prompt_figure, pruned_prompt_data)
register_figure("prune_text", "outputs", "Outputs side by side", outputs_figure, outputs_data)
register_figure("prune_image", "retention", "Retention curves", retention_figure, retention_data)
register_figure("prune_image", "kept_patches", "Kept patches", kept_patches_figure, kept_patches_data)
register_figure(
    "prune_image",
    "saliency",
    "Saliency before / after",
    saliency_figure,
    saliency_data,
    applies=lambda result: result.reference_saliency is not None,
)
