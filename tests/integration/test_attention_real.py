"""Attention views on the embedded SmolLM2-135M (real weights, one model load for the module).

Verified property (measured on four prompts of 12-44 tokens): in the middle layers (5..24)
the heads give on average 0.55-0.66 of their attention to the first token, while layers 0-1
give it 0.05-0.20 and uniform causal attention would give 0.08-0.19: the "initial token"
attention sink (Xiao et al. 2023), present even though this tokenizer adds no BOS token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explorer.api.attention import attention

pytestmark = pytest.mark.real

PROMPTS = [
    "The capital of France is Paris. The capital of Germany is",
    "When Mary and John went to the store, John gave a drink to",
]
MIDDLE = slice(5, 25)


@pytest.fixture(scope="module")
def results(smollm: Any) -> list[Any]:
    return [attention(smollm, p, db=False) for p in PROMPTS]


def test_shapes_and_rows_sum_to_one(results: list[Any]) -> None:
    for res in results:
        assert res.attentions.shape[:2] == (30, 9)
        assert res.tokens[0] in ("The", "When")  # no BOS: the first token is a plain word
        np.testing.assert_allclose(res.attentions.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(res.rollout.sum(-1), 1.0, atol=1e-4)


def test_first_token_is_an_attention_sink_in_middle_layers(results: list[Any]) -> None:
    for res in results:
        uniform = float(np.mean(1.0 / np.arange(2, res.seq_len + 1)))  # share under uniform attention
        middle = float(res.sink_share[MIDDLE].mean())
        early = float(res.sink_share[:2].mean())
        assert middle > 0.5, middle
        assert middle > 2.5 * uniform, (middle, uniform)
        assert middle > 2.5 * early, (middle, early)
        # most middle-layer heads are sink heads
        assert (res.sink_share[MIDDLE] > 0.5).mean() > 0.5


def test_punctuation_is_detected_as_a_sink_candidate(results: list[Any]) -> None:
    sinks = {(s["position"], s["token"], s["reason"]) for s in results[0].sink_tokens}
    assert (0, "The", "first") in sinks
    assert any(tok == "." and reason == "delimiter" for _, tok, reason in sinks)


def test_flow_on_the_real_model(smollm: Any) -> None:
    res = attention(smollm, PROMPTS[0], flow=True, flow_positions=(-1,), db=False)
    assert res.flow is not None and res.flow_raw is not None
    np.testing.assert_allclose(res.flow.sum(-1), 1.0, atol=1e-5)
    # each input is reachable through the residual path: every raw flow is positive, none exceeds 1
    assert (res.flow_raw[0] > 0).all() and (res.flow_raw[0] <= 1 + 1e-5).all()


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], smollm: Any) -> None:
    from explorer.cli import main

    code = main(["--db", str(tmp_path / "cli.duckdb"), "attention", "--prompt", PROMPTS[0], "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["run_id"] and out["model"] == "smollm2-135m"
    assert out["n_layers"] == 30 and out["n_heads"] == 9 and len(out["layers"]) == 30
    seq = len(out["tokens"])
    head = out["layers"][10]["heads"][4]
    assert np.asarray(head["attention"]).shape == (seq, seq)
    assert 0.0 <= head["sink_share"] <= 1.0 and head["entropy"] >= 0.0
    assert np.asarray(out["rollout"]).shape == (seq, seq)
    assert out["sink_tokens"][0]["reason"] == "first"
    assert main(["--db", str(tmp_path / "cli.duckdb"), "attention", "--prompt", "  "]) == 2
