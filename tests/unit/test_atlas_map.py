"""Token atlas maps: shapes, alignment across layers, the store (never refit), scores, CLI, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explorer import atlas_api
from explorer.analysis.atlas import projection
from explorer.analysis.atlas.token_map import TokenMapResult, context_string
from explorer.analysis.atlas.token_types import token_type
from explorer.errors import InputError

PROMPT = "the cat sat on the mat, and the dog ran."


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, object, str]:
    from explorer.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_pca_all_layers_shape_and_reopen(tiny_llama, tmp_store) -> None:
    r = atlas_api.token_map(tiny_llama, PROMPT, method="pca", db=tmp_store)
    seq = len(r.tokens[0])
    assert r.n_points == (tiny_llama.n_layers + 1) * seq
    assert r.layers == list(range(tiny_llama.n_layers + 1))
    assert np.isfinite(r.coords).all() and r.coords.shape == (r.n_points, 2)
    # every token appears once per layer, in one aligned fit
    for pos in range(seq):
        path = r.trajectory(0, pos)
        assert r.layer[path].tolist() == r.layers
        assert {r.token[i] for i in path} == {r.tokens[0][pos]}
    again = tmp_store.load(r.run_id)
    assert isinstance(again, TokenMapResult)
    np.testing.assert_allclose(again.coords, r.coords)
    assert again.token == r.token and again.context == r.context and again.layer.tolist() == r.layer.tolist()


def test_same_inputs_never_refit(tiny_llama, tmp_store, monkeypatch) -> None:
    calls = []
    real = projection.fit_pca

    def counting(x: np.ndarray):  # type: ignore[no-untyped-def]
        calls.append(x.shape)
        return real(x)

    monkeypatch.setattr(projection, "fit_pca", counting)
    a = atlas_api.token_map(tiny_llama, PROMPT, method="pca", layer=1, db=tmp_store)
    b = atlas_api.token_map(tiny_llama, PROMPT, method="pca", layer=1, db=tmp_store)
    assert len(calls) == 1 and a.run_id == b.run_id
    atlas_api.token_map(tiny_llama, PROMPT, method="pca", layer=2, db=tmp_store)
    assert len(calls) == 2  # another layer is another map


def test_umap_cosine_separates_two_layers_and_is_stored(tiny_llama, tmp_store) -> None:
    r = atlas_api.token_map(
        tiny_llama, [PROMPT, "a second prompt here"], layer=-1, n_neighbors=5, db=tmp_store
    )
    assert r.method == "umap" and r.layer_mode == str(tiny_llama.n_layers)
    assert set(r.prompt_index.tolist()) == {0, 1}
    assert np.isfinite(r.coords).all() and r.coords.std(axis=0).min() > 0
    assert tmp_store.find("token_map", tiny_llama.model_id, tiny_llama.weight_hash, json.dumps(
        [PROMPT, "a second prompt here"]), {**r.params, "max_tokens": 512}) == r.run_id  # fmt: skip


def test_bad_input(tiny_llama, tmp_store) -> None:
    with pytest.raises(InputError, match="empty"):
        atlas_api.token_map(tiny_llama, "  ", db=tmp_store)
    with pytest.raises(InputError, match="layer must be between"):
        atlas_api.token_map(tiny_llama, PROMPT, layer=99, db=tmp_store)
    with pytest.raises(InputError, match="unknown projection"):
        atlas_api.token_map(tiny_llama, PROMPT, method="tsne", db=tmp_store)
    with pytest.raises(InputError, match="at least"):
        atlas_api.token_map(tiny_llama, "hi", layer=0, db=tmp_store)
    assert tmp_store.list_runs() == []


def test_lens_scores_join_the_map(tiny_llama, tmp_store) -> None:
    import explorer

    lens = explorer.logit_lens(tiny_llama, PROMPT, db=tmp_store)
    r = atlas_api.token_map(tiny_llama, PROMPT, method="pca", db=tmp_store)
    scores = atlas_api.map_scores(r, db=tmp_store)
    (label,) = [k for k in scores if k.startswith("lens rank")]
    assert lens.run_id in label
    values = scores[label]
    assert not np.isnan(values).any()
    last = int(np.flatnonzero(r.layer == tiny_llama.n_layers)[0])
    assert values[last] == 1  # ranks are 1-based; at the last layer the lens top-1 is the final prediction


def test_token_types_and_context() -> None:
    assert token_type(",", 5, set()) == "punctuation"
    assert token_type(" the", 5, set()) == "word"
    assert token_type(" 42", 5, set()) == "number"
    assert token_type("<s>", 1, {1}) == "special"
    assert token_type(" ", 5, set()) == "whitespace"
    assert context_string(["a", "b", "c"], 1) == "a[b]c"


def test_figure_and_view(tiny_llama) -> None:
    from explorer.plots import atlas as plots
    from explorer.plots import figures_for

    r = atlas_api.token_map(tiny_llama, PROMPT, method="pca", db=False)
    fig = plots.token_map_figure(r, colour="token_type", layer=1, trajectory=2)
    names = [t.name for t in fig.data]
    assert "other layers" in names and any(n.startswith("path of") for n in names)
    path = [t for t in fig.data if t.name.startswith("path of")][0]
    assert len(path.x) == tiny_llama.n_layers + 1
    assert {s.name for s in figures_for(r)} == {"map", "trajectory"}
    assert r.select([0, 10_000]) and len(r.select([0, 10_000])) == 1


def test_cli_map_and_bad_layer(tmp_path, capsys) -> None:
    from conftest import make_tiny_lm

    db = str(tmp_path / "cli.duckdb")

    lm = make_tiny_lm("gpt2")
    d = tmp_path / "tiny"
    lm.hf_model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    code, out, _ = run_cli(
        [
            "--db",
            db,
            "atlas",
            "map",
            "--prompt",
            PROMPT,
            "--model",
            str(d),
            "--method",
            "pca",
            "--layer",
            "all",
        ],
        capsys,
    )
    assert code == 0 and out["n_points"] == len(out["points"]) == 4 * len(out["tokens"][0])
    assert {"x", "y", "token", "layer", "position", "context", "token_type"} <= set(out["points"][0])
    code, again, _ = run_cli(
        ["--db", db, "atlas", "map", "--prompt", PROMPT, "--model", str(d), "--method", "pca"], capsys
    )
    assert again["run_id"] == out["run_id"]
    code, out, err = run_cli(
        ["--db", db, "atlas", "map", "--prompt", PROMPT, "--model", str(d), "--layer", "9"], capsys
    )
    assert code == 2 and out is None and "layer must be between" in err
    code, out, _ = run_cli(
        ["--db", db, "export", again["run_id"], "--format", "csv", "--out", str(tmp_path)], capsys
    )
    assert code == 0 and out["path"].endswith(".csv")
