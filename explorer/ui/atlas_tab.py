"""The "Token atlas" tab: maps of token states (and, as sections, the vocabulary's health, the
LLM-Microscope measures and the tokenizer inspector). Each section lives in its own module."""

from __future__ import annotations

import importlib

import gradio as gr

from explorer.ui.common import UIContext

TITLE = "Token atlas"
SECTIONS = (
    ("atlas_map", "Map of token states"),
    ("atlas_vocab", "Vocabulary health"),
    ("atlas_microscope", "LLM-Microscope"),
    ("atlas_tokenizer", "Tokenizer inspector"),
)


def build(ctx: UIContext) -> None:
    with gr.Tabs():
        for module_name, title in SECTIONS:
            try:
                module = importlib.import_module(f"explorer.ui.{module_name}")
            except ModuleNotFoundError as exc:
                if exc.name == f"explorer.ui.{module_name}":
                    continue
                raise
            with gr.Tab(title, id=module_name):
                module.build(ctx)
