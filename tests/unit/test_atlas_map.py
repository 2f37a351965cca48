"""Token atlas maps: shapes, alignment across layers, the store (never refit), scores, CLI, figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from explorer.analysis.atlas import projection
from explorer.analysis.atlas.token_map import TokenMapResult, context_string
from explorer.analysis.atlas.token_types import token_type
from explorer.api import atlas as atlas_api
from explorer.config import Settings
from explorer.errors import InputError

PROMPT = "the cat sat on the mat, and the dog ran."


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, object, str]:
    from explorer.cli import main

    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_pca_all_layers_shape_and_reopen(tiny_llama, tmp_store) -> None:
    r = atlas_api.run_token_map(tiny_llama, PROMPT, method="pca", db=tmp_store)
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
    a = atlas_api.run_token_map(tiny_llama, PROMPT, method="pca", layer=1, db=tmp_store)
    b = atlas_api.run_token_map(tiny_llama, PROMPT, method="pca", layer=1, db=tmp_store)
    assert len(calls) == 1 and a.run_id == b.run_id
    atlas_api.run_token_map(tiny_llama, PROMPT, method="pca", layer=2, db=tmp_store)
    assert len(calls) == 2  # another layer is another map


def test_umap_cosine_separates_two_layers_and_is_stored(tiny_llama, tmp_store) -> None:
    r = atlas_api.run_token_map(
        tiny_llama, [PROMPT, "a second prompt here"], layer=-1, n_neighbors=5, db=tmp_store
    )
    assert r.method == "umap" and r.layer_mode == str(tiny_llama.n_layers)
    assert set(r.prompt_index.tolist()) == {0, 1}
    assert np.isfinite(r.coords).all() and r.coords.std(axis=0).min() > 0
    assert tmp_store.find("token_map", tiny_llama.model_id, tiny_llama.weight_hash, json.dumps(
        [PROMPT, "a second prompt here"]), {**r.params, "max_tokens": Settings().max_prompt_tokens}) == r.run_id  # fmt: skip


def test_bad_input(tiny_llama, tmp_store) -> None:
    with pytest.raises(InputError, match="empty"):
        atlas_api.run_token_map(tiny_llama, "  ", db=tmp_store)
    with pytest.raises(InputError, match="layer must be between"):
        atlas_api.run_token_map(tiny_llama, PROMPT, layer=99, db=tmp_store)
    with pytest.raises(InputError, match="unknown projection"):
        atlas_api.run_token_map(tiny_llama, PROMPT, method="tsne", db=tmp_store)
    with pytest.raises(InputError, match="at least"):
        atlas_api.run_token_map(tiny_llama, "hi", layer=0, db=tmp_store)
    assert tmp_store.list_runs() == []


def test_lens_scores_join_the_map(tiny_llama, tmp_store) -> None:
    import explorer

    lens = explorer.logit_lens(tiny_llama, PROMPT, db=tmp_store)
    r = atlas_api.run_token_map(tiny_llama, PROMPT, method="pca", db=tmp_store)
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

    r = atlas_api.run_token_map(tiny_llama, PROMPT, method="pca", db=False)
    fig = plots.token_map_figure(r, colour="token_type", layer=1, trajectory=2)
    names = [t.name for t in fig.data]
    assert "other layers" in names and any(n.startswith("path of") for n in names)
    path = [t for t in fig.data if t.name.startswith("path of")][0]
    assert len(path.x) == tiny_llama.n_layers + 1
    assert {s.name for s in figures_for(r)} == {"map", "trajectory"}
    assert r.select([0, 10_000]) and len(r.select([0, 10_000])) == 1
    # a continuous colour: its colour bar takes the upper half on the right, the legend the lower half
    fig = plots.token_map_figure(r, colour="norm", layer=1, trajectory=2)
    bar = next(t.marker.colorbar for t in fig.data if t.marker.showscale)
    assert bar.yanchor == "top" and bar.y == 1.0 and bar.len <= 0.5
    assert fig.layout.legend.yanchor == "bottom" and fig.layout.legend.y == 0.0


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
    missing = str(tmp_path / "missing.png")
    code, out, err = run_cli(["--db", db, "atlas", "map", "--prompt", PROMPT, "--image", missing], capsys)
    assert code == 2 and out is None and len(err.strip().splitlines()) == 1 and "missing.png" in err
    code, out, _ = run_cli(
        ["--db", db, "export", again["run_id"], "--format", "csv", "--out", str(tmp_path)], capsys
    )
    assert code == 0 and out["path"].endswith(".csv")


# ---- maps of an image + prompt on a vision-language model ---------------------------------------
@pytest.fixture(scope="module")
def tiny_vlm():  # type: ignore[no-untyped-def]
    """The VLM tests' tiny DINOv2 -> projector -> llama (4 visual tokens)."""
    import torch
    from conftest import make_tiny_lm
    from test_vlm import _tiny_vision

    from explorer.backends.vlm import projector_vlm
    from explorer.vlm.tiny_vlm import Projector, ProjectorConfig

    lm = make_tiny_lm("llama")
    torch.manual_seed(2)
    config = ProjectorConfig(
        vision_dim=64, lm_dim=int(lm.config.hidden_size), hidden_dim=48, grid=2, feature_layers=(2, 4)
    )
    return projector_vlm(lm, _tiny_vision(), Projector(config).eval(), model_id="tiny-test-vlm")


