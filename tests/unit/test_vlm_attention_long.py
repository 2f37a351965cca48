"""VLM text -> image attention ("vlm_attention") past the full-token threshold: computed block
by block (never every block's (T, T) matrices at once), stored bounded, equal to the full path.

A tiny VLM is built in code: the tiny DINOv2 and projector of the VLM tests in front of a tiny
random Llama that takes 4,096 positions (conftest's `tiny_long_lm`, asserted tiny).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from conftest import LONG_TOKENS, long_prompt, make_tiny_projector
from test_vlm import _image, _tiny_vision, tiny_vlm  # noqa: F401  (the module-scoped tiny VLM fixture)

import explorer.vlm.attention as vatt
from explorer.backends.vlm import projector_vlm
from explorer.config import Settings
from explorer.plots import figures_for
from explorer.vlm.attention import VLMAttentionParams, VLMAttentionResult, vlm_attention

PROMPT = "What is this?"
ARRAYS = ("attention", "rollout", "shares", "head_image", "norms")


def _assert_same(a: VLMAttentionResult, b: VLMAttentionResult) -> None:
    assert a.tokens == b.tokens and a.query_positions == b.query_positions and a.answer == b.answer
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), atol=1e-5, err_msg=name)
    assert (a.sinks == b.sinks).all()


def test_streamed_equals_the_full_path_on_a_short_prompt(tiny_vlm: Any) -> None:  # noqa: F811
    params = VLMAttentionParams(generate=3, sink_norm_k=1.01, sink_share_k=0.01)  # some sinks to compare
    full = vlm_attention(tiny_vlm, PROMPT, _image(), params=params)
    streamed = vlm_attention(tiny_vlm, PROMPT, _image(), params=params, full_tokens=0)
    assert full.query_spans is None and streamed.query_spans is None
    assert full.sinks.any()
    _assert_same(full, streamed)
    assert any("block by block" in n for n in streamed.notes) and not full.notes


def test_query_blocks_are_means_of_the_exact_rows(tiny_vlm: Any, tmp_store: Any, monkeypatch: Any) -> None:  # noqa: F811
    prompt = " ".join(["the red cat sat on the mat"] * 6)  # about 45 text queries after the image
    full = vlm_attention(tiny_vlm, prompt, _image(), params=VLMAttentionParams(generate=2))
    monkeypatch.setattr(vatt, "MAX_QUERY_ROWS", 12)
    monkeypatch.setattr(vatt, "EXACT_LAST_QUERIES", 4)
    blocked = vlm_attention(tiny_vlm, prompt, _image(), params=VLMAttentionParams(generate=2), full_tokens=0)
    spans = blocked.query_spans
    assert spans is not None and len(spans) == 12 and len(full.query_positions) > 12
    # the spans tile the queries in order: 8 blocks, then the last 4 queries one each
    assert spans[0][0] == full.query_positions[0] and spans[-1][1] == full.query_positions[-1]
    assert all(b + 1 == c for (_, b), (c, _) in zip(spans[:-1], spans[1:], strict=True))
    assert [b - a for a, b in spans[-4:]] == [0, 0, 0, 0] and all(b > a for a, b in spans[:8])
    q0 = full.query_positions[0]
    for row, (a, b) in enumerate(spans):
        exact = slice(a - q0, b - q0 + 1)
        np.testing.assert_allclose(
            blocked.attention[:, :, row], full.attention[:, :, exact].mean(axis=2), atol=1e-5
        )
        np.testing.assert_allclose(blocked.rollout[:, row], full.rollout[:, exact].mean(axis=1), atol=1e-5)
    for name in ("shares", "head_image", "norms"):  # every query, exactly
        np.testing.assert_allclose(getattr(blocked, name), getattr(full, name), atol=1e-5)
    # a position inside a block picks the block's row; JSON, store, figures and UI choices follow
    a, b = spans[1]
    assert blocked.query_index(a + 1) == 1
    out = blocked.to_dict_at(a + 1)
    assert json.loads(json.dumps(out)) == out
    assert out["query"] == {
        "position": a, "token": blocked.tokens[a], "generated": False,
        "last_position": b, "n_tokens": b - a + 1, "block_mean": True,
    }  # fmt: skip
    assert out["query_blocks"][1] == [a, b]
    run_id = tmp_store.save(
        blocked, model_id=blocked.model, weight_hash="w", prompt=prompt, params=blocked.params, duration_s=0.0
    )
    back = tmp_store.load(run_id)
    assert isinstance(back, VLMAttentionResult) and back.query_spans == spans
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(back, name), getattr(blocked, name), atol=1e-6)
    specs = {s.name: s for s in figures_for(back)}
    fig = specs["text_to_image_attention"].build(back, query=a)
    assert f"positions {a}–{b}" in fig.layout.title.text
    table = specs["text_to_image_attention"].data(back)
    assert table.num_rows == back.attention.size and set(table["query_last_position"].to_pylist()) >= {b}
    from explorer.ui.attention_tab import vlm_query_choices

    choices = vlm_query_choices(back)
    assert len(choices) == 12 and choices[1] == (f"{a}–{b} · mean of {b - a + 1} tokens", a)


@pytest.fixture(scope="module")
def long_vlm(tiny_long_lm: Any) -> Any:
    return projector_vlm(
        tiny_long_lm, _tiny_vision(), make_tiny_projector(tiny_long_lm), model_id="tiny-vlm-long"
    )


def _stored_rows(store: Any, run_id: str) -> dict[str, int]:
    with store.connect() as cur:
        tables = [
            str(r[0])
            for r in cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'vlm\\_attention\\_%' ESCAPE '\\'"
            ).fetchall()
        ]
        return {
            t: int(cur.execute(f"SELECT count(*) FROM {t} WHERE run_id = $1", [run_id]).fetchone()[0])
            for t in tables
        }


def test_vlm_attention_4096_positions_is_bounded_and_reopens(
    long_vlm: Any, tmp_store: Any, monkeypatch: Any
) -> None:
    import explorer

    def no_full_trace(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a long sequence must not capture every block's attention at once")

    monkeypatch.setattr(vatt, "capture_vlm", no_full_trace)
    generate = 3
    prompt = long_prompt(LONG_TOKENS - 40)  # + chat template, 4 visual tokens and the answer: ~4,096
    settings = Settings.from_env()
    assert settings.max_prompt_tokens == LONG_TOKENS and settings.attention_full_tokens < LONG_TOKENS
    r = explorer.attention(
        long_vlm, prompt, image=_image(), generate=generate, db=tmp_store, settings=settings
    )
    assert isinstance(r, VLMAttentionResult) and r.run_id
    n_pos, L, H, cells = len(r.tokens), r.n_layers, r.n_heads, r.grid[0] * r.grid[1]
    assert LONG_TOKENS - 64 <= n_pos <= LONG_TOKENS + generate, n_pos
    assert len(r.query_positions) > vatt.MAX_QUERY_ROWS and r.query_spans is not None
    assert r.attention.shape == (L, H, vatt.MAX_QUERY_ROWS, cells)
    assert r.rollout.shape == (L, vatt.MAX_QUERY_ROWS, cells)
    np.testing.assert_allclose(r.shares.sum(axis=1), 1.0, atol=1e-5)
    # the rollout rows sum to at most 1 (the mass left on the grid), attention rows are probabilities
    assert (r.rollout >= 0).all() and (r.rollout.sum(axis=-1) <= 1 + 1e-6).all()
    assert (r.attention >= 0).all() and (r.attention.sum(axis=-1) <= 1 + 1e-6).all()
    rows = _stored_rows(tmp_store, str(r.run_id))
    assert rows["vlm_attention_attention"] == L * H * vatt.MAX_QUERY_ROWS * cells
    # bounded: O(L·H·rows·cells), independent of the 4,000-odd queries (a full matrix: L·H·T²)
    assert sum(rows.values()) < L * H * 2 * vatt.MAX_QUERY_ROWS * cells + 10 * L * cells + 1000, rows
    back = tmp_store.load(str(r.run_id))
    assert isinstance(back, VLMAttentionResult) and back.query_spans == r.query_spans
    np.testing.assert_allclose(back.attention, r.attention, atol=1e-6)
    assert back.to_dict()["query"]["generated"] and back.to_dict()["query"]["position"] == n_pos - 1
    for spec in figures_for(back):
        assert spec.build(back).data and spec.data(back).num_rows > 0


@pytest.mark.parametrize("arch", ["llava", "llava_next", "qwen2_vl"])
def test_hub_vlms_streamed_equal_their_full_path(arch: str) -> None:
    """Hub VLMs run their own forward (M-RoPE, image masks) inside the block-by-block pass too."""
    from test_vlm_hub import _picture, tiny_hub_vlm

    vlm = tiny_hub_vlm(arch)
    params = VLMAttentionParams(generate=2)
    full = vlm_attention(vlm, PROMPT, _picture(), params=params)
    _assert_same(full, vlm_attention(vlm, PROMPT, _picture(), params=params, full_tokens=0))
