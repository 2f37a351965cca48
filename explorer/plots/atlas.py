"""Token atlas figures: the token-state map (UMAP / PCA) with layer focus and trajectories."""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
import pyarrow as pa

from explorer.analysis.atlas.microscope import MicroscopeResult
from explorer.analysis.atlas.token_map import TokenMapResult
from explorer.analysis.atlas.tokenizers import TokenizerResult
from explorer.analysis.atlas.verify import VERIFIED
from explorer.analysis.atlas.vocab import VocabHealthResult
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


def token_map_figure(
    r: TokenMapResult,
    colour: str | None = None,
    layer: int | None = None,
    trajectory: int | None = None,
    prompt_index: int | None = None,
    scores: dict[str, np.ndarray] | None = None,
    height: int = 620,
) -> go.Figure:
    """Scatter of the map. `layer`: show only that layer's points in colour (the others as a grey
    backdrop, so a slider moves through one aligned map); None: every layer. `trajectory`: a token
    position of `prompt_index` whose path across the layers is drawn as a line. `scores`: extra
    colourings by name (the UI's score overlays). These are display choices: the UI passes its
    controls' values (to its exports too), so an export shows what the user sees."""
    colour = colour or "layer"
    prompt_index = 0 if prompt_index is None else int(prompt_index)
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
                    "colorbar": COLOURBAR_TOP | {"title": {"text": colour[:24]}},
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
        legend=_legend(fig),
    )
    return fig


# A colour bar and a legend both sit right of the plot; the bar takes the upper half and the
# legend the lower one, so they never overlap.
COLOURBAR_TOP: dict[str, Any] = {"len": 0.5, "y": 1.0, "yanchor": "top", "thickness": 14}


def _legend(fig: go.Figure) -> dict[str, Any]:
    has_bar = any(getattr(getattr(t, "marker", None), "showscale", False) for t in fig.data)
    legend: dict[str, Any] = {"itemsizing": "constant"}
    if has_bar:
        legend.update(y=0.0, yanchor="bottom", x=1.02, xanchor="left")
    return legend


def token_map_data(r: TokenMapResult) -> pa.Table:
    return r.points_table()


def trajectory_figure(
    r: TokenMapResult,
    prompt_index: int | None = None,
    position: int | None = None,
    trajectory: int | None = None,
) -> go.Figure:
    """The map with one token's path across layers: `position` (or `trajectory`, the map's
    display option of the same meaning) of `prompt_index`; default the prompt's last token."""
    pi = 0 if prompt_index is None else int(prompt_index)
    position = position if position is not None else trajectory
    if position is None:
        position = len(r.tokens[pi]) - 1
    return token_map_figure(r, colour="layer", layer=None, trajectory=position, prompt_index=pi)


def _all_layers(r: Any) -> bool:
    return bool(r.layer_mode == "all")


register_figure("token_map", "map", "Map of token states", token_map_figure, token_map_data)
register_figure(
    "token_map", "trajectory", "A token's path across layers", trajectory_figure, token_map_data, _all_layers
)


# ---- vocabulary health ------------------------------------------------------------------------
STATUS_COLOURS = {
    "strong_verified": "#d62728",
    "verified": "#ff7f0e",
    "weak_verified": "#ffbb78",
    "weak_rejected": "#9edae5",
    "strong_rejected": "#1f77b4",
}
VOCAB_COLOURS = ("indicator", "embed_norm", "status", "category", "gh_flag")


def _vocab_hover(r: VocabHealthResult, idx: np.ndarray) -> list[str]:
    c = r.columns
    out = []
    for i in idx:
        prob = c["max_prob"][i]
        verdict = "" if np.isnan(prob) else f"<br>repeat p = {prob:.2g} ({c['status'][i]})"
        out.append(
            f"<b>{token_label(c['token'][i])}</b> #{int(c['token_id'][i])} · {c['category'][i]}"
            f"<br>indicator {c['indicator'][i]:.3f} · embedding norm {c['embed_norm'][i]:.3f}{verdict}"
            + (" · GlitchHunter flag" if c["gh_flag"][i] else "")
        )
    return out


