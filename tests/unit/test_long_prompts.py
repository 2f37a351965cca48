"""Every analysis takes a 4,096-token prompt (the default `EXPLORER_MAX_PROMPT_TOKENS`) without
keeping O(layers x heads x n^2) or O(layers x n x vocab) in memory or in the store.

Each test runs one analysis on a tiny random Llama with 4,096 positions (built in code,
asserted tiny), checks that the run completes, is stored and reopens from the store, and, for
attention, that what is stored is bounded. Invariants: block-aggregated attention rows sum to
1, and the long-prompt (streamed) path on a short prompt equals the full matrices.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import LONG_TOKENS, long_prompt

from explorer.analysis.attention import (
    AttentionResult,
    attention_from_trace,
    attention_head_window,
    block_aggregate,
    streamed_attention,
)
from explorer.api.attention import attention
from explorer.backends.language import capture, encode
from explorer.config import Settings


def test_default_prompt_limit_is_4096() -> None:
    assert Settings().max_prompt_tokens == 4096
    assert Settings().max_prompt_chars == 4096 * Settings().max_prompt_chars_per_token


def _stored_bytes(store: Any, run_id: str) -> int:
    """Bytes of the run's rows in the store's result tables (as Arrow buffers)."""
    with store.connect() as cur:
        tables = [
            str(r[0])
            for r in cur.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'attention_%'"
            ).fetchall()
        ]
        return sum(
            cur.sql(f"SELECT * FROM {t} WHERE run_id = $1", params=[run_id]).to_arrow_table().nbytes
            for t in tables
        )


def test_attention_4096_tokens_is_bounded_and_reopens(tiny_long_lm: Any, tmp_store: Any) -> None:
    prompt = long_prompt()
    res = attention(tiny_long_lm, prompt, db=tmp_store)
    assert isinstance(res, AttentionResult) and res.seq_len == LONG_TOKENS and res.is_blocked
    n_l, n_h = res.n_layers, res.n_heads
    full_bytes = n_l * n_h * LONG_TOKENS**2 * 4
    stored = _stored_bytes(tmp_store, str(res.run_id))
    assert stored < full_bytes / 20, (stored, full_bytes)  # O(L·H·(blocks² + n) + L·n·k), not O(L·H·n²)
    loaded = tmp_store.load(str(res.run_id))
    assert isinstance(loaded, AttentionResult) and loaded.spans == res.spans
    np.testing.assert_array_equal(loaded.attentions, res.attentions)
    np.testing.assert_array_equal(loaded.rollout, res.rollout)
    assert loaded.received is not None and loaded.top_keys is not None
    np.testing.assert_array_equal(loaded.top_keys, res.top_keys)
    # block-aggregated rows still sum to 1 (heads, mean and rollout)
    np.testing.assert_allclose(res.attentions.sum(-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(res.rollout.sum(-1), 1.0, atol=1e-4)
    # every figure and data export builds from the reopened run
    from explorer.plots import figures_for

    view = {"layer": 1, "head": 1, "token": LONG_TOKENS - 1, "sinks": [0, 5]}
    for spec in figures_for(loaded):
        fig = spec.figure(loaded, view)
        assert (
            fig.data
            and sum(np.asarray(t.z).size for t in fig.data if getattr(t, "z", None) is not None) < 200_000
        )
        assert spec.table(loaded, view).num_rows > 0
    # one head's exact matrix on demand (the model is available): a window of the full matrix
    window = attention_head_window(
        tiny_long_lm, res.input_ids, layer=1, head=0, start=LONG_TOKENS - 64, size=64
    )
    assert window.shape == (64, 64)
    np.testing.assert_allclose(np.tril(window).sum(-1) <= 1.0 + 1e-5, True)


def test_streamed_attention_equals_full_matrices_on_a_short_prompt(tiny_llama: Any) -> None:
    ids = encode(tiny_llama, "The cat sat on the mat, and the dog ran to the park.", 512)
    n = int(ids.numel())
    special = list(tiny_llama.tokenizer.all_special_ids)
    full = attention_from_trace(capture(tiny_llama, ids, attentions=True), model="tiny", special_ids=special)
    blocked = streamed_attention(tiny_llama, ids, max_blocks=n, top_k=n)  # one block per token, every key
    np.testing.assert_allclose(blocked.attentions, full.attentions, atol=1e-6)
    np.testing.assert_allclose(blocked.rollout, full.rollout, atol=1e-5)
    np.testing.assert_allclose(blocked.entropy, full.entropy, atol=1e-4)
    np.testing.assert_allclose(blocked.sink_share, full.sink_share, atol=1e-6)
    np.testing.assert_allclose(blocked.delimiter_share, full.delimiter_share, atol=1e-6)
    np.testing.assert_allclose(blocked.sink_share_for([0, 3]), full.sink_share_for([0, 3]), atol=1e-6)
    # top-k storage with k = n is the full matrix (mean over heads)
    assert blocked.top_keys is not None and blocked.top_weights is not None
    rebuilt = np.zeros((full.n_layers, n, n), dtype=np.float32)
    for layer in range(full.n_layers):
        rebuilt[layer][np.arange(n)[:, None], blocked.top_keys[layer]] = blocked.top_weights[layer]
    np.testing.assert_allclose(rebuilt, full.attentions.mean(axis=1), atol=1e-6)
    # fewer blocks: the same numbers as block-aggregating the full matrices
    coarse = streamed_attention(tiny_llama, ids, max_blocks=4)
    assert coarse.spans is not None and len(coarse.spans) <= 4
    size = coarse.spans[0][1] + 1
    for layer in range(full.n_layers):
        expected, _ = (
            block_aggregate(full.attentions[layer, 1], -(-n // size)) if n % size == 0 else (None, None)
        )
        if expected is not None:
            np.testing.assert_allclose(coarse.attentions[layer, 1], expected, atol=1e-6)
    np.testing.assert_allclose(coarse.attentions.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(coarse.rollout.sum(-1), 1.0, atol=1e-5)


def test_head_window_matches_the_full_matrix(tiny_llama: Any) -> None:
    ids = encode(tiny_llama, "The cat sat on the mat, and the dog ran to the park.", 512)
    full = attention_from_trace(capture(tiny_llama, ids, attentions=True), model="tiny")
    window = attention_head_window(tiny_llama, ids.tolist(), layer=2, head=1, start=3, size=5)
    np.testing.assert_allclose(window, full.attentions[2, 1, 3:8, 3:8], atol=1e-6)
    mean = attention_head_window(tiny_llama, ids.tolist(), layer=0, head=None, start=0, size=4)
    np.testing.assert_allclose(mean, full.attentions[0].mean(0)[:4, :4], atol=1e-6)


@pytest.mark.parametrize("unused", [None])
def test_tiny_long_model_is_tiny(tiny_long_lm: Any, unused: Any) -> None:
    assert tiny_long_lm.parameter_count() < 3_000_000
    assert torch.is_tensor(next(tiny_long_lm.hf_model.parameters()))


# ---- every other analysis at 4,096 tokens --------------------------------------------------
def test_logit_lens_4096_tokens(tiny_long_lm: Any, tmp_store: Any) -> None:
    from explorer.analysis.logit_lens import LensResult
    from explorer.api import logit_lens

    res = logit_lens(tiny_long_lm, long_prompt(), top_k=3, db=tmp_store)
    assert res.seq_len == LONG_TOKENS
    loaded = tmp_store.load(str(res.run_id))
    assert isinstance(loaded, LensResult) and loaded.seq_len == LONG_TOKENS


@pytest.mark.parametrize(
    "method", ["last_layer_attention", "attention_rollout", "saliency", "input_x_gradient"]
)
def test_attribution_4096_tokens(tiny_long_lm: Any, tmp_store: Any, method: str) -> None:
    from explorer.api.attribution import attribute

    res = attribute(tiny_long_lm, long_prompt(LONG_TOKENS - 1), target=" cat", method=method, db=tmp_store)
    assert len(res.tokens) == LONG_TOKENS - 1  # type: ignore[union-attr]
    assert tmp_store.load(str(res.run_id)).kind == res.kind  # type: ignore[union-attr]


def test_compare_two_long_attention_runs(tiny_long_lm: Any, tmp_store: Any) -> None:
    from explorer.compare import compare_runs

    a = attention(tiny_long_lm, long_prompt(), db=tmp_store)
    b = attention(tiny_long_lm, long_prompt(LONG_TOKENS - 10), db=tmp_store)
    c = attention(tiny_long_lm, long_prompt(300), db=tmp_store)
    same = compare_runs(tmp_store, str(a.run_id), str(b.run_id))
    assert "attention_delta" in same.matrices or "entropy_delta" in same.matrices
    mixed = compare_runs(tmp_store, str(a.run_id), str(c.run_id))
    assert mixed.to_dict()["kind"] == "attention"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("reagent", {"num_probes": 2, "max_steps": 2}),
        ("occlusion", {"perturbations_per_eval": 8, "window": 256, "stride": 256}),
        ("integrated_gradients", {"n_steps": 2, "internal_batch_size": 2}),
    ],
)
def test_costly_attribution_methods_4096_tokens(
    tiny_long_lm: Any, tmp_store: Any, method: str, params: Any
) -> None:
    """ReAGent (causal-LM replacements without the whole-sequence re-ranking, noted), occlusion and
    integrated gradients at 4,096 tokens, with faithfulness; few steps so the test stays fast.
    Occlusion occludes spans of 256 tokens (16 passes; one token at a time would be 4,095)."""
    from explorer.analysis.attribution import FaithfulnessParams
    from explorer.analysis.attribution import run_attribution as attribute_engine

    prompt = long_prompt(LONG_TOKENS - 1)
    res = attribute_engine(
        tiny_long_lm, prompt, " cat", method=method, params=params, faith=FaithfulnessParams(n_samples=2),
        max_tokens=LONG_TOKENS,
    )  # fmt: skip
    assert len(res.tokens) == LONG_TOKENS - 1 and np.isfinite(np.asarray(res.scores)).all()
    if method == "reagent":
        assert any("too long to re-rank" in note for note in res.notes), res.notes
    if method == "occlusion":  # 16 spans: every token of a span shares its drop
        assert res.extras["passes"] == 16 and len(np.unique(np.asarray(res.scores)[:256])) == 1
    run_id = tmp_store.save(
        res, model_id="tiny", weight_hash="w", prompt=prompt, params=params, duration_s=1.0
    )
    assert tmp_store.load(run_id).kind == res.kind


def test_generation_attribution_4096_tokens(tiny_long_lm: Any, tmp_store: Any) -> None:
    from explorer.api.attribution import attribute_generation

    res = attribute_generation(tiny_long_lm, long_prompt(LONG_TOKENS - 3), generate=2, db=tmp_store)
    assert tmp_store.load(str(res.run_id)).kind == res.kind


def test_text_pruning_4096_tokens(tiny_long_lm: Any, tmp_store: Any, monkeypatch: Any) -> None:
    """The sweep's pruned rows run in batches sized by the memory budget: at 4,096 tokens one
    row's eager attention alone is 2 heads x 4,096^2 floats, so a small budget runs one at a time."""
    from explorer.analysis.pruning.text import sweep
    from explorer.analysis.pruning.text.cost import row_bytes
    from explorer.api.pruning import run_prune_text as prune_text

    shapes: list[tuple[int, int]] = []
    real = sweep.run_batch

    def recording(lm: Any, input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        shapes.append((int(input_ids.shape[0]), int(input_ids.shape[1])))
        return real(lm, input_ids, *args, **kwargs)

    monkeypatch.setattr(sweep, "run_batch", recording)
    n = LONG_TOKENS - 8
    budget_mb = 1.5 * row_bytes(tiny_long_lm, n) / 2**20  # room for one padded row, not two
    res = prune_text(
        tiny_long_lm, long_prompt(n), strategies=["random", "fastv", "self_information"], keep_ratios=[0.5],
        layer=1, continuation_tokens=2, db=tmp_store, settings=Settings.from_env(pruning_batch_mb=budget_mb),
    )  # fmt: skip
    # three distinct rows, one per batch: the two pruned prompts at their kept length, FastV's whole prompt
    assert shapes == [(1, n // 2), (1, n // 2), (1, n)]
    assert all(rows * row_bytes(tiny_long_lm, tokens) <= budget_mb * 2**20 for rows, tokens in shapes)
    assert any("3 batches of at most 1 row," in note for note in res.notes)
    assert tmp_store.load(str(res.run_id)).kind == res.kind


def test_atlas_map_and_microscope_4096_tokens(tiny_long_lm: Any, tmp_store: Any) -> None:
    from explorer.api.atlas import run_microscope as microscope
    from explorer.api.atlas import run_token_map as token_map

    tmap = token_map(tiny_long_lm, long_prompt(), layer=1, method="pca", db=tmp_store)
    assert tmp_store.load(str(tmap.run_id)).kind == tmap.kind
    micro = microscope(tiny_long_lm, long_prompt(), db=tmp_store)
    assert tmp_store.load(str(micro.run_id)).kind == micro.kind


def test_attention_window_recomputed_or_from_the_aggregate(tiny_llama: Any) -> None:
    """A long run's exact head window: recomputed when the model is at hand, else spread from the
    stored block aggregate (rows of the spread window never exceed 1; future keys are 0)."""
    from explorer.api.attention import attention_window

    ids = encode(tiny_llama, "The cat sat on the mat, and the dog ran to the park.", 512)
    blocked = streamed_attention(tiny_llama, ids, max_blocks=4)
    full = attention_from_trace(capture(tiny_llama, ids, attentions=True), model="tiny")
    exact, source = attention_window(blocked, 1, 2, 2, size=6, model=tiny_llama)
    assert source == "recomputed"
    np.testing.assert_allclose(exact, full.attentions[1, 2, 2:8, 2:8], atol=1e-6)
    spread, source = attention_window(blocked, 1, None, 0, size=6, model="no-such-model-here")
    assert source == "block aggregate" and spread.shape == (6, 6)
    assert (np.triu(spread, 1) == 0).all() and (spread.sum(-1) <= 1 + 1e-6).all()


def test_causal_replacements_past_the_rerank_budget_are_noted(tiny_llama: Any) -> None:
    """ReAGent's causal-LM replacements re-rank candidates by whole-sequence likelihood up to a
    budget; a longer prompt uses the left context's predictions (weights sum to 1) and says so."""
    from explorer.analysis.attribution.replacement import CandidateTable, build_sampler, causal_rerank_fits

    ids = encode(tiny_llama, " ".join(["word"] * 200), 512)
    assert not causal_rerank_fits(int(ids.numel()))
    sampler, notes = build_sampler(tiny_llama, ids, "causal", None, 4)
    assert any("too long to re-rank" in note for note in notes)
    assert isinstance(sampler, CandidateTable)
    np.testing.assert_allclose(sampler.probs.sum(dim=-1).numpy(), 1.0, atol=1e-5)
