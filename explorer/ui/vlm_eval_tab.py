"""The "VLM eval" tab: accuracy, POPE and CHAIR over an evaluation set, and VISTA steering."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, ui_figure, user_errors

TITLE = "VLM eval"
MAX_UI_SCENES = 500

EXPLAIN = """**Evaluate a vision-language model over a data set.** Built-in sets come from the seeded scene
generator (scenes disjoint from the demo VLM's training and held-out scenes): *caption* (scored by CHAIR,
Rohrbach et al. 2018: CHAIR_i = hallucinated object mentions / all mentions, CHAIR_s = captions with a
hallucinated object / all captions; objects are (colour, shape) pairs found through a synonym list), *pope*
(yes/no probes, Li et al. 2023: every present object, and as many absent ones drawn at random, from the most
frequent objects of the set (*popular*) or from those that co-occur most with the scene's objects
(*adversarial*)), *qa* (count, colour, position). Or your own JSONL / CSV / Parquet file of
`image, question, answer` rows: type its path on the server into the set box (image paths are relative to
the file), or upload a file whose image paths are absolute. Every number has a seeded 95% bootstrap interval.
*Deviations:* POPE questions use the demo VLM's training format; k = the scene's 1-3 objects per side;
popular / adversarial statistics of uniformly drawn scenes are nearly flat."""

VISTA_EXPLAIN = """**VISTA** (Li et al. 2025, "The Hidden Life of Tokens"). *VSV*: the residual difference between
the prompt with the image and without it (last position, every layer), added during generation with strength λ
(*norm*: the released code's norm-preserving push; *add*: residual + λ·VSV). *SLA*: next-token logits mixed
with the mean logit lens of an early-layer window, α·early + (1−α)·final (paper: α = 0.3, layers 26–31 of 32).
*Deviations:* the VSV edits block outputs (released code: MLP outputs); the single-example PCA is skipped;
SLA applies the final norm before the LM head (released code: none)."""


def _vista_controls() -> tuple[Any, ...]:
    with gr.Row():
        vsv = gr.Checkbox(value=False, label="Visual steering vector (VSV)")
        lam = gr.Number(value=0.1, label="λ (paper: 0.01 POPE, 0.17 CHAIR)")
        form = gr.Radio(["norm", "add"], value="norm", label="VSV form")
        layers = gr.Textbox(value="all", label="VSV layers (all, 10-20, 3,5,7)")
    with gr.Row():
        sla = gr.Checkbox(value=False, label="Self-logits augmentation (SLA)")
        alpha = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="SLA α")
        window = gr.Textbox(value="", label="SLA window FIRST-LAST (empty: the paper's depth)")
    return vsv, lam, form, layers, sla, alpha, window


def vista_from_controls(
    vsv: bool, lam: float, form: str, layers: str, sla: bool, alpha: float, window: str
) -> Any:
    from explorer.errors import InputError
    from explorer.vlm.vista import VistaParams, parse_layers

    span = parse_layers(window) if (window or "").strip() else None
    if span is not None and len(span) < 1:
        raise InputError("SLA window: give FIRST-LAST")
    params = VistaParams(
        vsv=bool(vsv),
        lam=float(lam),
        vsv_form=str(form),
        vsv_layers=parse_layers(layers),
        sla=bool(sla),
        sla_alpha=float(alpha),
        sla_window=(min(span), max(span)) if span else None,
    )
    params.validate()
    return params


def metric_rows(r: Any) -> list[list[Any]]:
    """condition, group, metric, value, 95% interval, n — one row per metric."""
    return [
        [
            m["condition"],
            m["group"],
            m["metric"],
            round(m["value"], 4),
            f"[{m['low']:.3f}, {m['high']:.3f}]",
            m["n"],
        ]
        for m in r.metrics
    ]


def _summary(r: Any) -> str:
    n = len({s["sample_id"] for s in r.samples})
    parts = [f"**Run {r.run_id}** · {r.model} · {r.dataset} · {n} samples ({r.n_prompts} distinct prompts)"]
    for condition, secs in r.seconds.items():
        parts.append(f"{condition}: {secs:.1f} s ({secs / max(1, r.n_prompts) * 1000:.0f} ms per prompt)")
    if r.latency_ratio:
        parts.append(f"VISTA latency ratio ×{r.latency_ratio:.2f} (paper: ×1.27)")
    return " · ".join(parts)


def build(ctx: UIContext) -> None:
    from explorer.ui.lens_tab import vlm_examples
    from explorer.vlm.eval_sets import BUILTIN_SETS

    state = gr.State(None)
    gr.Markdown(EXPLAIN)
    with gr.Row():
        dataset = gr.Dropdown(
            list(BUILTIN_SETS), value="pope", label="Evaluation set", allow_custom_value=False
        )
        upload = gr.File(
            label="…or your own file (.jsonl / .csv / .parquet)", file_types=[".jsonl", ".csv", ".parquet"]
        )
        n_scenes = gr.Slider(1, MAX_UI_SCENES, value=20, step=1, label="Scenes (built-in sets)")
    with gr.Row():
        model = gr.Dropdown(choices=list(EMBEDDED_VLMS), value=TINY_VLM, allow_custom_value=True, label="VLM")
        batch = gr.Slider(1, 32, value=8, step=1, label="Batch size")
        seed = gr.Number(value=0, precision=0, label="Seed (POPE random split, bootstrap)")
        dtype = dtype_dropdown(ctx)  # for every section of this tab
    gr.Markdown(VISTA_EXPLAIN)
    controls = _vista_controls()
    run = gr.Button("Evaluate", variant="primary")
    summary = gr.Markdown(elem_id="eval-summary")
    table = gr.Dataframe(
        headers=["condition", "group", "metric", "value", "95% interval", "n"],
        interactive=False,
        elem_id="eval-metrics",
    )
    metrics_plot = gr.Plot(label="Metrics with 95% intervals", elem_id="eval-metrics-plot")
    export_controls(state, "eval_metrics", "Export metrics", ctx=ctx)
    hallucination_plot = gr.Plot(label="POPE and CHAIR", elem_id="eval-hallucination-plot")
    export_controls(state, "eval_hallucination", "Export hallucination", ctx=ctx)

    @user_errors
    def evaluate(
        dataset_v: str,
        upload_v: Any,
        n_v: int,
        model_v: str,
        batch_v: int,
        seed_v: float,
        dtype_v: str,
        *vista_v: Any,
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        from explorer.api.vlm import vlm_eval
        from explorer.plots.vlm_eval import eval_hallucination, eval_metrics

        source = str(getattr(upload_v, "name", upload_v)) if upload_v else dataset_v
        r = vlm_eval(
            model_v or TINY_VLM,
            source,
            n_scenes=int(n_v),
            seed=int(seed_v or 0),
            batch_size=int(batch_v),
            vista=vista_from_controls(*vista_v),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        return (
            r,
            _summary(r),
            metric_rows(r),
            ui_figure("eval_metrics", eval_metrics, r, run_id=r.run_id),
            ui_figure("eval_hallucination", eval_hallucination, r, run_id=r.run_id),
        )

    run.click(
        evaluate,
        inputs=[dataset, upload, n_scenes, model, batch, seed, dtype, *controls],
        outputs=[state, summary, table, metrics_plot, hallucination_plot],
        api_name="vlm_eval",
    )

    gr.Markdown("### One image: without and with VISTA, side by side")
    with gr.Row():
        image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"], height=220)
        with gr.Column():
            question = gr.Textbox(label="Question", value="Describe the image.")
            max_new = gr.Slider(1, 64, value=24, step=1, label="Tokens to generate")
            compare_btn = gr.Button("Generate both", variant="primary")
    gr.Examples([[row[0], "Describe the image."] for row in vlm_examples(ctx)], inputs=[image, question])
    with gr.Row():
        plain_out = gr.Textbox(label="Without VISTA", elem_id="vista-plain")
        steered_out = gr.Textbox(label="With VISTA", elem_id="vista-steered")
    timing = gr.Markdown(elem_id="vista-timing")

    @user_errors
    def compare(
        image_v: Any, question_v: str, n_v: int, model_v: str, dtype_v: str, *vista_v: Any
    ) -> tuple[str, str, str]:
        from explorer.api.vlm import vista_compare
        from explorer.errors import InputError

        params = vista_from_controls(*vista_v)
        if not params.enabled:
            raise InputError("switch on the VSV and/or SLA above first")
        out = vista_compare(
            model_v or TINY_VLM,
            question_v,
            image_v,
            vista=params,
            max_new_tokens=int(n_v),
            settings=ctx.settings,
            dtype=dtype_v or None,
        )
        return (
            out["plain"]["text"],
            out["vista"]["text"],
            f"{out['plain']['seconds']:.2f} s without, {out['vista']['seconds']:.2f} s with VISTA "
            f"(×{out['latency_ratio']:.2f})",
        )

    compare_btn.click(
        compare,
        inputs=[image, question, max_new, model, dtype, *controls],
        outputs=[plain_out, steered_out, timing],
        api_name="vista_compare",
    )

    _patterns_section(ctx, model, dtype)
    from explorer.ui import vlm_prune_section

    vlm_prune_section.build(ctx)


PATTERNS_EXPLAIN = """### VISTA's three patterns over a set of scenes
"The Hidden Life of Tokens" (Li et al. 2025) reads the logit lens at every layer and generation step while the
model captions images and tracks each word's rank (1 = top). Words are the scenes' colour and shape names:
*decoded genuine* (named and in the scene), *hidden genuine* (in the scene, never named), *hallucinated* (named,
not in the scene) and *absent* (neither; our control). **(1) Visual information loss**: genuine words sink and
hallucinated words surface from the early to the late third of the caption. **(2) Early excitation**: object
words peak before the last layer (layer ≥ 1). **(3) Hidden genuine information**: unnamed scene words stay in
the top k. Every number has a 95% bootstrap interval over scenes, and each pattern gets a plain verdict.
*Deviations:* categories come from the scene generator's ground truth and CHAIR's synonym list (paper: GPT-4o);
pattern 2 also reports the emitted token's peak layer; the absent control is ours."""


def pattern_verdicts(r: Any) -> str:
    s = r.summary
    return "\n".join(
        [
            f"**Run {r.run_id}** · {r.model} · {len(r.captions)} scene{'' if len(r.captions) == 1 else 's'} · "
            f"{r.seconds:.0f} s",
            f"1. **Visual information loss** {s['information_loss']['verdict']}",
            f"2. **Early excitation** {s['early_excitation']['verdict']}",
            f"3. **Hidden genuine information** {s['hidden_genuine']['verdict']}",
        ]
    )


def _patterns_section(ctx: UIContext, model: Any, dtype: Any) -> None:
    state = gr.State(None)
    gr.Markdown(PATTERNS_EXPLAIN)
    with gr.Row():
        n_scenes = gr.Slider(1, MAX_UI_SCENES, value=20, step=1, label="Caption scenes")
        top_k = gr.Slider(1, 1000, value=100, step=1, label="k (pattern 3)")
        run = gr.Button("Measure the patterns", variant="primary")
    verdicts = gr.Markdown(elem_id="vista-patterns-verdicts")
    plots = []
    for name, label in (
        ("information_loss", "Pattern 1: visual information loss"),
        ("early_excitation", "Pattern 2: early excitation"),
        ("layer_ranks", "Ranks across layers"),
        ("hidden_genuine", "Pattern 3: hidden genuine information"),
    ):
        plots.append(gr.Plot(label=label, elem_id=f"vista-{name.replace('_', '-')}"))
        export_controls(state, name, f"Export {label.split(':')[0].lower()}", ctx=ctx)

    @user_errors
    def measure(
        n_v: int,
        k_v: int,
        model_v: str,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        from explorer.api.vlm import vista_patterns
        from explorer.plots import vista_patterns as vp

        r = vista_patterns(
            model_v or TINY_VLM,
            n_scenes=int(n_v),
            top_k=int(k_v),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        figures = [
            ui_figure(name, getattr(vp, name), r, run_id=r.run_id)
            for name in ("information_loss", "early_excitation", "layer_ranks", "hidden_genuine")
        ]
        return (r, pattern_verdicts(r), *figures)

    run.click(
        measure,
        inputs=[n_scenes, top_k, model, dtype],
        outputs=[state, verdicts, *plots],
        api_name="vista_patterns",
    )
