"""Token atlas, section "Tokenizer inspector": how a text splits under each tokenizer, side by side."""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from explorer.analysis.atlas.tokenizers import EMBEDDED_TOKENIZERS, TokenizerResult
from explorer.api import atlas as atlas_api
from explorer.plots import atlas as atlas_plots
from explorer.ui.common import UIContext, export_controls, user_errors

EXAMPLE = "Tokenizers split “naïve café” differently: 1234567 tokens, emojis 🦜 and code `x += 1`."
COUNT_HEADERS = ["tokenizer", "kind", "tokens", "premium", "chars/token", "byte fallback", "partial UTF-8", "special", "chat template tokens"]  # fmt: skip


def tokens_html(r: TokenizerResult) -> str:
    """Each tokenizer's tokens as chips (id on hover); special and byte tokens marked."""
    parts = []
    for t in r.tokenizers:
        chips = []
        for k in range(t.n_tokens):
            style = "background:#e8eef7"
            if t.special[k]:
                style = "background:#222;color:#fff"
            elif t.byte_fallback[k] or t.partial_utf8[k]:
                style = "background:#f8d0d0"
            text = html.escape(t.decoded[k]).replace(" ", "␣").replace("\n", "↵") or "∅"
            chips.append(
                f'<span title="id {t.ids[k]} · piece {html.escape(t.pieces[k])}" '
                f'style="{style};border-radius:4px;padding:1px 4px;margin:1px;display:inline-block;'
                f'font-family:monospace">{text}</span>'
            )
        chat = ""
        if t.chat_text is not None:
            chat = (
                f"<details><summary>chat template applied ({t.chat_tokens} tokens)</summary>"
                f"<pre style='white-space:pre-wrap'>{html.escape(t.chat_text)}</pre></details>"
            )
        parts.append(
            f"<div><b>{html.escape(t.name)}</b> · {html.escape(t.kind)} · {t.n_tokens} tokens<br>{''.join(chips)}{chat}</div>"
        )
    return "<div style='display:flex;flex-direction:column;gap:10px'>" + "".join(parts) + "</div>"


def counts_rows(r: TokenizerResult) -> list[list[Any]]:
    return [
        [
            c["tokenizer"],
            c["kind"],
            c["tokens"],
            round(c["premium"], 3),
            round(c["chars_per_token"], 2),
            c["byte_fallback"],
            c["partial_utf8"],
            c["special"],
            c["chat_template_tokens"],
        ]  # fmt: skip
        for c in r.counts()
    ]


def build(ctx: UIContext) -> None:
    state = gr.State(None)
    with gr.Row():
        text = gr.Textbox(label="Text", lines=3, value=EXAMPLE, scale=3)
        with gr.Column(scale=2):
            names = gr.Dropdown(
                choices=list(EMBEDDED_TOKENIZERS),
                value=list(EMBEDDED_TOKENIZERS),
                multiselect=True,
                allow_custom_value=True,
                label="Tokenizers (embedded names, hub ids or local dirs; the first is the premium's reference)",
            )
            run = gr.Button("Tokenize", variant="primary")
    counts = gr.Dataframe(headers=COUNT_HEADERS, label="Counts and token premium", interactive=False)
    chips = gr.HTML()
    boundaries = gr.Plot(
        label="Boundaries", elem_id="atlas-tokenizer-boundaries", elem_classes=["scroll-plot"]
    )
    export_controls(state, "boundaries", "Export boundaries", ctx=ctx)

    @user_errors
    def on_run(text_v: str, names_v: list[str] | None) -> tuple[Any, ...]:
        result = atlas_api.inspect_tokenizers(text_v, list(names_v or []), settings=ctx.settings)
        return result, counts_rows(result), tokens_html(result), atlas_plots.tokenizer_boundaries(result)

    run.click(on_run, [text, names], [state, counts, chips, boundaries], api_name="inspect_tokenizers")
