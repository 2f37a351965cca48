"""LatentLens-style nearest text neighbours of visual tokens, on a tiny VLM built in code."""
# ruff: noqa: F811  (the tiny_vlm fixture is imported from test_vlm and used as an argument)

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_vlm import _image, _tiny_vision, tiny_vlm  # noqa: F401  (the module-scoped tiny VLM fixture)

from explorer.backends.vlm import projector_vlm
from explorer.errors import InputError
from explorer.vlm.latent import (
    MATCH_ALL,
    LatentNeighboursResult,
    LatentParams,
    TextBank,
    bank_layers,
    build_text_bank,
    latent_neighbours,
    load_bank,
    save_bank,
    search,
)
from explorer.vlm.latent_corpus import SOURCE_CAPTION, SOURCE_GENERAL, Corpus, default_corpus
from explorer.vlm.tiny_vlm import IMAGE_PLACEHOLDER, Projector, ProjectorConfig, chat_prompt

SMALL = default_corpus().head(120)


@pytest.fixture(scope="module")
def bank(tiny_vlm: Any) -> TextBank:  # noqa: F811
    return build_text_bank(tiny_vlm.lm, SMALL, max_contexts=6, batch_size=16)


def test_bank_layers_follow_the_paper_grid_plus_the_last_block() -> None:
    assert bank_layers(30) == [1, 2, 4, 8, 16, 24, 28, 29, 30]
    assert bank_layers(12) == [1, 2, 4, 8, 10, 11, 12]
    assert bank_layers(2) == [1, 2]


def test_the_shipped_corpus_is_seeded_small_and_mixed() -> None:
    corpus = default_corpus()
    assert 2_800 <= len(corpus) <= 4_000
    assert corpus.sources.count(SOURCE_GENERAL) == 2_400 and corpus.sources.count(SOURCE_CAPTION) > 400
    assert len(set(corpus.sentences)) == len(corpus)
    default_corpus.cache_clear()
    assert default_corpus().digest == corpus.digest  # a pure function of its seeds
    assert any("red circle" in s for s in corpus.sentences) and any("apple" in s for s in corpus.sentences)
    assert max(len(s) for s in corpus.sentences) < 120
    small = corpus.head(100)
    assert len(small) == 100 and {SOURCE_CAPTION, SOURCE_GENERAL} == set(small.sources)


def test_batched_residuals_equal_one_sequence_captures(tiny_vlm: Any) -> None:  # noqa: F811
    lm = tiny_vlm.lm
    seqs = [[5, 6, 7, 8, 9], [10, 11, 12]]
    ids = torch.tensor([seqs[0], seqs[1] + [0, 0]])
    mask = torch.tensor([[1] * 5, [1] * 3 + [0, 0]])
    n = lm.n_layers
    states = lm.residuals(ids, mask, list(range(n + 1)))
    assert states.shape == (n + 1, 2, 5, lm.d_model)
    for row, seq in enumerate(seqs):
        trace = lm.capture(torch.tensor(seq), attentions=False)
        torch.testing.assert_close(states[:, row, : len(seq)], trace.residual, atol=1e-5, rtol=1e-4)
    early = lm.residuals(ids, mask, [1])  # stops after block 1
    torch.testing.assert_close(early[0], states[1])
    with pytest.raises(ValueError):
        lm.residuals(ids, mask, [n + 1])


def test_bank_entries_are_unique_capped_normalised_and_skip_the_first_token(
    bank: TextBank, tiny_vlm: Any
) -> None:  # noqa: F811
    assert (
        bank.layers == bank_layers(tiny_vlm.lm.n_layers)
        and bank.vectors is not None
        and bank.vectors.dtype == np.float16
    )
    assert bank.vectors.shape == (len(bank.layers), bank.n_entries, tiny_vlm.lm.d_model)
    np.testing.assert_allclose(np.linalg.norm(bank.vectors.astype(np.float32), axis=-1), 1.0, atol=2e-3)
    counts: dict[str, int] = {}
    for t in bank.tokens:
        counts[t] = counts.get(t, 0) + 1
    assert max(counts.values()) <= 6
    tok = tiny_vlm.tokenizer
    specials = set(tok.all_special_ids)
    assert not set(bank.token_ids.tolist()) & specials
    # BERT's tokenizer adds [CLS]: position 1 is the first content token, never kept (the paper skips it)
    assert bank.position.min() >= 2
    prefixes = set()
    for s, p in zip(bank.sentence, bank.position, strict=True):
        ids = tok(SMALL.sentences[s]).input_ids[: p + 1]
        assert ids[-1] == bank.token_ids[len(prefixes)]
        prefixes.add(tuple(ids))
    assert len(prefixes) == bank.n_entries  # no prefix stored twice


