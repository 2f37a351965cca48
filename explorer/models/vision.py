"""Old import path: moved to `explorer.backends.vision`."""

from explorer.backends.embedded import EMBEDDED_VISION_MODELS
from explorer.backends.vision import Preprocessing, VisionModel, load_vision_model, wrap_vision_model

__all__ = ["EMBEDDED_VISION_MODELS", "Preprocessing", "VisionModel", "load_vision_model", "wrap_vision_model"]
