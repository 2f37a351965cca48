"""Old import path: moved to `explorer.backends.images`."""

from explorer.backends.images import (
    ImageInput,
    image_to_png,
    load_image,
    model_view,
    normalize,
    png_to_array,
    preprocess,
    sample_images,
)

__all__ = [
    "ImageInput",
    "image_to_png",
    "load_image",
    "model_view",
    "normalize",
    "png_to_array",
    "preprocess",
    "sample_images",
]
