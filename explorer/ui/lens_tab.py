"""The "Logit lens" tab: prompt in, layer x position heatmap, tracked ranks, generation views."""

from __future__ import annotations

from typing import Any

import gradio as gr
import plotly.graph_objects as go

from explorer.analysis.logit_lens import DEVIATIONS as LENS_DEVIATIONS
from explorer.analysis.logit_lens import MAX_GENERATE, ROLE_FINAL, ROLE_NEXT, LensResult
from explorer.api.lens import run_logit_lens
from explorer.backends.embedded import EMBEDDED_LMS
from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM
from explorer.plots import lens as lens_plots
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, ui_figure, user_errors
from explorer.vlm.lens import VLMLensResult

TITLE = "Logit lens"
WINDOW = 48  # positions shown at once for long prompts
EXAMPLES = [
    ["The capital of France is", " Paris"],
    ["The Eiffel Tower is located in the city of", " Paris"],
    ["def fibonacci(n):\n    if n <", " 2"],
]

VLM_EXPLAIN = """**With an image** the model is a vision-language model (default: the embedded demo
`tiny-vlm`: DINOv2-S patches → a projector trained here → SmolLM2-135M, 64 visual tokens). The image's
visual tokens are decoded like text tokens: each patch cell shows the lens's top-1 token at that visual
token; the slider inside the figure steps through the LM's layers (0 = the projected patches as the LM
receives them). Track a target (e.g. ` red`) to colour the patches by its probability and see at which
layer it surfaces. Deviations from LLaVA: the demo projector reads DINOv2 layers 6 and 12 (not only the
last), because the last layer keeps little colour; projectors trained with the colour option (the default of
`explorer train-demo-vlm`; see the model card for whether the shipped weights use it) also read simple colour
statistics of each pooled cell's pixels (mean and spread of R, G, B, the chroma-weighted mean colour, the mean
chroma) next to the DINOv2 features; and the LM carries LoRA adapters (rank 8) trained with the projector."""

EXPLAIN = """Each cell decodes the residual stream at (layer, position) with the model's **final norm and
unembedding** (so the last layer equals the model's own output). Colour: probability (or rank) of the token
the model finally predicts at that position, or of the actual next input token. Cell text: the lens's own
top-1; hover for the top-5. *Early excitation*: the final prediction peaks before the last layer."""


def deviations_markdown() -> str:
    """The lens's deviations from its papers (from `explorer.analysis.logit_lens.DEVIATIONS`)."""
    return "\n".join(f"* **{name.replace('_', ' ')}**: {text}" for name, text in LENS_DEVIATIONS.items())


def parse_targets(text: str) -> list[str]:
    """One target per line; leading spaces are kept (" Paris" and "Paris" are different tokens)."""
    return [line.rstrip("\n") for line in (text or "").split("\n") if line.strip()]


def summary_markdown(r: LensResult) -> str:
    last = r.summaries[r.prompt_len - 1]
    lines = [
        f"**Run** `{r.run_id}` · model `{r.model}` · {r.seq_len} tokens"
        + (f" ({r.modality.count('image')} visual)" if isinstance(r, VLMLensResult) else "")
        + f" · {r.n_layers} layers"
        f" · computed in {r.seconds:.2f} s"
        + (f" · [link to this run](?run={r.run_id}&tab=runs_tab)" if r.run_id else ""),
        "",
        f"**Next-token prediction** at the last prompt position: `{last.token}` (p = {last.final_prob:.3f}); "
        f"enters the top-10 at layer {last.first_top10_layer}, becomes top-1 at layer {last.first_top1_layer}, "
        f"peaks at layer {last.peak_layer} (p = {last.peak_prob:.3f})"
        + (" — **early excitation**" if last.early_excitation else "")
        + ".",
    ]
    excited = [s.position for s in r.summaries if s.early_excitation]
    lines.append(f"\nPositions whose prediction peaks before the last layer: {len(excited)} of {r.seq_len}.")
    if r.generated:
        lines.append(f"\n**Generated** ({len(r.generated)} tokens): `{''.join(r.generated)}`")
        if r.never_emitted:
            top = ", ".join(f"`{h['token']}` ({h['cells']} cells)" for h in r.never_emitted[:5])
            lines.append(f"\n**Never-emitted candidates** (top-10 at some layer, never emitted): {top}")
    for row in getattr(r, "surfacing", lambda: [])():
        first, top10 = row["first_top1_layer"], row["first_top10_layer"]
        r_, c_ = row.get("peak_patch", [None, None])
        lines.append(
            f"\n**Where `{row['target']}` surfaces on the image:** "
            + (
                f"top-1 at some patch from layer {first}; "
                if first is not None
                else "never top-1 at a patch; "
            )
            + (
                f"in some patch's top-10 from layer {top10}; "
                if top10 is not None
                else "never in a patch's top-10; "
            )
            + f"its best patch (row {r_}, column {c_} of the grid, from the top left) peaks at layer "
            f"{row['peak_layer']} (p = {row['peak_prob']:.3f}; top-1 at {row['patches_top1_at_peak']} patches there). "
            "Move the figure's layer slider to see it patch by patch."
        )
    for note in r.notes:
        lines.append(f"\n> ⚠️ {note}")
    return "\n".join(lines)


