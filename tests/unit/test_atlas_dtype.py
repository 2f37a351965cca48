"""The atlas API runs its model in the dtype it is given (`dtype=`), like every other analysis:
each stored run carries the fingerprint of the weights in that dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from explorer.api import atlas as atlas_api
from explorer.api.runner import open_store
from explorer.backends.language import load_model

PROMPT = "the cat sat on the mat"


def test_atlas_runs_load_the_model_in_the_given_dtype(tmp_path: Path, settings: Any) -> None:
    from conftest import make_tiny_lm

    lm = make_tiny_lm("llama")
    path = str(tmp_path / "tiny")
    lm.hf_model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    bf16 = load_model(path, settings=settings, dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    f32 = load_model(path, settings=settings, dtype="float32")
    assert bf16.weight_hash != f32.weight_hash
    runs = [
        atlas_api.run_token_map(path, PROMPT, method="pca", layer=1, settings=settings, dtype="bfloat16"),
        atlas_api.run_microscope(path, PROMPT, settings=settings, dtype="bfloat16"),
    ]
    store = open_store(None, settings)
    assert store is not None
    hashes = {row.run_id: row.weight_hash for row in store.list_runs()}
    assert [hashes[r.run_id] for r in runs] == [bf16.weight_hash] * 2


def test_vocab_health_loads_the_model_in_the_given_dtype(
    tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole-vocabulary scan takes seconds on a 30k vocabulary: it stops right after the load."""
    from conftest import make_tiny_lm

    lm = make_tiny_lm("llama")
    path = str(tmp_path / "tiny")
    lm.hf_model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    loaded: list[Any] = []
    real = atlas_api.get_model

    class Loaded(Exception):
        pass

    def spy(*args: Any) -> Any:
        loaded.append(real(*args))
        raise Loaded

    monkeypatch.setattr(atlas_api, "get_model", spy)
    with pytest.raises(Loaded):
        atlas_api.run_vocab_health(path, settings=settings, dtype="bfloat16")
    assert [m.dtype for m in loaded] == [torch.bfloat16]
