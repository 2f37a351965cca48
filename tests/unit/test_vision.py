"""Vision backend, image loading and attention views on tiny random ViTs (no downloads)."""

from __future__ import annotations

import io
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.analysis.vision_attention import (
    cls_attention_maps,
    rollout_matrix,
    rollout_relevance,
    trace_image,
    upsample_map,
)
from explorer.backends.images import load_image, model_view, preprocess, sample_images
from explorer.backends.vision import (
    Preprocessing,
    SaliencyDecoder,
    VisionModel,
    load_vision_model,
    wrap_vision_model,
)
from explorer.config import Settings
from explorer.errors import InputError, ModelNotAvailableError, UnsupportedArchitectureError

IMAGE_SIZE = 32
PATCH = 8
GRID = IMAGE_SIZE // PATCH


def _tiny_backbone(kind: str) -> torch.nn.Module:
    """A randomly initialised, tiny (< 1M parameters) backbone of the given architecture."""
    import transformers

    common: dict[str, Any] = dict(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH
    )
    configs = {
        "dinov2": lambda: transformers.Dinov2Config(mlp_ratio=2, **common),
        "dinov2_with_registers": lambda: transformers.Dinov2WithRegistersConfig(
            mlp_ratio=2, num_register_tokens=2, **common
        ),
        "vit": lambda: transformers.ViTConfig(intermediate_size=64, **common),
        "clip_vision_model": lambda: transformers.CLIPVisionConfig(intermediate_size=64, **common),
        "siglip_vision_model": lambda: transformers.SiglipVisionConfig(intermediate_size=64, **common),
    }
    config = configs[kind]()
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 1_000_000, f"test model {kind} is not tiny: {n_params} parameters"
    return model.eval()


ARCHS = ["dinov2", "dinov2_with_registers", "vit", "clip_vision_model", "siglip_vision_model"]


@pytest.fixture(scope="module", params=ARCHS)
def tiny_vm(request: pytest.FixtureRequest) -> VisionModel:
    return wrap_vision_model(
        _tiny_backbone(request.param),
        model_id=f"tiny-{request.param}",
        preprocessing=Preprocessing(image_size=IMAGE_SIZE),
        device="cpu",
    )


