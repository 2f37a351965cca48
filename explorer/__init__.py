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

from explorer.api import list_runs, load_run, logit_lens, open_store
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

# Entry points that live in their own modules, loaded on first use (keeps `import explorer` light).
_LAZY = {
    "attribute": "explorer.api.attribution",
    "attribute_generation": "explorer.api.attribution",
    "attribute_image": "explorer.api.attribution",
    "attention": "explorer.api.attention",
    "attention_image": "explorer.api.attention",
    "prune": "explorer.api.pruning",
    "prune_text": "explorer.api.pruning",
    "prune_image": "explorer.api.pruning",
    "load_vision_model": "explorer.backends.vision",
    "visual_tokens": "explorer.api.vlm",
    "vlm_eval": "explorer.api.vlm",
    "vista_compare": "explorer.api.vlm",
    "latent_neighbours": "explorer.api.vlm",
    "text_bank": "explorer.api.vlm",
    "token_map": "explorer.api.atlas",
    "map_scores": "explorer.api.atlas",
    "vocab_health": "explorer.api.atlas",
    "microscope": "explorer.api.atlas",
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

    return getattr(importlib.import_module(module), name)
