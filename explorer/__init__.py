"""Token Explorer: what happens to tokens inside transformer language and vision models.

The public Python API (the CLI and the Gradio UI call the same functions)::

    import explorer
    lm = explorer.load_model()                         # embedded SmolLM2-135M
    r = explorer.logit_lens(lm, "The capital of France is", targets=[" Paris"])
    r.to_dict()                                        # exactly the CLI's JSON
    explorer.list_runs(); explorer.load_run(r.run_id)  # the DuckDB run store

Importing this package never imports gradio.
"""

from __future__ import annotations

from typing import Any

from explorer.api.lens import run_logit_lens as logit_lens
from explorer.api.runner import list_runs, load_run, open_store
from explorer.backends.architectures import ArchitectureSpec, register_architecture
from explorer.backends.language import LanguageModel, load_model, wrap_model
from explorer.config import Settings
from explorer.errors import InputError, ModelNotAvailableError, UnsupportedArchitectureError
from explorer.store import Store

__all__ = [
    "ArchitectureSpec",
    "InputError",
    "LanguageModel",
    "ModelNotAvailableError",
    "Settings",
    "Store",
    "UnsupportedArchitectureError",
    "list_runs",
    "load_model",
    "load_run",
    "logit_lens",
    "open_store",
    "register_architecture",
    "wrap_model",
]

# Entry points that live in their own modules, loaded on first use (keeps `import explorer` light):
# public name -> "module" (same name there) or "module:function" (the API layer names its functions
# `run_<analysis>` where the engine has a function of the public name, so no two layers share a name).
_LAZY = {
    "attribute": "explorer.api.attribution",
    "attribute_generation": "explorer.api.attribution",
    "attribute_image": "explorer.api.attribution",
    "attention": "explorer.api.attention",
    "attention_image": "explorer.api.attention",
    "prune": "explorer.api.pruning",
    "prune_text": "explorer.api.pruning:run_prune_text",
    "prune_image": "explorer.api.pruning:run_prune_image",
    "load_vision_model": "explorer.backends.vision",
    "visual_tokens": "explorer.api.vlm:run_visual_tokens",
    "vlm_eval": "explorer.api.vlm",
    "vlm_prune": "explorer.api.vlm",
    "vista_compare": "explorer.api.vlm",
    "latent_neighbours": "explorer.api.vlm:run_latent_neighbours",
    "text_bank": "explorer.api.vlm",
    "vista_patterns": "explorer.api.vlm",
    "sweep": "explorer.api.sweep",
    "list_sweeps": "explorer.api.sweep",
    "token_map": "explorer.api.atlas:run_token_map",
    "map_scores": "explorer.api.atlas",
    "vocab_health": "explorer.api.atlas:run_vocab_health",
    "microscope": "explorer.api.atlas:run_microscope",
    "inspect_tokenizers": "explorer.api.atlas",
    "export_figure": "explorer.api.export",
    "export_panel": "explorer.api.export",
    "list_figures": "explorer.api.export",
    "compare": "explorer.compare",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'explorer' has no attribute {name!r}")
    import importlib

    module, _, attr = module.partition(":")
    return getattr(importlib.import_module(module), attr or name)
