"""Logit-lens invariants on tiny random models of several architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.analysis.logit_lens import ROLE_FINAL, ROLE_NEXT, ROLE_TARGET, logit_lens
from explorer.analysis.ranks import readout
from explorer.backends.language import capture, encode
from explorer.errors import InputError

PROMPT = "the quick brown fox jumps over the lazy dog"


def test_last_layer_lens_equals_model_logits(tiny_lm) -> None:
    ids = encode(tiny_lm, PROMPT, 64)
    trace = capture(tiny_lm, ids)
    with torch.no_grad():
        lens_last = tiny_lm.unembed(trace.residual[-1])
        direct = tiny_lm.hf_model(input_ids=ids.unsqueeze(0)).logits[0]
    torch.testing.assert_close(lens_last, direct, atol=1e-5, rtol=1e-5)
    # and the final norm matters: skipping it gives something else
    assert not torch.allclose(tiny_lm.unembed(trace.residual[-1], normalize=False), direct, atol=1e-3)


def test_trace_shapes_and_attention_rows(tiny_lm) -> None:
    ids = encode(tiny_lm, PROMPT, 64)
    trace = capture(tiny_lm, ids)
    n_layers = len(tiny_lm.blocks())
    seq = ids.numel()
    assert trace.residual.shape == (n_layers + 1, seq, tiny_lm.config.hidden_size)
    assert trace.attentions is not None
    assert trace.attentions.shape[:1] == (n_layers,) and trace.attentions.shape[2:] == (seq, seq)
    torch.testing.assert_close(
        trace.attentions.sum(-1), torch.ones(trace.attentions.shape[:-1]), atol=1e-5, rtol=0
    )
    # causal: nothing above the diagonal
    assert float(torch.triu(trace.attentions, diagonal=1).abs().max()) == 0.0


def test_lens_result_last_layer_matches_model_distribution(tiny_lm) -> None:
    r = logit_lens(tiny_lm, PROMPT, top_k=5)
    ids = torch.tensor(r.input_ids)
    with torch.no_grad():
        probs = torch.softmax(tiny_lm.hf_model(input_ids=ids.unsqueeze(0)).logits[0], -1)
    top_p, top_i = probs.topk(5, -1)
    np.testing.assert_array_equal(r.topk_ids[-1], top_i.numpy())
    np.testing.assert_allclose(r.topk_probs[-1], top_p.numpy(), atol=1e-5)
    # the final prediction is rank 1 at the last layer, everywhere
    final = r.tracked_matrix(ROLE_FINAL, "rank")
    assert (final[-1] == 1).all()


def test_ranks_are_a_permutation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 500)
    logits[1, 10:20] = 0.5  # ties must still give a permutation
    ids = torch.arange(500).repeat(3, 1)
    ranks = readout(logits, ids)[2]
    for row in ranks:
        assert sorted(row.tolist()) == list(range(1, 501))
    order = logits.argsort(dim=-1, descending=True, stable=True)
    assert (ranks.gather(1, order[:, :1]) == 1).all()


def test_tracked_probabilities_match_softmax(tiny_llama) -> None:
    r = logit_lens(tiny_llama, PROMPT, targets=["dog"])
    trace = capture(tiny_llama, torch.tensor(r.input_ids))
    t = r.tracked
    for i in range(0, len(t["role"]), 17):
        layer, pos, tid = int(t["layer"][i]), int(t["position"][i]), int(t["id"][i])
        with torch.no_grad():
            logits = tiny_llama.unembed(trace.residual[layer, pos])
        p = torch.softmax(logits, -1)[tid].item()
        rank = int((logits > logits[tid]).sum().item()) + 1
        assert abs(p - float(t["prob"][i])) < 1e-5
        assert rank == int(t["rank"][i])
    # next input tracked everywhere but the last position; target at every position
    seq = len(r.tokens)
    assert set(t["position"][t["role"] == ROLE_NEXT]) == set(range(seq - 1))
    assert set(t["position"][t["role"] == ROLE_TARGET]) == set(range(seq))


def test_multi_token_target_uses_first_token_and_says_so(tiny_llama) -> None:
    r = logit_lens(tiny_llama, PROMPT, targets=["unbelievably"])
    assert r.notes and "first token" in r.notes[0]


def test_summaries_consistent_with_ranks(tiny_llama) -> None:
    r = logit_lens(tiny_llama, PROMPT)
    rank = r.tracked_matrix(ROLE_FINAL, "rank")
    prob = r.tracked_matrix(ROLE_FINAL, "prob")
    for s in r.summaries:
        col = rank[:, s.position]
        assert s.first_top1_layer == int(np.nonzero(col == 1)[0][0])
        assert s.peak_layer == 1 + int(np.argmax(prob[1:, s.position]))
        assert s.early_excitation == (s.peak_layer < r.n_layers)


def test_generation_greedy_matches_argmax_and_steps(tiny_llama) -> None:
    r = logit_lens(tiny_llama, "hello world", generate=4)
    assert 1 <= len(r.generated) <= 4
    # greedy: each emitted token is the last layer's top-1 at its step position
    for step, pos in enumerate(r.generation_positions):
        assert r.input_ids[pos + 1] == int(r.topk_ids[-1, pos, 0]), step
    assert r.never_emitted, "never-emitted candidates are reported"
    emitted = set(r.input_ids[r.prompt_len :])
    assert all(h["id"] not in emitted for h in r.never_emitted)


def test_sampling_is_deterministic_under_seed(tiny_llama) -> None:
    a = logit_lens(tiny_llama, "hello world", generate=5, sample=True, seed=3, temperature=2.0)
    b = logit_lens(tiny_llama, "hello world", generate=5, sample=True, seed=3, temperature=2.0)
    assert a.generated == b.generated


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "empty"),
        ({"prompt": "   "}, "empty"),
        ({"prompt": "word " * 80}, "maximum"),
        ({"prompt": "hi", "top_k": 0}, "top_k"),
        ({"prompt": "hi", "generate": -1}, "generate"),
        ({"prompt": "hi", "targets": [""]}, "target"),
    ],
)
def test_bad_input_raises_input_error(tiny_llama, kwargs, message) -> None:
    prompt = kwargs.pop("prompt")
    with pytest.raises(InputError, match=message):
        logit_lens(tiny_llama, prompt, max_tokens=64, **kwargs)


def test_early_excitation_ignores_layer_zero() -> None:
    """Layer 0 is the input embedding read through the unembedding (with tied embeddings: the
    input token itself). A prediction whose probability is highest there and rises steadily over
    layers 1..L peaks at the last layer: no early excitation."""
    from explorer.analysis.logit_lens import summarize_positions

    n_layers, seq = 4, 2
    layer = np.repeat(np.arange(n_layers + 1), seq)
    position = np.tile(np.arange(seq), n_layers + 1)
    prob = np.where(layer == 0, 0.9, 0.1 * layer)  # 0.9 at layer 0, then 0.1, 0.2, 0.3, 0.4
    tracked = {
        "role": np.full(layer.shape, ROLE_FINAL, dtype=object),
        "id": np.full(layer.shape, 7),
        "position": position,
        "layer": layer,
        "rank": np.where(layer == n_layers, 1, 5),
        "prob": prob,
    }
    for s in summarize_positions(n_layers, str, tracked, seq):
        assert s.peak_layer == n_layers and s.early_excitation is False


def test_lens_json_lists_its_deviations_and_names_never_emitted_candidates(tiny_llama) -> None:
    from explorer.analysis.logit_lens import DEVIATIONS

    out = logit_lens(tiny_llama, PROMPT, generate=3).to_dict()
    assert out["deviations"] == DEVIATIONS and "never_emitted_candidates" in out["deviations"]
    assert "VISTA" in DEVIATIONS["never_emitted_candidates"]
    assert "never_emitted_candidates" in out and "hidden_candidates" not in out