def _heatmap(r: LensResult | None, metric: str, role: str, start: int) -> go.Figure | None:
    if r is None:
        return None
    width = WINDOW if r.seq_len > WINDOW else None
    return ui_figure(
        "heatmap", lens_plots.lens_heatmap, r, metric=metric, role=role, start=start, width=width
    )


def _tracked(r: LensResult | None, position: int) -> go.Figure | None:
    return None if r is None else ui_figure("tracked", lens_plots.tracked_ranks, r, position)


def _patches(r: Any, by_target: bool) -> go.Figure:
    from explorer.plots.vlm import patch_lens_overlay

    return patch_lens_overlay(r, target=r.target_tokens[0] if by_target else None)


def _surfacing(r: Any) -> go.Figure:
    from explorer.plots.vlm import target_surfacing

    return target_surfacing(r)


def vlm_examples(ctx: UIContext) -> list[list[Any]]:
    """Synthetic scenes (drawn once into the cache dir) with questions for the demo VLM."""
    from explorer.vlm.scenes import compose_scene

    folder = ctx.settings.cache_dir / "examples"
    folder.mkdir(parents=True, exist_ok=True)
    scenes = [
        ("red-circle-blue-square", [("red", "circle", "left"), ("blue", "square", "right")],
         "What is in the picture?", " red"),
        ("green-triangle", [("green", "triangle", "top left")], "What color is the triangle?", " green"),
        ("yellow-star-purple-circle", [("yellow", "star", "bottom"), ("purple", "circle", "top right")],
         "Is there a purple circle?", " yes"),
    ]  # fmt: skip
    rows = []
    for name, objects, question, target in scenes:
        path = folder / f"{name}.png"
        if not path.exists():
            compose_scene(objects).image.save(path)
        rows.append([str(path), question, target, TINY_VLM, 12])
    return rows


