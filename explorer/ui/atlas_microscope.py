"""Token atlas, section "LLM-Microscope": token x layer heatmaps of non-linearity, contextualisation
and the two logit lenses, per-layer linearity and intrinsic dimension, and which tokens carry context."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.analysis.atlas.microscope import MicroscopeResult
from explorer.api import atlas as atlas_api
from explorer.models.loading import EMBEDDED_LMS
from explorer.plots import atlas as atlas_plots
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, user_errors

EXAMPLE = (
    "The committee met on Tuesday, and after a long debate, the members agreed that the old bridge, "
    "which had stood for a century, should be repaired rather than replaced."
)
EXPLAIN = """Following Razzhigaev et al. (*Your Transformer is Secretly Linear*, *LLM-Microscope*): **non-linearity**
is how far one linear map (fitted per layer, Procrustes-normalised) misses the step from layer l to l+1 for
each token; **contextualisation** is how much of the preceding text a token's state still holds (the paper
found punctuation and determiners carry the most); **intrinsic dimension** per layer (TwoNN); and the paper's
logit lens (no final norm) next to ours."""


def summary_markdown(r: MicroscopeResult) -> str:
    top = ", ".join(
        f"`{x['token']}` ({x['class']}, {x['context_memory']:.2f})"
        for x in r.ranking()[:6]
        if x["context_memory"] is not None
    )
    classes = " · ".join(
        f"{c['class']} {c['mean_context_memory']:.3f} (n={c['tokens']})" for c in r.class_ranking()
    )
    lines = [
        f"**Run** `{r.run_id}` · model `{r.model}` · {r.seq_len} tokens · {r.n_layers} layers · {r.seconds:.1f} s",
        f"\n**Most context:** {top}",
        f"\n**Mean context memory by class:** {classes}",
    ]
    lines += [f"\n> ℹ️ {note}" for note in r.notes]
    return "\n".join(lines)


def build(ctx: UIContext) -> None:
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, value=EXAMPLE)
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices=sorted(EMBEDDED_LMS),
                value=ctx.settings.default_model,
                allow_custom_value=True,
                label="Model (embedded name, hub id or local dir)",
            )
            dtype = dtype_dropdown(ctx)
            run = gr.Button("Measure", variant="primary")
    gr.Markdown(EXPLAIN)
    summary = gr.Markdown(elem_id="atlas-microscope-summary")
    measure = gr.Radio(
        [(v[0], k) for k, v in atlas_plots.MICROSCOPE_MEASURES.items()], value="context", label="Heatmap"
    )
    heatmap = gr.Plot(label="Token × layer", elem_id="atlas-microscope-heatmap", elem_classes=["scroll-plot"])
    view_state = gr.State({})  # display choices (measure)
    export_controls(state, "heatmap", "Export heatmap", ctx=ctx, view=view_state)
    ranking = gr.Plot(label="Which tokens carry context", elem_id="atlas-microscope-ranking")
    export_controls(state, "ranking", "Export ranking", ctx=ctx)
    layers = gr.Plot(label="Per layer", elem_id="atlas-microscope-layers")
    export_controls(state, "layers", "Export per-layer measures", ctx=ctx)

    @user_errors
    def on_run(
        text: str,
        model_v: str,
        measure_v: str,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[Any, ...]:
        result = atlas_api.run_microscope(
            model_v or None,
            text,
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        view: dict[str, Any] = {"measure": measure_v or "context"}
        return (
            result,
            view,
            summary_markdown(result),
            atlas_plots.microscope_heatmap(result, **view),
            atlas_plots.microscope_ranking(result),
            atlas_plots.microscope_layers(result),
        )

    run.click(
        on_run,
        inputs=[prompt, model, measure, dtype],
        outputs=[state, view_state, summary, heatmap, ranking, layers],
        api_name="microscope",
    )

    @user_errors
    def on_measure(r: MicroscopeResult | None, measure_v: str) -> tuple[Any, ...]:
        if r is None:
            return gr.skip(), gr.skip()
        view: dict[str, Any] = {"measure": measure_v}
        return view, atlas_plots.microscope_heatmap(r, **view)

    measure.input(on_measure, [state, measure], [view_state, heatmap], api_visibility="private")
