"""The "Visual-token pruning" section of the VLM eval tab: strategies x keep ratios, judged by answers."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, ui_figure, user_errors

MAX_UI_SCENES = 200


def explain() -> str:
    """The section's header: what is measured, and every strategy's paper and deviations (from the registry)."""
    from explorer.analysis.pruning.visual import NOT_IMPLEMENTED, PAPERS, VISUAL_STRATEGIES

    lines = [
        "**Visual-token pruning inside the VLM, judged by answers.** Each strategy keeps a share of the visual "
        "tokens the LM receives (before the LM, or cut inside it after layer K with positions kept, as FastV "
        "does); every question of the set is answered greedily and scored like *Evaluate* above, plus the "
        "agreement with the unpruned answers. Costs: prefill FLOPs of the LM blocks (full length before a cut) "
        "and measured prefill time with the strategy's scoring charged, both over the unpruned model. 100% is "
        "the unpruned model. Projector VLMs only (tiny-vlm).",
        "",
    ]
    for name, strategy in VISUAL_STRATEGIES.items():
        lines.append(f"- **{strategy.label}** (`{name}`): {PAPERS[name]} *Deviation:* {strategy.deviation}")
    for name, why in NOT_IMPLEMENTED.items():
        lines.append(f"- **{name}**: {why}")
    return "\n".join(lines)


def cost_rows(r: Any) -> list[list[Any]]:
    """strategy, % kept, visual tokens kept, accuracy [interval], agreement, FLOPs ×, time ×, scoring ms."""
    rows = []
    for c in r.costs:
        acc = r.metric(c["strategy"], c["keep_ratio"], "all", "accuracy") or {}
        agree = r.metric(c["strategy"], c["keep_ratio"], "agreement", "rate") or {}
        rows.append(
            [
                c["strategy"],
                round(100 * c["keep_ratio"], 1),
                round(c["kept"], 1),
                f"{acc.get('value', float('nan')):.3f} [{acc.get('low', float('nan')):.3f}, "
                f"{acc.get('high', float('nan')):.3f}]",
                round(agree.get("value", float("nan")), 3),
                round(c["flops_ratio"], 3),
                round(c["time_ratio"], 2),
                round(1000 * c["scoring_seconds"], 2),
            ]
        )
    return rows


def build(ctx: UIContext) -> None:
    from explorer.analysis.pruning.visual import VISUAL_STRATEGIES
    from explorer.vlm.eval_sets import BUILTIN_SETS

    state = gr.State(None)
    gr.Markdown("### Visual-token pruning, judged by answers")
    gr.Markdown(explain(), elem_id="prune-explain")
    with gr.Row():
        dataset = gr.Dropdown(list(BUILTIN_SETS), value="pope", label="Evaluation set")
        n_scenes = gr.Slider(1, MAX_UI_SCENES, value=10, step=1, label="Scenes")
        model = gr.Dropdown(choices=list(EMBEDDED_VLMS), value=TINY_VLM, allow_custom_value=True, label="VLM")
        dtype = dtype_dropdown(ctx)
    with gr.Row():
        strategies = gr.CheckboxGroup(
            list(VISUAL_STRATEGIES), value=list(VISUAL_STRATEGIES), label="Strategies"
        )
        keep = gr.Textbox(value="1,0.5,0.25,0.1,0.05", label="Keep ratios (share of visual tokens)")
        seed = gr.Number(value=0, precision=0, label="Seed")
    run = gr.Button("Prune and evaluate", variant="primary")
    summary = gr.Markdown(elem_id="prune-summary")
    table = gr.Dataframe(
        headers=[
            "strategy",
            "% kept",
            "tokens kept",
            "accuracy [95%]",
            "agreement",
            "FLOPs ×",
            "time ×",
            "scoring ms",
        ],
        interactive=False,
        elem_id="prune-costs",
    )
    retention_plot = gr.Plot(label="Retention curves", elem_id="prune-retention-plot")
    export_controls(state, "retention", "Export retention curves", ctx=ctx)
    agreement_plot = gr.Plot(label="Agreement with the unpruned model", elem_id="prune-agreement-plot")
    cost_plot = gr.Plot(label="Prefill cost", elem_id="prune-cost-plot")

    @user_errors
    def evaluate(
        dataset_v: str,
        n_v: int,
        model_v: str,
        strategies_v: list[str],
        keep_v: str,
        seed_v: float,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        from explorer.analysis.pruning.common import parse_keep_ratios
        from explorer.api.vlm import vlm_prune
        from explorer.errors import InputError
        from explorer.plots.vlm_prune import agreement, prefill_cost, retention

        if not strategies_v:
            raise InputError("choose at least one strategy")
        r = vlm_prune(
            model_v or TINY_VLM,
            dataset_v,
            n_scenes=int(n_v),
            strategies=list(strategies_v),
            keep_ratios=parse_keep_ratios(keep_v),
            seed=int(seed_v or 0),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        head = (
            f"**Run {r.run_id}** · {r.model} · {r.dataset} · {r.n_prompts} prompts · {r.n_visual} visual tokens · "
            f"unpruned prefill {1000 * r.reference_seconds:.1f} ms per prompt"
        )
        return (
            r,
            head,
            cost_rows(r),
            ui_figure("retention", retention, r, run_id=r.run_id),
            ui_figure("agreement", agreement, r, run_id=r.run_id),
            ui_figure("prefill_cost", prefill_cost, r, run_id=r.run_id),
        )

    run.click(
        evaluate,
        inputs=[dataset, n_scenes, model, strategies, keep, seed, dtype],
        outputs=[state, summary, table, retention_plot, agreement_plot, cost_plot],
        api_name="vlm_prune",
    )
