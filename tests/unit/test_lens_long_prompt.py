"""The logit lens on a 4,096-token prompt: tiled read-out, bounded memory, exact values.

A tiny random Llama (RoPE, so any length) with SDPA attention; the prompt limit is raised in the
test's `Settings`. The lens must read the (layers x positions) rows out in tiles, never as one
(layers x positions x vocab) tensor, and give what a direct recomputation gives."""

from __future__ import annotations

import copy

import numpy as np
import torch

from explorer import api
from explorer.analysis.logit_lens import ROLE_FINAL, ROLE_NEXT, lens_from_trace, readout_tile_rows
from explorer.backends.language import LanguageModel, wrap_model
from explorer.config import Settings
from tests.conftest import MAX_TINY_PARAMS, make_tiny_lm

N_TOKENS = 4096
TILE_ROWS = 1024


def long_context_llama() -> LanguageModel:
    from transformers import AutoModelForCausalLM

    short = make_tiny_lm("llama")  # the suite's tiny Llama, rebuilt with a 4,096-position RoPE
    config = copy.deepcopy(short.hf_model.config)
    config.max_position_embeddings = N_TOKENS
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    assert sum(p.numel() for p in model.parameters()) < MAX_TINY_PARAMS
    return wrap_model(model, short.tokenizer, model_id="tiny-llama-4k")


def prompt_of(lm: LanguageModel, n: int) -> str:
    """`n` tokens exactly ([CLS] ... [SEP] included): varied words so the lens has something to rank."""
    words = "the quick brown fox jumps over a lazy dog while seven red birds sing".split()
    prompt = " ".join(words[i % len(words)] for i in range(n - 2))
    assert len(lm.tokenizer(prompt).input_ids) == n
    return prompt


def test_lens_on_4096_tokens_is_tiled_and_exact(monkeypatch) -> None:
    lm = long_context_llama()
    prompt = prompt_of(lm, N_TOKENS)
    biggest: list[int] = []
    unembed = LanguageModel.unembed

    def spy(self: LanguageModel, residual: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        biggest.append(int(residual.reshape(-1, residual.shape[-1]).shape[0]))
        return unembed(self, residual, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(LanguageModel, "unembed", spy)
    monkeypatch.setattr("explorer.analysis.logit_lens.READOUT_TILE_BYTES", TILE_ROWS * 4 * lm.vocab_size)
    r = api.logit_lens(lm, prompt, top_k=5, db=False, settings=Settings(max_prompt_tokens=N_TOKENS))
    monkeypatch.undo()

    n_rows = (lm.n_layers + 1) * N_TOKENS
    assert len(r.tokens) == N_TOKENS and r.topk_ids.shape == (lm.n_layers + 1, N_TOKENS, 5)
    # read out in tiles of at most TILE_ROWS rows: memory O(tile x vocab), not O(rows x vocab)
    assert biggest and max(biggest) <= TILE_ROWS < n_rows

    ids = torch.tensor(r.input_ids)
    with torch.no_grad():
        trace = lm.capture(ids, attentions=False)
        direct_logits = lm.hf_model(input_ids=ids.unsqueeze(0)).logits[0]
    # last layer lens == the model's own distribution
    np.testing.assert_array_equal(r.topk_ids[-1, :, 0], direct_logits.argmax(-1).numpy())
    rank = r.tracked_matrix(ROLE_FINAL, "rank")
    prob = r.tracked_matrix(ROLE_NEXT, "prob")
    for layer in (0, 1, lm.n_layers - 1):
        for pos in (0, 1, 2047, N_TOKENS - 2):
            with torch.no_grad():
                logits = lm.unembed(trace.residual[layer, pos])
            p = torch.softmax(logits, -1)
            top_p, top_i = p.topk(5)
            np.testing.assert_array_equal(r.topk_ids[layer, pos], top_i.numpy())
            np.testing.assert_allclose(r.topk_probs[layer, pos], top_p.numpy(), atol=1e-5)
            final_id = int(direct_logits[pos].argmax())
            assert rank[layer, pos] == int((logits > logits[final_id]).sum()) + 1
            assert abs(prob[layer, pos] - float(p[r.input_ids[pos + 1]])) < 1e-5


def test_tile_rows_bounded_by_budget() -> None:
    assert readout_tile_rows(49_152, 400 * 2**20) == 2133
    assert readout_tile_rows(256_000, 400 * 2**20) == 409
    assert readout_tile_rows(10**9, 1) == 64  # never fewer than the minimum


def test_tiled_read_out_matches_one_tile(tiny_llama) -> None:
    """Tile boundaries (including one inside the reused last layer) change nothing."""
    ids = torch.tensor(tiny_llama.tokenizer("one two three four five six seven").input_ids)
    trace = tiny_llama.capture(ids, attentions=False)
    whole = lens_from_trace(tiny_llama, trace, top_k=4, target_ids=[5], chunk_rows=10_000)
    for rows in (2, 7, len(ids) + 1):
        tiled = lens_from_trace(tiny_llama, trace, top_k=4, target_ids=[5], chunk_rows=rows)
        np.testing.assert_array_equal(tiled[0], whole[0])
        np.testing.assert_allclose(tiled[1], whole[1], atol=1e-6)
        for key in ("rank", "id", "layer", "position"):
            np.testing.assert_array_equal(tiled[2][key], whole[2][key])
        np.testing.assert_allclose(tiled[2]["prob"], whole[2]["prob"], atol=1e-6)
