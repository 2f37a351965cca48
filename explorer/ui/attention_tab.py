"""The "Attention" tab: one forward pass per run; every view re-renders from the stored result.

An input-kind radio switches between two modes, each showing only the views that apply:

- Text (language model): Run -> `explorer.api.attention.attention` (one `capture`, stored in
  DuckDB): query x key matrices, token view, head grid, rollout, flow, sinks, entropy.
- Image (vision model): upload / paste an image or pick a bundled sample, Run ->
  `explorer.api.attention.attention_image`: [CLS] -> patch attention per layer/head (or the mean
  over heads) and attention rollout overlaid on the image, entropy of each head's [CLS] row.

The result is held in a `gr.State`, the display choices (layer, head, token, sinks, rollout layer)
in a second one. Moving a control only rebuilds figures from the result with those choices (the
exports get them too, so they match what is on screen); no control other than a Run button
reaches a model. The choices are figure arguments, never part of the result.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from explorer.analysis.attention import MAX_FLOW_POSITIONS, MAX_FLOW_TOKENS, SINK_FIRST, AttentionResult
from explorer.analysis.vision_attention_result import VisionAttentionResult
from explorer.api.attention import attention, attention_image, attention_window
from explorer.backends.embedded import EMBEDDED_LMS
from explorer.backends.images import load_image, sample_images
from explorer.backends.vision import EMBEDDED_VISION_MODELS
from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM
from explorer.errors import InputError
from explorer.plots import attention as att_plots
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, ui_figure, user_errors
from explorer.vlm.attention import VLMAttentionResult

TITLE = "Attention"
WINDOW_POSITIONS = 128  # positions per axis of a long prompt's exact head window
TEXT_MODE = "Text (language model)"
IMAGE_MODE = "Image (vision model)"
VLM_MODE = "Image + prompt (vision-language model)"
MODE_NOTES = {
    TEXT_MODE: "A causal language model attends only to earlier tokens: query × key matrices (grey = causal "
    "mask), rollout, flow, sinks and entropy. [CLS]→patch overlays apply to vision encoders: choose "
    f"*{IMAGE_MODE}*; an image into a language model: choose *{VLM_MODE}*.",
    IMAGE_MODE: "A vision encoder has no causal mask and no unembedding: logit lens and attribution do not "
    "apply, and the token × token views are replaced here by [CLS]→patch attention and rollout on the image.",
    VLM_MODE: "A vision-language model (default: the embedded demo `tiny-vlm`) reads the image as visual tokens "
    "inside its language model: here every text token after the image — the question and the generated "
    "answer — attends to the image patches, per block and head and rolled out.",
}
VLM_EXPLAIN = """**Text → image attention**: how much one text token (a token of the question, or a generated
answer token; pick it below) attends to each image patch, in one LM block (slider inside the figure) for one
head or the mean over heads. **Rollout** multiplies 0.5·(mean attention) + 0.5·I through the blocks (Abnar &
Zuidema 2020, the same maths as the text view) and reads the token's row over the patches: what reached it
from each patch through every path. **Shares**: per block, the text tokens' attention (mean over heads and
tokens) on image, text and sink tokens. Sinks are position 0 plus visual tokens whose norm is > 4× the median
visual-token norm *and* that draw > 2× their uniform share of the image attention (the EmbedLens-style
criterion of the Visual tokens tab); a sink counts only as sink."""
IMAGE_EXPLAIN = """**[CLS] → patch attention**: how much the [CLS] token's query attends to each patch in one
layer and head (or the mean over heads); the remainder of its row goes to [CLS] itself and any register tokens.
**Rollout** multiplies 0.5·(mean attention) + 0.5·I through every layer and reads the [CLS] row over the patches
(re-normalised to sum to 1). **Entropy**: of each head's whole [CLS] row in bits (log2 of the token count =
uniform). Overlays are drawn on the image exactly as the model sees it (resized, letterboxed for the embedded
model); hover shows the patch and its exact value."""
EXAMPLES = [
    ["The capital of France is Paris. The capital of Germany is"],
    ["When Mary and John went to the store, John gave a drink to"],
    ["def add(a, b):\n    return a + b\n\nprint(add(2, 3))"],
]

EXPLAIN = f"""**Query × key** matrices: row = the token that attends, column = the token it reads from; grey
cells are future tokens (causal mask). **Rollout** multiplies 0.5·(mean attention) + 0.5·I through the layers
(the identity is the residual connection). **Attention flow** (Abnar & Zuidema 2020) treats the same graph as a
flow network and solves an exact max-flow per (output, input) pair: it is only computed when ticked, for
prompts of at most {MAX_FLOW_TOKENS} tokens and at most {MAX_FLOW_POSITIONS} output positions. **Sink share**: the
fraction of attention a head gives the chosen tokens (default: the first token), averaged over queries 1..n.
Long prompts are shown block-averaged (the stored data and CSV/Parquet exports keep every token)."""


def token_choices(result: AttentionResult) -> list[tuple[str, int]]:
    """Dropdown entries "pos: token" -> position."""
    return [(f"{i}: {tok!r}", i) for i, tok in enumerate(result.tokens)]


def parse_positions(text: str) -> tuple[int, ...]:
    """ "-1, 4" -> (-1, 4); empty -> (-1,) (the last token)."""
    parts = [p.strip() for p in (text or "").replace(";", ",").split(",") if p.strip()]
    if not parts:
        return (-1,)
    try:
        return tuple(int(p) for p in parts)
    except ValueError as exc:
        raise InputError(
            f"flow output positions must be integers separated by commas (e.g. '-1, 5'), got {text!r}"
        ) from exc


def summary_markdown(r: AttentionResult) -> str:
    mid = slice(r.n_layers // 4, max(r.n_layers // 4 + 1, 3 * r.n_layers // 4))
    first = float(r.sink_share[mid].mean())
    delim = ", ".join(f"`{s['position']}:{s['token']!r}`" for s in r.sink_tokens if s["reason"] != SINK_FIRST)
    lines = [
        f"**Run** `{r.run_id}` · model `{r.model}` · {r.seq_len} tokens · {r.n_layers} layers × {r.n_heads} heads"
        f" · computed in {r.seconds:.2f} s",
        "",
        f"Mean share of attention to the first token `{r.tokens[0]!r}` in the middle layers "
        f"({mid.start}..{mid.stop - 1}): **{first:.2f}**. Other candidate sinks (punctuation, delimiters, special "
        f"tokens): {delim or 'none'}.",
    ]
    if r.flow is not None:
        lines.append(f"\nAttention flow computed for output positions {r.flow_positions}.")
    for note in r.notes:
        lines.append(f"\n> {note}")
    return "\n".join(lines)


def _head_value(head: float, mean: bool) -> int | str:
    return "mean" if mean else int(head)


def build(ctx: UIContext) -> None:
    """The tab: an input-kind radio, then the text mode's and the image mode's components."""
    kind = gr.Radio(
        [TEXT_MODE, IMAGE_MODE, VLM_MODE], value=TEXT_MODE, label="Input", elem_id="attention-input-kind"
    )
    note = gr.Markdown(MODE_NOTES[TEXT_MODE], elem_id="attention-mode-note")
    with gr.Column(visible=True) as text_box:
        _build_text_mode(ctx)
    with gr.Column(visible=False) as image_box:
        _build_image_mode(ctx)
    with gr.Column(visible=False) as vlm_box:
        _build_vlm_mode(ctx)

    def on_kind(kind_v: str) -> tuple[Any, ...]:
        return (
            gr.Column(visible=kind_v == TEXT_MODE),
            gr.Column(visible=kind_v == IMAGE_MODE),
            gr.Column(visible=kind_v == VLM_MODE),
            MODE_NOTES.get(kind_v, ""),
        )

    kind.change(on_kind, [kind], [text_box, image_box, vlm_box, note], api_visibility="private")


# ---- image + prompt (vision-language model) ----------------------------------------------------
def vlm_summary_markdown(r: VLMAttentionResult) -> str:
    """Run facts, the answer and where the text tokens look, from the stored result alone."""
    peak = int(r.shares[:, 0].argmax())
    lines = [
        f"**Run** `{r.run_id}` · model `{r.model}` · {len(r.tokens)} tokens ({r.n_image} visual, grid "
        f"{r.grid[0]}×{r.grid[1]}) · {r.n_layers} blocks × {r.n_heads} heads · computed in {r.seconds:.2f} s",
        "",
        f"**Answer** ({len(r.answer)} tokens): `{''.join(r.answer)}` · {len(r.query_positions)} text tokens after "
        "the image attend to it.",
        f"Text → image share of attention (sinks excluded): block 1 **{r.shares[0, 0]:.2f}**, peak "
        f"**{r.shares[peak, 0]:.2f}** at block {peak + 1}, last block **{r.shares[-1, 0]:.2f}**; sink share in "
        f"the last block **{r.shares[-1, 2]:.2f}** (visual sinks there: {int(r.sinks[-1].sum())}).",
    ]
    for text in r.notes:
        lines.append(f"\n> {text}")
    return "\n".join(lines)


def vlm_query_choices(r: VLMAttentionResult) -> list[tuple[str, int]]:
    """One choice per stored row: a query, or (a long run) a block of queries, by its first position."""
    return [
        (
            f"{a} · {r.tokens[a]!r}" + (" (generated)" if a >= r.prompt_len else "")
            if a == b
            else f"{a}–{b} · mean of {b - a + 1} tokens",
            a,
        )
        for a, b in r.query_units
    ]


def _build_vlm_mode(ctx: UIContext) -> None:
    from explorer.plots import vlm_attention as vplots
    from explorer.ui.lens_tab import vlm_examples

    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(
                label="Image (upload, paste or drop)",
                type="pil",
                sources=["upload", "clipboard"],
                height=260,
                elem_id="vlm-attention-image",
            )
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Question about the image", lines=2, value="What is in the picture?")
            model = gr.Dropdown(
                choices=list(EMBEDDED_VLMS),
                value=TINY_VLM,
                allow_custom_value=True,
                label="Vision-language model (embedded name, hub id or local dir)",
            )
            dtype = dtype_dropdown(ctx)
            generate = gr.Slider(0, 32, value=8, step=1, label="Generate N answer tokens (each one a query)")
            run = gr.Button("Run VLM attention", variant="primary")
    gr.Examples(
        [[row[0], row[1]] for row in vlm_examples(ctx)], inputs=[image, prompt], label="Synthetic scenes"
    )
    summary = gr.Markdown()
    gr.Markdown(VLM_EXPLAIN)
    with gr.Row():
        query = gr.Dropdown(
            choices=[], label="Text token that attends (position · token)", elem_id="vlm-attention-query"
        )
        view = gr.Radio(
            [("mean over heads", "mean"), ("one head", "head"), ("rollout", "rollout")],
            value="mean",
            label="View",
        )
        head = gr.Slider(0, 1, value=0, step=1, label="Head (for 'one head')", interactive=False)
    overlay = gr.Plot(label="Text → image attention on the image", elem_id="vlm-attention-overlay")
    export_controls(state, "text_to_image_attention", "Export overlay", ctx=ctx)
    shares = gr.Plot(label="Attention shares per block: image / text / sink", elem_id="vlm-attention-shares")
    export_controls(state, "attention_shares", "Export shares", ctx=ctx)
    heads = gr.Plot(label="Share on the image: blocks × heads", elem_id="vlm-attention-heads")
    export_controls(state, "image_share_heads", "Export blocks × heads", ctx=ctx)

    @user_errors
    def on_run(
        image_v: Any,
        prompt_v: str,
        model_v: str,
        generate_v: float,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        if image_v is None:
            raise InputError("no image: upload or paste one, or click a synthetic scene")
        result = attention(
            (model_v or "").strip() or TINY_VLM,
            prompt_v,
            image=image_v,
            generate=int(generate_v),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        if not isinstance(result, VLMAttentionResult):
            raise InputError("this model did not give a vision-language attention result")
        return (
            result,
            vlm_summary_markdown(result),
            gr.Dropdown(choices=vlm_query_choices(result), value=result.query_units[-1][0]),
            gr.Radio(value="mean"),
            gr.Slider(0, max(1, result.n_heads - 1), value=0, step=1, interactive=result.n_heads > 1),
            ui_figure(
                "text_to_image_attention", vplots.text_to_image_attention, result, run_id=result.run_id
            ),
            ui_figure("attention_shares", vplots.attention_shares, result, run_id=result.run_id),
            ui_figure("image_share_heads", vplots.image_share_heads, result, run_id=result.run_id),
        )

    run.click(
        on_run,
        inputs=[image, prompt, model, generate, dtype],
        outputs=[state, summary, query, view, head, overlay, shares, heads],
        api_name="attention_vlm",
    )

    @user_errors
    def redraw(r: VLMAttentionResult | None, q: Any, v: str, h: float) -> Any:
        if r is None:
            return gr.skip()
        return ui_figure(
            "text_to_image_attention",
            vplots.text_to_image_attention,
            r,
            query=None if q is None else int(q),
            view=v or "mean",
            head=int(h),
            run_id=r.run_id,
        )

    query.input(redraw, [state, query, view, head], [overlay], api_visibility="private")
    view.input(redraw, [state, query, view, head], [overlay], api_visibility="private")
    head.release(redraw, [state, query, view, head], [overlay], api_visibility="private")


# ---- image mode ------------------------------------------------------------------------------
def vision_summary_markdown(r: VisionAttentionResult) -> str:
    """Run facts and the heads that focus most, from the stored result alone."""
    last = r.n_layers - 1
    focus = int(r.entropy[last].argmin())
    patches = 1.0 - float(r.prefix_share[last].mean())
    lines = [
        f"**Run** `{r.run_id}` · model `{r.model}` · patch grid {r.grid[0]}×{r.grid[1]} · {r.n_layers} layers × "
        f"{r.n_heads} heads · image `{r.image_sha256[:12]}…` · computed in {r.seconds:.2f} s",
        "",
        f"Last layer: [CLS] gives **{patches:.2f}** of its attention to patches (mean over heads); the most "
        f"focused head is {focus} ({float(r.entropy[last, focus]):.2f} bits of {float(np.log2(r.n_tokens)):.2f}).",
    ]
    top = np.unravel_index(int(r.rollout.argmax()), r.grid)
    lines.append(
        f"Rollout: the top patch (row {int(top[0])}, column {int(top[1])}) holds {float(r.rollout.max()):.3f} "
        f"of the relevance (uniform: {1 / r.rollout.size:.4f})."
    )
    for text in r.notes:
        lines.append(f"\n> {text}")
    return "\n".join(lines)


def _build_image_mode(ctx: UIContext) -> None:
    state = gr.State(None)
    view_state = gr.State({})  # display choices (layer, head)
    samples = sample_images()
    with gr.Row():
        with gr.Column(scale=3):
            image = gr.Image(
                label="Image (upload, paste or drop)",
                type="filepath",
                sources=["upload", "clipboard"],
                format="png",
                height=320,
                elem_id="attention-image-input",
            )
        with gr.Column(scale=2):
            sample = gr.Dropdown(
                choices=sorted(samples),
                value=None,
                label="Or pick a bundled sample image",
                elem_id="attention-image-sample",
            )
            vision_model = gr.Dropdown(
                choices=sorted(EMBEDDED_VISION_MODELS),
                value=ctx.settings.default_vision_model,
                allow_custom_value=True,
                label="Vision model (embedded name, hub id or local dir: ViT, DINOv2, CLIP, SigLIP)",
            )
            run = gr.Button("Run image attention", variant="primary")
    summary = gr.Markdown()
    gr.Markdown(IMAGE_EXPLAIN)
    with gr.Row():
        layer = gr.Slider(0, 1, value=0, step=1, label="Layer", interactive=False)
        head = gr.Slider(0, 1, value=0, step=1, label="Head", interactive=False)
        mean_heads = gr.Checkbox(value=True, label="Mean over heads")
    overlay_plot = gr.Plot(label="[CLS] → patch attention on the image", elem_id="vision-attention-overlay")
    export_controls(state, "cls_overlay", "Export [CLS] overlay", ctx=ctx, view=view_state)
    rollout_plot = gr.Plot(label="Attention rollout on the image", elem_id="vision-attention-rollout")
    export_controls(state, "rollout_overlay", "Export rollout overlay", ctx=ctx, view=view_state)
    entropy_plot = gr.Plot(
        label="Entropy of the [CLS] row: layers × heads", elem_id="vision-attention-entropy"
    )
    export_controls(state, "entropy", "Export entropy", ctx=ctx, view=view_state)

    @user_errors
    def on_sample(name: str | None) -> Any:
        if not name:
            return gr.skip()
        if name not in samples:
            raise InputError(f"unknown sample {name!r}; choose from {sorted(samples)}")
        return load_image(samples[name], ctx.settings)

    sample.input(on_sample, [sample], [image], api_visibility="private")
    image.upload(lambda: None, None, [sample], api_visibility="private")

    @user_errors
    def on_run(
        image_v: str | None,
        model_v: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        if not image_v:
            raise InputError("no image: upload or paste one, or pick a bundled sample")
        result = attention_image(
            image_v,
            model=(model_v or "").strip() or ctx.settings.default_vision_model,
            settings=ctx.settings,
            progress=progress_fn(progress),
        )
        last = result.n_layers - 1
        view: dict[str, Any] = {"layer": last, "head": "mean"}
        return (
            result,
            view,
            vision_summary_markdown(result),
            gr.Slider(0, max(1, last), value=last, step=1, interactive=result.n_layers > 1),
            gr.Slider(0, max(1, result.n_heads - 1), value=0, step=1, interactive=result.n_heads > 1),
            gr.Checkbox(value=True),
            ui_figure("cls_overlay", att_plots.cls_overlay, result, **view),
            ui_figure("rollout_overlay", att_plots.rollout_overlay, result),
            ui_figure("entropy", att_plots.vision_entropy_heatmap, result),
        )

    outputs = [state, view_state, summary, layer, head, mean_heads, overlay_plot, rollout_plot, entropy_plot]
    run.click(on_run, inputs=[image, vision_model], outputs=outputs, api_name="attention_image")

    @user_errors
    def on_layer_head(
        result: VisionAttentionResult | None, layer_v: float, head_v: float, mean_v: bool
    ) -> tuple[Any, ...]:
        if result is None:
            return gr.skip(), gr.skip()
        view: dict[str, Any] = {"layer": int(layer_v), "head": _head_value(head_v, mean_v)}
        return view, ui_figure("cls_overlay", att_plots.cls_overlay, result, **view)

    @user_errors
    def on_head(result: VisionAttentionResult | None, layer_v: float, head_v: float) -> tuple[Any, ...]:
        """Choosing a head shows that head: the mean-over-heads box is unticked."""
        view, figure = on_layer_head(result, layer_v, head_v, False)
        return view, figure, gr.Checkbox(value=False)

    io = ([state, layer, head, mean_heads], [view_state, overlay_plot])
    layer.release(on_layer_head, *io, api_visibility="private")
    mean_heads.input(on_layer_head, *io, api_visibility="private")
    head.release(
        on_head, [state, layer, head], [view_state, overlay_plot, mean_heads], api_visibility="private"
    )


# ---- text mode -------------------------------------------------------------------------------
def _build_text_mode(ctx: UIContext) -> None:
    state = gr.State(None)
    view_state = gr.State({})  # display choices (layer, head, token, sinks, rollout layer)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder=EXAMPLES[0][0])
        with gr.Column(scale=2):
            model = gr.Dropdown(
                choices=sorted(EMBEDDED_LMS),
                value=ctx.settings.default_model,
                allow_custom_value=True,
                label="Model (embedded name, hub id or local dir)",
            )
            dtype = dtype_dropdown(ctx)
            with gr.Row():
                flow = gr.Checkbox(
                    value=False,
                    label=f"Attention flow (exact max-flow; slow; ≤ {MAX_FLOW_TOKENS} tokens)",
                )
                flow_positions = gr.Textbox(
                    value="-1",
                    label=f"Flow output positions (comma-separated, -1 = last; ≤ {MAX_FLOW_POSITIONS})",
                )
            run = gr.Button("Run attention", variant="primary")
    gr.Examples(EXAMPLES, inputs=[prompt])
    summary = gr.Markdown()
    gr.Markdown(EXPLAIN)

    with gr.Row():
        layer = gr.Slider(0, 1, value=0, step=1, label="Layer", interactive=False)
        head = gr.Slider(0, 1, value=0, step=1, label="Head", interactive=False)
        mean_heads = gr.Checkbox(value=False, label="Mean over heads (head view and token view)")
    head_plot = gr.Plot(label="One head: query × key", elem_id="attention-head")
    export_controls(state, "head", "Export head heatmap", ctx=ctx, view=view_state)
    mean_plot = gr.Plot(label="Mean over heads: query × key", elem_id="attention-mean")
    export_controls(state, "mean_heads", "Export mean heatmap", ctx=ctx, view=view_state)

    with gr.Row():
        window_start = gr.Slider(
            0, 1, value=0, step=1, label="Exact window: first position (long prompts)", interactive=False
        )
        window_btn = gr.Button("Show exact window", size="sm")
    window_plot = gr.Plot(label="Exact head window (long prompts)", elem_id="attention-window")

    token = gr.Dropdown(choices=[], label="Token for the token-centred view", interactive=True)
    token_plot = gr.Plot(label="Token-centred view", elem_id="attention-token")
    export_controls(state, "token", "Export token view", ctx=ctx, view=view_state)

    grid_plot = gr.Plot(
        label="All heads (thumbnails)", elem_id="attention-grid", elem_classes=["scroll-plot"]
    )
    export_controls(state, "heads_grid", "Export head grid", ctx=ctx, view=view_state)

    rollout_layer = gr.Slider(0, 1, value=0, step=1, label="Rollout through layer", interactive=False)
    rollout_plot = gr.Plot(label="Attention rollout", elem_id="attention-rollout")
    export_controls(state, "rollout", "Export rollout", ctx=ctx, view=view_state)

    with gr.Column(visible=False) as flow_box:
        flow_plot = gr.Plot(label="Attention flow vs rollout", elem_id="attention-flow")
        export_controls(state, "flow", "Export flow", ctx=ctx, view=view_state)

    sinks = gr.Dropdown(
        choices=[], value=[], multiselect=True, label="Sink tokens (default: the first token)"
    )
    sink_plot = gr.Plot(label="Sink share: layers × heads", elem_id="attention-sinks")
    export_controls(state, "sinks", "Export sink shares", ctx=ctx, view=view_state)
    entropy_plot = gr.Plot(label="Entropy: layers × heads", elem_id="attention-entropy")
    export_controls(state, "entropy", "Export entropy", ctx=ctx, view=view_state)

    @user_errors
    def on_run(
        prompt_v: str,
        model_v: str,
        flow_v: bool,
        flow_positions_v: str,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        if (model_v or "").strip() in EMBEDDED_VLMS:
            raise InputError(f"{model_v!r} is a vision-language model: choose the input '{VLM_MODE}' above")
        report = progress_fn(progress)
        report(0.0, "Loading model")
        result = attention(
            model_v or ctx.settings.default_model,
            prompt_v,
            flow=bool(flow_v),
            flow_positions=parse_positions(flow_positions_v) if flow_v else (-1,),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=report,
        )
        assert isinstance(result, AttentionResult)  # no image in this mode
        return render(result)

    def render(result: AttentionResult) -> tuple[Any, ...]:
        last = result.seq_len - 1
        view: dict[str, Any] = {
            "layer": 0,
            "head": 0,
            "token": last,
            "sinks": [0],
            "rollout_layer": result.n_layers - 1,
        }
        choices = token_choices(result)
        return (
            result,
            view,
            summary_markdown(result),
            gr.Slider(0, max(1, result.n_layers - 1), value=0, step=1, interactive=result.n_layers > 1),
            gr.Slider(0, max(1, result.n_heads - 1), value=0, step=1, interactive=result.n_heads > 1),
            gr.Checkbox(value=False),
            ui_figure("head", att_plots.head_heatmap, result, **view),
            ui_figure("mean_heads", att_plots.mean_heatmap, result, **view),
            gr.Dropdown(choices=choices, value=last),
            ui_figure("token", att_plots.token_view, result, **view),
            ui_figure("heads_grid", att_plots.heads_grid, result, **view),
            gr.Slider(
                0,
                max(1, result.n_layers - 1),
                value=result.n_layers - 1,
                step=1,
                interactive=result.n_layers > 1,
            ),
            ui_figure("rollout", att_plots.rollout_heatmap, result, **view),
            gr.Column(visible=result.flow is not None),
            ui_figure("flow", att_plots.flow_heatmap, result) if result.flow is not None else None,
            gr.Dropdown(choices=choices, value=[0], multiselect=True),
            ui_figure("sinks", att_plots.sink_heatmap, result, **view),
            ui_figure("entropy", att_plots.entropy_heatmap, result, **view),
        )

    outputs = [
        state,
        view_state,
        summary,
        layer,
        head,
        mean_heads,
        head_plot,
        mean_plot,
        token,
        token_plot,
        grid_plot,
        rollout_layer,
        rollout_plot,
        flow_box,
        flow_plot,
        sinks,
        sink_plot,
        entropy_plot,
    ]
    inputs = [prompt, model, flow, flow_positions, dtype]

    def window_slider(result: AttentionResult | None) -> Any:
        if result is None:
            return gr.skip()
        last = max(0, result.seq_len - WINDOW_POSITIONS)
        return gr.Slider(0, max(1, last), value=last, step=1, interactive=result.is_blocked and last > 0)

    run.click(on_run, inputs=inputs, outputs=outputs, api_name="attention").then(
        window_slider, state, window_start, api_visibility="private"
    )

    # ---- re-render from the stored result only (no model call) --------------------------
    @user_errors
    def on_layer_head(
        result: AttentionResult | None, view: dict[str, Any], layer_v: float, head_v: float, mean_v: bool
    ) -> tuple[Any, ...]:
        if result is None:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        view = {**view, "layer": int(layer_v), "head": _head_value(head_v, mean_v)}
        return (
            view,
            ui_figure("head", att_plots.head_heatmap, result, **view),
            ui_figure("mean_heads", att_plots.mean_heatmap, result, **view),
            ui_figure("token", att_plots.token_view, result, **view),
        )

    layer_head_io = (
        [state, view_state, layer, head, mean_heads],
        [view_state, head_plot, mean_plot, token_plot],
    )
    layer.release(on_layer_head, *layer_head_io, api_visibility="private")
    head.release(on_layer_head, *layer_head_io, api_visibility="private")
    mean_heads.input(on_layer_head, *layer_head_io, api_visibility="private")

    @user_errors
    def on_window(result: AttentionResult | None, view: dict[str, Any], start_v: float) -> Any:
        """A long prompt stores block-aggregated matrices: recompute one head's exact window (the model
        is loaded if available, else the stored aggregate is spread over the window's tokens)."""
        if result is None:
            raise gr.Error("Run attention (or open a stored run) first.")
        layer_v, head_v = int(view.get("layer", 0)), view.get("head", 0)
        head_i = None if head_v in ("mean", -1, None) else int(head_v)
        matrix, source = attention_window(
            result, layer_v, head_i, int(start_v), size=WINDOW_POSITIONS, settings=ctx.settings
        )
        return ui_figure(
            "window", att_plots.window_heatmap, result, matrix, int(start_v), layer_v, head_i, source
        )

    window_btn.click(on_window, [state, view_state, window_start], window_plot, api_visibility="private")

    @user_errors
    def on_token(
        result: AttentionResult | None, view: dict[str, Any], token_v: int | None
    ) -> tuple[Any, ...]:
        if result is None or token_v is None:
            return gr.skip(), gr.skip()
        view = {**view, "token": int(token_v)}
        return view, ui_figure("token", att_plots.token_view, result, **view)

    token.input(on_token, [state, view_state, token], [view_state, token_plot], api_visibility="private")

    @user_errors
    def on_rollout(result: AttentionResult | None, view: dict[str, Any], layer_v: float) -> tuple[Any, ...]:
        if result is None:
            return gr.skip(), gr.skip()
        view = {**view, "rollout_layer": int(layer_v)}
        return view, ui_figure("rollout", att_plots.rollout_heatmap, result, **view)

    rollout_layer.release(
        on_rollout, [state, view_state, rollout_layer], [view_state, rollout_plot], api_visibility="private"
    )

    @user_errors
    def on_sinks(
        result: AttentionResult | None, view: dict[str, Any], sinks_v: list[int] | None
    ) -> tuple[Any, ...]:
        if result is None:
            return gr.skip(), gr.skip()
        view = {**view, "sinks": [int(p) for p in (sinks_v or [])]}
        return view, ui_figure("sinks", att_plots.sink_heatmap, result, **view)

    sinks.input(on_sinks, [state, view_state, sinks], [view_state, sink_plot], api_visibility="private")
