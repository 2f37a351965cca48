"""Attention views on tiny random models of several architectures (no downloads).

Invariants: attention rows and rollout rows sum to 1 for every architecture; attention flow
equals networkx's exact max-flow on the same graph; the store round-trips a run exactly; one
request runs exactly one forward pass; every registered figure builds with hover text, axis
titles and a colour bar."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from explorer.analysis.attention import (
    MAX_FLOW_TOKENS,
    AttentionParams,
    AttentionResult,
    analyze_attention,
    block_aggregate,
    find_sink_tokens,
    head_entropy,
    sink_share,
)
from explorer.analysis.attention_math import attention_flow, attention_rollout, residual_augmented
from explorer.api.attention import attention
from explorer.errors import InputError

PROMPT = "the cat sat on the mat. then it slept, quietly"
ARCHS = ("gpt2", "llama", "gpt_neox", "qwen2")


@pytest.fixture(scope="module", params=ARCHS)
def arch_result(request: pytest.FixtureRequest) -> tuple[Any, AttentionResult]:
    from tests.conftest import _TINY_CACHE, make_tiny_lm

    arch = request.param
    if arch not in _TINY_CACHE:
        _TINY_CACHE[arch] = make_tiny_lm(arch)
    lm = _TINY_CACHE[arch]
    return lm, analyze_attention(lm, PROMPT, params=AttentionParams(flow=True, flow_positions=(-1, 3)))


def random_causal_attention(n_layers: int, n_heads: int, seq: int, seed: int = 0) -> np.ndarray:
    """(L, H, seq, seq) causal softmax attention with random logits."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_layers, n_heads, seq, seq)) * 3
    logits[..., np.triu(np.ones((seq, seq), dtype=bool), 1)] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---- invariants on every architecture ---------------------------------------------------
def test_attention_rows_sum_to_one(arch_result: tuple[Any, AttentionResult]) -> None:
    lm, res = arch_result
    seq = res.seq_len
    assert res.attentions.shape == (lm.n_layers, lm.config.num_attention_heads, seq, seq)
    np.testing.assert_allclose(res.attentions.sum(-1), 1.0, atol=1e-5)
    # causal: nothing above the diagonal
    assert np.abs(np.triu(res.attentions, 1)).max() == 0.0


def test_rollout_rows_sum_to_one(arch_result: tuple[Any, AttentionResult]) -> None:
    _, res = arch_result
    assert res.rollout.shape == (res.n_layers, res.seq_len, res.seq_len)
    np.testing.assert_allclose(res.rollout.sum(-1), 1.0, atol=1e-5)
    assert np.abs(np.triu(res.rollout, 1)).max() == 0.0
    # rollout of the first layer is exactly the residual-augmented mean attention
    expected = 0.5 * res.attentions[0].mean(0) + 0.5 * np.eye(res.seq_len)
    np.testing.assert_allclose(res.rollout[0], expected, atol=1e-6)


def test_flow_entropy_and_sinks_are_consistent(arch_result: tuple[Any, AttentionResult]) -> None:
    _, res = arch_result
    assert res.flow is not None and res.flow_raw is not None
    assert res.flow_positions == [3, res.seq_len - 1]
    np.testing.assert_allclose(res.flow.sum(-1), 1.0, atol=1e-5)
    assert res.flow[0, 4:].max() == 0.0  # position 3 cannot receive from later inputs
    assert (res.flow_raw <= 1.0 + 1e-5).all()
    assert (res.entropy >= 0).all()
    bound = np.log2(np.arange(2, res.seq_len + 1)).mean()  # uniform attention over the causal prefix
    assert (res.entropy <= bound + 1e-4).all()
    assert ((res.sink_share >= 0) & (res.sink_share <= 1 + 1e-6)).all()
    assert res.sink_tokens[0] == {"position": 0, "token": res.tokens[0], "reason": "first"}
    punct = {s["token"].strip() for s in res.sink_tokens if s["reason"] == "delimiter"}
    assert {".", ","} <= punct


def test_one_forward_pass_per_request(tiny_llama: Any, tmp_store: Any) -> None:
    calls = []
    handle = tiny_llama.hf_model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        res = attention(tiny_llama, PROMPT, flow=True, db=tmp_store)
        assert len(calls) == 1
        # every figure of the run renders from the result alone
        from explorer.plots import figures_for

        for spec in figures_for(res):
            spec.build(res)
            spec.data(res)
        assert len(calls) == 1
        again = attention(tiny_llama, PROMPT, flow=True, db=tmp_store)  # served from the store
        assert len(calls) == 1 and again.run_id == res.run_id
    finally:
        handle.remove()


