"""Visual tokens ("vlm_tokens") past the full-token threshold: the attention views are computed
block by block (`streamed_text_image`, as "vlm_attention"), never every block's (T, T) matrices
at once; stored bounded, equal to the full path.

Fixtures as in test_vlm_attention_long: the tiny VLM of the VLM tests, and the same vision tower
and projector in front of a tiny random Llama that takes 4,096 positions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from conftest import LONG_TOKENS, long_prompt
from test_vlm import _image, tiny_vlm  # noqa: F401  (the module-scoped tiny VLM fixture)
from test_vlm_attention_long import long_vlm  # noqa: F401  (the 4,096-position tiny VLM)

import explorer.vlm.attention as vatt
import explorer.vlm.tokens as vtok
from explorer.config import Settings
from explorer.plots import figures_for
from explorer.vlm.tokens import TokenParams, VisualTokensResult, visual_tokens

PROMPT = "What is this?"
ARRAYS = (
    "norms",
    "received",
    "categories",
    "delta_logprob",
    "delta_hidden",
    "attention",
    "rollout",
    "shares",
)


def _same_tables(a: dict[str, pa.Table], b: dict[str, pa.Table]) -> None:
    """Every stored table equal, column by column (numbers to float32 precision)."""
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].column_names == b[name].column_names, name
        for col in a[name].column_names:
            x = a[name].column(col).to_numpy(zero_copy_only=False)
            y = b[name].column(col).to_numpy(zero_copy_only=False)
            np.testing.assert_allclose(x, y, atol=1e-5, err_msg=f"{name}.{col}")


def test_streamed_tokens_equal_the_full_path_on_a_short_prompt(tiny_vlm: Any, monkeypatch: Any) -> None:  # noqa: F811
    params = TokenParams(answer_tokens=2, batch_size=3, sink_norm_k=1.01, sink_share_k=0.01)  # some sinks
    full = visual_tokens(tiny_vlm, PROMPT, _image(), params=params)

    def no_full_trace(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the streamed path must not capture every block's attention")

    monkeypatch.setattr(vtok, "capture_vlm", no_full_trace)
    streamed = visual_tokens(tiny_vlm, PROMPT, _image(), params=params, full_tokens=0)
    assert full.query_spans is None and streamed.query_spans is None
    assert (full.categories == vtok.SINK).any()
    assert full.tokens == streamed.tokens and full.query_positions == streamed.query_positions
    assert full.answer == streamed.answer and full.n_heads == streamed.n_heads
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(streamed, name), getattr(full, name), atol=1e-5, err_msg=name)
    assert (full.categories == streamed.categories).all()
    _same_tables(full.to_tables(), streamed.to_tables())
    assert any("block by block" in n for n in streamed.notes)
    assert not any("block by block" in n for n in full.notes)


def test_token_query_blocks_are_means_of_the_exact_rows(
    tiny_vlm: Any,  # noqa: F811
    tmp_store: Any,
    monkeypatch: Any,
) -> None:
    prompt = " ".join(["the red cat sat on the mat"] * 4)
    params = TokenParams(answer_tokens=2, batch_size=4)
    full = visual_tokens(tiny_vlm, prompt, _image(), params=params)
    monkeypatch.setattr(vatt, "MAX_QUERY_ROWS", 8)
    monkeypatch.setattr(vatt, "EXACT_LAST_QUERIES", 3)
    blocked = visual_tokens(tiny_vlm, prompt, _image(), params=params, full_tokens=0)
    spans = blocked.query_spans
    assert spans is not None and len(spans) == 8 and len(full.query_positions) > 8
    q0 = full.query_positions[0]
    for row, (a, b) in enumerate(spans):
        exact = slice(a - q0, b - q0 + 1)
        np.testing.assert_allclose(
            blocked.attention[:, :, row], full.attention[:, :, exact].mean(axis=2), atol=1e-5
        )
        np.testing.assert_allclose(blocked.rollout[:, row], full.rollout[:, exact].mean(axis=1), atol=1e-5)
    for name in ("norms", "received", "categories", "delta_logprob", "delta_hidden", "shares"):  # exact
        np.testing.assert_allclose(getattr(blocked, name), getattr(full, name), atol=1e-5, err_msg=name)
    assert blocked.to_dict()["query_blocks"] == [list(u) for u in spans]
    run_id = tmp_store.save(
        blocked, model_id=blocked.model, weight_hash="w", prompt=prompt, params=blocked.params, duration_s=0.0
    )
    back = tmp_store.load(run_id)
    assert isinstance(back, VisualTokensResult) and back.query_spans == spans
    _same_tables(back.to_tables(), blocked.to_tables())


def test_visual_tokens_4096_positions_is_bounded_and_reopens(
    long_vlm: Any,  # noqa: F811
    tmp_store: Any,
    monkeypatch: Any,
) -> None:
    import explorer

    def no_full_trace(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a long sequence must not capture every block's attention at once")

    monkeypatch.setattr(vtok, "capture_vlm", no_full_trace)
    settings = Settings.from_env()
    assert settings.max_prompt_tokens == LONG_TOKENS and settings.attention_full_tokens < LONG_TOKENS
    r = explorer.visual_tokens(
        long_vlm,
        long_prompt(LONG_TOKENS - 40),
        _image(),
        params=TokenParams(answer_tokens=2, batch_size=1),
        db=tmp_store,
        settings=settings,
    )
    assert isinstance(r, VisualTokensResult) and r.run_id
    n_pos, L, H, n_img = len(r.tokens), r.n_layers, r.n_heads, r.n_image
    assert LONG_TOKENS - 64 <= n_pos <= LONG_TOKENS + 2, n_pos
    assert len(r.query_positions) > vatt.MAX_QUERY_ROWS and r.query_spans is not None
    assert r.attention.shape == (L, H, vatt.MAX_QUERY_ROWS, n_img)
    assert r.rollout.shape == (L, vatt.MAX_QUERY_ROWS, n_img)
    np.testing.assert_allclose(r.shares.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(r.received.sum(axis=1), 1.0, atol=1e-5)
    with tmp_store.connect() as cur:
        tables = [
            str(t[0])
            for t in cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'vlm\\_tokens\\_%' ESCAPE '\\'"
            ).fetchall()
        ]
        stored = sum(
            int(cur.execute(f"SELECT count(*) FROM {t} WHERE run_id = $1", [str(r.run_id)]).fetchone()[0])
            for t in tables
        )
    # bounded: O(L·H·rows·n_img), independent of the 4,000-odd queries (a full matrix: L·H·T²)
    assert 0 < stored < L * H * 2 * vatt.MAX_QUERY_ROWS * n_img + 10 * L * n_img + 1000, stored
    back = tmp_store.load(str(r.run_id))
    assert isinstance(back, VisualTokensResult) and back.query_spans == r.query_spans
    _same_tables(back.to_tables(), r.to_tables())
    for spec in figures_for(back):
        assert spec.build(back).data and spec.data(back).num_rows > 0
