"""Planted-signal tests: on a fake model whose target depends on exactly one key token, every
attribution method must find it, and faithfulness must score the true attribution perfectly.

The fake model is a bag of words: the hidden state at position t is the sum of the input
embeddings at positions <= t; the LM head reads only dimension 0 of it, and only the key token's
embedding has a non-zero dimension 0 (pointing at the target). So log p(target) depends on the
key token alone, and without it the logits are a constant bias (the empty input predicts as
well); the bias puts a few other tokens above the target then, so "target in the top-3" (ReAGent's
stopping check) holds exactly when the key token is kept.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from conftest import bert_tokenizer
from torch import nn

from explorer.analysis.attribution import run_attribution
from explorer.analysis.attribution.faithfulness import FaithfulnessParams, faithfulness
from explorer.analysis.attribution.task import AttributionTask
from explorer.backends import ArchitectureSpec, register_architecture
from explorer.backends.language import wrap_model

PROMPT = "the old cat sat on the warm mat"
KEY, TARGET = "cat", "dog"
D_MODEL = 8


class PrefixSum(nn.Module):
    """The one block: hidden (B, T, d) -> cumulative sum over positions (causal)."""

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden.cumsum(dim=1)


class PlantedLM(nn.Module):
    """A causal-LM-shaped module with the forward signature the backend expects."""

    def __init__(self, vocab: int, key_id: int, target_id: int) -> None:
        super().__init__()
        self.config = SimpleNamespace(model_type="planted_bag_of_words", vocab_size=vocab)
        self.embed = nn.Embedding(vocab, D_MODEL)
        self.blocks = nn.ModuleList([PrefixSum()])
        self.norm = nn.Identity()
        self.lm_head = nn.Linear(D_MODEL, vocab, bias=True)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            self.embed.weight.copy_(torch.randn(vocab, D_MODEL, generator=generator))
            self.embed.weight[:, 0] = 0.0
            self.embed.weight[key_id, 0] = 5.0
            self.lm_head.weight.zero_()
            self.lm_head.weight[target_id, 0] = 3.0
            self.lm_head.bias.zero_()
            others = [i for i in range(1, 10) if i != target_id][:5]
            self.lm_head.bias[others] = 1.0  # above the target unless the key token is present

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
        output_attentions: bool = False,
    ) -> Any:
        hidden = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        for block in self.blocks:
            hidden = block(hidden)
        hidden = self.norm(hidden)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        return SimpleNamespace(logits=self.lm_head(hidden), attentions=None)


@pytest.fixture(scope="module")
def planted() -> tuple[Any, int]:
    tokenizer = bert_tokenizer()
    key_id = tokenizer.convert_tokens_to_ids(KEY)
    target_id = tokenizer.convert_tokens_to_ids(TARGET)
    register_architecture(
        "planted_bag_of_words",
        ArchitectureSpec(blocks="blocks", final_norm="norm", unembed="lm_head", embed="embed"),
    )
    lm = wrap_model(PlantedLM(len(tokenizer), key_id, target_id), tokenizer, model_id="planted")
    ids = tokenizer(PROMPT).input_ids
    return lm, ids.index(key_id)


PARAMS: dict[str, dict[str, Any]] = {
    # rational size 1: a probe stops only once the key token is its most important token
    "reagent": {"replacement": "uniform", "keep_top_n": 1, "max_steps": 200, "num_probes": 8},
    "occlusion": {},
    "integrated_gradients": {"n_steps": 16},
    "input_x_gradient": {},
}


@pytest.mark.parametrize("method", sorted(PARAMS))
def test_every_method_ranks_the_key_token_first(planted: tuple[Any, int], method: str) -> None:
    lm, key_position = planted
    result = run_attribution(lm, PROMPT, TARGET, method=method, params=PARAMS[method])
    scores = torch.as_tensor(result.scores)
    assert int(scores.argmax()) == key_position, (method, result.tokens, scores.tolist())
    others = torch.cat([scores[:key_position], scores[key_position + 1 :]])
    assert scores[key_position] > others.max()


def test_faithfulness_of_the_true_attribution_is_one_and_of_its_complement_zero(
    planted: tuple[Any, int],
) -> None:
    lm, key_position = planted
    ids = torch.tensor(lm.tokenizer(PROMPT).input_ids)
    task = AttributionTask(
        context_ids=ids,
        target_ids=torch.tensor([lm.tokenizer.convert_tokens_to_ids(TARGET)]),
        foil_ids=None,
        tokens=lm.tokens_str(ids.tolist()),
    )
    one_hot = torch.zeros(len(ids))
    one_hot[key_position] = 1.0
    params = FaithfulnessParams(n_samples=8)
    true = faithfulness(lm, task, one_hot, params)
    assert true["soft_nc"] == pytest.approx(1.0, abs=1e-6)
    assert true["soft_ns"] == pytest.approx(1.0, abs=1e-6)
    complement = faithfulness(lm, task, 1.0 - one_hot, params)
    assert complement["soft_nc"] == pytest.approx(0.0, abs=1e-6)
    assert complement["soft_ns"] == pytest.approx(0.0, abs=1e-6)
