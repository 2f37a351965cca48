"""Image-patch pruning invariants on tiny random ViTs; the strategy matrix comes from the registry."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.analysis.pruning import (
    IMAGE_STRATEGIES,
    ImagePruningResult,
    prune_image,
    select_patches,
)
from explorer.analysis.pruning.image import (
    keep_count,
    pruned_flops,
    restore_tokens,
    run_pruned,
    saliency_similarity,
    scoring_flops,
    unpruned_pass,
)
from explorer.backends.images import preprocess
from explorer.backends.vision import Preprocessing, SaliencyDecoder, VisionModel, wrap_vision_model
from explorer.errors import InputError
from explorer.store import Store

IMAGE_SIZE = 48
PATCH = 8
N_PATCHES = (IMAGE_SIZE // PATCH) ** 2  # 36
N_LAYERS = 3


def _tiny(kind: str, decoder: bool = False) -> VisionModel:
    import transformers

    common: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    config = {
        "dinov2": lambda: transformers.Dinov2Config(mlp_ratio=2, **common),
        "dinov2_with_registers": lambda: transformers.Dinov2WithRegistersConfig(
            mlp_ratio=2, num_register_tokens=2, **common
        ),
        "vit": lambda: transformers.ViTConfig(intermediate_size=64, **common),
        "siglip_vision_model": lambda: transformers.SiglipVisionConfig(intermediate_size=64, **common),
    }[kind]()
    torch.manual_seed(0)
    backbone = transformers.AutoModel.from_config(config, attn_implementation="eager")
    head = SaliencyDecoder(32) if decoder else None
    total = sum(p.numel() for p in backbone.parameters()) + (
        sum(p.numel() for p in head.parameters()) if head else 0
    )
    assert total < 1_000_000, f"test model is not tiny: {total} parameters"
    return wrap_vision_model(
        backbone,
        head,
        model_id=f"tiny-{kind}",
        preprocessing=Preprocessing(image_size=IMAGE_SIZE),
        device="cpu",
    )


@pytest.fixture(scope="module")
def vm() -> VisionModel:
    return _tiny("dinov2", decoder=True)


@pytest.fixture(scope="module", params=["dinov2", "dinov2_with_registers", "vit", "siglip_vision_model"])
def any_vm(request: pytest.FixtureRequest) -> VisionModel:
    return _tiny(request.param)


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8))


STRATEGIES = sorted(IMAGE_STRATEGIES)


def test_every_strategy_has_a_deviation_note() -> None:
    deviations = IMAGE_STRATEGIES.deviations()
    assert set(deviations) == set(IMAGE_STRATEGIES)
    assert {"cls_attention", "cls_attention_ensemble", "kcenter", "idpruner_mmr", "transprune_ttv"} <= set(
        STRATEGIES
    )
    assert {"uniform", "random"} <= set(STRATEGIES)
    assert all(isinstance(v, str) and v for v in deviations.values())


def test_vtc_cls_last_block_signal_is_labelled_as_an_analogue() -> None:
    """Issue 7, fix 4: VTC-CLS reads the penultimate block and sums over late layers; the last-block
    strategy is an analogue of that signal, and its note says so (it once claimed "the paper's signal")."""
    note = IMAGE_STRATEGIES.deviations()["cls_attention_last"]
    assert "analogue" in note and "penultimate" in note and "late layers" in note
    assert "the paper's signal (last block)" not in note and "not the paper's" in note


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("layer", [0, 1, N_LAYERS])
def test_strategy_keeps_exactly_the_requested_count(vm: VisionModel, strategy: str, layer: int) -> None:
    signals = unpruned_pass(vm, preprocess(vm, _image()), layer).signals
    assert signals.features.shape == (N_PATCHES, 32)
    assert signals.patch_attention.shape == (max(layer, 1), N_PATCHES)
    for keep in (1, 2, 7, N_PATCHES // 2, N_PATCHES - 1, N_PATCHES):
        kept = select_patches(strategy, signals, keep, seed=3)
        assert kept.dtype == np.int64 and kept.shape == (keep,)
        assert np.all(np.diff(kept) > 0), "indices must be sorted and unique"
        assert kept.min() >= 0 and kept.max() < N_PATCHES


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_are_deterministic_under_a_seed(vm: VisionModel, strategy: str) -> None:
    signals = unpruned_pass(vm, preprocess(vm, _image()), 2).signals
    first = select_patches(strategy, signals, 10, seed=7)
    again = select_patches(strategy, signals, 10, seed=7)
    np.testing.assert_array_equal(first, again)


def test_random_depends_on_the_seed(vm: VisionModel) -> None:
    signals = unpruned_pass(vm, preprocess(vm, _image()), 1).signals
    draws = {tuple(select_patches("random", signals, 10, seed=s)) for s in range(5)}
    assert len(draws) > 1


def test_cls_attention_keeps_the_most_attended_patches(vm: VisionModel) -> None:
    signals = unpruned_pass(vm, preprocess(vm, _image()), 2).signals
    kept = select_patches("cls_attention", signals, 5)
    scores = signals.patch_attention[-1].numpy()
    assert scores[kept].min() >= np.delete(scores, kept).max()


@pytest.mark.parametrize("layer", range(N_LAYERS + 1))
def test_keeping_everything_reproduces_the_unpruned_output_exactly(any_vm: VisionModel, layer: int) -> None:
    ref = unpruned_pass(any_vm, preprocess(any_vm, _image()), layer)
    everything = np.arange(N_PATCHES)
    final = run_pruned(any_vm, ref.hidden[layer], [everything], layer)
    assert torch.equal(final, ref.final)


def test_block_loop_equals_the_hf_forward(vm: VisionModel) -> None:
    pixels = preprocess(vm, _image())
    ref = unpruned_pass(vm, pixels, 1)
    with torch.inference_mode():
        theirs = vm.backbone(pixel_values=pixels).last_hidden_state
    assert (ref.final - theirs).abs().max() <= 1e-6


def test_prune_image_rows_and_fidelity(vm: VisionModel) -> None:
    ratios = [0.25, 0.5, 1.0]
    result = prune_image(vm, _image(), strategies="all", keep_ratios=ratios, layer=1, seed=0)
    assert len(result.rows) == len(IMAGE_STRATEGIES) * len(ratios)
    assert [r.strategy for r in result.rows[:3]] == [next(iter(IMAGE_STRATEGIES))] * 3  # strategies outer
    for row in result.rows:
        assert row.keep_count == keep_count(row.keep_ratio, N_PATCHES) == len(row.kept)
        assert row.layer == 1 and row.seconds > 0 and row.time_ratio > 0
        assert set(row.fidelity) >= {"cls_cosine", "patch_cosine", "saliency_corr", "saliency_iou"}
        assert -1.0 - 1e-9 <= row.fidelity["cls_cosine"] <= 1.0 + 1e-9  # type: ignore[operator]
        if row.keep_ratio == 1.0:
            assert row.fidelity["cls_cosine"] == pytest.approx(1.0, abs=1e-6)
            assert row.fidelity["saliency_corr"] == pytest.approx(1.0, abs=1e-6)
            assert row.fidelity["saliency_iou"] == pytest.approx(1.0)
        if (
            IMAGE_STRATEGIES[row.strategy].scoring == "full_pass"
        ):  # scored by a whole unpruned pass, charged to the row
            assert row.flops_ratio > 1
        elif row.keep_ratio == 1.0:
            assert row.flops_ratio == pytest.approx(1.0)
        else:
            assert 0 < row.flops_ratio < 1
    assert result.reference_saliency is not None and result.reference_saliency.shape == (
        IMAGE_SIZE,
        IMAGE_SIZE,
    )
    assert len(result.saliency_maps) == len(result.rows)
    curve = result.retention_curve("cls_cosine")
    assert set(curve) == set(IMAGE_STRATEGIES) and [r for r, _ in curve["random"]] == ratios
    json.dumps(result.to_dict())
    assert result.kept_mask("random", 0.5).sum() == keep_count(0.5, N_PATCHES)


def test_flops_shrink_with_the_keep_ratio(vm: VisionModel) -> None:
    n_tokens = 1 + N_PATCHES
    costs = [pruned_flops(vm, n_tokens, 1 + keep_count(r, N_PATCHES), 1) for r in (0.1, 0.5, 1.0)]
    assert costs[0] < costs[1] < costs[2]
    # at layer 0 the block-0 scoring probe is charged to the strategies that read it, only to them
    assert scoring_flops(vm, n_tokens, 0, "probe") > 0 == scoring_flops(vm, n_tokens, 0, "none")
    assert scoring_flops(vm, n_tokens, 1, "probe") == 0


@pytest.mark.parametrize("layer", [0, 2])
def test_every_strategy_is_charged_exactly_what_it_runs(vm: VisionModel, layer: int) -> None:
    """Random and uniform run no scoring; attention/diversity strategies read the blocks before the
    pruning layer (a block-0 probe at layer 0); cls_attention_last reads the whole unpruned pass."""
    result = prune_image(vm, _image(), strategies="all", keep_ratios=[0.5], layer=layer, seed=0)
    n_tokens = 1 + N_PATCHES
    full = vm.n_layers * pruned_flops(vm, n_tokens, n_tokens, 0) / vm.n_layers
    for row in result.rows:
        pruned = pruned_flops(vm, n_tokens, 1 + row.keep_count, layer) / full
        expected_scoring = {
            "none": 0.0,
            "probe": 1.0 / vm.n_layers if layer == 0 else 0.0,
            "full_pass": (vm.n_layers - layer) / vm.n_layers,
        }[IMAGE_STRATEGIES[row.strategy].scoring]
        assert row.scoring_flops_ratio == pytest.approx(expected_scoring), row.strategy
        assert row.flops_ratio == pytest.approx(pruned + expected_scoring), row.strategy
        assert 0 <= row.scoring_seconds <= row.seconds
    assert IMAGE_STRATEGIES["random"].scoring == IMAGE_STRATEGIES["uniform"].scoring == "none"
    assert IMAGE_STRATEGIES["cls_attention_last"].scoring == "full_pass"


def test_prune_image_without_decoder_skips_saliency(any_vm: VisionModel) -> None:
    result = prune_image(any_vm, _image(), strategies=["cls_attention", "random"], keep_ratios=[0.5], layer=2)
    assert "saliency" in result.skipped
    assert all(
        r.fidelity["saliency_corr"] is None and r.fidelity["saliency_iou"] is None for r in result.rows
    )
    assert result.reference_saliency is None and not result.saliency_maps


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5, float("nan"), "half", True])
def test_bad_keep_ratio(vm: VisionModel, ratio: object) -> None:
    with pytest.raises(InputError):
        prune_image(vm, _image(), strategies=["random"], keep_ratios=[ratio], layer=1)  # type: ignore[list-item]


def test_empty_keep_ratios(vm: VisionModel) -> None:
    with pytest.raises(InputError):
        prune_image(vm, _image(), strategies=["random"], keep_ratios=[], layer=1)


@pytest.mark.parametrize("layer", [-1, N_LAYERS + 1, 1.5, True])
def test_bad_layer(vm: VisionModel, layer: object) -> None:
    with pytest.raises(InputError, match="layer"):
        prune_image(vm, _image(), strategies=["random"], keep_ratios=[0.5], layer=layer)  # type: ignore[arg-type]


def test_unknown_strategy_lists_known_names(vm: VisionModel) -> None:
    with pytest.raises(InputError) as info:
        prune_image(vm, _image(), strategies=["cls_attention", "magic"], keep_ratios=[0.5], layer=1)
    for name in IMAGE_STRATEGIES:
        assert name in str(info.value)
    with pytest.raises(InputError):
        prune_image(vm, _image(), strategies=[], keep_ratios=[0.5], layer=1)


def test_bad_image_is_an_input_error(vm: VisionModel) -> None:
    with pytest.raises(InputError):
        prune_image(vm, b"not an image", strategies=["random"], keep_ratios=[0.5], layer=1)


def test_restore_tokens_copies_nearest_kept() -> None:
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    kept = np.array([0, 2])
    final = torch.tensor([[10.0, 10.0], [20.0, 20.0]])
    restored = restore_tokens(final, kept, features)
    assert restored.tolist() == [[10.0, 10.0], [10.0, 10.0], [20.0, 20.0], [20.0, 20.0]]


def test_saliency_similarity_of_identical_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((20, 20)).astype(np.float32)
    corr, iou = saliency_similarity(a, a)
    assert corr == pytest.approx(1.0) and iou == pytest.approx(1.0)
    corr, iou = saliency_similarity(a, 1.0 - a)
    assert corr == pytest.approx(-1.0) and iou == pytest.approx(0.0)


def test_result_round_trips_through_the_store(vm: VisionModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = prune_image(vm, _image(), strategies="all", keep_ratios=[0.25, 1.0], layer=1, seed=4)
    store = Store.open(tmp_path / "runs.duckdb")
    try:
        run_id = store.save(
            result,
            model_id=vm.model_id,
            weight_hash=vm.weight_hash,
            prompt="image",
            params={"layer": 1, "seed": 4},
            duration_s=0.1,
        )
        loaded = store.load(run_id)
    finally:
        store.close()
    assert isinstance(loaded, ImagePruningResult)
    assert loaded.run_id == run_id
    assert [r.to_dict() for r in loaded.rows] == [r.to_dict() for r in result.rows]
    np.testing.assert_array_equal(loaded.image_array(), result.image_array())
    assert loaded.reference_saliency is not None and result.reference_saliency is not None
    np.testing.assert_allclose(loaded.reference_saliency, result.reference_saliency, atol=1 / 255 + 1e-6)
    assert loaded.saliency_maps.keys() == result.saliency_maps.keys()
    assert loaded.deviations == result.deviations and loaded.grid == result.grid


def test_strategy_all_works_as_a_list_entry_as_the_cli_passes_it() -> None:
    from explorer.analysis.pruning.image import resolve_strategies

    assert resolve_strategies(["all"]) == list(IMAGE_STRATEGIES)
    assert resolve_strategies(["random", "all"]) == ["random"] + [
        s for s in IMAGE_STRATEGIES if s != "random"
    ]
    with pytest.raises(InputError, match="unknown pruning strategy"):
        resolve_strategies(["nope"])


def test_api_sweep_is_keyed_and_served_from_the_store(vm: VisionModel, tmp_store: Any) -> None:
    """Text and image sweeps share one store preamble (`api.pruning._run_sweep`): the key holds
    strategies, keep ratios, layer and seed plus the kind's own parameters; a repeat is a hit."""
    from explorer.api.pruning import run_prune_image

    kwargs: dict[str, Any] = dict(
        model=vm, strategies=["random"], keep_ratios=[0.5], layer=1, seed=2, db=tmp_store
    )
    first = run_prune_image(_image(), **kwargs)
    again = run_prune_image(_image(), **kwargs)
    assert first.run_id and again.run_id == first.run_id
    assert run_prune_image(_image(), **{**kwargs, "seed": 3}).run_id != first.run_id
    runs = {r.run_id: r for r in tmp_store.list_runs()}
    assert len(runs) == 2
    params = runs[str(first.run_id)].params
    assert params["strategies"] == ["random"] and params["keep_ratios"] == [0.5]
    assert (
        params["layer"] == 1
        and params["seed"] == 2
        and runs[str(first.run_id)].prompt.startswith("image sha256:")
    )
    assert set(vm.preprocessing.cache_key()) <= set(params)