def vocab_atlas_figure(
    r: VocabHealthResult, colour: str | None = None, search: str | None = None, height: int = 620
) -> go.Figure:
    """UMAP of the unembedding (mapped rows only), coloured by an indicator, with verified suspects
    ringed and tokens matching `search` (substring) marked."""
    colour = colour or "indicator"
    search = search or ""
    c = r.columns
    x = np.asarray(c["x"], dtype=float)
    idx = np.flatnonzero(~np.isnan(x))
    fig = go.Figure()
    if idx.size == 0:
        base_layout(fig, "No vocabulary map in this run (map_points = 0)", height=300)
        return fig
    y = np.asarray(c["y"], dtype=float)
    scatter = _scatter(idx.size)
    if colour in ("status", "category", "gh_flag"):
        values = np.asarray([str(v) for v in c[colour]], dtype=object)
        for ci, cat in enumerate(dict.fromkeys(values[idx].tolist())):
            sel = idx[values[idx] == cat]
            fig.add_trace(
                scatter(
                    x=x[sel], y=y[sel], mode="markers", name=cat or "not verified",
                    marker={"size": 5, "color": STATUS_COLOURS.get(cat, PALETTE[ci % len(PALETTE)])},
                    text=_vocab_hover(r, sel), hovertemplate="%{text}<extra></extra>",
                )
            )  # fmt: skip
    else:
        vals = np.asarray(c[colour], dtype=float)
        fig.add_trace(
            scatter(
                x=x[idx], y=y[idx], mode="markers", name=colour, showlegend=False,
                marker={"size": 5, "color": vals[idx], "colorscale": "Viridis_r" if colour == "indicator" else "Viridis",
                        "showscale": True, "colorbar": COLOURBAR_TOP | {"title": {"text": colour}}},
                text=_vocab_hover(r, idx), hovertemplate="%{text}<extra></extra>",
            )
        )  # fmt: skip
    prob = np.asarray(c["max_prob"], dtype=float)
    ver = idx[~np.isnan(prob[idx]) & (prob[idx] < VERIFIED)]
    if ver.size:
        fig.add_trace(
            go.Scatter(
                x=x[ver], y=y[ver], mode="markers", name="verified under-trained",
                marker={"size": 11, "color": "rgba(0,0,0,0)", "line": {"color": "#d62728", "width": 1.5}},
                text=_vocab_hover(r, ver), hovertemplate="%{text}<extra></extra>",
            )
        )  # fmt: skip
    if search:
        hit = np.asarray([i for i in idx if search in c["token"][i]], dtype=np.int64)[:500]
        if hit.size:
            fig.add_trace(
                go.Scatter(
                    x=x[hit], y=y[hit], mode="markers+text", name=f"matches {search!r}",
                    text=[token_label(c["token"][i]) for i in hit], textposition="top center",
                    marker={"size": 10, "symbol": "star", "color": "#000000"},
                    hovertext=_vocab_hover(r, hit), hovertemplate="%{hovertext}<extra></extra>",
                )
            )  # fmt: skip
    base_layout(
        fig, f"Vocabulary atlas: UMAP of the unembedding (first PC removed) · {r.model}", height=height
    )
    fig.update_layout(
        xaxis={"showticklabels": False, "zeroline": False, "title": "UMAP 1"},
        yaxis={"showticklabels": False, "zeroline": False, "title": "UMAP 2"},
        legend=_legend(fig),
    )
    return fig


def indicator_figure(r: VocabHealthResult, height: int = 520) -> go.Figure:
    """Every token: the Magikarp indicator against the embedding norm; verified suspects in red."""
    c = r.columns
    ind = np.asarray(c["indicator"], dtype=float)
    norm = np.asarray(c["embed_norm"], dtype=float)
    status = np.asarray(c["status"], dtype=object)
    fig = go.Figure()
    groups = [("not verified", status == "")] + [(s, status == s) for s in STATUS_COLOURS]
    for name, mask in groups:
        sel = np.flatnonzero(mask)
        if not sel.size:
            continue
        fig.add_trace(
            _scatter(sel.size)(
                x=ind[sel], y=norm[sel], mode="markers", name=name,
                marker={"size": 3 if name == "not verified" else 6, "color": STATUS_COLOURS.get(name, "#c7c7c7")},
                text=_vocab_hover(r, sel), hovertemplate="%{text}<extra></extra>",
            )
        )  # fmt: skip
    base_layout(fig, f"Under-training indicators of {r.n_tokens} tokens · {r.model}", height=height)
    fig.update_layout(
        xaxis={"title": "cosine distance to mean reference row (first PC removed)"},
        yaxis={"title": "input embedding L2 norm"},
    )
    return fig


