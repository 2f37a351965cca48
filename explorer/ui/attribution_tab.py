"""The "Attribution" tab: which prompt tokens made the model produce the target.

Parse inputs -> `attribute(...)` -> figures from the plots registry. A single method is shown
as a comparison of one (its coloured text, and a table of its own faithfulness beside occlusion's
on the same prompt as a reference), so the same export buttons serve both cases.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import plotly.graph_objects as go

from explorer.analysis.attribution import ATTRIBUTION_METHODS, AttributionComparison, AttributionResult
from explorer.analysis.attribution.reagent import ReagentParams
from explorer.analysis.attribution.replacement import DEFAULT_MLM
from explorer.analysis.attribution.result import METRIC_LABELS, GenerationAttributionResult
from explorer.api.attribution import attribute, attribute_generation
from explorer.backends.embedded import EMBEDDED_LMS
from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM
from explorer.errors import InputError
from explorer.plots import figure_spec
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, ui_figure, user_errors

TITLE = "Attribution"
EXAMPLES = [
    ["The capital of France is", " Paris", "all", ""],
    [
        "When my flight landed in Japan, I converted my currency and went to the capital city of",
        " Tokyo",
        "reagent",
        "",
    ],
    ["The Eiffel Tower is located in the city of", " Paris", "integrated_gradients", " London"],
]

DEVIATIONS = """**How this follows the papers, and where it does not.**
*ReAGent* (Zhao & Shan 2024): random context tokens (ratio r) are replaced, the drop in the target's
probability updates every token's importance (logit scale, recursively), and a probe stops when keeping only
its top-n tokens and replacing the rest still leaves the target in the model's top-k. Deviations: the paper's
replacement model is RoBERTa; it is used when available locally (`auto`/`mlm`), otherwise the **analysed model
itself proposes replacements** (top candidates from the left context, re-ranked by whole-sequence likelihood,
never the original token) — the result says which was used. Replacement candidates are computed once per
position from the original context (one masked position at a time). If no probe stops within the step cap,
all probes are averaged (and a note says so) instead of returning NaN. The rational size n of the stopping
check is capped at half the prompt (`max_keep_ratio` 0.5): with the paper's fixed n = 5 a prompt of ≤5 tokens
keeps every token, so the check passes at once and the scores stay near their random start.
Defaults: 8 probes (the authors' configurations use 3–10; Inseq 16), ≤30 steps (the paper: 3000).
Replacement choice: the replacement model's argmax, as the paper (`candidates` = 1, the default);
`candidates` > 1 draws among the top candidates instead (an option, listed in the JSON `deviations`).
*Faithfulness* (Zhao & Aletras 2023; as in the ReAGent authors' evaluation code): Soft-NC/Soft-NS mask
embedding elements with Bernoulli draws whose keep-probability is the importance normalised to a
distribution (summing to 1), normalised by the all-zero-embedding baseline. A distribution makes every
keep-probability small, so Soft-NS is close to 0 for every method on all but the shortest prompts — a
property of the metric as the authors compute it, not of one method. We score the target's probability
(the paper's definition) where one version of the authors' code compares whole output distributions.
Hard comprehensiveness/sufficiency **delete** the top 20% of tokens.
Every metric: higher is better. Wall time excludes the faithfulness evaluation."""


REFERENCE_METHOD = "occlusion"  # cheap (one forward pass per token) and the most faithful here


def _comparison(
    result: AttributionResult | AttributionComparison, references: list[AttributionResult] | None = None
) -> AttributionComparison:
    if isinstance(result, AttributionComparison):
        return result
    return AttributionComparison(results=[result], references=list(references or []))


def _metric_line(r: AttributionResult, ref: AttributionResult | None) -> str:
    parts = []
    for key, label in METRIC_LABELS.items():
        value = r.faithfulness.get(key)
        text = f"{label} {value:.3f}" if value is not None else f"{label} n/a"
        other = ref.faithfulness.get(key) if ref is not None else None
        if value is not None and other is not None:
            text += f" ({ref.method if ref else ''} {other:.3f})"
        parts.append(text)
    return ", ".join(parts)


def summary_markdown(comp: AttributionComparison) -> str:
    if not comp.results:
        return "No method ran."
    first = comp.results[0]
    lines = [
        f"**Target** `{first.target['token']}` after {len(first.tokens)} prompt tokens · model `{first.model}`"
    ]
    if first.contrast:
        lines.append(f"· contrast foil `{first.contrast['token']}`")
    if len(comp.results) > 1:
        shown = {k: v for k, v in comp.best().items() if v}
        if shown:
            lines.append("\n**Best:** " + ", ".join(f"{k}: `{v}`" for k, v in shown.items()))
    else:
        ref = comp.references[0] if comp.references else None
        lines.append(
            f"\n**Faithfulness** of `{first.method}` (higher is better"
            + (f"; in brackets: `{ref.method}` on the same prompt, for reference" if ref else "")
            + f"): {_metric_line(first, ref)}"
        )
    for r in comp.results:
        extra = ""
        if r.method == "reagent":
            e = r.extras
            extra = f" — replacement `{e.get('replacement')}`, {e.get('steps')} steps, {e.get('stopped_probes')}/{e.get('num_probes')} probes stopped"
        lines.append(f"\n- `{r.method}` run `{r.run_id}` in {r.seconds:.2f} s{extra}")
    for note in comp.notes + sorted({n for r in comp.results for n in r.notes}):
        lines.append(f"\n> ⚠️ {note}")
    return "\n".join(lines)


def _figure(comp: AttributionComparison | None, name: str) -> go.Figure | None:
    return None if comp is None else ui_figure(name, figure_spec(comp, name).build, comp)


def _reagent_params(
    replacement: str, mlm_model: str, ratio: float, top_k: float, keep_n: float, probes: float, steps: float
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "replacement": replacement,
        "replacing_ratio": float(ratio),
        "stop_top_k": int(top_k),
        "keep_top_n": int(keep_n),
        "num_probes": int(probes),
        "max_steps": int(steps),
    }
    if mlm_model and mlm_model.strip():
        params["mlm_model"] = mlm_model.strip()
    return params


def _occlusion_params(window: float, stride: float) -> dict[str, Any]:
    """The occlusion span settings, left out when they are one token at a time (the default)."""
    w, s = int(window or 1), int(stride or 1)
    return {} if w == 1 and s == 1 else {"window": w, "stride": s}


def render_attribution(
    model: str,
    prompt: str,
    target: str,
    method: str,
    contrast: str,
    seed: float,
    replacement: str,
    mlm_model: str,
    ratio: float,
    top_k: float,
    keep_n: float,
    probes: float,
    steps: float,
    ctx: UIContext,
    progress: gr.Progress,
    dtype: str | None = None,
    window: float = 1,
    stride: float = 1,
) -> tuple[AttributionComparison, str, go.Figure | None, go.Figure | None]:
    """Handler: returns (state, summary, coloured-token heatmap, faithfulness table).
    `window` / `stride`: occlusion's spans (also for the occlusion reference beside another method)."""
    if not target:
        raise InputError("give a target: the text the model should produce next, e.g. ' Paris'")
    params = _reagent_params(replacement, mlm_model, ratio, top_k, keep_n, probes, steps)
    if method not in ("all", "reagent"):
        params = {}
    occlusion = _occlusion_params(window, stride)
    if method in ("all", REFERENCE_METHOD):
        params.update(occlusion)
    result = attribute(
        model or ctx.settings.default_model,
        prompt,
        target,
        method=method,
        contrast=contrast or None,
        seed=int(seed or 0),
        settings=ctx.settings,
        dtype=dtype or None,
        progress=progress_fn(progress),
        **params,
    )
    if isinstance(result, GenerationAttributionResult):
        raise InputError("use the generation section for per-step attribution")
    if not isinstance(result, AttributionResult | AttributionComparison):
        raise InputError("image attribution needs an image: add one in the Image box")
    references: list[AttributionResult] = []
    if isinstance(result, AttributionResult) and result.method != REFERENCE_METHOD:
        reference = attribute(
            model or ctx.settings.default_model,
            prompt,
            target,
            method=REFERENCE_METHOD,
            contrast=contrast or None,
            seed=int(seed or 0),
            settings=ctx.settings,
            dtype=dtype or None,
            **occlusion,
        )
        if isinstance(reference, AttributionResult):
            references.append(reference)
    comp = _comparison(result, references)
    return comp, summary_markdown(comp), _figure(comp, "text_heatmap"), _figure(comp, "faithfulness_table")


IMAGE_EXPLAIN = """**With an image** the model is a vision-language model (default: the embedded demo `tiny-vlm`)
and the answer — the **target** if you give one, else the model's greedy answer of N tokens — is attributed to
the **image patches** (its visual tokens). A patch is removed by replacing its visual token (the projected patch
embedding the LM receives) with a baseline: the image's **mean** visual token, or the visual token of a
**blurred** copy of the image. *Occlusion* replaces one patch at a time (score = drop in log p(answer));
*ReAGent* replaces random sets of patches and updates importance by the drop in p(answer), with the ReAGent
parameters below (rational size n counts patches). **Faithfulness** by patch deletion: the answer's
probability after replacing the top k% patches by importance vs random k% (mean of 4 draws), and the deletion
curve. Deviation from ReAGent: patches are replaced by a baseline, not by a replacement model's tokens (there is
no "visual token vocabulary" to sample from)."""
IMAGE_METHODS = ("occlusion", "reagent")


def run_image_attribution(
    image: Any,
    model: str,
    prompt: str,
    target: str,
    method: str,
    seed: float,
    baseline: str,
    answer_tokens: float,
    reagent: dict[str, Any],
    ctx: UIContext,
    progress: gr.Progress,
) -> tuple[Any, ...]:
    """Handler with an image: returns (vlm state, summary, overlay, deletion curve, deletion table)."""
    from explorer.api.attribution import attribute_image
    from explorer.plots import vlm_attribution as vplots

    if method not in IMAGE_METHODS:
        raise InputError(f"with an image, choose the method occlusion or reagent (got {method!r})")
    params: dict[str, Any] = {"baseline": baseline, "answer_tokens": int(answer_tokens)}
    if method == "reagent":
        params.update(
            {
                k: reagent[k]
                for k in ("replacing_ratio", "stop_top_k", "keep_top_n", "num_probes", "max_steps")
            }
        )
    chosen = (model or "").strip()
    result = attribute_image(
        TINY_VLM if not chosen or chosen in EMBEDDED_LMS else chosen,
        prompt,
        image,
        target=target or None,
        method=method,
        seed=int(seed or 0),
        settings=ctx.settings,
        progress=progress_fn(progress),
        **params,
    )
    rid = result.run_id
    return (
        result,
        image_summary_markdown(result),
        ui_figure("patch_attribution", vplots.patch_attribution, result, run_id=rid),
        ui_figure("deletion_curve", vplots.deletion_curve, result, run_id=rid),
        ui_figure("deletion_table", vplots.deletion_table, result, run_id=rid),
    )


def image_summary_markdown(r: Any) -> str:
    f = r.faithfulness
    top = r.ranking()[0]
    cols = int(r.grid[1])
    first = f["deletion"][0]
    lines = [
        f"**Run** `{r.run_id}` · `{r.method}` ({r.baseline} patch) · model `{r.model}` · {len(r.scores)} patches "
        f"({r.grid[0]}×{r.grid[1]}) · {r.seconds:.1f} s",
        "",
        f"**Answer** {'(given target)' if r.target_given else '(greedy)'}: `{r.answer}` · p = {f['answer_prob']:.4f}",
        f"Most important patch: row {top // cols}, column {top % cols}. **Deletion**: replacing the top "
        f"{first['fraction']:.0%} patches drops p by {first['top_drop']:.4f} vs {first['random_drop']:.4f} for random "
        f"patches; deletion-curve area {f['auc_importance']:.4f} (importance order) vs {f['auc_random']:.4f} "
        "(random; lower = more faithful).",
    ]
    if r.method == "reagent":
        e = r.extras
        lines.append(
            f"ReAGent: {e.get('steps')} steps, {e.get('stopped_probes')}/{e.get('num_probes')} probes stopped."
        )
    for note in r.notes:
        lines.append(f"\n> ⚠️ {note}")
    return "\n".join(lines)


def render_generation(
    model: str,
    prompt: str,
    method: str,
    n: float,
    seed: float,
    ctx: UIContext,
    progress: gr.Progress,
    dtype: str | None = None,
) -> tuple[GenerationAttributionResult, go.Figure]:
    """Handler: generate N tokens and attribute each to all preceding tokens."""
    if method == "all":
        raise InputError("per-step attribution runs one method: choose one in the dropdown")
    result = attribute_generation(
        model or ctx.settings.default_model,
        prompt,
        generate=int(n),
        method=method,
        seed=int(seed or 0),
        settings=ctx.settings,
        dtype=dtype or None,
        progress=progress_fn(progress),
    )
    return result, ui_figure("steps_heatmap", figure_spec(result, "steps_heatmap").build, result)


def build(ctx: UIContext) -> None:
    from explorer.ui.lens_tab import vlm_examples

    state = gr.State(None)
    gen_state = gr.State(None)
    image_state = gr.State(None)
    methods = ["all"] + list(ATTRIBUTION_METHODS)
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="The capital of France is")
            with gr.Row():
                target = gr.Textbox(label="Target (mind the leading space: ' Paris')", placeholder=" Paris")
                contrast = gr.Textbox(label="Contrast foil (optional)", placeholder=" London")
        with gr.Column(scale=2):
            image = gr.Image(
                label="Image (optional: attribute a vision-language model's answer to its patches)",
                type="pil",
                sources=["upload", "clipboard"],
                height=180,
                elem_id="attribution-image",
            )
            model = gr.Dropdown(
                choices=sorted(EMBEDDED_LMS) + list(EMBEDDED_VLMS),
                value=ctx.settings.default_model,
                allow_custom_value=True,
                label="Model (embedded name, hub id or local dir)",
            )
            method = gr.Dropdown(
                choices=methods, value="reagent", label="Method ('all' compares every method)"
            )
            seed = gr.Number(value=0, label="Seed", precision=0)
            dtype = dtype_dropdown(ctx)
            run = gr.Button("Attribute", variant="primary")
    reagent_defaults = ReagentParams()  # the sliders start at the engine's defaults
    with gr.Accordion("ReAGent parameters", open=False):
        with gr.Row():
            replacement = gr.Radio(
                [("auto (RoBERTa if available, else the analysed LM)", "auto"), ("analysed causal LM", "causal"),
                 ("masked LM", "mlm"), ("uniform random tokens", "uniform")],
                value="auto",
                label="Replacement model",
            )  # fmt: skip
            mlm_model = gr.Textbox(label="Masked LM (hub id or local dir)", placeholder=DEFAULT_MLM)
        with gr.Row():
            ratio = gr.Slider(
                0.05, 0.95, value=reagent_defaults.replacing_ratio, step=0.05, label="Replacing ratio r"
            )
            top_k = gr.Slider(
                1, 20, value=reagent_defaults.stop_top_k, step=1, label="Stop when target in top-k"
            )
            keep_n = gr.Slider(
                1,
                20,
                value=reagent_defaults.keep_top_n,
                step=1,
                label="Rational size n (kept in the stopping check)",
            )
            probes = gr.Slider(1, 64, value=reagent_defaults.num_probes, step=1, label="Probes")
            steps = gr.Slider(1, 1000, value=reagent_defaults.max_steps, step=1, label="Max steps")
    with gr.Accordion("Occlusion: sliding window (long prompts)", open=False):
        gr.Markdown(
            "Occlusion zeroes spans of **window** tokens, one starting every **stride** tokens (Captum's Occlusion "
            "`sliding_window_shapes` / `strides`); each token gets the mean drop of the spans that cover it. "
            "1 / 1 is one token at a time (one pass per token); a 4,096-token prompt with 64 / 64 takes 64 passes."
        )
        with gr.Row():
            occ_window = gr.Slider(1, 512, value=1, step=1, label="Window (tokens per span)")
            occ_stride = gr.Slider(1, 512, value=1, step=1, label="Stride (1..window)")
    with gr.Accordion("With an image: patch baseline and answer", open=False):
        with gr.Row():
            baseline = gr.Radio(
                [("mean visual token", "mean"), ("blurred image", "blur")],
                value="mean",
                label="Patch replacement",
            )
            answer_tokens = gr.Slider(1, 16, value=3, step=1, label="Greedy answer tokens (when no target)")
    gr.Examples(EXAMPLES, inputs=[prompt, target, method, contrast])
    gr.Examples(
        [[row[0], row[1], "", "occlusion", TINY_VLM] for row in vlm_examples(ctx)],
        inputs=[image, prompt, target, method, model],
        label="Vision-language examples (attribution to image patches)",
    )
    summary = gr.Markdown()
    with gr.Column(visible=False) as image_box:
        gr.Markdown(IMAGE_EXPLAIN)
        overlay_plot = gr.Plot(label="Attribution on the image patches", elem_id="attribution-image-overlay")
        export_controls(image_state, "patch_attribution", "Export overlay", ctx=ctx)
        curve_plot = gr.Plot(label="Patch deletion curve", elem_id="attribution-deletion-curve")
        export_controls(image_state, "deletion_curve", "Export deletion curve", ctx=ctx)
        deletion_plot = gr.Plot(label="Patch deletion: top vs random", elem_id="attribution-deletion-table")
        export_controls(image_state, "deletion_table", "Export deletion table", ctx=ctx)
    with gr.Column(visible=True) as text_box:
        tokens_plot = gr.Plot(label="Coloured tokens", elem_id="attribution-tokens")
        export_controls(state, "text_heatmap", "Export coloured tokens", ctx=ctx)
        table_plot = gr.Plot(label="Faithfulness and wall time", elem_id="attribution-table")
        export_controls(state, "faithfulness_table", "Export table", ctx=ctx)
    gr.Markdown(DEVIATIONS)
    with gr.Accordion("Per generation step (steps × sources)", open=False):
        with gr.Row():
            n_gen = gr.Slider(1, 32, value=8, step=1, label="Generate N tokens")
            gen_run = gr.Button("Generate and attribute each step")
        gen_plot = gr.Plot(label="Steps × sources", elem_id="attribution-steps")
        export_controls(gen_state, "steps_heatmap", "Export steps × sources", ctx=ctx)

    def on_run(
        image_v: Any,
        baseline_v: str,
        answer_v: float,
        model: str,
        prompt: str,
        target: str,
        method: str,
        contrast: str,
        seed: float,
        replacement: str,
        mlm_model: str,
        ratio: float,
        top_k: float,
        keep_n: float,
        probes: float,
        steps: float,
        dtype_v: str = "auto",
        window_v: float = 1,
        stride_v: float = 1,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Any:
        if image_v is not None:
            if int(window_v or 1) != 1 or int(stride_v or 1) != 1:
                raise InputError(
                    "the occlusion window and stride apply to text prompts: set them to 1 with an image"
                )
            if contrast:
                raise InputError(
                    "contrastive attribution is not supported with an image: clear the contrast foil"
                )
            reagent = _reagent_params(replacement, mlm_model, ratio, top_k, keep_n, probes, steps)
            img = run_image_attribution(
                image_v,
                model,
                prompt,
                target,
                method,
                seed,
                baseline_v,
                answer_v,
                reagent,
                ctx=ctx,
                progress=progress,
            )
            return (
                None,
                img[1],
                gr.Column(visible=False),
                None,
                None,
                img[0],
                gr.Column(visible=True),
                *img[2:],
            )
        if (model or "").strip() in EMBEDDED_VLMS:
            raise InputError(
                f"{model!r} is a vision-language model: add an image (or choose a language model)"
            )
        text = render_attribution(
            model, prompt, target, method, contrast, seed, replacement, mlm_model, ratio, top_k, keep_n, probes, steps,
            ctx=ctx, progress=progress, dtype=dtype_v, window=window_v, stride=stride_v,
        )  # fmt: skip
        state_v, summary_v, tokens_v, table_v = text
        return (
            state_v,
            summary_v,
            gr.Column(visible=True),
            tokens_v,
            table_v,
            None,
            gr.Column(visible=False),
            None,
            None,
            None,
        )

    def on_generate(
        model: str,
        prompt: str,
        method: str,
        n: float,
        seed: float,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> Any:
        return render_generation(model, prompt, method, n, seed, ctx=ctx, progress=progress, dtype=dtype_v)

    run.click(
        user_errors(on_run),
        inputs=[
            image,
            baseline,
            answer_tokens,
            model,
            prompt,
            target,
            method,
            contrast,
            seed,
            replacement,
            mlm_model,
            ratio,
            top_k,
            keep_n,
            probes,
            steps,
            dtype,
            occ_window,
            occ_stride,
        ],
        outputs=[
            state, summary, text_box, tokens_plot, table_plot, image_state, image_box, overlay_plot, curve_plot,
            deletion_plot,
        ],
        api_name="attribute",
    )  # fmt: skip
    image.upload(lambda m: TINY_VLM if m in EMBEDDED_LMS else m, [model], [model], api_visibility="private")
    image.clear(
        lambda m: ctx.settings.default_model if m in EMBEDDED_VLMS else m,
        [model],
        [model],
        api_visibility="private",
    )
    gen_run.click(
        user_errors(on_generate),
        inputs=[model, prompt, method, n_gen, seed, dtype],
        outputs=[gen_state, gen_plot],
        api_visibility="private",
    )