def test_a_bank_vector_retrieves_itself_first(bank: TextBank) -> None:
    rng = np.random.default_rng(0)
    picks = rng.choice(bank.n_entries, 10, replace=False)
    for layer in bank.layers:
        queries = bank.vectors[bank.layer_index(layer), picks].astype(np.float32) * 3.0  # scale-free
        sims, entries, from_layer = search(bank, queries, [layer], k=5)
        assert (entries[:, 0] == picks).all() and (from_layer == layer).all()
        np.testing.assert_allclose(sims[:, 0], 1.0, atol=2e-3)
        assert (np.diff(sims, axis=1) <= 1e-12).all()


def test_cross_layer_search_ranks_all_layers_together(bank: TextBank) -> None:
    q = bank.vectors[bank.layer_index(2), :3].astype(np.float32)
    sims, entries, from_layer = search(bank, q, bank.layers, k=4)
    assert (from_layer[:, 0] == 2).all() and (entries[:, 0] == np.arange(3)).all()
    # the merged list is the global top-k of the per-layer lists
    per = [search(bank, q, [layer], k=4)[0] for layer in bank.layers]
    np.testing.assert_allclose(sims, -np.sort(-np.concatenate(per, axis=1), axis=1)[:, :4])


def test_save_and_load_round_trip(bank: TextBank, tmp_path: Path) -> None:
    path = tmp_path / "bank.npz"
    save_bank(bank, path)
    back = load_bank(path)
    assert back.tokens == bank.tokens and back.contexts == bank.contexts and back.layers == bank.layers
    np.testing.assert_array_equal(back.vectors, bank.vectors)


def test_planted_visual_token_retrieves_the_text_token_with_the_same_context(tiny_vlm: Any) -> None:  # noqa: F811
    """A projector that outputs exactly the input embedding of " red": the first visual token then
    has the same prefix and input as " red" in a planted bank sentence, so at every layer its
    hidden state equals that bank entry's and must retrieve it first (similarity 1)."""
    lm, tok = tiny_vlm.lm, tiny_vlm.tokenizer
    red = int(tok.convert_tokens_to_ids("red"))
    projector = Projector(
        ProjectorConfig(vision_dim=64, lm_dim=lm.d_model, hidden_dim=48, grid=2, feature_layers=(2, 4))
    ).eval()
    with torch.no_grad():
        projector.fc2.weight.zero_()
        projector.fc2.bias.copy_(lm.embed_module().weight[red].float())
    vlm = projector_vlm(lm, _tiny_vision(), projector, model_id="planted-vlm")
    before = chat_prompt("Hi").split(IMAGE_PLACEHOLDER)[0]
    prefix = list(tok(before, add_special_tokens=False).input_ids)
    blue = int(tok.convert_tokens_to_ids("blue"))
    # decoys: " red" in other contexts, and the planted prefix followed by other tokens
    planted = [prefix + [red, blue], prefix[:-1] + [red, red], [red, blue, red], prefix + [blue, red]]
    encoded = planted + [list(tok(s).input_ids) for s in SMALL.sentences[:30]]
    corpus = Corpus(tuple(["planted"] * 4 + list(SMALL.sentences[:30])), tuple([SOURCE_GENERAL] * 34))
    bank = build_text_bank(lm, corpus, encoded=encoded, max_contexts=50)
    entry = next(
        i for i in range(bank.n_entries) if bank.sentence[i] == 0 and bank.position[i] == len(prefix)
    )
    r = latent_neighbours(vlm, "Hi", _image(), bank, params=LatentParams(k=5))
    assert r.layers == bank.layers
    for li in range(len(r.layers)):
        assert r.token_ids[li, 0, 0] == red and r.neighbours[li][0][0] == bank.tokens[entry]
        assert r.contexts[li][0][0] == bank.contexts[entry]
        assert r.similarity[li, 0, 0] > 0.999
    # a random visual token is no such perfect match
    r_random = latent_neighbours(tiny_vlm, "Hi", _image(), build_text_bank(lm, corpus, encoded=encoded))
    assert r_random.similarity[:, :, 0].max() < 0.99


