"""Text -> image attention inside a VLM (kind "vlm_attention"), on a tiny VLM built in code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from test_vlm import _image, tiny_vlm  # noqa: F401  (the module-scoped tiny VLM fixture)

from explorer.analysis.attention import attention_rollout
from explorer.backends.vlm import capture_vlm, generate
from explorer.config import Settings
from explorer.errors import InputError
from explorer.vlm.attention import (
    VLMAttentionParams,
    VLMAttentionResult,
    attention_shares,
    text_queries,
    visual_sinks,
    vlm_attention,
)

PROMPT = "What is this?"


@pytest.fixture(scope="module")
def result(tiny_vlm: Any) -> VLMAttentionResult:  # noqa: F811
    return vlm_attention(tiny_vlm, PROMPT, _image(), params=VLMAttentionParams(generate=3))


def test_queries_are_the_text_after_the_image_including_the_answer(result: VLMAttentionResult) -> None:
    img = result.image_positions
    assert result.n_image == 4 and result.grid == [2, 2]
    assert result.query_positions == [q for q in range(img[-1] + 1, len(result.tokens))]
    assert len(result.answer) >= 1 and result.query_positions[-1] == len(result.tokens) - 1
    assert result.prompt_len == len(result.tokens) - len(result.answer)
    assert text_queries(["text", "text"]) == []  # no image: nothing attends to it


def test_attention_and_rollout_equal_a_fresh_trace(tiny_vlm: Any, result: VLMAttentionResult) -> None:  # noqa: F811
    inputs = tiny_vlm.prepare(PROMPT, _image())
    answer = generate(tiny_vlm, inputs, 3)
    trace, _ = capture_vlm(tiny_vlm, inputs, answer, attentions=True)
    att = trace.attentions.numpy().astype(np.float64)
    q, img = result.query_positions, inputs.image_positions
    np.testing.assert_allclose(result.attention, att[:, :, q][:, :, :, img], atol=1e-5)
    np.testing.assert_allclose(result.rollout, attention_rollout(att)[:, q][:, :, img], atol=1e-5)
    np.testing.assert_allclose(result.head_image, att[:, :, q][:, :, :, img].sum(-1).mean(-1), atol=1e-5)
    # shares are a partition of each query's attention: image + text + sink = 1
    np.testing.assert_allclose(result.shares.sum(axis=1), 1.0, atol=1e-6)
    assert (result.shares >= 0).all()
    # without visual sinks, image share = mean attention on the image (position 0 is text)
    none = np.zeros_like(result.sinks)
    plain = attention_shares(att, q, img, none)
    np.testing.assert_allclose(plain[:, 0], result.head_image.mean(axis=1), atol=1e-6)


def test_a_visual_sink_moves_its_attention_from_image_to_sink() -> None:
    rng = np.random.default_rng(0)
    att = rng.random((1, 2, 6, 6))
    att /= att.sum(-1, keepdims=True)
    img, queries = [1, 2, 3], [4, 5]
    sinks = np.array([[False, True, False]])
    with_sink = attention_shares(att, queries, img, sinks)[0]
    without = attention_shares(att, queries, img, np.zeros_like(sinks))[0]
    moved = att[0][:, queries, 2].mean()
    assert with_sink[0] == pytest.approx(without[0] - moved) and with_sink[2] == pytest.approx(
        without[2] + moved
    )
    assert with_sink[1] == pytest.approx(without[1])
    norms = np.array([[1.0, 1.0, 9.0], [1.0, 1.0, 1.0]])
    received = np.array([[0.2, 0.1, 0.7]])
    assert visual_sinks(norms, received, 4.0, 2.0).tolist() == [[False, False, True]]
    assert visual_sinks(norms, np.array([[0.4, 0.3, 0.3]]), 4.0, 2.0).tolist() == [[False, False, False]]


def test_api_stores_reopens_and_draws(tiny_vlm: Any, tmp_store: Any) -> None:  # noqa: F811
    import explorer
    from explorer.plots import figures_for

    r = explorer.attention(tiny_vlm, PROMPT, image=_image(), generate=2, db=tmp_store)
    assert isinstance(r, VLMAttentionResult) and r.run_id
    assert explorer.attention(tiny_vlm, PROMPT, image=_image(), generate=2, db=tmp_store).run_id == r.run_id
    assert explorer.attention(tiny_vlm, PROMPT, image=_image(5), generate=2, db=tmp_store).run_id != r.run_id
    back = tmp_store.load(r.run_id)
    assert isinstance(back, VLMAttentionResult)
    for name in ("attention", "rollout", "shares", "head_image", "norms"):
        np.testing.assert_allclose(getattr(back, name), getattr(r, name), atol=1e-6)
    assert (back.sinks == r.sinks).all() and back.image().size == r.image().size
    out = back.to_dict()
    assert json.loads(json.dumps(out)) == out
    assert out["layers"][0]["layer"] == 1 and len(out["layers"]) == r.n_layers
    assert np.asarray(out["layers"][-1]["heads"][0]["attention"]).shape == (2, 2)
    assert out["query"]["position"] == r.query_positions[-1] and out["query"]["generated"]
    first = back.to_dict_at(r.query_positions[0])
    assert first["query"]["position"] == r.query_positions[0] and not first["query"]["generated"]
    with pytest.raises(InputError, match="not a text query"):
        back.to_dict_at(0)
    specs = {s.name: s for s in figures_for(back)}
    assert {"text_to_image_attention", "attention_shares", "image_share_heads"} <= set(specs)
    for spec in specs.values():
        fig = spec.build(back)
        assert fig.data and spec.data(back).num_rows > 0
    fig = specs["text_to_image_attention"].build(back, view="rollout", query=r.query_positions[0])
    assert len(fig.frames) == r.n_layers


def test_bad_input_is_refused_and_stores_nothing(tiny_vlm: Any, tmp_store: Any, tmp_path: Path) -> None:  # noqa: F811
    from conftest import make_tiny_lm

    import explorer

    for model in ("smollm2-135m", make_tiny_lm("llama")):
        with pytest.raises(InputError, match="text-only"):
            explorer.attention(model, PROMPT, image=_image(), db=tmp_store)
    with pytest.raises(InputError, match="vision encoder"):
        explorer.attention("dinov2-small-focus", PROMPT, image=_image(), db=tmp_store)
    for data in (b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 20):
        with pytest.raises(InputError):
            explorer.attention(tiny_vlm, PROMPT, image=data, db=tmp_store)
    with pytest.raises(InputError, match="pixels"):
        big = Settings.from_env(max_image_pixels=30 * 30)
        explorer.attention(tiny_vlm, PROMPT, image=_image(), db=tmp_store, settings=big)
    with pytest.raises(InputError, match="including 4 visual tokens"):
        explorer.attention(
            tiny_vlm, PROMPT, image=_image(), db=tmp_store, settings=Settings.from_env(max_prompt_tokens=6)
        )
    with pytest.raises(InputError, match="generate"):
        explorer.attention(tiny_vlm, PROMPT, image=_image(), generate=-1, db=tmp_store)
    with pytest.raises(InputError, match="flow"):
        explorer.attention(tiny_vlm, PROMPT, image=_image(), flow=True, db=tmp_store)
    with pytest.raises(InputError, match="empty"):
        explorer.attention(tiny_vlm, " ", image=_image(), db=tmp_store)
    assert tmp_store.list_runs() == []


def test_cli_bad_input_exits_2_and_stores_nothing(tmp_path: Path, capsys: Any, monkeypatch: Any) -> None:
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
        (["--image", str(good), "--prompt", "hi", "--model", "smollm2-135m"], "text-only"),
        (["--image", str(corrupt), "--prompt", "hi"], "image"),
        (["--image", str(huge), "--prompt", "hi"], "bytes"),
        (["--image", str(good), "--model", "tiny-vlm"], "--prompt"),
        (["--prompt", "hi", "--generate", "3"], "--generate"),
        (["--image", str(good), "--prompt", "hi", "--flow"], "flow"),
        ([], "give --prompt"),
    ]
    for argv, message in cases:
        assert main(["attention", *argv, "--db", db]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and message in err, (argv, err)
    store = Store.open(Path(db))
    assert store.list_runs() == []
    store.close()


def test_settings_accept_max_prompt_tokens() -> None:
    assert Settings.from_env(max_prompt_tokens=6).max_prompt_tokens == 6


@pytest.mark.parametrize("arch", ["llava", "llava_next", "qwen2_vl"])
def test_hub_vlms_give_text_to_image_attention(arch: str) -> None:
    """Hub VLMs run their own forward (Qwen2-VL: M-RoPE); the traced attention is theirs."""
    from test_vlm_hub import _picture, tiny_hub_vlm

    vlm = tiny_hub_vlm(arch)
    r = vlm_attention(vlm, "What is this?", _picture(), params=VLMAttentionParams(generate=2))
    n = r.grid[0] * r.grid[1]
    assert r.n_image >= n and r.attention.shape[-1] == n and r.attention.shape[2] == len(r.query_positions)
    assert np.asarray(r.to_dict()["rollout"]).shape == tuple(r.grid)
    np.testing.assert_allclose(r.shares.sum(axis=1), 1.0, atol=1e-5)
    assert any("own forward" in note for note in r.notes)
