"""Visual-token pruning on the embedded demo VLM (1 scene: the machine is small and shared)."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.real


def test_demo_vlm_pruning_sweep_keeps_the_unpruned_answers_at_100_percent(tmp_store: Any) -> None:
    from explorer.api.vlm import vlm_eval, vlm_prune
    from explorer.backends.vlm import load_vlm

    vlm = load_vlm("tiny-vlm")
    r = vlm_prune(
        vlm,
        "pope",
        n_scenes=1,
        strategies="fastv,vtc_cls,random",
        keep_ratios=[1, 0.25],
        n_boot=200,
        db=tmp_store,
    )
    assert r.n_visual == 64
    plain = vlm_eval(vlm, "pope", n_scenes=1, n_boot=200, db=False)
    said = {(s["sample_id"]): s["said"] for s in plain.samples}
    for s in r.samples:
        if s["keep_ratio"] == 1.0:
            assert s["said"] == said[s["sample_id"]] and s["agree"]
    for c in r.costs:
        assert (c["flops_ratio"] == 1.0) == (c["keep_ratio"] == 1.0)
        if c["keep_ratio"] == 0.25:
            assert c["kept"] == 16 and c["flops_ratio"] < 0.75
    vtc = next(c for c in r.costs if c["strategy"] == "vtc_cls" and c["keep_ratio"] == 0.25)
    assert vtc["scoring_seconds"] > 0
    assert tmp_store.load(r.run_id).to_dict()["retention"] == r.to_dict()["retention"]