def vocab_data(r: VocabHealthResult) -> pa.Table:
    return r.table()


register_figure("vocab_health", "atlas", "Vocabulary atlas (UMAP)", vocab_atlas_figure, vocab_data)
register_figure("vocab_health", "indicators", "Indicator vs embedding norm", indicator_figure, vocab_data)


# ---- LLM-Microscope ---------------------------------------------------------------------------
MICROSCOPE_MEASURES = {
    "context": ("Contextualisation (prefix recoverability, cosine)", "Viridis"),
    "nonlinearity": ("Token-level non-linearity E (step l → l+1)", "Magma"),
    "paper_lens": ("Paper's logit lens: -log p of its top-1 (no final norm)", "Viridis_r"),
    "our_lens": ("Our logit lens: p of top-1 (final norm)", "Viridis"),
}


def microscope_heatmap(r: MicroscopeResult, measure: str | None = None) -> go.Figure:
    """Token x layer heatmap of one measure (rows: layers, columns: tokens)."""
    measure = measure or "context"
    if measure not in MICROSCOPE_MEASURES:
        from explorer.errors import InputError

        raise InputError(f"unknown measure {measure!r}; choose from {list(MICROSCOPE_MEASURES)}")
    title, scale = MICROSCOPE_MEASURES[measure]
    text = None
    if measure == "context":
        z = r.context
    elif measure == "nonlinearity":
        z = r.nonlinearity
    elif measure == "paper_lens":
        z, text = r.paper_lens_nll, [[token_label(t) for t in row] for row in r.paper_lens_token]
    else:
        z, text = r.our_lens_prob, [[token_label(t) for t in row] for row in r.our_lens_token]
    labels = [f"{i}:{token_label(t)}" for i, t in enumerate(r.tokens)]
    fig = go.Figure(
        go.Heatmap(
            z=z, x=labels, y=list(range(z.shape[0])), colorscale=scale, text=text,
            texttemplate="%{text}" if text is not None and r.seq_len <= 40 else None,
            hovertemplate="layer %{y} · %{x}<br>%{z:.3f}" + ("<br>top-1 %{text}" if text else "") + "<extra></extra>",
            colorbar={"title": {"text": measure}},
        )
    )  # fmt: skip
    base_layout(fig, f"{title} · {r.model}", height=max(420, 14 * z.shape[0] + 160))
    fig.update_layout(xaxis={"title": "token", "tickangle": -60}, yaxis={"title": "layer"})
    return fig


def microscope_ranking(r: MicroscopeResult) -> go.Figure:
    """Which tokens carry the most context: each token's mean context score, grouped by class."""
    rows = [x for x in r.ranking() if x["context_memory"] is not None]
    fig = go.Figure()
    classes = list(dict.fromkeys(x["class"] for x in rows))
    for ci, cls in enumerate(classes):
        sel = [x for x in rows if x["class"] == cls]
        fig.add_trace(
            go.Bar(
                x=[f"{x['position']}:{token_label(x['token'])}" for x in sel],
                y=[x["context_memory"] for x in sel],
                name=cls,
                marker={"color": TYPE_COLOURS.get(cls, PALETTE[ci % len(PALETTE)])},
                hovertemplate="%{x}<br>context memory %{y:.3f}<extra>" + cls + "</extra>",
            )
        )
    order = [f"{x['position']}:{token_label(x['token'])}" for x in rows]
    base_layout(fig, f"Tokens ranked by context memory (mean over layers) · {r.model}", height=460)
    fig.update_layout(
        xaxis={"categoryorder": "array", "categoryarray": order, "tickangle": -60},
        yaxis={"title": "mean context score"},
        barmode="overlay",
    )
    return fig


