"""Attribution of a VLM's answer to image patches, on tiny VLMs built in code."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm, make_tiny_projector
from PIL import Image
from torch import nn

from explorer.analysis.vlm_attribution import (
    VLMAttributionParams,
    VLMAttributionResult,
    build_scorer,
    vlm_attribution,
)
from explorer.backends.vision import Preprocessing, wrap_vision_model
from explorer.backends.vlm import MODALITY_IMAGE, MODALITY_TEXT, VisionLanguageModel, VLMInputs, projector_vlm
from explorer.errors import InputError
from explorer.vlm.tiny_vlm import Projector

IMAGE_SIZE = 32
PATCH = 8
PLANTED_GRID = (3, 3)
PLANTED = 5  # the decisive visual token (row 1, col 2)
PLANTED_PROMPT = "What is it?"


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
    return wrap_vision_model(
        backbone, model_id="tiny-dinov2", preprocessing=Preprocessing(image_size=IMAGE_SIZE), device="cpu"
    )


@pytest.fixture(scope="module")
def tiny_vlm() -> VisionLanguageModel:
    lm = make_tiny_lm("llama")
    return projector_vlm(lm, _tiny_vision(), _projector(lm), model_id="tiny-test-vlm")


def _projector(lm: Any) -> Projector:
    return make_tiny_projector(lm)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def planted_vlm() -> VisionLanguageModel:
    """A tiny VLM whose visual tokens are a 3 x 3 grid where every token is the same vector `a`
    except one, PLANTED, which is an orthogonal `b` scaled up: the answer depends on that token;
    replacing any other token by the mean visual token barely moves it. The LM's logits are
    scaled up so its next-token distribution is peaked (a random tiny LM is near uniform)."""
    lm = make_tiny_lm("llama", seed=3)
    with torch.no_grad():
        lm.hf_model.model.norm.weight.mul_(40)  # the final norm's gain scales every logit
    tiny_vlm = projector_vlm(lm, _tiny_vision(), _projector(lm), model_id="planted-base")
    d = int(tiny_vlm.lm.hf_model.config.hidden_size)
    n = PLANTED_GRID[0] * PLANTED_GRID[1]
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(d, generator=gen)
    b = torch.randn(d, generator=gen)
    b = b - (b @ a) / (a @ a) * a
    a, b = a / a.norm() * 4, b / b.norm() * 40
    return dataclasses.replace(tiny_vlm, model_id="planted-vlm", prepare_fn=_planted(tiny_vlm, a, b, n))


def _planted(tiny_vlm: VisionLanguageModel, a: torch.Tensor, b: torch.Tensor, n: int) -> Any:
    def prepare(prompt: str, image: Image.Image | None) -> VLMInputs:
        base = tiny_vlm.prepare_fn(prompt, image)
        assert base.inputs_embeds is not None
        pos = base.image_positions
        first, last = pos[0], pos[-1] + 1
        visual = a.repeat(n, 1)
        visual[PLANTED] = b
        embeds = torch.cat([base.inputs_embeds[:first], visual, base.inputs_embeds[last:]])
        ids = torch.cat(
            [base.input_ids[:first], torch.full((n,), tiny_vlm.image_token_id), base.input_ids[last:]]
        )
        modality = (
            [MODALITY_TEXT] * first + [MODALITY_IMAGE] * n + [MODALITY_TEXT] * (len(base.modality) - last)
        )
        return VLMInputs(embeds, ids, modality, PLANTED_GRID, base.image)

    return prepare


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), "RGB")


FAST = {"num_probes": 4, "max_steps": 12, "random_trials": 2}


# ---- planted signal ------------------------------------------------------------------------
def test_occlusion_ranks_the_planted_patch_first(planted_vlm: Any) -> None:
    r = vlm_attribution(planted_vlm, PLANTED_PROMPT, _image(), VLMAttributionParams(**FAST))
    assert r.ranking()[0] == PLANTED
    assert r.scores[PLANTED] > 0
    assert r.score_grid().shape == PLANTED_GRID


# ---- planted patch on a bag-of-words VLM: the answer depends on that patch alone ---------------
BAG_DIM = 8  # test_planted_signal.D_MODEL
BAG_TARGET = "dog"


class ThresholdSum(nn.Module):
    """The one block: (B, T, d) -> cumulative sum over positions, except that dimension 0 sums
    relu(x_0 - 2.5): only a token with x_0 > 2.5 (the planted patch) moves it, and neither the
    mean visual token nor any mix of the ordinary patches does."""

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = hidden.cumsum(dim=1)
        out[..., 0] = torch.relu(hidden[..., 0] - 2.5).cumsum(dim=1)
        return out


@pytest.fixture(scope="module")
def bag_vlm() -> VisionLanguageModel:
    """3 x 3 visual tokens, random in dimensions 1.., zero in dimension 0 except PLANTED (5.0)."""
    from conftest import bert_tokenizer
    from test_planted_signal import PlantedLM

    from explorer.backends import ArchitectureSpec, register_architecture
    from explorer.backends.language import wrap_model

    tok = bert_tokenizer()
    register_architecture(
        "planted_bag_of_words",
        ArchitectureSpec(blocks="blocks", final_norm="norm", unembed="lm_head", embed="embed"),
    )
    # the text planted test's bag of words: the LM head reads dimension 0 only (towards the target),
    # and a bias puts 5 other tokens above the target unless dimension 0 is large, so "answer in the
    # top-3" (ReAGent's stopping check) holds exactly when the planted patch is kept. Its one block is
    # swapped for ThresholdSum; its key token ("cat") is not in the prompt.
    module = PlantedLM(len(tok), tok.convert_tokens_to_ids("cat"), tok.convert_tokens_to_ids(BAG_TARGET))
    module.blocks = nn.ModuleList([ThresholdSum()])
    lm = wrap_model(module, tok, model_id="bag")
    n = PLANTED_GRID[0] * PLANTED_GRID[1]
    visual = torch.randn(n, BAG_DIM, generator=torch.Generator().manual_seed(1))
    visual[:, 0] = 0.0
    visual[PLANTED, 0] = 5.0

    def prepare(prompt: str, image: Image.Image | None) -> VLMInputs:
        ids = list(tok(prompt, add_special_tokens=False).input_ids)
        with torch.no_grad():
            text = lm.embed_module()(torch.tensor(ids)).float()
        embeds = torch.cat([text[:1], visual, text[1:]])
        all_ids = torch.tensor(ids[:1] + [int(tok.unk_token_id)] * n + ids[1:])
        modality = [MODALITY_TEXT] + [MODALITY_IMAGE] * n + [MODALITY_TEXT] * (len(ids) - 1)
        view = None if image is None else image.convert("RGB").resize((24, 24))
        return VLMInputs(embeds, all_ids, modality, PLANTED_GRID, view)

    return VisionLanguageModel(
        model_id="bag-vlm",
        lm=lm,
        weight_hash="bag",
        prepare_fn=prepare,
        image_token_id=int(tok.unk_token_id),
        chat=lambda q, img: q,
        n_visual_tokens=n,
    )


@pytest.mark.parametrize("method", ["occlusion", "reagent"])
def test_each_method_ranks_the_planted_patch_first_and_deletion_beats_random(
    bag_vlm: Any, method: str
) -> None:
    params = VLMAttributionParams(
        method=method,
        target=BAG_TARGET,
        keep_top_n=1,
        stop_top_k=3,
        num_probes=8,
        max_steps=200,
        random_trials=4,
    )
    r = vlm_attribution(bag_vlm, "what animal is it", _image(), params)
    assert r.ranking()[0] == PLANTED, (method, r.scores.round(3).tolist(), r.extras)
    others = np.delete(r.scores, PLANTED)
    assert r.scores[PLANTED] > others.max()
    if method == "reagent":
        assert r.extras["stopped_probes"] >= 1 and abs(float(r.scores.sum()) - 1) < 1e-4
    first = r.faithfulness["deletion"][0]  # 10% of 9 patches = 1: the planted one vs a random one
    assert first["patches"] == 1 and first["top_drop"] > first["random_drop"]
    assert r.faithfulness["auc_importance"] < r.faithfulness["auc_random"]
    assert r.curve["importance"][1] < r.curve["random"][1]


def test_reagent_returns_a_distribution_over_patches(planted_vlm: Any) -> None:
    params = VLMAttributionParams(method="reagent", keep_top_n=1, stop_top_k=1, num_probes=4, max_steps=8)
    r = vlm_attribution(planted_vlm, PLANTED_PROMPT, _image(), params)
    assert r.scores.shape == (PLANTED_GRID[0] * PLANTED_GRID[1],) and (r.scores >= 0).all()
    assert abs(float(np.sum(r.scores)) - 1.0) < 1e-4  # ReAGent's scores are a distribution


def test_deleting_the_planted_patch_beats_random_deletion(planted_vlm: Any) -> None:
    r = vlm_attribution(planted_vlm, PLANTED_PROMPT, _image(), VLMAttributionParams(**FAST))
    first = r.faithfulness["deletion"][0]
    assert first["patches"] == 1 and first["top_drop"] > first["random_drop"]
    assert r.faithfulness["auc_importance"] < r.faithfulness["auc_random"]


# ---- invariants ----------------------------------------------------------------------------
@pytest.mark.parametrize("baseline", ["mean", "blur"])
def test_deleting_nothing_changes_nothing(tiny_vlm: Any, baseline: str) -> None:
    prompt, image = "Describe it.", _image(1)
    params = VLMAttributionParams(baseline=baseline, **FAST)
    inputs = tiny_vlm.prepare(prompt, image)
    answer = [3, 5, 7]
    scorer = build_scorer(tiny_vlm, prompt, inputs, answer, params)
    lp, _ = scorer(torch.zeros(2, scorer.n, dtype=torch.bool))
    logits = tiny_vlm.forward(inputs, extra_ids=answer[:-1]).logits[0, -len(answer) :].float()
    expected = torch.log_softmax(logits, -1)[torch.arange(len(answer)), torch.tensor(answer)].sum()
    assert torch.allclose(lp, expected.expand(2).cpu(), atol=1e-4)
    # replacing every patch does change it (the baseline is not the image)
    full, _ = scorer(torch.ones(1, scorer.n, dtype=torch.bool))
    assert abs(float(full[0]) - float(expected.detach())) > 1e-6
    r = vlm_attribution(tiny_vlm, prompt, image, params)
    assert r.curve["patches"][0] == 0
    assert r.curve["importance"][0] == pytest.approx(np.exp(r.answer_logprob), rel=1e-5)
    assert r.curve["random"][0] == pytest.approx(np.exp(r.answer_logprob), rel=1e-5)


def test_batching_does_not_change_scores(tiny_vlm: Any) -> None:
    one = vlm_attribution(tiny_vlm, "Hi?", _image(), VLMAttributionParams(batch_size=1, **FAST))
    many = vlm_attribution(tiny_vlm, "Hi?", _image(), VLMAttributionParams(batch_size=64, **FAST))
    assert np.allclose(one.scores, many.scores, atol=1e-4)


def test_a_given_target_is_scored(tiny_vlm: Any) -> None:
    r = vlm_attribution(tiny_vlm, "Hi?", _image(), VLMAttributionParams(target=" the", **FAST))
    assert r.target_given and r.answer_ids == list(
        tiny_vlm.tokenizer(" the", add_special_tokens=False).input_ids
    )


# ---- API, store, CLI-level errors ----------------------------------------------------------
def test_api_stores_and_reopens(tiny_vlm: Any, tmp_store: Any) -> None:
    import explorer

    kw: dict[str, Any] = dict(image=_image(), method="reagent", db=tmp_store, **FAST)
    r = explorer.attribute(tiny_vlm, "Describe it.", **kw)
    assert isinstance(r, VLMAttributionResult) and r.run_id
    assert explorer.attribute(tiny_vlm, "Describe it.", **kw).run_id == r.run_id
    assert explorer.attribute(tiny_vlm, "Describe it.", **{**kw, "image": _image(3)}).run_id != r.run_id
    back = tmp_store.load(r.run_id)
    assert isinstance(back, VLMAttributionResult)
    assert np.allclose(back.scores, r.scores) and back.grid == r.grid and back.answer == r.answer
    assert back.image().size == r.image().size
    assert np.allclose(back.curve["importance"], r.curve["importance"])
    assert back.to_dict()["faithfulness"] == r.to_dict()["faithfulness"]


def test_text_only_model_with_an_image_is_refused(tmp_store: Any) -> None:
    import explorer

    with pytest.raises(InputError, match="text-only"):
        explorer.attribute("smollm2-135m", "hi", image=_image(), db=tmp_store)
    with pytest.raises(InputError, match="text-only"):
        explorer.attribute(make_tiny_lm("llama"), "hi", image=_image(), db=tmp_store)
    assert tmp_store.list_runs() == []


@pytest.mark.parametrize("data", [b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20])
def test_corrupt_images_are_refused(tiny_vlm: Any, data: bytes, tmp_store: Any) -> None:
    import explorer

    with pytest.raises(InputError):
        explorer.attribute(tiny_vlm, "hi", image=data, db=tmp_store)
    assert tmp_store.list_runs() == []


@pytest.mark.parametrize(
    "bad", [{"method": "saliency"}, {"baseline": "zeros"}, {"answer_tokens": 0}, {"bogus": 1}]
)
def test_bad_parameters_are_refused(tiny_vlm: Any, bad: dict[str, Any], tmp_store: Any) -> None:
    import explorer

    with pytest.raises(InputError):
        explorer.attribute(tiny_vlm, "hi", image=_image(), db=tmp_store, **bad)
    assert tmp_store.list_runs() == []


def test_prompt_over_the_limit_with_visual_tokens_is_refused(tiny_vlm: Any, tmp_store: Any) -> None:
    import explorer
    from explorer.config import Settings

    with pytest.raises(InputError, match="including 4 visual tokens"):
        explorer.attribute(
            tiny_vlm,
            "Describe it.",
            image=_image(),
            db=tmp_store,
            settings=Settings.from_env(max_prompt_tokens=6),
        )
    assert tmp_store.list_runs() == []


def test_figures_draw_from_a_reopened_run(tiny_vlm: Any, tmp_store: Any) -> None:
    import explorer
    from explorer.plots import figures_for

    r = explorer.attribute(tiny_vlm, "Describe it.", image=_image(), db=tmp_store, **FAST)
    back = tmp_store.load(r.run_id)
    specs = {s.name: s for s in figures_for(back)}
    assert set(specs) == {"patch_attribution", "deletion_curve", "deletion_table"}
    for spec in specs.values():
        fig = spec.build(back)
        assert fig.data and spec.data(back).num_rows > 0
    overlay = specs["patch_attribution"].build(back)
    heat = [t for t in overlay.data if t.type == "heatmap"][0]
    assert np.allclose(np.asarray(heat.z), back.score_grid())
    assert sum(1 for t in np.asarray(heat.text).ravel() if t) == min(5, len(back.scores))  # top-5 numbered
    curve = specs["deletion_curve"].build(back)
    assert [len(t.y) for t in curve.data] == [len(back.curve["fraction"])] * 2


def test_cli_bad_input_exits_2_and_stores_nothing(tmp_path: Any, capsys: Any, monkeypatch: Any) -> None:
    from pathlib import Path

    from explorer.cli import main
    from explorer.store import Store

    db = str(tmp_path / "cli.duckdb")
    good = tmp_path / "scene.png"
    _image().save(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    huge = tmp_path / "huge.png"
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(noise, "RGB").save(huge)
    monkeypatch.setenv("EXPLORER_MAX_IMAGE_BYTES", str(100_000))  # the others are a few kB
    cases = [
        (["--image", str(good), "--model", "smollm2-135m"], "text-only"),
        (["--image", str(corrupt)], "image"),
        (["--image", str(huge)], "bytes"),
        (["--image", str(good), "--method", "all"], "occlusion"),
        (["--image", str(good), "--contrast", " x"], "contrastive"),
        (["--target", " x", "--baseline", "blur"], "--baseline"),
    ]
    for argv, message in cases:
        assert main(["attribute", "--prompt", "hi", *argv, "--db", db]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (argv, err)
    store = Store.open(Path(db))
    assert store.list_runs() == []
    store.close()
