"""Vision attention runs ([CLS] -> patch maps, rollout, entropy) on a tiny random DINOv2.

Invariants: each layer/head's [CLS] -> patch map sums to at most 1 and, with the prefix share,
to exactly 1; the rollout map sums to 1; entropy lies in [0, log2 T]; the store round-trips a run
exactly (image included) and serves it again by the image's pixel hash; a bad image raises
InputError and stores nothing; the CLI prints the documented JSON and exits 2 on bad input; the
LM loader refuses vision models with a message that says why; every figure builds from the
result alone with axis titles, a titled colour bar and hover text."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.analysis.vision_attention_result import (
    VisionAttentionParams,
    VisionAttentionResult,
    analyze_image_attention,
    image_sha256,
)
from explorer.api.attention import attention_image
from explorer.backends.vision import Preprocessing, VisionModel, wrap_vision_model
from explorer.cli import main
from explorer.config import Settings
from explorer.errors import InputError

IMAGE_SIZE = 32
PATCH = 8
GRID = IMAGE_SIZE // PATCH
LAYERS, HEADS = 3, 2
MAX_TINY_PARAMS = 1_000_000


def tiny_dinov2() -> Any:
    """A randomly initialised Dinov2Model: 3 layers, 2 heads, hidden 32, 32x32 images, 8x8 patches."""
    import transformers

    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        mlp_ratio=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < MAX_TINY_PARAMS, f"test model is not tiny: {n_params} parameters"
    return model.eval()


@pytest.fixture(scope="module")
def tiny_vm() -> VisionModel:
    return wrap_vision_model(
        tiny_dinov2(),
        model_id="tiny-dinov2",
        preprocessing=Preprocessing(image_size=IMAGE_SIZE),
        device="cpu",
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny DINOv2 saved as a local model directory (loads through the normal loaders)."""
    d = tmp_path_factory.mktemp("tiny-dinov2")
    tiny_dinov2().save_pretrained(d)
    return d


