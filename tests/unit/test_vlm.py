"""Vision-language models on tiny parts built in code: scenes, the backend, lens invariants, store, plots."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm, make_tiny_projector
from PIL import Image

from explorer.analysis.logit_lens import LensParams
from explorer.backends.vision import Preprocessing, wrap_vision_model
from explorer.backends.vlm import MODALITY_IMAGE, capture_vlm, generate, projector_vlm
from explorer.errors import InputError
from explorer.vlm.lens import VLMLensResult, vlm_logit_lens
from explorer.vlm.scenes import (
    COLOURS,
    HELDOUT_SEED_BASE,
    SHAPES,
    heldout_seeds,
    make_scene,
)
from explorer.vlm.tiny_vlm import COLOUR_DIM, Projector, ProjectorConfig

IMAGE_SIZE = 32
PATCH = 8  # 4 x 4 patches -> pooled 2 x 2 -> 4 visual tokens


def _tiny_vision() -> Any:
    import transformers

    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    torch.manual_seed(1)
    backbone = transformers.AutoModel.from_config(config, attn_implementation="eager")
    assert sum(p.numel() for p in backbone.parameters()) < 200_000
    return wrap_vision_model(
        backbone, model_id="tiny-dinov2", preprocessing=Preprocessing(image_size=IMAGE_SIZE), device="cpu"
    )


@pytest.fixture(scope="module")
def tiny_vlm() -> Any:
    lm = make_tiny_lm("llama")
    vision = _tiny_vision()
    projector = make_tiny_projector(lm)
    return projector_vlm(lm, vision, projector, model_id="tiny-test-vlm")


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), "RGB")


# ---- scenes ------------------------------------------------------------------------------
def test_scenes_are_a_pure_function_of_the_seed() -> None:
    a, b = make_scene(123), make_scene(123)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.objects == b.objects
    assert not np.array_equal(np.asarray(make_scene(124).image), np.asarray(a.image))


@pytest.mark.parametrize("seed", range(40))
def test_scene_ground_truth_and_questions_agree(seed: int) -> None:
    scene = make_scene(seed)
    assert 1 <= len(scene.objects) <= 3
    assert len({o.shape for o in scene.objects}) == len(scene.objects)  # "the circle" is unambiguous
    present = {(o.colour, o.shape) for o in scene.objects}
    for qa in scene.questions(random.Random(seed)):
        if qa.kind == "presence":
            words = qa.question.rstrip("?").split()
            asked = (words[-2], words[-1])
            assert (asked in present) == (qa.answer == "yes") == bool(qa.present)
        if qa.kind == "colour":
            shape = qa.question.rstrip("?").split()[-1]
            assert qa.answer == next(o.colour for o in scene.objects if o.shape == shape)
        if qa.kind == "caption":
            for colour, shape in present:
                assert f"{colour} {shape}" in qa.answer
    assert all(o.colour in COLOURS and o.shape in SHAPES for o in scene.objects)


def test_object_pixels_have_their_colour() -> None:
    scene = make_scene(7)
    pixels = np.asarray(scene.image).astype(int)
    for obj in scene.objects:
        x, y = obj.centre
        expected = np.asarray(COLOURS[obj.colour])
        if obj.shape != "star":  # a star's centre is inside it too, but keep to solid shapes
            assert np.abs(pixels[y, x] - expected).max() <= 20


def test_presence_probes_are_balanced() -> None:
    rng = random.Random(0)
    answers = [qa.answer for s in range(400) for qa in make_scene(s).questions(rng) if qa.kind == "presence"]
    share = answers.count("yes") / len(answers)
    assert 0.4 < share < 0.6


def test_heldout_seeds_are_disjoint_from_training() -> None:
    assert min(heldout_seeds(300)) == HELDOUT_SEED_BASE
    assert max(heldout_seeds(300)) < HELDOUT_SEED_BASE + 300


# ---- backend -------------------------------------------------------------------------------
def test_prepare_splices_visual_tokens_into_the_prompt(tiny_vlm: Any) -> None:
    inputs = tiny_vlm.prepare("What is this?", _image())
    n_img = inputs.modality.count(MODALITY_IMAGE)
    assert n_img == 4 and inputs.grid == (2, 2)
    assert len(inputs.modality) == inputs.seq_len == inputs.inputs_embeds.shape[0]
    text_pos = [i for i, m in enumerate(inputs.modality) if m != MODALITY_IMAGE]
    embed = tiny_vlm.lm.embed_module()
    with torch.no_grad():
        expected = embed(inputs.input_ids[text_pos]).float()
    assert torch.allclose(inputs.inputs_embeds[text_pos], expected)
    assert all(int(inputs.input_ids[i]) == tiny_vlm.image_token_id for i in inputs.image_positions)


def test_text_only_prompt_has_no_visual_tokens(tiny_vlm: Any) -> None:
    inputs = tiny_vlm.prepare("What is this?", None)
    assert MODALITY_IMAGE not in inputs.modality and inputs.grid is None
    r = vlm_logit_lens(tiny_vlm, "What is this?", None, params=LensParams(top_k=3))
    assert r.grid is None and r.image_positions == []
    assert any("no visual tokens" in n for n in r.notes)


def test_the_image_changes_the_output(tiny_vlm: Any) -> None:
    a = capture_vlm(tiny_vlm, tiny_vlm.prepare("Describe.", _image(0)))[0].logits[-1]
    b = capture_vlm(tiny_vlm, tiny_vlm.prepare("Describe.", _image(1)))[0].logits[-1]
    assert (a - b).abs().max() > 1e-3


def test_last_layer_lens_equals_the_models_logits(tiny_vlm: Any) -> None:
    r = vlm_logit_lens(tiny_vlm, "What color?", _image(), params=LensParams(top_k=5))
    trace, _ = capture_vlm(tiny_vlm, tiny_vlm.prepare("What color?", _image()))
    probs = torch.softmax(trace.logits, dim=-1)
    top_p, top_i = probs.topk(5, dim=-1)
    assert np.array_equal(r.topk_ids[-1], top_i.numpy())
    assert np.allclose(r.topk_probs[-1], top_p.numpy(), atol=1e-5)
    assert r.topk_probs.shape == (tiny_vlm.n_layers + 1, trace.seq_len, 5)


def test_capture_equals_a_plain_forward_with_embeddings(tiny_vlm: Any) -> None:
    inputs = tiny_vlm.prepare("Hi", _image())
    trace, modality = capture_vlm(tiny_vlm, inputs)
    out = tiny_vlm.lm.forward(inputs_embeds=inputs.inputs_embeds[None]).logits[0].float()
    assert torch.allclose(trace.logits, out, atol=1e-5)
    assert torch.allclose(trace.residual[0], inputs.inputs_embeds, atol=1e-6)  # layer 0 = the embeddings
    assert modality == inputs.modality


def test_kv_cache_generation_matches_full_recompute(tiny_vlm: Any) -> None:
    inputs = tiny_vlm.prepare("Say something", _image())
    fast = generate(tiny_vlm, inputs, 6, stop_at_eos=False)
    slow: list[int] = []
    for _ in range(6):
        trace, _ = capture_vlm(tiny_vlm, inputs, slow)
        slow.append(int(trace.logits[-1].argmax()))
    assert fast == slow


def test_generated_steps_are_traced(tiny_vlm: Any) -> None:
    r = vlm_logit_lens(tiny_vlm, "Go", _image(), params=LensParams(generate=3, top_k=3))
    assert len(r.generated) == 3 and r.seq_len == r.prompt_len + 3
    assert r.modality[-3:] == ["text"] * 3
    # the emitted token is the last layer's top-1 at each step (greedy)
    for s, pos in enumerate(r.generation_positions):
        assert r.topk_ids[-1, pos, 0] == r.input_ids[r.prompt_len + s]


def test_prompt_limit_counts_visual_tokens(tiny_vlm: Any) -> None:
    n_text = tiny_vlm.prepare("x", None).seq_len
    with pytest.raises(InputError, match="visual tokens"):
        tiny_vlm.prepare("x", _image(), max_tokens=n_text + 1)


def test_empty_prompt_is_refused(tiny_vlm: Any) -> None:
    with pytest.raises(InputError, match="empty"):
        tiny_vlm.prepare("  ", _image())


# ---- API, store, plots ---------------------------------------------------------------------
def test_api_stores_and_reopens_a_vlm_run(tiny_vlm: Any, tmp_store: Any) -> None:
    import explorer

    kwargs = dict(image=_image(), targets=[" the"], generate=2, top_k=4, db=tmp_store)
    r = explorer.logit_lens(tiny_vlm, "Describe it.", **kwargs)
    assert isinstance(r, VLMLensResult) and r.run_id
    again = explorer.logit_lens(tiny_vlm, "Describe it.", **kwargs)
    assert again.run_id == r.run_id  # served from the store
    other = explorer.logit_lens(tiny_vlm, "Describe it.", **{**kwargs, "image": _image(5)})
    assert other.run_id != r.run_id  # the image is part of the cache key
    back = tmp_store.load(r.run_id)
    assert isinstance(back, VLMLensResult)
    assert back.modality == r.modality and back.grid == r.grid and back.generated == r.generated
    assert np.array_equal(back.topk_ids, r.topk_ids)
    assert back.image().size == r.image().size
    d = back.to_dict()
    assert d["kind"] == "vlm_lens" and len(d["patch_top_tokens"]) == r.n_layers + 1


def test_text_model_with_an_image_is_refused_and_nothing_stored(tmp_store: Any) -> None:
    import explorer

    with pytest.raises(InputError, match="text-only"):
        explorer.logit_lens("smollm2-135m", "hi", image=_image(), db=tmp_store)
    assert tmp_store.list_runs() == []


@pytest.mark.parametrize("data", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_bad_images_are_refused(data: bytes, tmp_store: Any) -> None:
    import explorer

    with pytest.raises(InputError):
        explorer.logit_lens("tiny-vlm", "hi", image=data, db=tmp_store)
    assert tmp_store.list_runs() == []


def test_patch_figures_build_with_a_layer_slider(tiny_vlm: Any) -> None:
    from explorer.plots import figures_for
    from explorer.plots.vlm import patch_lens_overlay, target_surfacing

    r = vlm_logit_lens(tiny_vlm, "Describe it.", _image(), params=LensParams(targets=(" the",), top_k=3))
    fig = patch_lens_overlay(r)
    assert len(fig.frames) == r.n_layers + 1
    heat = fig.data[1]
    assert np.asarray(heat.z).shape == (2, 2)
    assert fig.layout.sliders[0].active == r.n_layers
    fig_t = patch_lens_overlay(r, layer=0, target=" the")
    assert np.allclose(np.asarray(fig_t.data[1].z), r.patch_target(" the")[0])
    surf = target_surfacing(r)
    assert len(surf.data) == 3 and len(surf.data[0].y) == r.n_layers + 1
    names = [s.name for s in figures_for(r)]
    assert {"patches", "surfacing", "heatmap", "tracked"} <= set(names)
    for spec in figures_for(r):
        spec.build(r)
        assert spec.data(r).num_rows > 0
    with pytest.raises(InputError):
        patch_lens_overlay(r, target=" never-tracked")


def test_surfacing_names_the_layer_and_the_patch_where_a_target_peaks(tiny_vlm: Any) -> None:
    r = vlm_logit_lens(tiny_vlm, "Describe it.", _image(), params=LensParams(targets=(" the",), top_k=3))
    (row,) = r.surfacing()
    probs = r.patch_target(" the")  # (layers, rows, cols)
    best = probs.reshape(probs.shape[0], -1).max(axis=1)
    assert row["peak_layer"] == int(best.argmax()) and np.isclose(row["peak_prob"], best.max())
    pr, pc = row["peak_patch"]
    assert probs[row["peak_layer"], pr, pc] == probs[row["peak_layer"]].max()
    ranks = r.patch_target(" the", "rank")
    top10 = [layer for layer in range(ranks.shape[0]) if (ranks[layer] <= 10).any()]
    assert row["first_top10_layer"] == (top10[0] if top10 else None)
    assert r.to_dict()["surfacing"][0]["peak_patch"] == [pr, pc]


def test_merged_lora_equals_the_adapted_model() -> None:
    import copy

    from explorer.vlm.tiny_vlm import add_lora, lora_state, merge_lora

    lm = make_tiny_lm("llama", seed=3)
    plain = copy.deepcopy(lm.hf_model)
    adapted = copy.deepcopy(lm.hf_model)
    names = add_lora(adapted, rank=4, alpha=8.0)
    assert len(names) == 4 * lm.n_layers
    with torch.no_grad():
        for n, p in adapted.named_parameters():
            if "lora_b" in n:
                p.normal_(0, 0.5)
    ids = torch.tensor([[5, 17, 230, 9, 41]])
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        before = plain(input_ids=ids).logits
        assert merge_lora(plain, lora_state(adapted), 8.0 / 4) == len(names)
        merged = plain(input_ids=ids).logits
    assert (expected - before).abs().max() > 1e-3  # the adapters do something
    assert torch.allclose(merged, expected, atol=1e-4)


# ---- colour statistics and warm starts -------------------------------------------------------
def test_colour_statistics_of_known_cells() -> None:
    from explorer.vlm.tiny_vlm import colour_statistics

    image = np.full((32, 32, 3), 200, dtype=np.uint8)  # grey background
    image[:16, :16] = (220, 30, 30)  # top-left cell: solid red
    image[16:, 16:24] = (245, 130, 20)  # bottom-right cell: half orange, half grey
    prep = Preprocessing(image_size=32)
    pixels = (torch.from_numpy(image).float() / 255 - torch.tensor(prep.mean)) / torch.tensor(prep.std)
    stats = colour_statistics(pixels.permute(2, 0, 1)[None], prep.mean, prep.std, grid=2)[0]
    assert stats.shape == (4, COLOUR_DIM)
    red, grey, orange = np.array([220, 30, 30]) / 255, np.full(3, 200 / 255), np.array([245, 130, 20]) / 255
    top_left, top_right, bottom_right = stats[0].numpy(), stats[1].numpy(), stats[3].numpy()
    assert np.allclose(top_left[:3], red, atol=1e-4) and np.allclose(top_left[3:6], 0, atol=1e-3)
    assert np.allclose(top_left[6:9], red, atol=3e-3) and top_left[9] == pytest.approx(190 / 255, abs=1e-4)
    assert np.allclose(top_right[:3], grey, atol=1e-4) and top_right[9] == pytest.approx(0, abs=1e-6)
    # the half-covered cell: its mean colour is washed out, its chroma-weighted colour is the shape's
    assert np.allclose(bottom_right[:3], (orange + grey) / 2, atol=1e-3)
    assert np.allclose(bottom_right[6:9], orange, atol=5e-3)


def test_the_colour_branch_reaches_the_visual_tokens(tiny_vlm: Any) -> None:
    projector = Projector(
        ProjectorConfig(vision_dim=8, lm_dim=6, hidden_dim=5, grid=2, colour_dim=COLOUR_DIM)
    )
    feats = torch.randn(1, 4, 8 + COLOUR_DIM)
    other = feats.clone()
    other[..., 8:] = torch.rand(1, 4, COLOUR_DIM)
    assert not torch.allclose(projector(feats), projector(other))
    with pytest.raises(ValueError, match="expects 18 features"):
        projector(feats[..., :8])
    inputs = tiny_vlm.prepare("What is this?", _image())
    assert inputs.inputs_embeds.shape[0] == len(inputs.modality)


def test_warm_start_adds_a_silent_colour_branch(tmp_path: Any) -> None:
    from dataclasses import asdict

    from safetensors.torch import save_file

    from explorer.vlm.train import warm_start_projector

    torch.manual_seed(0)
    old = Projector(ProjectorConfig(vision_dim=8, lm_dim=6, hidden_dim=5, grid=2))
    path = tmp_path / "projector.safetensors"
    state = {k: v.detach().contiguous() for k, v in old.state_dict().items()}
    save_file(state, str(path), metadata={"config": json.dumps(asdict(old.config))})
    new = warm_start_projector(path, COLOUR_DIM).eval()
    assert new.config.colour_dim == COLOUR_DIM and new.training is False
    feats = torch.randn(1, 4, 8)
    with torch.no_grad():
        expected = old.eval()(feats)
        got = new(torch.cat([feats, torch.rand(1, 4, COLOUR_DIM)], dim=-1))
    assert torch.allclose(got, expected, atol=1e-6)


def test_saved_lora_adapters_load_back_into_a_wrapped_model(tmp_path: Any) -> None:
    from safetensors.torch import save_file

    from explorer.vlm.tiny_vlm import add_lora, lora_state
    from explorer.vlm.train import load_lora_adapters

    lm = make_tiny_lm("llama", seed=3)
    import copy

    source, target = copy.deepcopy(lm.hf_model), copy.deepcopy(lm.hf_model)
    add_lora(source, rank=4, alpha=8.0)
    add_lora(target, rank=4, alpha=8.0)
    with torch.no_grad():
        for n, p in source.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    path = tmp_path / "lora.safetensors"
    save_file({k: v.contiguous() for k, v in lora_state(source).items()}, str(path))
    load_lora_adapters(target, path)
    ids = torch.tensor([[5, 17, 230, 9]])
    with torch.no_grad():
        assert torch.allclose(source(input_ids=ids).logits, target(input_ids=ids).logits, atol=1e-5)
    add_lora(wrong := copy.deepcopy(lm.hf_model), rank=2, alpha=4.0)
    with pytest.raises(ValueError, match="does not fit"):
        load_lora_adapters(wrong, path)


def test_sharded_evaluation_merges_into_the_full_run(tiny_vlm: Any) -> None:
    from explorer.vlm.evaluate import evaluate, merge_results

    full = evaluate(tiny_vlm, n_scenes=4, max_new_tokens=3)
    merged = merge_results([evaluate(tiny_vlm, n_scenes=4, shard=(k, 2), max_new_tokens=3) for k in range(2)])
    assert merged["counts"] == full["counts"] and merged["accuracy"] == full["accuracy"]
    assert merged["presence_by_kind"] == full["presence_by_kind"]
    assert sum(n for _, n in full["presence_by_kind"].values()) == 4
    assert [r["seed"] for r in merged["examples"]] == [r["seed"] for r in full["examples"]]
    assert [r["caption"]["said"] for r in merged["examples"]] == [
        r["caption"]["said"] for r in full["examples"]
    ]
    with pytest.raises(ValueError, match="shard"):
        evaluate(tiny_vlm, n_scenes=2, shard=(2, 2))
