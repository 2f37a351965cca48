"""The "Visual tokens" tab: sink / dead / alive visual tokens, where text tokens look in the image,
and the nearest contextual text tokens of each visual token (LatentLens)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM
from explorer.ui.common import UIContext, dtype_dropdown, export_controls, progress_fn, user_errors
from explorer.vlm.latent import LatentParams

TITLE = "Visual tokens"

EXPLAIN = """**Visual tokens inside the language model** (EmbedLens, Fan et al. 2026, with operational
definitions). At every LM block each visual token is a **sink** (its input norm is > K× the median
visual-token norm *and* text tokens give it > K'× its uniform share of their image attention), **dead**
(dropping it from the input changes the greedy answer's log-probability by < ε nats *and* the answering
position's logits by < ε' relative L2; one ablation per token, batched) or **alive**.
*Deviations from the paper:* the paper clusters tokens at the LM input; we use these thresholds instead,
and "dead" is an input-level property shown at every block. Text → image attention: one text query
(prompt text after the image, or a generated token) to every patch, per block, for one head, the mean
over heads, or rolled out (0.5·mean + 0.5·I multiplied through the blocks, Abnar & Zuidema 2020)."""


LATENT_EXPLAIN = """**Nearest text tokens (LatentLens, Krojer et al. 2026).** Every token of a text corpus that
ships with the app (scene captions + ~2,400 general sentences) is run through the VLM's language model
once, and its hidden state *in context* is kept (the *text bank*, built on first use, then cached). Each
visual token's hidden state at a layer is compared with the bank by **cosine similarity**; each cell
shows its nearest text token, hover lists the k nearest with similarity, text layer and context.
*Same layer* compares with text at the same layer; *all text layers* ranks every stored text layer
together, as the paper does. *Deviations from the paper:* a small corpus (the paper: 117k sentences;
here about 500 distinct tokens, so many patches have no good match), float16 vectors, a fixed set of
stored layers (the paper's grid 1, 2, 4, 8, 16, 24, n-2, n-1 plus n)."""


def _latent_summary(r: Any) -> str:
    b = r.bank
    common = {row["layer"]: row["top1"][:4] for row in r.top_tokens()}
    step = max(1, len(r.layers) // 4)
    shown = " · ".join(
        f"layer {layer}: " + ", ".join(f"`{t}`×{n}" for t, n in common[layer]) for layer in r.layers[::step]
    )
    return (
        f"**Run {r.run_id}** · {r.model} · {r.n_image} visual tokens · text bank: {b['n_entries']} contextual "
        f"tokens from {b['n_sentences']} sentences, layers {b['layers']} (built in {b['seconds']:.0f} s) · "
        f"{r.seconds:.1f} s  \nMost frequent nearest tokens: {shown}  \n*Deviations:* "
        + "; ".join(r.deviations)
    )


def _summary(r: Any) -> str:
    counts = r.counts()
    first, last = counts[0], counts[-1]
    p = r.params
    return (
        f"**Run {r.run_id}** · {r.model} · {r.n_image} visual tokens · answer: `{''.join(r.answer)}` · "
        f"{r.seconds:.1f} s  \nBlock 1: {first['alive']} alive, {first['dead']} dead, {first['sink']} sink · "
        f"block {last['layer']}: {last['alive']} alive, {last['dead']} dead, {last['sink']} sink  \n"
        f"Thresholds: sink norm > {p['sink_norm_k']}× median and attention > {p['sink_share_k']}× uniform; "
        f"dead |Δ log p| < {p['dead_logprob_eps']} and Δ output < {p['dead_hidden_eps']}"
    )


def build(ctx: UIContext) -> None:
    from explorer.ui.lens_tab import vlm_examples

    state = gr.State(None)
    with gr.Row():
        with gr.Column(scale=2):
            image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"], height=220)
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Question about the image", lines=2, value="What is in the picture?")
            model = gr.Dropdown(
                choices=list(EMBEDDED_VLMS),
                value=TINY_VLM,
                allow_custom_value=True,
                label="Vision-language model",
            )
            dtype = dtype_dropdown(ctx)
            with gr.Row():
                norm_k = gr.Number(value=4.0, label="Sink: norm > K × median", minimum=1.01)
                share_k = gr.Number(value=2.0, label="Sink: attention > K' × uniform", minimum=0.01)
            with gr.Row():
                eps_lp = gr.Number(value=0.05, label="Dead: |Δ log p(answer)| < ε", minimum=0)
                eps_out = gr.Number(value=0.02, label="Dead: Δ output < ε'", minimum=0)
                answer_tokens = gr.Slider(1, 8, value=3, step=1, label="Answer tokens scored")
            run = gr.Button("Analyse visual tokens", variant="primary")
    gr.Examples(
        [[row[0], row[1]] for row in vlm_examples(ctx)], inputs=[image, prompt], label="Synthetic scenes"
    )
    summary = gr.Markdown()
    gr.Markdown(EXPLAIN)
    categories = gr.Plot(label="Sink / dead / alive on the image", elem_id="vt-categories")
    export_controls(state, "token_categories", "Export categories", ctx=ctx)
    counts = gr.Plot(label="Counts per block", elem_id="vt-counts")
    export_controls(state, "category_counts", "Export counts", ctx=ctx)
    with gr.Row():
        query = gr.Dropdown(choices=[], label="Text query (position · token)")
        view = gr.Radio(
            [("mean over heads", "mean"), ("one head", "head"), ("rollout", "rollout")],
            value="mean",
            label="View",
        )
        head = gr.Slider(0, 1, value=0, step=1, label="Head (for 'one head')")
    attention = gr.Plot(label="Text → image attention", elem_id="vt-attention")
    export_controls(state, "text_to_image_attention", "Export attention", ctx=ctx)
    shares = gr.Plot(label="Attention shares", elem_id="vt-shares")
    export_controls(state, "attention_shares", "Export shares", ctx=ctx)
    gr.Markdown(LATENT_EXPLAIN)
    latent_state = gr.State(None)
    with gr.Row():
        latent_match = gr.Radio(
            [("same layer", "same"), ("all text layers (paper)", "all")],
            value=LatentParams().match,
            label="Text layers searched",
        )
        latent_k = gr.Slider(1, 10, value=LatentParams().k, step=1, label="Neighbours per patch (k)")
        latent_run = gr.Button("Find nearest text tokens", variant="secondary")
    latent_summary = gr.Markdown()
    latent_plot = gr.Plot(label="Nearest contextual text token per patch", elem_id="vt-latent")
    export_controls(latent_state, "latent_neighbours", "Export neighbours", ctx=ctx)

    @user_errors
    def analyse(
        image_v: Any,
        prompt_v: str,
        model_v: str,
        nk: float,
        sk: float,
        elp: float,
        eout: float,
        n_ans: int,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        from explorer.api.vlm import run_visual_tokens
        from explorer.plots.vlm_tokens import (
            attention_shares,
            category_counts,
            text_to_image_attention,
            token_categories,
        )
        from explorer.vlm.tokens import TokenParams

        params = TokenParams(
            sink_norm_k=float(nk),
            sink_share_k=float(sk),
            dead_logprob_eps=float(elp),
            dead_hidden_eps=float(eout),
            answer_tokens=int(n_ans),
        )
        r = run_visual_tokens(
            model_v or TINY_VLM,
            prompt_v,
            image_v,
            params=params,
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        choices = [(f"{q} · {r.tokens[q]!r}", q) for q in r.query_positions]
        return (
            r,
            _summary(r),
            token_categories(r),
            category_counts(r),
            gr.Dropdown(choices=choices, value=r.query_positions[-1]),
            gr.Slider(0, r.n_heads - 1, value=0, step=1),
            text_to_image_attention(r),
            attention_shares(r),
        )

    run.click(
        analyse,
        inputs=[image, prompt, model, norm_k, share_k, eps_lp, eps_out, answer_tokens, dtype],
        outputs=[state, summary, categories, counts, query, head, attention, shares],
    )

    @user_errors
    def redraw(r: Any, q: Any, v: str, h: int) -> Any:
        from explorer.plots.vlm_tokens import text_to_image_attention

        if r is None:
            return None
        return text_to_image_attention(r, query=None if q is None else int(q), view=v, head=int(h))

    for control in (query, view, head):
        control.change(redraw, [state, query, view, head], [attention], api_visibility="private")

    @user_errors
    def find_neighbours(
        image_v: Any,
        prompt_v: str,
        model_v: str,
        match_v: str,
        k_v: int,
        dtype_v: str = "auto",
        progress: gr.Progress = gr.Progress(),  # noqa: B008
    ) -> tuple[Any, ...]:
        from explorer.api.vlm import run_latent_neighbours
        from explorer.plots.vlm_latent import latent_neighbours_overlay

        r = run_latent_neighbours(
            model_v or TINY_VLM,
            prompt_v,
            image_v,
            params=LatentParams(k=int(k_v), match=match_v or LatentParams().match),
            settings=ctx.settings,
            dtype=dtype_v or None,
            progress=progress_fn(progress),
        )
        return r, _latent_summary(r), latent_neighbours_overlay(r)

    latent_run.click(
        find_neighbours,
        inputs=[image, prompt, model, latent_match, latent_k, dtype],
        outputs=[latent_state, latent_summary, latent_plot],
        api_name="latent_neighbours",
    )