def _picture(seed: int = 0):  # type: ignore[no-untyped-def]
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8), "RGB")


def test_vlm_map_has_visual_tokens_and_the_image_is_in_the_key(tiny_vlm, tmp_store) -> None:
    r = atlas_api.run_token_map(tiny_vlm, "Describe it.", image=_picture(), method="pca", db=tmp_store)
    n_img = tiny_vlm.n_visual_tokens
    layer0 = r.layer == 0
    assert sum(m == "image" for m, ok in zip(r.modality, layer0, strict=True) if ok) == n_img
    visual = [i for i in range(r.n_points) if r.modality[i] == "image"]
    assert len(visual) == n_img * (tiny_vlm.n_layers + 1)
    assert all(r.token_type[i] == "visual" and r.token[i].startswith("<img ") for i in visual)
    assert {r.token_type[i] for i in range(r.n_points) if r.modality[i] == "text"} <= {
        "word", "punctuation", "special", "whitespace", "number"}  # fmt: skip
    assert r.image and r.to_dict()["image"] == r.image
    back = tmp_store.load(r.run_id)
    assert back.image == r.image and back.modality == r.modality and back.token_type == r.token_type
    same = atlas_api.run_token_map(tiny_vlm, "Describe it.", image=_picture(), method="pca", db=tmp_store)
    other = atlas_api.run_token_map(tiny_vlm, "Describe it.", image=_picture(5), method="pca", db=tmp_store)
    assert same.run_id == r.run_id and other.run_id != r.run_id and other.image != r.image


def test_text_model_with_an_image_is_refused(tiny_llama, tmp_store) -> None:
    with pytest.raises(InputError, match="text-only"):
        atlas_api.run_token_map(tiny_llama, PROMPT, image=_picture(), db=tmp_store)
    with pytest.raises(InputError):
        atlas_api.run_token_map(None, PROMPT, image=b"not an image", db=tmp_store)
    assert tmp_store.list_runs() == []


def test_vlm_lens_scores_join_only_the_same_image(tiny_vlm, tmp_store) -> None:
    import explorer

    lens = explorer.logit_lens(tiny_vlm, "Describe it.", image=_picture(), db=tmp_store)
    explorer.logit_lens(tiny_vlm, "Describe it.", image=_picture(5), db=tmp_store)  # another image
    r = atlas_api.run_token_map(tiny_vlm, "Describe it.", image=_picture(), method="pca", db=tmp_store)
    scores = atlas_api.map_scores(r, db=tmp_store)
    assert [k for k in scores if k.startswith("lens rank")] == [
        f"lens rank of final prediction ({lens.run_id})"
    ]
    values = scores[f"lens rank of final prediction ({lens.run_id})"]
    assert not np.isnan(values).any()
    last = np.flatnonzero((r.layer == tiny_vlm.n_layers) & (r.position == r.position.max()))
    assert values[last] == 1  # the last layer's top-1 is the model's own prediction


def test_pruning_kept_and_dropped_colour_the_map(tiny_llama, tmp_store) -> None:
    from explorer import prune_text

    pruned = prune_text(
        tiny_llama, PROMPT, strategies=["random"], keep_ratios=(1.0, 0.5), layer=1, continuation_tokens=0,
        db=tmp_store,
    )  # fmt: skip
    r = atlas_api.run_token_map(tiny_llama, PROMPT, method="pca", db=tmp_store)
    scores = atlas_api.map_scores(r, db=tmp_store)
    label = f"pruning kept random @0.5 ({pruned.run_id})"
    assert label in scores
    row = next(x for x in pruned.rows if x.keep_ratio == 0.5)
    values = scores[label]
    for i in range(r.n_points):
        assert values[i] == float(int(r.position[i]) in set(row.kept))
    assert 0 < values.sum() < r.n_points