def microscope_layers(r: MicroscopeResult) -> go.Figure:
    """Per layer: linearity score of l → l+1, intrinsic dimension (prompt and reference), probe R²."""
    from plotly.subplots import make_subplots

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = list(range(r.n_layers + 1))
    fig.add_trace(
        go.Scatter(x=x, y=r.layers["linearity"], name="linearity l→l+1 (reference)"), secondary_y=False
    )
    fig.add_trace(
        go.Scatter(x=x, y=r.layers["probe_r2"], name="context probe R² (reference)"), secondary_y=False
    )
    fig.add_trace(go.Scatter(x=x, y=r.layers["id_reference"], name="intrinsic dim. (reference)", line={"dash": "dot"}), secondary_y=True)  # fmt: skip
    fig.add_trace(go.Scatter(x=x, y=r.layers["id_prompt"], name="intrinsic dim. (prompt)", line={"dash": "dash"}), secondary_y=True)  # fmt: skip
    base_layout(fig, f"Per-layer measures · {r.model}", height=440)
    fig.update_xaxes(title_text="layer")
    fig.update_yaxes(title_text="score", secondary_y=False)
    fig.update_yaxes(title_text="intrinsic dimension (TwoNN)", secondary_y=True)
    return fig


def microscope_data(r: MicroscopeResult) -> pa.Table:
    return r.cells_table()


def microscope_layer_data(r: MicroscopeResult) -> pa.Table:
    return r.layers_table()


def microscope_ranking_data(r: MicroscopeResult) -> pa.Table:
    return pa.Table.from_pylist(r.ranking())


register_figure("microscope", "heatmap", "Token x layer heatmap", microscope_heatmap, microscope_data)
register_figure(
    "microscope", "ranking", "Tokens ranked by context memory", microscope_ranking, microscope_ranking_data
)
register_figure("microscope", "layers", "Per-layer measures", microscope_layers, microscope_layer_data)


# ---- tokenizer inspector ----------------------------------------------------------------------
def tokenizer_boundaries(r: TokenizerResult) -> go.Figure:
    """One row per tokenizer; each token a box over its character span, labelled with its piece."""
    fig = go.Figure()
    for ti, t in enumerate(r.tokenizers):
        spans = [(k, s, e) for k, (s, e) in enumerate(zip(t.starts, t.ends, strict=True)) if s >= 0 and e > s]
        colours = []
        for k, _, _ in spans:
            if t.special[k]:
                colours.append("#000000")
            elif t.byte_fallback[k] or t.partial_utf8[k]:
                colours.append("#e45756")
            else:
                colours.append(PALETTE[k % 2] if ti % 2 == 0 else PALETTE[3 + k % 2])
        fig.add_trace(
            go.Bar(
                y=[f"{t.name} ({t.n_tokens})"] * len(spans),
                x=[e - s for _, s, e in spans],
                base=[s for _, s, _ in spans],
                orientation="h",
                marker={"color": colours, "line": {"color": "white", "width": 1}},
                text=[token_label(t.decoded[k]) for k, _, _ in spans],
                textposition="inside",
                insidetextanchor="middle",
                customdata=[[t.ids[k], token_label(t.pieces[k])] for k, _, _ in spans],
                hovertemplate="id %{customdata[0]} · piece %{customdata[1]}<br>chars %{base}–%{x}<extra>"
                + t.name
                + "</extra>",
                showlegend=False,
            )
        )
    base_layout(fig, "Token boundaries over the text's characters (red: byte fallback / partial UTF-8)",
                height=140 + 80 * len(r.tokenizers), width=max(900, 9 * len(r.text)))  # fmt: skip
    fig.update_layout(barmode="overlay", xaxis={"title": "character"}, yaxis={"autorange": "reversed"})
    return fig


def tokenizer_counts(r: TokenizerResult) -> go.Figure:
    counts = r.counts()
    fig = go.Figure(
        go.Bar(
            x=[c["tokenizer"] for c in counts],
            y=[c["tokens"] for c in counts],
            text=[f"{c['tokens']} tokens · premium {c['premium']:.2f}" for c in counts],
            textposition="outside",
            marker={"color": PALETTE[0]},
        )
    )
    base_layout(fig, "Token counts (premium relative to the first tokenizer)", height=420)
    fig.update_layout(yaxis={"title": "tokens"})
    return fig


def tokenizer_data(r: TokenizerResult) -> pa.Table:
    return r.tokens_table()


def tokenizer_count_data(r: TokenizerResult) -> pa.Table:
    return pa.Table.from_pylist(r.counts())


register_figure("tokenizer_inspect", "boundaries", "Token boundaries", tokenizer_boundaries, tokenizer_data)
register_figure(
    "tokenizer_inspect", "counts", "Token counts and premium", tokenizer_counts, tokenizer_count_data
)