def random_image(seed: int = 0, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def result(tiny_vm: VisionModel) -> VisionAttentionResult:
    return analyze_image_attention(tiny_vm, random_image())


# ---- invariants --------------------------------------------------------------------------
def test_shapes_and_cls_maps_sum_to_at_most_one(result: VisionAttentionResult) -> None:
    assert result.cls_maps.shape == (LAYERS, HEADS, GRID, GRID) and result.cls_maps.dtype == np.float32
    assert result.grid == (GRID, GRID) and result.n_prefix == 1 and result.has_cls
    sums = result.cls_maps.reshape(LAYERS, HEADS, -1).sum(-1)
    assert (result.cls_maps >= 0).all() and (sums <= 1 + 1e-5).all()
    # what [CLS] does not give the patches goes to the prefix ([CLS] itself): the row sums to 1
    np.testing.assert_allclose(sums + result.prefix_share, 1.0, atol=1e-5)


def test_rollout_sums_to_one_and_entropy_is_bounded(result: VisionAttentionResult) -> None:
    assert result.rollout.shape == (GRID, GRID)
    assert (result.rollout >= 0).all()
    assert result.rollout.sum() == pytest.approx(1.0, abs=1e-5)
    assert result.entropy.shape == (LAYERS, HEADS)
    assert (result.entropy >= 0).all() and (result.entropy <= np.log2(result.n_tokens) + 1e-5).all()


def test_entropy_matches_the_trace(tiny_vm: VisionModel, result: VisionAttentionResult) -> None:
    from explorer.analysis.vision_attention import trace_image
    from explorer.backends.images import preprocess

    trace = trace_image(tiny_vm, preprocess(tiny_vm, random_image()))
    assert trace.attentions is not None
    row = trace.attentions[1, 0, 0].double()  # layer 1, head 0, [CLS] query row over all T keys
    expected = float(-(row * torch.log2(row)).sum())
    assert float(result.entropy[1, 0]) == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(result.cls_maps[1, 0].ravel(), row[1:].numpy(), atol=1e-6)


def test_image_id_is_format_independent() -> None:
    image = random_image(3)
    assert image_sha256(image) == image_sha256(Image.open(io.BytesIO(png_bytes(image))))
    assert image_sha256(image) != image_sha256(random_image(4))


def test_params_are_validated() -> None:
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(InputError, match="residual weight"):
            VisionAttentionParams(residual_weight=bad).validate()  # type: ignore[arg-type]


# ---- API and store -----------------------------------------------------------------------
def test_round_trip_through_the_store(tiny_vm: VisionModel, tmp_store: Any, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    random_image(1).save(path)
    first = attention_image(path, model=tiny_vm, db=tmp_store)
    assert first.run_id is not None
    [info] = tmp_store.list_runs(kind="vision_attention")
    assert info.prompt == first.image_sha256 == image_sha256(random_image(1))
    loaded = tmp_store.load(first.run_id)
    assert isinstance(loaded, VisionAttentionResult)
    np.testing.assert_array_equal(loaded.cls_maps, first.cls_maps)
    np.testing.assert_array_equal(loaded.rollout, first.rollout)
    np.testing.assert_array_equal(loaded.entropy, first.entropy)
    np.testing.assert_array_equal(loaded.prefix_share, first.prefix_share)
    assert loaded.image_png == first.image_png
    assert loaded.image_array().shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert loaded.to_dict() == first.to_dict()
    # the same pixels as bytes are served from the store, not recomputed
    again = attention_image(png_bytes(random_image(1)), model=tiny_vm, db=tmp_store)
    assert again.run_id == first.run_id
    assert len(tmp_store.list_runs(kind="vision_attention")) == 1


def test_bad_image_raises_and_stores_nothing(tiny_vm: VisionModel, tmp_store: Any) -> None:
    with pytest.raises(InputError, match="not an image"):
        attention_image(b"certainly not a picture", model=tiny_vm, db=tmp_store)
    with pytest.raises(InputError, match="does not exist"):
        attention_image("/no/such/image.png", model=tiny_vm, db=tmp_store)
    with pytest.raises(InputError, match="pixels"):
        attention_image(random_image(), model=tiny_vm, db=tmp_store, settings=Settings(max_image_pixels=100))
    with pytest.raises(InputError, match="is a language model"):
        attention_image(random_image(), model="smollm2-135m", db=tmp_store)
    assert tmp_store.list_runs() == []


# ---- figures -----------------------------------------------------------------------------
def test_every_figure_builds_with_titles_colour_bar_and_hover(
    result: VisionAttentionResult, tmp_path: Path
) -> None:
    from explorer.plots import figures_for

    specs = figures_for(result)
    assert [s.name for s in specs] == ["cls_overlay", "rollout_overlay", "entropy"]
    for spec in specs:
        fig = spec.build(result)
        assert fig.layout.title.text
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        heatmaps = [t for t in fig.data if t.type == "heatmap"]
        assert heatmaps and heatmaps[0].colorbar.title.text
        assert all(t.hovertemplate for t in heatmaps)
        table = spec.data(result)
        assert table.num_rows > 0
    overlay = specs[0].build(result, layer=1, head=0)
    assert [t.type for t in overlay.data] == ["image", "heatmap"]
    assert overlay.data[0].source.startswith("data:image/png;base64,")
    assert np.asarray(overlay.data[1].z).shape == (IMAGE_SIZE, IMAGE_SIZE)  # upsampled to the image
    data = specs[0].data(result)
    assert data.num_rows == GRID * GRID and "cls_attention" in data.column_names
    # the export follows the view the UI chose (passed as figure arguments, never on the result)
    values = np.asarray(specs[0].table(result, {"layer": 1, "head": 0})["cls_attention"].to_pylist())
    np.testing.assert_allclose(values, result.cls_maps[1, 0].ravel(), atol=1e-7)
    mean = np.asarray(specs[0].table(result, {"layer": 1})["cls_attention"])
    np.testing.assert_allclose(mean, result.cls_maps[1].mean(0).ravel(), atol=1e-7)
    from explorer.plots import export

    for name in ("cls_overlay", "entropy"):
        for fmt in ("csv", "parquet"):
            assert export(result, fmt, tmp_path, figure=name).stat().st_size > 0
    with pytest.raises(InputError, match="layer 7"):
        specs[0].build(result, layer=7)
    with pytest.raises(InputError, match="head 5"):
        specs[0].build(result, layer=0, head=5)


# ---- CLI ---------------------------------------------------------------------------------
def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_cli_image_json(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.jpg"
    random_image(2).save(path)
    db = str(tmp_path / "cli.duckdb")
    code, out, _ = run_cli(["attention", "--image", str(path), "--model", str(tiny_dir), "--db", db], capsys)
    assert code == 0
    assert {"run_id", "model", "n_layers", "n_heads", "grid", "image_sha256", "layers", "rollout"} <= set(out)
    assert out["n_layers"] == LAYERS and out["n_heads"] == HEADS and out["grid"] == [GRID, GRID]
    assert out["image_sha256"] == image_sha256(Image.open(path))
    assert [layer["layer"] for layer in out["layers"]] == list(range(LAYERS))
    cell = out["layers"][0]["heads"][1]
    assert set(cell) == {"head", "cls_attention", "entropy"} and cell["head"] == 1
    assert np.asarray(cell["cls_attention"]).shape == (GRID, GRID)
    assert np.asarray(out["rollout"]).sum() == pytest.approx(1.0, abs=1e-5)
    code, again, _ = run_cli(
        ["attention", "--image", str(path), "--model", str(tiny_dir), "--db", db], capsys
    )
    assert code == 0 and again["run_id"] == out["run_id"]


def test_cli_rejects_bad_image_and_bad_flags(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("these are words, not pixels")
    db = str(tmp_path / "cli.duckdb")
    code, out, err = run_cli(
        ["attention", "--image", str(not_image), "--model", str(tiny_dir), "--db", db], capsys
    )
    assert code == 2 and out is None and "not an image" in err
    code, _, err = run_cli(["attention", "--image", str(not_image), "--flow", "--db", db], capsys)
    assert code == 2 and "--flow" in err
    # both = a vision-language model (tests/unit/test_vlm_attention.py); neither = a one-line error
    code, _, err = run_cli(["attention", "--prompt", "hi", "--image", str(not_image), "--db", db], capsys)
    assert code == 2 and "not an image" in err
    code, _, err = run_cli(["attention", "--db", db], capsys)
    assert code == 2 and "give --prompt" in err


# ---- the LM loader refuses vision models -------------------------------------------------
def test_language_model_loader_refuses_vision_models(tiny_dir: Path, tmp_path: Path) -> None:
    from explorer.backends.language import load_model

    settings = Settings.from_env(cache_dir=tmp_path)
    with pytest.raises(InputError, match="is a vision model: it has no unembedding") as exc:
        load_model(str(tiny_dir), settings=settings, device="cpu")
    assert "image mode" in str(exc.value) and "Pruning lab" in str(exc.value)
    with pytest.raises(InputError, match="'dinov2-small-focus' is a vision model"):
        load_model("dinov2-small-focus", settings=settings, device="cpu")


def test_lens_cli_on_a_vision_model_exits_2(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(
        ["lens", "--prompt", "hello", "--model", str(tiny_dir), "--db", str(tmp_path / "x.duckdb")], capsys
    )
    assert code == 2 and "is a vision model" in err


# ---- UI ----------------------------------------------------------------------------------
def test_tab_builds_with_every_mode(tmp_path: Path) -> None:
    import gradio as gr

    from explorer.ui import attention_tab
    from explorer.ui.common import UIContext

    with gr.Blocks() as demo, gr.Tab(attention_tab.TITLE):
        attention_tab.build(UIContext(Settings.from_env(db_path=tmp_path / "ui.duckdb")))
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"Input", "Image (upload, paste or drop)", "Prompt"} <= labels
    radio = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Input")
    modes = (attention_tab.TEXT_MODE, attention_tab.IMAGE_MODE, attention_tab.VLM_MODE)
    assert radio.choices == [(m, m) for m in modes]
    assert "Question about the image" in labels  # the vision-language mode
    api_names = {dep.get("api_name") for dep in demo.config["dependencies"]}
    assert {"attention", "attention_image", "attention_vlm"} <= api_names


def test_summary_reads_the_result(result: VisionAttentionResult) -> None:
    from explorer.ui.attention_tab import vision_summary_markdown

    text = vision_summary_markdown(result)
    assert f"{GRID}×{GRID}" in text and "Rollout: the top patch" in text
