"""LatentLens neighbours on the embedded demo VLM (tiny-vlm), with a small slice of the corpus (fast)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from explorer.backends.vlm import load_vlm
from explorer.vlm.latent import LatentParams, bank_layers, build_text_bank, latent_neighbours, search
from explorer.vlm.latent_corpus import default_corpus
from explorer.vlm.scenes import compose_scene

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def vlm() -> Any:
    return load_vlm("tiny-vlm")


def test_real_bank_and_neighbours_of_a_red_circle_and_a_blue_square(vlm: Any) -> None:
    corpus = default_corpus().head(60)
    bank = build_text_bank(vlm.lm, corpus)
    assert bank.layers == bank_layers(30) == [1, 2, 4, 8, 16, 24, 28, 29, 30]
    assert bank.n_entries > 200 and bank.vectors is not None and bank.vectors.dtype == np.float16
    # every stored state retrieves itself or a float16 tie: at early layers " to" after "The monkey slept
    # next" and after "The owl slept next" agree to 1e-4, so the same token in a near-identical context
    picks = np.arange(0, bank.n_entries, max(1, bank.n_entries // 20))
    for layer in (1, 16, 30):
        q = bank.vectors[bank.layer_index(layer), picks].astype(np.float32)
        sims, entries, _ = search(bank, q, [layer], 1)
        assert (sims[:, 0] > 0.999).all()
        assert [bank.tokens[e] for e in entries[:, 0]] == [bank.tokens[p] for p in picks]
    image = compose_scene([("red", "circle", "left"), ("blue", "square", "right")]).image
    r = latent_neighbours(vlm, "What is in the picture?", image, bank, params=LatentParams(k=5))
    assert r.similarity.shape == (9, 64, 5) and r.grid == [8, 8]
    assert (np.diff(r.similarity, axis=2) <= 1e-12).all() and (r.similarity <= 1.0 + 1e-3).all()
    assert all(len(r.neighbours[li][p]) == 5 for li in range(9) for p in range(64))
    cross = latent_neighbours(vlm, "What is in the picture?", image, bank, params=LatentParams(match="all"))
    assert cross.layers[0] == 0 and set(np.unique(cross.bank_layer)) <= set(bank.layers)