def _random_image(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---- backend ---------------------------------------------------------------------------------
def test_backend_describes_token_layout(tiny_vm: VisionModel) -> None:
    arch = tiny_vm.backbone.config.model_type
    assert tiny_vm.n_layers == 3 and tiny_vm.n_heads == 2 and tiny_vm.patch_size == PATCH
    assert tiny_vm.has_cls == (arch != "siglip_vision_model")
    assert tiny_vm.n_registers == (2 if arch == "dinov2_with_registers" else 0)
    assert tiny_vm.n_prefix == int(tiny_vm.has_cls) + tiny_vm.n_registers
    assert tiny_vm.decoder is None


def test_block_loop_matches_hf_forward(tiny_vm: VisionModel) -> None:
    """Our block-by-block forward equals the model's own forward (before any final norm)."""
    pixels = preprocess(tiny_vm, _random_image())
    assert tuple(pixels.shape) == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.inference_mode():
        hidden = tiny_vm.embed(pixels)
        ours, _ = tiny_vm.run_blocks(hidden, 0, tiny_vm.n_layers)
        out = tiny_vm.backbone(pixel_values=pixels, output_hidden_states=True)
    theirs = out.hidden_states[-1]
    assert ours.shape == (1, tiny_vm.n_prefix + GRID * GRID, 32)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_trace_shapes_and_attention_rows_sum_to_one(tiny_vm: VisionModel) -> None:
    trace = trace_image(tiny_vm, preprocess(tiny_vm, _random_image()))
    t = tiny_vm.n_prefix + GRID * GRID
    assert trace.hidden_states.shape == (4, t, 32)
    assert trace.attentions is not None and trace.attentions.shape == (3, 2, t, t)
    assert torch.allclose(trace.attentions.sum(-1), torch.ones(3, 2, t), atol=1e-5)
    assert trace.final.shape == (t, 32) and trace.embedding.shape == (32,)
    assert trace.saliency is None
    maps = cls_attention_maps(trace)
    assert maps.shape == (3, 2, GRID, GRID) and maps.dtype == np.float32
    assert (maps >= 0).all() and (maps.reshape(3, 2, -1).sum(-1) <= 1 + 1e-5).all()


def test_rollout_rows_sum_to_one(tiny_vm: VisionModel) -> None:
    trace = trace_image(tiny_vm, preprocess(tiny_vm, _random_image(1)))
    rollout = rollout_matrix(trace)
    assert rollout.shape == (trace.seq_len, trace.seq_len)
    np.testing.assert_allclose(rollout.sum(axis=1), 1.0, atol=1e-5)
    assert (rollout >= 0).all()
    relevance = rollout_relevance(trace)
    assert relevance.shape == (GRID, GRID)
    assert relevance.sum() == pytest.approx(1.0, abs=1e-5)
    assert upsample_map(relevance, (IMAGE_SIZE, IMAGE_SIZE)).shape == (IMAGE_SIZE, IMAGE_SIZE)
    assert upsample_map(cls_attention_maps(trace), (16, 16)).shape == (3, 2, 16, 16)


def test_rollout_rejects_bad_residual_weight(tiny_vm: VisionModel) -> None:
    trace = trace_image(tiny_vm, preprocess(tiny_vm, _random_image()))
    with pytest.raises(InputError):
        rollout_matrix(trace, residual_weight=1.5)


def test_trace_without_attentions_refuses_attention_views(tiny_vm: VisionModel) -> None:
    trace = trace_image(tiny_vm, preprocess(tiny_vm, _random_image()), attentions=False)
    with pytest.raises(InputError, match="without attentions"):
        cls_attention_maps(trace)


def test_trace_rejects_bad_pixel_shapes(tiny_vm: VisionModel) -> None:
    with pytest.raises(InputError):
        trace_image(tiny_vm, torch.zeros(3, IMAGE_SIZE, IMAGE_SIZE))
    with pytest.raises(InputError):
        trace_image(tiny_vm, torch.zeros(1, 3, 4, 4))


def test_saliency_decoder_shapes_and_range() -> None:
    decoder = SaliencyDecoder(hidden_size=32).eval()
    assert sum(p.numel() for p in decoder.parameters()) < 1_000_000
    tokens = torch.randn(2, GRID * GRID, 32)
    with torch.inference_mode():
        out = decoder(tokens, (GRID, GRID), (IMAGE_SIZE, IMAGE_SIZE))
    assert out.shape == (2, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_unsupported_architecture_is_reported() -> None:
    import transformers

    config = transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50
    )
    with pytest.raises(UnsupportedArchitectureError, match="not supported"):
        wrap_vision_model(transformers.BertModel(config))


# ---- loading ---------------------------------------------------------------------------------
def test_missing_hub_model_fails_fast_offline(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.from_env(cache_dir=tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="not available"):
        load_vision_model("no-such-org/no-such-vit-model", settings=settings, device="cpu")
    assert time.perf_counter() - start < 20


def test_missing_local_path_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings.from_env(cache_dir=tmp_path)
    with pytest.raises(ModelNotAvailableError):
        load_vision_model(str(tmp_path / "nothing-here"), settings=settings, device="cpu")


def test_local_directory_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backbone: Any = _tiny_backbone("vit")
    backbone.save_pretrained(tmp_path / "tiny-vit")
    vm = load_vision_model(
        str(tmp_path / "tiny-vit"), settings=Settings.from_env(cache_dir=tmp_path), device="cpu"
    )
    assert vm.decoder is None and vm.n_layers == 3 and vm.image_size == IMAGE_SIZE
    trace = trace_image(vm, preprocess(vm, _random_image()))
    assert trace.attentions is not None


# ---- images ----------------------------------------------------------------------------------
def test_load_image_from_path_bytes_and_pil(tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = _random_image()
    path = tmp_path / "x.png"
    image.save(path)
    for source in (path, str(path), _png_bytes(image), image):
        loaded = load_image(source, Settings())
        assert loaded.mode == "RGB" and loaded.size == (48, 40)


def test_load_image_flattens_alpha() -> None:
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))
    loaded = load_image(_png_bytes(rgba), Settings())
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"this is not an image at all", "not an image"),
        (b"", "empty"),
    ],
)
def test_load_image_rejects_non_images(data: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_image(data, Settings())


def test_load_image_rejects_corrupt_data() -> None:
    data = _png_bytes(_random_image(size=(64, 64)))
    with pytest.raises(InputError, match="corrupt|not an image"):
        load_image(data[: len(data) // 2], Settings())


def test_load_image_limits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = _png_bytes(_random_image(size=(64, 64)))
    with pytest.raises(InputError, match="maximum"):
        load_image(data, Settings(max_image_bytes=100))
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(InputError, match="maximum"):
        load_image(path, Settings(max_image_bytes=100))
    with pytest.raises(InputError, match="pixels"):
        load_image(data, Settings(max_image_pixels=32 * 32))
    with pytest.raises(InputError, match="does not exist"):
        load_image(tmp_path / "missing.png", Settings())
    with pytest.raises(InputError):
        load_image(12345, Settings())  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["letterbox", "stretch", "center_crop"])
def test_model_view_is_square_at_image_size(tiny_vm: VisionModel, mode: str) -> None:
    pre = Preprocessing(image_size=IMAGE_SIZE, resize=mode)  # type: ignore[arg-type]
    vm = VisionModel(**{**tiny_vm.__dict__, "preprocessing": pre})
    view = model_view(vm, _random_image(size=(80, 30)))
    assert view.size == (IMAGE_SIZE, IMAGE_SIZE)
    if mode == "letterbox":  # wide image: black bars top and bottom
        assert view.getpixel((IMAGE_SIZE // 2, 0)) == (0, 0, 0)


def test_preprocess_default_is_224() -> None:
    pre = Preprocessing()
    assert pre.image_size == 224
    from explorer.backends.images import normalize

    pixels = normalize(_random_image().resize((224, 224)), pre)
    assert pixels.shape == (1, 3, 224, 224) and pixels.dtype == torch.float32


def test_sample_images_ship_offline() -> None:
    samples = sample_images()
    assert "grace_hopper" in samples
    for path in samples.values():
        assert load_image(path, Settings()).mode == "RGB"
