"""The embedded SmolLM2-135M: real predictions, invariants, CLI on the default model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer import api
from explorer.analysis.logit_lens import ROLE_FINAL, ROLE_TARGET
from explorer.backends.language import capture, encode

pytestmark = pytest.mark.real


def test_paris_is_top1_at_last_layer(smollm, tmp_store) -> None:
    r = api.logit_lens(smollm, "The capital of France is", targets=[" Paris"], db=tmp_store)
    last = r.prompt_len - 1
    assert r.topk_tokens[-1, last, 0] == " Paris"
    assert 0.5 < r.topk_probs[-1, last, 0] < 0.95
    ranks = r.tracked_matrix(ROLE_TARGET, "rank")[:, last]
    assert ranks[-1] == 1
    assert ranks[0] > 100, "the embedding layer does not already predict Paris"
    assert r.summaries[last].token == " Paris"
    assert r.summaries[last].first_top1_layer is not None and r.summaries[last].first_top1_layer > 15


def test_last_layer_lens_equals_model_output(smollm) -> None:
    ids = encode(smollm, "Interpretability researchers compare logit lenses.", 512)
    trace = capture(smollm, ids)
    with torch.no_grad():
        direct = smollm.hf_model(input_ids=ids.unsqueeze(0)).logits[0]
    torch.testing.assert_close(smollm.unembed(trace.residual[-1]), direct, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        trace.attentions.sum(-1), torch.ones(trace.attentions.shape[:-1]), atol=1e-4, rtol=0
    )


def test_final_ranks_are_one_and_reopen_matches(smollm, tmp_store) -> None:
    r = api.logit_lens(smollm, "One, two, three, four,", generate=4, db=tmp_store)
    assert (r.tracked_matrix(ROLE_FINAL, "rank")[-1] == 1).all()
    assert r.generated[0].strip() == "five"
    again = tmp_store.load(r.run_id)
    assert again.to_dict() == r.to_dict()
    np.testing.assert_allclose(again.topk_probs, r.topk_probs)