# ---- pure functions -----------------------------------------------------------------------
def test_flow_matches_networkx_max_flow() -> None:
    import networkx as nx  # a dependency of torch, always installed

    att = random_causal_attention(3, 2, 7, seed=1)
    norm, raw = attention_flow(att, [6, 4])
    aug = residual_augmented(att)
    for row, t in enumerate((6, 4)):
        graph = nx.DiGraph()
        for layer in range(aug.shape[0]):
            for q in range(7):
                for k in range(q + 1):
                    graph.add_edge((layer + 1, q), (layer, k), capacity=float(aug[layer, q, k]))
        ref = [nx.maximum_flow_value(graph, (3, t), (0, j)) for j in range(t + 1)]
        np.testing.assert_allclose(raw[row, : t + 1], ref, atol=1e-9)
        np.testing.assert_allclose(norm[row].sum(), 1.0, atol=1e-12)


def test_single_layer_flow_is_the_augmented_attention() -> None:
    att = random_causal_attention(1, 3, 5)
    norm, raw = attention_flow(att, [4])
    np.testing.assert_allclose(raw[0], residual_augmented(att)[0, 4], atol=1e-12)


def test_rollout_of_uniform_identity_attention_is_identity() -> None:
    seq = 6
    att = np.broadcast_to(np.eye(seq), (4, 2, seq, seq)).copy()
    np.testing.assert_allclose(attention_rollout(att)[-1], np.eye(seq))
    assert np.allclose(head_entropy(att), 0.0)
    np.testing.assert_allclose(sink_share(att, [0]), 0.0)


def test_all_attention_on_first_token() -> None:
    seq = 5
    att = np.zeros((2, 2, seq, seq))
    att[..., 0] = 1.0
    np.testing.assert_allclose(sink_share(att, [0]), 1.0)
    assert np.allclose(head_entropy(att), 0.0)
    np.testing.assert_allclose(sink_share(att, []), 0.0)


def test_block_aggregate_keeps_row_sums() -> None:
    att = random_causal_attention(1, 1, 100)[0, 0]
    shown, spans = block_aggregate(att, 32)
    assert shown.shape == (32, 32) and spans[0][0] == 0 and spans[-1][1] == 99
    np.testing.assert_allclose(shown.sum(-1), 1.0, atol=1e-9)
    same, spans_small = block_aggregate(att[:10, :10], 32)
    assert same.shape == (10, 10) and spans_small[3] == (3, 3)


def test_find_sink_tokens() -> None:
    sinks = find_sink_tokens(
        ["<s>", "Hi", ",", " there", "\n", "[SEP]"], [1, 5, 6, 7, 8, 2], special_ids=[1, 2]
    )
    assert [(s["position"], s["reason"]) for s in sinks] == [
        (0, "first"),
        (2, "delimiter"),
        (4, "delimiter"),
        (5, "special"),
    ]


# ---- store, JSON, validation ----------------------------------------------------------
def test_store_round_trip_and_json(tiny_llama: Any, tmp_store: Any) -> None:
    res = attention(tiny_llama, PROMPT, flow=True, flow_positions=(-1, 2), db=tmp_store, use_cache=False)
    loaded = tmp_store.load(res.run_id)
    assert isinstance(loaded, AttentionResult)
    np.testing.assert_array_equal(loaded.attentions, res.attentions)
    np.testing.assert_array_equal(loaded.rollout, res.rollout)
    np.testing.assert_array_equal(loaded.entropy, res.entropy)
    np.testing.assert_array_equal(loaded.sink_share, res.sink_share)
    assert loaded.flow is not None and res.flow is not None
    np.testing.assert_array_equal(loaded.flow, res.flow)
    assert loaded.flow_positions == res.flow_positions == [2, res.seq_len - 1]
    assert loaded.sink_tokens == res.sink_tokens and loaded.tokens == res.tokens
    d = json.loads(json.dumps(loaded.to_dict()))
    assert d["run_id"] == res.run_id and d["n_layers"] == 3 and d["n_heads"] == 4
    assert set(d) >= {"model", "tokens", "layers", "rollout", "sink_tokens", "flow"}
    head = d["layers"][1]["heads"][2]
    assert set(head) >= {"head", "attention", "sink_share", "entropy"}
    np.testing.assert_allclose(np.array(head["attention"]), res.attentions[1, 2])
    np.testing.assert_allclose(np.array(d["rollout"]).sum(-1), 1.0, atol=1e-5)