@pytest.fixture(scope="module")
def result(tiny_vlm: Any, bank: TextBank) -> LatentNeighboursResult:  # noqa: F811
    return latent_neighbours(tiny_vlm, "What is this?", _image(), bank, params=LatentParams(k=5))


def test_result_invariants(result: LatentNeighboursResult, bank: TextBank) -> None:
    n_img = 4
    assert result.similarity.shape == (len(bank.layers), n_img, 5) == result.token_ids.shape
    assert (np.diff(result.similarity, axis=2) <= 1e-12).all()
    assert (np.abs(result.similarity) <= 1.0 + 1e-3).all()
    assert (result.bank_layer == np.asarray(result.layers)[:, None, None]).all()  # same layer
    d = result.to_dict()
    assert d["metric"] == "cosine" and d["match"] == "same" and len(d["deviations"]) == 4
    first = d["neighbours"][0]["patches"][0]["neighbours"][0]
    assert set(first) == {"token", "similarity", "context", "text_layer", "source"}


def test_match_all_searches_layer_zero_and_every_text_layer(tiny_vlm: Any, bank: TextBank) -> None:  # noqa: F811
    r = latent_neighbours(
        tiny_vlm, "What is this?", _image(), bank, params=LatentParams(k=3, match=MATCH_ALL)
    )
    assert r.layers == [0, *bank.layers]
    assert set(np.unique(r.bank_layer)) <= set(bank.layers)
    same = latent_neighbours(tiny_vlm, "What is this?", _image(), bank, params=LatentParams(k=3))
    # searching more text layers can only raise the best similarity
    assert (r.similarity[1:, :, 0] >= same.similarity[:, :, 0] - 1e-9).all()


def test_figures_build_with_a_layer_slider_and_five_neighbours_in_the_hover(
    result: LatentNeighboursResult,
) -> None:
    from explorer.plots import figures_for
    from explorer.plots.vlm_latent import latent_neighbours_overlay

    fig = latent_neighbours_overlay(result, layer=1)
    assert [f.name for f in fig.frames] == [str(x) for x in result.layers]
    hover = fig.data[1].hovertext[0][0]
    assert hover.count("text layer") == 5 and f"{result.similarity[0, 0, 0]:.3f}" in hover
    assert fig.data[1].text[0][0]
    names = [s.name for s in figures_for(result)]
    assert names == ["latent_neighbours", "latent_similarity"]
    for spec in figures_for(result):
        spec.build(result)
        assert spec.data(result).num_rows > 0
    with pytest.raises(InputError, match="not searched"):
        latent_neighbours_overlay(result, layer=7)


def test_api_builds_indexes_and_reuses_the_bank_and_runs_reopen(tiny_vlm: Any, tmp_path: Path) -> None:  # noqa: F811
    import explorer
    from explorer.config import Settings
    from explorer.store import Store

    settings = Settings.from_env(cache_dir=tmp_path, db_path=tmp_path / "runs.duckdb")
    store = Store.open(settings.database)
    try:
        bank = explorer.text_bank(tiny_vlm, db=store, settings=settings, corpus=SMALL)
        assert Path(bank.path).exists() and Path(bank.path).parent == tmp_path / "latent_banks"
        assert [r.kind for r in store.list_runs()] == ["latent_bank"]
        indexed = store.load(bank.run_id)
        assert isinstance(indexed, TextBank) and indexed.tokens == bank.tokens and indexed.vectors is None
        np.testing.assert_array_equal(indexed.matrix(), bank.vectors)
        # a fresh store indexes the cached file again without re-encoding
        other = Store.open(tmp_path / "other.duckdb")
        again = explorer.text_bank(tiny_vlm, db=other, settings=settings, corpus=SMALL)
        assert again.seconds == bank.seconds and [r.kind for r in other.list_runs()] == ["latent_bank"]
        other.close()

        r = explorer.latent_neighbours(
            tiny_vlm, "What is this?", _image(), db=store, settings=settings, corpus=SMALL
        )
        assert r.run_id and r.bank["corpus"] == SMALL.digest and r.bank["run_id"] == bank.run_id
        again_r = explorer.latent_neighbours(
            tiny_vlm, "What is this?", _image(), db=store, settings=settings, corpus=SMALL
        )
        assert again_r.run_id == r.run_id
        back = explorer.load_run(r.run_id, db=store)
        assert isinstance(back, LatentNeighboursResult)
        np.testing.assert_allclose(back.similarity, r.similarity)
        assert back.neighbours == r.neighbours and back.contexts == r.contexts and back.layers == r.layers
        assert back.to_dict() == r.to_dict()
    finally:
        store.close()


