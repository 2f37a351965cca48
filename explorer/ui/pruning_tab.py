"""The "Pruning lab" tab: prune a text prompt or an image's patches, see what survives.

Run -> `explorer.api.pruning.prune_text` / `prune_image` (every pruned input really re-run, the
sweep stored in DuckDB) -> the result is held in a `gr.State`. Changing the retention measure or
the keep ratio shown only redraws figures from that state; only the Run button reaches a model.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS
from explorer.analysis.pruning.params import PruneImageParams, PruneTextParams
from explorer.analysis.pruning.text import (
    DEFAULT_LAYER,
    DEFAULT_STRATEGIES,
    MAX_CONTINUATION,
    TextPruningResult,
)
from explorer.api.pruning import (
    deviations,
    image_strategy_names,
    run_prune_image,
    run_prune_text,
    text_strategy_names,
)
from explorer.backends.embedded import EMBEDDED_LMS
from explorer.backends.images import sample_images
from explorer.errors import InputError
from explorer.plots import pruning as plots
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, ui_figure, user_errors

TITLE = "Pruning lab"
DEFAULT_RATIOS = ", ".join(f"{r:g}" for r in DEFAULT_KEEP_RATIOS)
EXAMPLE_PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"

EXPLAIN = """Every pruned input is **re-run through the model** and compared with the unpruned run.
**Text**: FrugalPrompt keeps the tokens with the largest |attribution| (any method of the attribution tab),
bottom-k keeps the smallest, self-information keeps the most surprising tokens under the same LM, random is a
seeded baseline; all of them prune the prompt *before* the LM, order preserved. FastV drops, *after layer K*,
the tokens that receive the least attention (the tokens really leave the sequence; kept tokens keep their
positions). Keep count = max(1, round(ratio × n)); the last prompt token is always kept.
**Image**: patches are dropped inside the ViT before block L (0 = before the first block).
Fidelity: text — KL of the next-token distribution, target probability/rank, greedy-continuation agreement and
MiniLM similarity, prefill time saved; image — embedding and patch cosine, saliency correlation / IoU."""


def parse_ratios(text: str) -> list[float]:
    """ "1, 0.5, .25" -> [1.0, 0.5, 0.25]; validation of the range happens in the API."""
    parts = [p.strip() for p in (text or "").replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise InputError(f"give at least one keep ratio in (0, 1], e.g. {DEFAULT_RATIOS}")
    try:
        return [float(p) for p in parts]
    except ValueError as exc:
        raise InputError(
            f"keep ratios must be numbers separated by commas (e.g. {DEFAULT_RATIOS}), got {text!r}"
        ) from exc


def deviations_markdown() -> str:
    lines = ["**Where we deviate from the papers**", ""]
    for kind, notes in deviations().items():
        for name, note in notes.items():
            lines.append(f"- *{kind}* `{name}`: {note}")
    return "\n".join(lines)


def summary_markdown(result: Any) -> str:
    if isinstance(result, TextPruningResult):
        ref = result.reference
        lines = [
            f"**Run** `{result.run_id}` · model `{result.model}` · {result.n_tokens} prompt tokens · "
            f"{len(result.strategies)} strategies × {len(result.keep_ratios)} ratios · FastV layer K = "
            f"{result.layer} · computed in {result.seconds:.1f} s",
            "",
            f"Unpruned next token **{ref['top_token']!r}**, target **{result.target['token']!r}**; "
            f"continuation: *{ref['continuation']!r}*",
        ]
        lines += [f"\n> {note}" for note in result.notes]
        return "\n".join(lines)
    gh, gw = result.grid
    lines = [
        f"**Run** `{result.run_id}` · model `{result.model}` · {gh}×{gw} patches · pruned before block "
        f"{result.layer} · unpruned pass {result.unpruned_seconds:.2f} s",
    ]
    lines += [f"\n> {reason}" for reason in result.skipped.values()]
    return "\n".join(lines)


def struck_prompts_html(result: TextPruningResult, keep_ratio: float) -> str:
    """One line per strategy: the prompt with the dropped tokens struck through, then its continuation."""
    rows = [
        "<table style='width:100%;font-size:0.9em'><tr><th>strategy</th><th>pruned prompt</th>"
        "<th>continuation</th></tr>"
    ]
    import html

    for name in result.strategies:
        row = result.row(name, keep_ratio)
        rows.append(
            f"<tr><td><code>{html.escape(name)}</code><br>{row.keep_count}/{result.n_tokens} tokens</td>"
            f"<td style='white-space:pre-wrap'>{plots.struck_prompt_html(result, name, keep_ratio)}</td>"
            f"<td style='white-space:pre-wrap'>{html.escape(row.continuation)}</td></tr>"
        )
    rows.append(
        f"<tr><td><b>unpruned</b></td><td style='white-space:pre-wrap'>{html.escape(''.join(result.tokens))}</td>"
        f"<td style='white-space:pre-wrap'>{html.escape(result.reference['continuation'])}</td></tr></table>"
    )
    return "".join(rows)


def build(ctx: UIContext) -> None:
    state = gr.State(None)
    samples = sample_images()
    text_choices = text_strategy_names()
    image_choices = image_strategy_names()
    mode = gr.Radio(["Text", "Image"], value="Text", label="What to prune", elem_id="pruning-mode")
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Column(visible=True) as text_inputs:
                prompt = gr.Textbox(label="Prompt", lines=3, value=EXAMPLE_PROMPT, elem_id="pruning-prompt")
                with gr.Row():
                    lm_name = gr.Dropdown(
                        choices=sorted(EMBEDDED_LMS),
                        value=ctx.settings.default_model,
                        allow_custom_value=True,
                        label="Language model (embedded name, hub id or local dir)",
                    )
                    target = gr.Textbox(label="Target token (default: the unpruned top-1)", value="")
                    continuation = gr.Number(
                        value=PruneTextParams().continuation_tokens,
                        precision=0,
                        minimum=0,
                        maximum=MAX_CONTINUATION,
                        label="Continuation tokens",
                    )
                text_strategies = gr.Dropdown(
                    choices=text_choices,
                    value=list(DEFAULT_STRATEGIES),
                    multiselect=True,
                    label="Text strategies (frugalprompt / bottom_k: one entry per attribution method)",
                    elem_id="pruning-text-strategies",
                )
            with gr.Column(visible=False) as image_inputs:
                with gr.Row():
                    image = gr.Image(
                        type="filepath",
                        sources=["upload", "clipboard"],
                        label="Image",
                        elem_id="pruning-image",
                    )
                    with gr.Column():
                        sample = gr.Dropdown(
                            choices=sorted(samples),
                            value=None,
                            label="…or a sample image (ships with the installed packages)",
                            elem_id="pruning-image-sample",
                        )
                        vision_model = gr.Textbox(
                            value=ctx.settings.default_vision_model, label="Vision model"
                        )
                image_strategies = gr.Dropdown(
                    choices=image_choices,
                    value=image_choices,
                    multiselect=True,
                    label="Image strategies",
                    elem_id="pruning-image-strategies",
                )
        with gr.Column(scale=2):
            ratios = gr.Textbox(
                value=DEFAULT_RATIOS,
                label="Keep ratios (comma-separated, each in (0, 1])",
                elem_id="pruning-ratios",
            )
            with gr.Row():
                layer = gr.Number(
                    value=DEFAULT_LAYER,
                    precision=0,
                    label="Layer (text: FastV's K; image: prune before block L)",
                )
                seed = gr.Number(value=0, precision=0, label="Seed (random strategy)")
            dtype = dtype_dropdown(ctx)
            run = gr.Button("Run pruning sweep", variant="primary")
    summary = gr.Markdown(elem_id="pruning-summary")
    with gr.Accordion("How it works, and where we deviate from the papers", open=False):
        gr.Markdown(EXPLAIN)
        gr.Markdown(deviations_markdown())

    with gr.Row():
        metric = gr.Dropdown(choices=list(plots.TEXT_METRICS), value="kl", label="Retention measure")
        shown_ratio = gr.Dropdown(choices=[], value=None, label="Keep ratio shown (prompts / patches)")
    retention_plot = gr.Plot(label="Retention curves", elem_id="pruning-retention")
    export_controls(state, "retention", "Export retention curves", ctx=ctx)

    with gr.Column(visible=True) as text_outputs:
        struck = gr.HTML(label="Pruned prompts and continuations")
        prompt_plot = gr.Plot(label="Pruned prompts", elem_id="pruning-prompts")
        export_controls(state, "pruned_prompt", "Export pruned prompts", ctx=ctx)
        outputs_plot = gr.Plot(label="Outputs side by side", elem_id="pruning-outputs")
        export_controls(state, "outputs", "Export outputs", ctx=ctx)
    with gr.Column(visible=False) as image_outputs:
        patches_plot = gr.Plot(label="Kept patches", elem_id="pruning-patches")
        export_controls(state, "kept_patches", "Export kept patches", ctx=ctx)
        saliency_plot = gr.Plot(label="Saliency before / after", elem_id="pruning-saliency")
        export_controls(state, "saliency", "Export saliency maps", ctx=ctx)

    def on_mode(mode_v: str) -> tuple[Any, ...]:
        is_text = mode_v == "Text"
        metrics = plots.TEXT_METRICS if is_text else plots.IMAGE_METRICS
        return (
            gr.Column(visible=is_text),
            gr.Column(visible=not is_text),
            gr.Number(value=PruneTextParams().layer if is_text else PruneImageParams().layer),
            gr.Dropdown(choices=list(metrics), value=next(iter(metrics))),
        )

    mode.change(on_mode, [mode], [text_inputs, image_inputs, layer, metric], api_visibility="private")

    def on_sample(sample_v: str | None) -> Any:
        """Show the chosen sample in the image box (it is then what the sweep prunes)."""
        return str(samples[sample_v]) if sample_v in samples else gr.skip()

    sample.change(on_sample, [sample], [image], api_visibility="private")

    @user_errors
    def on_run(
        mode_v: str,
        prompt_v: str,
        lm_v: str,
        target_v: str,
        continuation_v: float | None,
        text_strategies_v: list[str],
        image_v: str | None,
        sample_v: str | None,
        vision_v: str,
        image_strategies_v: list[str],
        ratios_v: str,
        layer_v: float | None,
        seed_v: float | None,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        report = progress_fn(progress)
        keep = parse_ratios(ratios_v)
        if layer_v is None:
            raise InputError("give a layer (an integer)")
        seed_i = int(seed_v or 0)
        result: Any
        if mode_v == "Text":
            if not text_strategies_v:
                raise InputError("choose at least one text strategy")
            result = run_prune_text(
                lm_v or ctx.settings.default_model,
                prompt_v,
                strategies=text_strategies_v,
                keep_ratios=keep,
                layer=int(layer_v),
                target=target_v or None,
                continuation_tokens=int(continuation_v if continuation_v is not None else 8),
                seed=seed_i,
                settings=ctx.settings,
                dtype=dtype_v or None,
                progress=report,
            )
        else:
            source = image_v or (str(samples[sample_v]) if sample_v in samples else None)
            if source is None:
                raise InputError("upload or paste an image, or choose a sample image")
            if not image_strategies_v:
                raise InputError("choose at least one image strategy")
            result = run_prune_image(
                source,
                model=vision_v or None,
                strategies=image_strategies_v,
                keep_ratios=keep,
                layer=int(layer_v),
                seed=seed_i,
                settings=ctx.settings,
                dtype=dtype_v or None,
                progress=report,
            )
        return render(result)

    def render(result: Any, metric_v: str | None = None, ratio_v: float | None = None) -> tuple[Any, ...]:
        is_text = result.kind == "prune_text"
        metrics = plots.TEXT_METRICS if is_text else plots.IMAGE_METRICS
        metric_v = metric_v if metric_v in metrics else next(iter(metrics))
        ratio_list = sorted({r.keep_ratio for r in result.rows}, reverse=True)
        shown = (
            float(ratio_v) if ratio_v is not None and ratio_v in ratio_list else plots.default_ratio(result)
        )
        text_figs: tuple[Any, ...] = (gr.skip(), gr.skip(), gr.skip())
        image_figs: tuple[Any, ...] = (gr.skip(), gr.skip())
        if is_text:
            text_figs = (
                struck_prompts_html(result, shown),
                ui_figure("pruned_prompt", plots.pruned_prompt_figure, result),
                ui_figure("outputs", plots.outputs_figure, result),
            )
        else:
            image_figs = (
                ui_figure("kept_patches", plots.kept_patches_figure, result, shown),
                (
                    ui_figure("saliency", plots.saliency_figure, result, shown)
                    if result.reference_saliency is not None
                    else None
                ),
            )
        return (
            result,
            summary_markdown(result),
            gr.Dropdown(choices=list(metrics), value=metric_v),
            gr.Dropdown(choices=ratio_list, value=shown),
            ui_figure("retention", plots.retention_figure, result, metric_v),
            gr.Column(visible=is_text),
            gr.Column(visible=not is_text),
            *text_figs,
            *image_figs,
        )

    outputs = [
        state,
        summary,
        metric,
        shown_ratio,
        retention_plot,
        text_outputs,
        image_outputs,
        struck,
        prompt_plot,
        outputs_plot,
        patches_plot,
        saliency_plot,
    ]
    inputs = [
        mode,
        prompt,
        lm_name,
        target,
        continuation,
        text_strategies,
        image,
        sample,
        vision_model,
        image_strategies,
        ratios,
        layer,
        seed,
        dtype,
    ]
    run.click(on_run, inputs=inputs, outputs=outputs, api_name="prune")

    @user_errors
    def on_view(result: Any, metric_v: str | None, ratio_v: float | None) -> tuple[Any, ...]:
        if result is None:
            return tuple(gr.skip() for _ in outputs)
        return render(result, metric_v, ratio_v)

    metric.input(on_view, [state, metric, shown_ratio], outputs, api_visibility="private")
    shown_ratio.input(on_view, [state, metric, shown_ratio], outputs, api_visibility="private")