def test_input_errors(tiny_llama: Any) -> None:
    with pytest.raises(InputError, match="empty"):
        attention(tiny_llama, "   ", db=False)
    with pytest.raises(InputError, match="outside the prompt"):
        attention(tiny_llama, PROMPT, flow=True, flow_positions=(99,), db=False)
    with pytest.raises(InputError, match="at most"):
        attention(tiny_llama, "word " * (MAX_FLOW_TOKENS + 5), flow=True, db=False)
    with pytest.raises(InputError, match="at most"):
        AttentionParams(flow=True, flow_positions=tuple(range(20))).validate()
    res = attention(tiny_llama, PROMPT, db=False)
    with pytest.raises(InputError, match="layer 7"):
        res.head_matrix(7, 0)
    with pytest.raises(InputError, match="head 9"):
        res.head_matrix(0, 9)


def test_single_token_trace_is_rejected(tiny_llama: Any) -> None:
    from explorer.analysis.attention import attention_from_trace
    from explorer.backends.language import capture

    trace = capture(tiny_llama, torch.tensor([5]), attentions=True)
    with pytest.raises(InputError, match="at least 2 tokens"):
        attention_from_trace(trace, model="tiny")


# ---- figures -------------------------------------------------------------------------------
def _check_figure(fig: Any) -> None:
    assert fig.data, "figure has no traces"
    assert any(getattr(t, "hovertemplate", None) for t in fig.data), "no hover text"
    layout = fig.to_plotly_json()["layout"]
    titled = [
        v for k, v in layout.items() if k.startswith(("xaxis", "yaxis")) and v.get("title", {}).get("text")
    ]
    assert titled, "no axis titles"
    has_bar = "coloraxis" in layout and layout["coloraxis"].get("colorbar", {}).get("title", {}).get("text")
    has_bar = has_bar or any(getattr(t, "colorbar", None) and t.colorbar.title.text for t in fig.data)
    assert has_bar, "no colour bar title"


def spec_named(res: AttentionResult, name: str) -> Any:
    from explorer.plots import figure_spec

    return figure_spec(res, name)


def test_every_figure_builds(arch_result: tuple[Any, AttentionResult]) -> None:
    from explorer.plots import figures_for

    _, res = arch_result
    names = [s.name for s in figures_for(res)]
    assert names == ["head", "heads_grid", "mean_heads", "token", "rollout", "flow", "entropy", "sinks"]
    for spec in figures_for(res):
        _check_figure(spec.build(res))
        table = spec.data(res)
        assert table.num_rows > 0
    # display choices are figure (and data) arguments: the UI passes one view dict to each
    view = {"layer": res.n_layers - 1, "head": "mean", "token": 2, "sinks": [0, 1], "rollout_layer": 0}
    for spec in figures_for(res):
        _check_figure(spec.figure(res, view))
        assert spec.table(res, view).num_rows > 0
    assert spec_named(res, "sinks").table(res, view)["sink_positions"][0].as_py() == "0,1"
    assert spec_named(res, "head").table(res, view)["head"][0].as_py() == -1  # the mean over heads
    # the head figure masks future keys with a grey trace
    fig = figures_for(res)[0].build(res, head=1)
    assert any(t.name == "causal mask" for t in fig.data)
    assert not hasattr(res, "view")  # never part of the result


def test_long_prompt_figures_are_downsampled() -> None:
    from explorer.plots import attention as plots

    seq = 300
    att = random_causal_attention(2, 2, seq).astype(np.float32)
    res = AttentionResult(
        model="synthetic",
        tokens=[f"t{i}" for i in range(seq)],
        input_ids=list(range(seq)),
        attentions=att,
        rollout=attention_rollout(att).astype(np.float32),
        entropy=head_entropy(att).astype(np.float32),
        sink_share=sink_share(att, [0]).astype(np.float32),
        delimiter_share=np.zeros((2, 2), dtype=np.float32),
        sink_tokens=[{"position": 0, "token": "t0", "reason": "first"}],
        params={"flow": False},
    )
    head = plots.head_heatmap(res)
    assert np.asarray(head.data[0].z).shape == (plots.MAX_MATRIX_POSITIONS, plots.MAX_MATRIX_POSITIONS)
    grid = plots.heads_grid(res)
    tiled = 2 * (plots.MAX_THUMB_POSITIONS + 1) - 1  # 2 x 2 thumbnails, a one-cell gap between them
    assert np.asarray(grid.data[0].z).shape == (tiled, tiled)
    token = plots.token_view(res, token=150)
    assert np.asarray(token.data[0].z).shape == (2, plots.MAX_TOKEN_AXIS_POSITIONS)
    assert plots.head_data(res).num_rows == seq * (seq + 1) // 2  # exports keep full resolution


def test_tiny_models_are_tiny(arch_result: tuple[Any, AttentionResult]) -> None:
    lm, _ = arch_result
    assert sum(p.numel() for p in lm.hf_model.parameters()) < 3_000_000
    assert isinstance(lm.hf_model, torch.nn.Module)