# ---- UMAP: cosine neighbours kept by the PCA pre-reduction ----------------------------------------
def test_pca_pre_reduction_keeps_cosine_geometry() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 40)) * rng.uniform(0.5, 20, size=(200, 1))  # norms differ, directions matter
    reduced, kept = projection.reduce_unit_rows(x, 50)  # d < dims: an exact rotation
    assert kept == 1.0
    u = projection.unit_rows(x)
    d_red = np.linalg.norm(reduced[:, None] - reduced[None], axis=-1)
    d_cos = 1 - u @ u.T
    np.testing.assert_allclose(d_red, np.sqrt(np.maximum(2 * d_cos, 0)), atol=1e-5)
    # low-rank directions in 300 dims: 50 PCA dims keep (nearly) all variance and every cosine neighbour
    basis = rng.normal(size=(20, 300))
    y = rng.normal(size=(300, 20)) @ basis * rng.uniform(1, 10, size=(300, 1))
    red, kept = projection.reduce_unit_rows(y, 50)
    assert red.shape == (300, 50) and kept > 0.999
    uy = projection.unit_rows(y)
    nn_cos = np.argsort(-(uy @ uy.T), axis=1)[:, 1:11]
    d = np.linalg.norm(red[:, None] - red[None], axis=-1)
    nn_red = np.argsort(d, axis=1)[:, 1:11]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(nn_cos, nn_red, strict=True)])
    assert recall > 0.99


def test_umap_fit_reports_its_reduction(tiny_llama) -> None:
    r = atlas_api.run_token_map(tiny_llama, PROMPT, layer=-1, n_neighbors=5, db=False)
    d_model = int(tiny_llama.hf_model.config.hidden_size)
    assert r.fit["metric"] == "euclidean"  # on unit vectors: the cosine neighbours
    assert r.fit["pca_dims"] == min(projection.PCA_DIMS, d_model, r.n_points)
    assert any("cosine" in n and "PCA" in n for n in r.notes)
    exact = atlas_api.run_token_map(tiny_llama, PROMPT, layer=-1, n_neighbors=5, pca_dims=0, db=False)
    assert exact.fit["metric"] == "cosine" and "pca_dims" not in exact.fit
    with pytest.raises(InputError, match="pca_dims"):
        atlas_api.run_token_map(tiny_llama, PROMPT, pca_dims=3, db=False)


def test_vlm_image_attribution_colours_the_visual_tokens(tiny_vlm, tmp_store) -> None:
    from explorer.analysis.vlm_attribution import VLMAttributionParams
    from explorer.api.vlm import vlm_attribute

    params = VLMAttributionParams(answer_tokens=1, random_trials=1)
    attr = vlm_attribute(tiny_vlm, "Describe it.", _picture(), params=params, db=tmp_store)
    r = atlas_api.run_token_map(
        tiny_vlm, "Describe it.", image=_picture(), method="pca", layer=0, db=tmp_store
    )
    values = atlas_api.map_scores(r, db=tmp_store)[f"image attribution occlusion ({attr.run_id})"]
    image = [i for i in range(r.n_points) if r.modality[i] == "image"]
    assert np.isnan(np.delete(values, image)).all()  # text tokens have no image-patch score
    order = sorted(image, key=lambda i: int(r.position[i]))  # the k-th visual token is patch k
    np.testing.assert_allclose(values[order], np.asarray(attr.scores, dtype=float))


# ---- maps of the embedded sentence encoder (all-MiniLM-L6-v2) -----------------------------------
def test_minilm_map_has_its_seven_layers_and_special_tokens(tmp_store) -> None:
    r = atlas_api.run_token_map("all-minilm-l6-v2", "The cat sat on the mat.", method="pca", db=tmp_store)
    assert r.model == "all-minilm-l6-v2" and r.n_layers == 6 and r.layers == list(range(7))
    tokens = r.tokens[0]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "cat" in tokens
    assert r.n_points == 7 * len(tokens)
    first = r.trajectory(0, 0)
    assert {r.token_type[i] for i in first} == {"special"}
    assert any("bidirectional" in n for n in r.notes)
    assert (
        atlas_api.run_token_map(
            "all-minilm-l6-v2", "The cat sat on the mat.", method="pca", db=tmp_store
        ).run_id
        == r.run_id
    )
    assert tmp_store.load(r.run_id).tokens == r.tokens
    with pytest.raises(InputError, match="text encoder"):
        atlas_api.run_token_map("all-minilm-l6-v2", "hi there", image=_picture(), db=tmp_store)