def test_bad_input_is_refused_and_nothing_stored(tiny_vlm: Any, tmp_store: Any, tmp_path: Path) -> None:  # noqa: F811
    import explorer
    from explorer.config import Settings

    settings = Settings.from_env(cache_dir=tmp_path)
    with pytest.raises(InputError, match="need an image"):
        explorer.latent_neighbours(tiny_vlm, "What?", None, db=tmp_store, settings=settings)
    with pytest.raises(InputError, match="k must"):
        explorer.latent_neighbours(tiny_vlm, "What?", _image(), params=LatentParams(k=0), db=tmp_store)
    with pytest.raises(InputError, match="match"):
        explorer.latent_neighbours(tiny_vlm, "What?", _image(), params=LatentParams(match="x"), db=tmp_store)
    with pytest.raises(InputError, match="empty"):
        explorer.latent_neighbours(tiny_vlm, " ", _image(), db=tmp_store, settings=settings)
    with pytest.raises(InputError, match="text-only"):
        explorer.latent_neighbours("smollm2-135m", "What?", _image(), db=tmp_store, settings=settings)
    assert tmp_store.list_runs() == []
    assert not (tmp_path / "latent_banks").exists()


def test_cli_bad_input_exits_2_with_one_line(capsys: Any, tmp_path: Path) -> None:
    from explorer.cli import main

    db = str(tmp_path / "db.duckdb")
    assert main(["latent-neighbours", "--prompt", "hi", "--image", "/nonexistent.png", "--db", db]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "does not exist" in err
    assert main(["latent-neighbours", "--prompt", "hi", "--image", "/x.png", "--k", "0", "--db", db]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    png = tmp_path / "x.png"
    _image().save(png)
    assert main(["latent-neighbours", "--prompt", "hi", "--image", str(png), "--model", "smollm2-135m"]) == 2
    assert "text-only" in capsys.readouterr().err


def test_visual_tokens_tab_offers_latent_neighbours(tmp_path: Path) -> None:
    import gradio as gr

    from explorer.config import Settings
    from explorer.ui import visual_tokens_tab
    from explorer.ui.common import UIContext

    ctx = UIContext(Settings.from_env(db_path=str(tmp_path / "db.duckdb"), cache_dir=str(tmp_path)))
    with gr.Blocks() as demo:
        visual_tokens_tab.build(ctx)
    assert "latent_neighbours" in {fn.api_name for fn in demo.fns.values()}
    assert "cosine" in visual_tokens_tab.LATENT_EXPLAIN and "Deviations" in visual_tokens_tab.LATENT_EXPLAIN


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "gemma3"])
def test_hub_vlms_build_a_bank_and_find_neighbours(arch: str) -> None:
    """Hub VLMs run their own multimodal forward; their bank comes from text-only passes."""
    from test_vlm_hub import ARCHS, _picture, tiny_hub_vlm

    assert arch in ARCHS
    vlm = tiny_hub_vlm(arch)
    corpus = default_corpus().head(12)
    bank = build_text_bank(vlm.lm, corpus, max_contexts=50, batch_size=5)
    assert bank.layers == bank_layers(vlm.n_layers) and bank.n_entries > 20
    r = latent_neighbours(vlm, "What is in the picture?", _picture(), bank, params=LatentParams(k=3))
    n_img = sum(1 for m in r.modality if m == "image")
    assert r.similarity.shape == (len(bank.layers), n_img, 3) and n_img > 0
    assert (np.diff(r.similarity, axis=2) <= 1e-12).all()
    # a text state of the bank retrieves itself: the hub model's text path is what the bank holds
    q = bank.vectors[-1, :4].astype(np.float32)
    assert (search(bank, q, [bank.layers[-1]], 1)[1][:, 0] == np.arange(4)).all()
