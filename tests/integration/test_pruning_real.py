"""The pruning lab on the embedded models: SmolLM2-135M (text) and DINOv2-small + saliency (image)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path
from typing import Any

import pytest
import torch

from explorer.analysis.pruning.text import FastVCut, reference_run, run_batch
from explorer.backends.language import LanguageModel, load_model
from explorer.errors import InputError
from explorer.store import Store

pytestmark = pytest.mark.real

PROMPT = "The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is"


@pytest.fixture(scope="module")
def lm() -> LanguageModel:
    return load_model("smollm2-135m", device="cpu")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store.open(tmp_path / "runs.duckdb")
    yield s
    s.close()


def test_fastv_full_keep_is_bit_exact_on_smollm2(lm: LanguageModel) -> None:
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids[0]
    n = int(ids.shape[0])
    ref = reference_run(lm, ids, 4, layer=2)
    run, _ = run_batch(lm, ids.unsqueeze(0), 4, FastVCut(torch.arange(n).unsqueeze(0), n, 2))
    assert torch.equal(run.last_logits[0], ref.last_logits)
    assert torch.equal(run.continuation[0], ref.continuation)
    assert lm.token_str(int(ref.last_logits.argmax())) == " Rome"


def test_text_sweep_on_smollm2(lm: LanguageModel, store: Store) -> None:
    from explorer import load_run, prune_text

    result = prune_text(
        lm, PROMPT, keep_ratios=(1.0, 0.75, 0.5), target=" Rome", continuation_tokens=4, db=store
    )
    for row in result.rows:
        if row.keep_ratio == 1.0:
            assert row.fidelity["kl"] == 0.0 and row.fidelity["semantic_similarity"] == 1.0
    frugal = result.row("frugalprompt:input_x_gradient", 0.75).fidelity["kl"]
    bottom = result.row("bottom_k:input_x_gradient", 0.75).fidelity["kl"]
    assert frugal is not None and bottom is not None and frugal < bottom
    assert result.row("fastv", 0.5).layer == 2 and result.row("random", 0.5).layer == 0
    assert load_run(result.run_id or "", db=store).to_dict() == result.to_dict()


def test_minilm_similarity_ranks_paraphrase_above_unrelated() -> None:
    from explorer.backends.sentence import semantic_similarity

    para, unrelated = semantic_similarity(
        "The cat sat on the mat.", ["A cat is sitting on a mat.", "Stocks fell."]
    )
    assert para > 0.8 > 0.3 > unrelated


def test_image_sweep_on_dinov2_stored_and_plotted(store: Store) -> None:
    from explorer.api.pruning import prune
    from explorer.backends.images import sample_images
    from explorer.plots import figures_for

    samples = sample_images()
    assert samples, "matplotlib / scikit-image sample images are installed by make setup"
    image = next(iter(samples.values()))
    result = prune(image=image, strategies=["cls_attention", "random"], keep_ratios=(1.0, 0.5), db=store)
    assert result.kind == "prune_image" and result.run_id
    for row in result.rows:
        assert len(row.kept) == row.keep_count
    names = [spec.name for spec in figures_for(result)]
    assert names == ["retention", "kept_patches", "saliency"]
    for spec in figures_for(result):
        assert spec.build(result).layout.title.text and spec.data(result).num_rows > 0
    before = len(store.list_runs())
    with pytest.raises(InputError):
        prune(image=b"not an image at all", db=store)
    with pytest.raises(InputError):
        prune(image=image, keep_ratios=(0.0,), db=store)
    assert len(store.list_runs()) == before


def test_cli_prune_image_strategy_all_runs_every_registered_strategy(tmp_path: Path) -> None:
    """`explorer prune --image X --strategy all` works as `--help` says: every image strategy."""
    import contextlib
    import io
    import json

    from explorer.analysis.pruning.image import IMAGE_STRATEGIES
    from explorer.backends.images import sample_images
    from explorer.cli import main

    image = str(next(iter(sample_images().values())))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(
            [
                "--db",
                str(tmp_path / "x.duckdb"),
                "prune",
                "--image",
                image,
                "--strategy",
                "all",
                "--keep",
                "0.25",
            ]
        )
    assert code == 0
    result = json.loads(out.getvalue())
    assert [r["strategy"] for r in result["rows"]] == list(IMAGE_STRATEGIES)
    assert set(result["deviations"]) == set(IMAGE_STRATEGIES)