# ---- a sweep's dataset as the map's input ---------------------------------------------------------
def test_dataset_rows_are_mapped_in_one_fit(tiny_llama, tmp_store, tmp_path) -> None:
    import json

    rows = [{"question": "a cat sat on the mat"}, {"question": "the dog ran home", "answer": "x"}]
    jsonl = tmp_path / "sweep.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    r = atlas_api.run_token_map(tiny_llama, dataset=jsonl, method="pca", db=tmp_store)
    assert r.prompts == [row["question"] for row in rows]
    assert set(r.prompt_index.tolist()) == {0, 1}
    direct = atlas_api.run_token_map(
        tiny_llama, [row["question"] for row in rows], method="pca", db=tmp_store
    )
    assert direct.run_id == r.run_id  # the same inputs: served from the store
    csv = tmp_path / "sweep.csv"
    csv.write_text("prompt,other\nhello there,1\ngood morning,2\n", encoding="utf-8")
    assert atlas_api.run_token_map(tiny_llama, dataset=csv, method="pca", db=False).prompts == [
        "hello there",
        "good morning",
    ]


def test_bad_datasets(tiny_llama, tmp_path) -> None:
    from explorer.analysis.atlas.token_map import MAX_PROMPTS

    no_column = tmp_path / "a.csv"
    no_column.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(InputError, match="no 'prompt' or 'question' column"):
        atlas_api.run_token_map(tiny_llama, dataset=no_column, method="pca", db=False)
    too_many = tmp_path / "b.csv"
    too_many.write_text("prompt\n" + "hi\n" * (MAX_PROMPTS + 1), encoding="utf-8")
    with pytest.raises(InputError, match=f"at most {MAX_PROMPTS}"):
        atlas_api.run_token_map(tiny_llama, dataset=too_many, method="pca", db=False)
    missing_image = tmp_path / "c.csv"
    missing_image.write_text("prompt,image\nhi,nothere.png\n", encoding="utf-8")
    with pytest.raises(InputError, match="not found"):
        atlas_api.run_token_map(tiny_llama, dataset=missing_image, method="pca", db=False)
    with pytest.raises(InputError, match="not both"):
        atlas_api.run_token_map(tiny_llama, "hi", dataset=no_column, method="pca", db=False)
    (tmp_path / "b.txt").write_text("prompt\nhi\n", encoding="utf-8")
    with pytest.raises(InputError, match="unknown format"):
        atlas_api.run_token_map(tiny_llama, dataset=tmp_path / "b.txt", method="pca", db=False)
    with pytest.raises(InputError, match="does not exist"):
        atlas_api.run_token_map(tiny_llama, dataset=tmp_path / "none.csv", method="pca", db=False)


def test_vlm_dataset_maps_each_row_with_its_image(tiny_vlm, tmp_store, tmp_path) -> None:
    for seed in (0, 1):
        _picture(seed).save(tmp_path / f"scene{seed}.png")
    data = tmp_path / "scenes.csv"
    data.write_text("question,image\nWhat is it?,scene0.png\nWhich colour?,scene1.png\n", encoding="utf-8")
    r = atlas_api.run_token_map(tiny_vlm, dataset=data, method="pca", layer=0, db=tmp_store)
    n_img = tiny_vlm.n_visual_tokens
    for pi in (0, 1):
        rows = r.prompt_index == pi
        assert sum(m == "image" for m, ok in zip(r.modality, rows, strict=True) if ok) == n_img
    assert r.image is not None and r.image.startswith("rows:")
    _picture(2).save(tmp_path / "scene1.png")  # another image: another map, not the stored one
    again = atlas_api.run_token_map(tiny_vlm, dataset=data, method="pca", layer=0, db=tmp_store)
    assert again.image != r.image and again.run_id != r.run_id


def test_cli_map_dataset(tmp_path, capsys) -> None:
    from explorer.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("text\nhello\n", encoding="utf-8")
    code = main(
        ["--db", str(tmp_path / "x.duckdb"), "atlas", "map", "--dataset", str(bad), "--method", "pca"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no 'prompt' or 'question' column" in err and len(err.strip().splitlines()) == 1


def test_umap_kernels_have_a_cache_key_that_survives_the_process() -> None:
    """numba keys a cached kernel by its signature; pynndescent's descent kernels take the distance (a
    numba dispatcher) as an argument, and numba pickles a dispatcher by a per-process random uuid, so a
    new process never found them in NUMBA_CACHE_DIR and recompiled them at its first map. After
    `cache_umap_kernels` the key names the kernel instead, the same in every process, and the kernels that
    declare cache=False (process_candidates) cache too."""
    import pickle

    import umap  # noqa: F401 - imports pynndescent, whose kernels are switched on
    from numba.core import types
    from pynndescent import distances, pynndescent_

    projection.cache_umap_kernels()
    key = pickle.dumps(types.Dispatcher(distances.squared_euclidean))
    assert b"explorer-stable:pynndescent.distances.squared_euclidean" in key
    assert pickle.loads(key) == types.Dispatcher(distances.squared_euclidean)
    assert pynndescent_.process_candidates._cache.__class__.__name__ == "FunctionCache"
