"""LLM-Microscope measures and the tokenizer inspector (tiny random models, local tokenizers)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explorer.analysis.atlas.microscope import MicroscopeResult, intrinsic_dimension
from explorer.analysis.atlas.tokenizers import TokenizerResult
from explorer.api import atlas as atlas_api
from explorer.errors import InputError

PROMPT = "The cat, which was old, sat on the mat; the dog ran to the door and the bird sang."


def test_twonn_recovers_a_linear_subspace() -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(3, 40))
    points = rng.normal(size=(800, 3)) @ basis
    assert 2.4 < intrinsic_dimension(points) < 3.6
    assert 7.0 < intrinsic_dimension(rng.normal(size=(800, 8))) < 9.5


def test_microscope_measures(tiny_llama, tmp_store) -> None:
    r = atlas_api.run_microscope(tiny_llama, PROMPT, db=tmp_store)
    n_l, seq = tiny_llama.n_layers, r.seq_len
    assert r.nonlinearity.shape == (n_l, seq) and np.all(r.nonlinearity >= 0)
    assert r.context.shape == (n_l + 1, seq) and np.isnan(r.context[:, 0]).all()
    assert np.all(np.abs(r.context[:, 1:]) <= 1 + 1e-9)
    lin = [v for v in r.layers["linearity"] if not np.isnan(v)]
    assert len(lin) == n_l and all(v <= 1 + 1e-9 for v in lin)
    # at the last layer the paper's lens (HF's normed last hidden state) and ours coincide
    assert r.paper_lens_token[-1] == r.our_lens_token[-1]
    ranking = [x["context_memory"] for x in r.ranking() if x["context_memory"] is not None]
    assert ranking == sorted(ranking, reverse=True)
    assert {c["class"] for c in r.class_ranking()} <= {
        "punctuation",
        "stopword",
        "word",
        "number",
        "special",
        "whitespace",
    }
    again = tmp_store.load(r.run_id)
    assert isinstance(again, MicroscopeResult)
    np.testing.assert_allclose(again.nonlinearity, r.nonlinearity, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(again.context, r.context, rtol=1e-5, atol=1e-6)
    assert sorted(x["position"] for x in again.ranking()) == list(range(seq))
    from explorer.plots import atlas as plots

    for measure in plots.MICROSCOPE_MEASURES:
        assert plots.microscope_heatmap(r, measure).data[0].z.shape[1] == seq
    with pytest.raises(InputError):
        atlas_api.run_microscope(tiny_llama, "   ", db=tmp_store)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from conftest import bert_tokenizer

    d = tmp_path_factory.mktemp("bert-tok")
    bert_tokenizer().save_pretrained(d)
    return str(d)


def test_tokenizer_inspector(bert_dir, tmp_store) -> None:
    text = "naïve café: 1234 tokens!"
    r = atlas_api.inspect_tokenizers(text, ["all-minilm-l6-v2", bert_dir], db=tmp_store)
    counts = r.counts()
    assert counts[0]["premium"] == 1.0 and counts[1]["premium"] == 1.0  # the same WordPiece vocabulary
    t = r.tokenizers[0]
    assert t.special[0] and t.special[-1] and t.pieces[0] == "[CLS]"
    for k in range(t.n_tokens):
        if not t.special[k]:
            assert 0 <= t.starts[k] < t.ends[k] <= len(text)
    again = tmp_store.load(r.run_id)
    assert isinstance(again, TokenizerResult) and again.counts() == counts
    with pytest.raises(InputError, match="twice"):
        atlas_api.inspect_tokenizers(text, [bert_dir, bert_dir], db=tmp_store)
    with pytest.raises(InputError, match="empty"):
        atlas_api.inspect_tokenizers(" ", [bert_dir], db=tmp_store)


def test_cli_tokenize_and_bad_tokenizer(bert_dir, tmp_path, capsys) -> None:
    from explorer.cli import main

    db = str(tmp_path / "cli.duckdb")
    code = main(["--db", db, "atlas", "tokenize", "--text", "hello world", "--tokenizer", bert_dir])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["counts"][0]["tokens"] == 4  # [CLS] hello world [SEP]
    code = main(["--db", db, "atlas", "tokenize", "--text", "hi", "--tokenizer", str(tmp_path / "nope")])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and "not available" in captured.err
