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
    "attribute": "explorer.attribution_api",
    "attribute_generation": "explorer.attribution_api",
    "attribute_image": "explorer.attribution_api",
    "attention": "explorer.attention_api",
    "attention_image": "explorer.attention_api",
    "prune": "explorer.pruning_api",
    "prune_text": "explorer.pruning_api",
    "prune_image": "explorer.pruning_api",
    "load_vision_model": "explorer.backends.vision",
    "visual_tokens": "explorer.vlm_api",
    "vlm_eval": "explorer.vlm_api",
    "vista_compare": "explorer.vlm_api",
    "latent_neighbours": "explorer.vlm_api",
    "text_bank": "explorer.vlm_api",
    "vista_patterns": "explorer.vlm_api",
    "token_map": "explorer.atlas_api",
    "map_scores": "explorer.atlas_api",
    "vocab_health": "explorer.atlas_api",
    "microscope": "explorer.atlas_api",
    "inspect_tokenizers": "explorer.atlas_api",
    "export_figure": "explorer.export_api",
    "export_panel": "explorer.export_api",
    "list_figures": "explorer.export_api",
    "compare": "explorer.compare",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'explorer' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
