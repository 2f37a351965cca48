"""Token atlas, section "Vocabulary health": under-trained and glitch tokens of the whole vocabulary
(Magikarp indicators + tokenizer analysis, verification by prompting, GlitchHunter's Leiden clustering),
a searchable UMAP of the unembedding and the table of suspects."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from explorer.analysis.atlas.vocab import VocabHealthResult
from explorer.api import atlas as atlas_api
from explorer.models.loading import EMBEDDED_LMS
from explorer.plots import atlas as atlas_plots
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, user_errors

EXPLAIN = """**Two detectors, both checked by prompting.** *Magikarp* (Land & Bartolo 2024): tokens whose
unembedding row points the same way as known-unused tokens' (cosine distance after removing the first principal
component; low = suspicious), next to the input-embedding norm; the top suspects that round-trip through the
tokenizer are **verified** by asking the model to repeat them with the paper's three prompts (verified = its
highest probability of reproducing the token stays below 0.01). *GlitchHunter* (Li et al. 2024): Leiden communities of a graph linking each
token to its nearest neighbours in embedding space; a few tokens of each community are verified, communities
significantly glitchy by a binomial test are kept and clustered again until nothing changes; the flagged tokens
are verified too. Each detector's precision (verified / checked) and their agreement are shown; deviations from
the papers are listed below. The tokenizer analysis
lists partial UTF-8 byte tokens, tokens that do not round-trip, and unreachable ids. The first run on a model
takes minutes (it prompts the model hundreds of times); it is stored and reopens instantly."""

SUSPECT_HEADERS = [
    "id",
    "token",
    "indicator",
    "embedding norm",
    "max p(repeat)",
    "status",
    "output",
    "GlitchHunter",
]


def summary_markdown(r: VocabHealthResult) -> str:
    s = r.summary
    tk, mk, gh, ag = s["tokenizer"], s["magikarp"], s["glitchhunter"], s["agreement"]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.0f}%"

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    last = gh["rounds"][-1] if gh["rounds"] else {}
    kept = last.get("kept_communities", last.get("kept_clusters", 0))
    lines = [
        f"**Run** `{r.run_id}` · model `{r.model}` · {s['n_tokens']} tokens · {r.seconds:.0f} s",
        "",
        f"**Tokenizer:** {tk['ok']} round-trip · {tk['special']} special · {tk['partial_utf8']} partial UTF-8 · "
        f"{tk['not_round_trip']} other non-round-trip · {tk['unreachable']} unreachable · "
        f"{tk['no_string']} rows with no token string.",
        f"**Reference (known unused):** {s['reference']['n']} tokens — {html.escape(str(s['reference']['source']))}.",
        f"**Magikarp:** {mk['verified']} of {mk['candidates']} candidates verified under-trained "
        f"(precision {pct(mk.get('precision'))}; {mk['strong_verified']} strongly, p < 0.001; "
        f"{mk['weak_verified']} more between 0.01 and 0.1, not counted).",
        f"**GlitchHunter:** {gh['flagged']} tokens flagged in {kept} communities after {len(gh['rounds'])} "
        f"rounds; {gh['verified']} of {gh['checked']} checked verify (precision {pct(gh.get('precision'))}).",
        f"**Agreement (verified tokens):** both {ag['both']} · Magikarp only {ag['magikarp_only']} · GlitchHunter "
        f"only {ag['glitchhunter_only']} · Jaccard {num(ag['jaccard'])} · overlap {num(ag.get('overlap'))}. "
        f"Flagged by both detectors (before verification): {ag.get('flagged_both', '–')} · Jaccard "
        f"{num(ag.get('jaccard_flagged'))}.",
    ]
    lines += [f"\n> ℹ️ {html.escape(note)}" for note in r.notes]
    return "\n".join(lines)


def suspects_rows(r: VocabHealthResult, query: str = "") -> list[list[Any]]:
    rows = []
    for s in r.suspects():
        if query and query not in (s["token"] or ""):
            continue
        prob = s["max_prob"]
        rows.append(
            [
                s["token_id"],
                repr(s["token"]),
                round(float(s["indicator"]), 4),
                round(float(s["embed_norm"]), 4),
                None if prob is None else float(f"{prob:.3g}"),
                s["status"],
                repr(s["output"]),
                "yes" if s["gh_flag"] else "",
            ]
        )
    return rows


def build(ctx: UIContext) -> None:
    state = gr.State(None)
    with gr.Row():
        model = gr.Dropdown(
            choices=sorted(EMBEDDED_LMS),
            value=ctx.settings.default_model,
            allow_custom_value=True,
            label="Model (embedded name, hub id or local dir)",
            scale=2,
        )
        n_verify = gr.Slider(10, 1000, value=300, step=10, label="Suspects to verify")
        map_points = gr.Slider(
            0, 20000, value=4000, step=500, label="Points in the vocabulary map (0 = none)"
        )
        dtype = dtype_dropdown(ctx)
        run = gr.Button("Check the vocabulary", variant="primary")
    with gr.Accordion("GlitchHunter-style detector settings", open=False):
        with gr.Row():
            gh_neighbors = gr.Slider(
                2, 100, value=10, step=1, label="Neighbours per token in the embedding graph"
            )
            gh_resolution = gr.Slider(
                0.5,
                100,
                value=20,
                step=0.5,
                label="Leiden resolution (higher = smaller communities, more screens)",
            )
            gh_sample = gr.Slider(2, 20, value=3, step=1, label="Tokens verified per community")
    gr.Markdown(EXPLAIN)
    summary = gr.Markdown(elem_id="atlas-vocab-summary")
    with gr.Row():
        colour = gr.Dropdown(choices=list(atlas_plots.VOCAB_COLOURS), value="indicator", label="Colour by")
        search = gr.Textbox(label="Search tokens (substring; marks them on the map and filters the table)")
    atlas_plot = gr.Plot(label="Vocabulary atlas", elem_id="atlas-vocab-map")
    view_state = gr.State({})  # display choices (colour, search)
    export_controls(state, "atlas", "Export vocabulary atlas", ctx=ctx, view=view_state)
    suspects = gr.Dataframe(
        headers=SUSPECT_HEADERS,
        label="Top suspects (lowest indicator first)",
        wrap=True,
        elem_id="atlas-vocab-suspects",
    )
    indicator_plot = gr.Plot(label="Indicators", elem_id="atlas-vocab-indicators")
    export_controls(state, "indicators", "Export indicators", ctx=ctx)

    @user_errors
    def on_run(
        model_v: str,
        n_v: float,
        points_v: float,
        neighbors_v: float,
        resolution_v: float,
        sample_v: float,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        result = atlas_api.run_vocab_health(
            model_v or None,
            n_verify=int(n_v),
            map_points=int(points_v),
            gh_neighbors=int(neighbors_v),
            gh_resolution=float(resolution_v),
            gh_sample=int(sample_v),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        return (
            result,
            {},
            summary_markdown(result),
            atlas_plots.vocab_atlas_figure(result),
            suspects_rows(result),
            atlas_plots.indicator_figure(result),
        )

    run.click(
        on_run,
        inputs=[model, n_verify, map_points, gh_neighbors, gh_resolution, gh_sample, dtype],
        outputs=[state, view_state, summary, atlas_plot, suspects, indicator_plot],
        api_name="vocab_health",
    )

    @user_errors
    def redraw(r: VocabHealthResult | None, colour_v: str, query: str) -> tuple[Any, ...]:
        if r is None:
            return gr.skip(), gr.skip(), gr.skip()
        view: dict[str, Any] = {"colour": colour_v, "search": query or ""}
        return view, atlas_plots.vocab_atlas_figure(r, **view), suspects_rows(r, query or "")

    io = ([state, colour, search], [view_state, atlas_plot, suspects])
    colour.input(redraw, *io, api_visibility="private")
    search.submit(redraw, *io, api_visibility="private")