def build(ctx: UIContext) -> None:
    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="The capital of France is")
            targets = gr.Textbox(
                label="Tracked targets (one per line; a leading space matters: ' Paris')",
                lines=2,
                placeholder=" Paris",
            )
        with gr.Column(scale=2):
            image = gr.Image(
                label="Image (optional: for a vision-language model)",
                type="pil",
                sources=["upload", "clipboard"],
                height=180,
            )
            model = gr.Dropdown(
                choices=sorted(EMBEDDED_LMS) + list(EMBEDDED_VLMS),
                value=ctx.settings.default_model,
                allow_custom_value=True,
                label="Model (embedded name, hub id or local dir)",
            )
            dtype = dtype_dropdown(ctx)
            with gr.Row():
                top_k = gr.Slider(1, 50, value=10, step=1, label="Top-k per cell")
                generate = gr.Slider(0, min(64, MAX_GENERATE), value=0, step=1, label="Generate N tokens")
            with gr.Row():
                sample = gr.Checkbox(value=False, label="Sample (else greedy)")
                temperature = gr.Number(value=1.0, label="Temperature", minimum=0.01)
                seed = gr.Number(value=0, label="Seed", precision=0)
            run = gr.Button("Run logit lens", variant="primary")
    gr.Examples(EXAMPLES, inputs=[prompt, targets])
    gr.Examples(
        vlm_examples(ctx), inputs=[image, prompt, targets, model, generate], label="Vision-language examples"
    )
    summary = gr.Markdown()
    gr.Markdown(EXPLAIN)
    with gr.Accordion("How this follows the papers, and where it does not", open=False):
        gr.Markdown(deviations_markdown())
    with gr.Column(visible=False) as vlm_box:
        gr.Markdown(VLM_EXPLAIN)
        patches = gr.Plot(label="Logit lens on the image patches", elem_id="lens-patches")
        export_controls(state, "patches", "Export patch overlay", ctx=ctx)
        surfacing = gr.Plot(label="Where the target surfaces", elem_id="lens-surfacing")
        export_controls(state, "surfacing", "Export surfacing curve", ctx=ctx)
    with gr.Row():
        metric = gr.Radio([("probability", "prob"), ("log rank", "rank")], value="prob", label="Colour")
        role = gr.Radio(
            [("final prediction", ROLE_FINAL), ("next input token", ROLE_NEXT)],
            value=ROLE_FINAL,
            label="Token",
        )
        window = gr.Slider(
            0,
            1,
            value=0,
            step=1,
            interactive=False,
            label=f"First position shown (long prompts: {WINDOW} at a time)",
        )
    heatmap = gr.Plot(label="Layer × position", elem_id="lens-heatmap", elem_classes=["scroll-plot"])
    export_controls(state, "heatmap", "Export heatmap", ctx=ctx)
    position = gr.Slider(
        0, 1, value=0, step=1, interactive=False, label="Position for the tracked-token chart"
    )
    tracked = gr.Plot(label="Tracked tokens across layers", elem_id="lens-tracked")
    export_controls(state, "tracked", "Export tracked ranks", ctx=ctx)
    with gr.Column(visible=False) as gen_box:
        generation = gr.Plot(label="Generation: steps × layers", elem_id="lens-generation")
        export_controls(state, "generation", "Export generation heatmap", ctx=ctx)
        hidden = gr.Plot(label="Never-emitted candidates", elem_id="lens-hidden")
        export_controls(state, "hidden", "Export never-emitted candidates", ctx=ctx)

    @user_errors
    def on_run(
        image_v: Any,
        prompt_v: str,
        targets_v: str,
        model_v: str,
        top_k_v: float,
        generate_v: float,
        sample_v: bool,
        temperature_v: float,
        seed_v: float,
        metric_v: str,
        role_v: str,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        report = progress_fn(progress)
        report(0.0, "Loading model")
        chosen = model_v or (TINY_VLM if image_v is not None else ctx.settings.default_model)
        result = run_logit_lens(
            chosen,
            prompt_v,
            image=image_v,
            top_k=int(top_k_v),
            targets=parse_targets(targets_v),
            generate=int(generate_v),
            sample=bool(sample_v),
            temperature=float(temperature_v or 1.0),
            seed=int(seed_v or 0),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=report,
        )
        return render(result, metric_v, role_v)

    def render(result: LensResult, metric_v: str, role_v: str) -> tuple[Any, ...]:
        last = result.prompt_len - 1
        max_start = max(0, result.seq_len - WINDOW)
        start = max(0, min(max_start, last - WINDOW + 1 + len(result.generated)))
        has_gen = bool(result.generated)
        has_image = getattr(result, "grid", None) is not None
        has_target = has_image and bool((result.tracked["role"] == "target").any())
        return (
            result,
            summary_markdown(result),
            gr.Slider(0, max(1, max_start), value=start, step=1, interactive=max_start > 0),
            _heatmap(result, metric_v, role_v, start),
            gr.Slider(0, max(1, result.seq_len - 1), value=last, step=1, interactive=result.seq_len > 1),
            _tracked(result, last),
            gr.Column(visible=has_gen),
            ui_figure("generation", lens_plots.generation_ranks, result) if has_gen else None,
            ui_figure("never emitted", lens_plots.never_emitted_figure, result)
            if has_gen and result.never_emitted
            else None,
            gr.Column(visible=has_image),
            ui_figure("patches", _patches, result, has_target) if has_image else None,
            ui_figure("surfacing", _surfacing, result) if has_target else None,
        )

    outputs = [
        state, summary, window, heatmap, position, tracked, gen_box, generation, hidden, vlm_box, patches, surfacing
    ]  # fmt: skip
    inputs = [image, prompt, targets, model, top_k, generate, sample, temperature, seed, metric, role, dtype]
    image.upload(lambda m: TINY_VLM if m in EMBEDDED_LMS else m, [model], [model], api_visibility="private")
    run.click(on_run, inputs=inputs, outputs=outputs, api_name="logit_lens")
    prompt.submit(on_run, inputs=inputs, outputs=outputs, api_visibility="private")

    redraw = user_errors(lambda r, m, ro, s: _heatmap(r, m, ro, int(s)))
    for control in (metric, role, window):
        control.change(redraw, [state, metric, role, window], heatmap, api_visibility="private")
    position.change(
        user_errors(lambda r, p: _tracked(r, int(p))), [state, position], tracked, api_visibility="private"
    )
