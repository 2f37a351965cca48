"""Backends: the only code that touches transformers / Hugging Face internals.

`LanguageModel` (language.py) and `VisionModel` (vision.py) are the doors to the models; both
load through `loading.py` (one cache, one dtype policy), and where each architecture keeps its
parts is data (`architectures.py`). Analyses call the backends' verbs, never HF modules.
"""

from __future__ import annotations

from explorer.backends.architectures import (
    ArchitectureSpec,
    VisionArchitecture,
    register_architecture,
    register_vision_architecture,
)
from explorer.backends.embedded import EMBEDDED_LMS, EMBEDDED_VISION_MODELS
from explorer.backends.language import ForwardOutput, Generation, LanguageModel, load_model, wrap_model
from explorer.backends.loading import DTYPE_NAMES, MODEL_CACHE, resolve_dtype
from explorer.backends.trace import IMAGE, TEXT, Trace

__all__ = [
    "DTYPE_NAMES",
    "EMBEDDED_LMS",
    "EMBEDDED_VISION_MODELS",
    "IMAGE",
    "MODEL_CACHE",
    "TEXT",
    "ArchitectureSpec",
    "ForwardOutput",
    "Generation",
    "LanguageModel",
    "Trace",
    "VisionArchitecture",
    "load_model",
    "register_architecture",
    "register_vision_architecture",
    "resolve_dtype",
    "wrap_model",
]
