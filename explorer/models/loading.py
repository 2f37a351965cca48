"""Old import path: moved to `explorer.backends.language` / `.loading` / `.embedded`."""

from explorer.backends.embedded import EMBEDDED_LMS, resolve_model_source
from explorer.backends.language import LanguageModel, load_model, wrap_model
from explorer.backends.loading import MODEL_CACHE, default_device, embedded_package_dir, hub_kwargs
from explorer.progress import ProgressFn

__all__ = [
    "EMBEDDED_LMS",
    "MODEL_CACHE",
    "LanguageModel",
    "ProgressFn",
    "default_device",
    "embedded_package_dir",
    "hub_kwargs",
    "load_model",
    "resolve_model_source",
    "wrap_model",
]
