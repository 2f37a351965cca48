"""`vlm-eval` and VISTA on the embedded demo VLM (2 scenes: the machine is small and shared)."""

from __future__ import annotations

from typing import Any

import pytest

from explorer.backends.vlm import generate

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def demo_vlm() -> Any:
    from explorer.backends.vlm import load_vlm

    return load_vlm("tiny-vlm")


def test_batched_evaluation_answers_like_one_by_one_generation(demo_vlm: Any, tmp_store: Any) -> None:
    from explorer.api.vlm import vlm_eval
    from explorer.vlm.eval_sets import builtin_set

    r = vlm_eval(demo_vlm, "qa", n_scenes=2, batch_size=8, n_boot=200, db=tmp_store)
    by_question = {(s["image_ref"], s["question"]): s["said"] for s in r.samples}
    for sample in builtin_set("qa", 2):
        ids = generate(demo_vlm, demo_vlm.prepare(sample.question, sample.image()), sample.max_new_tokens)
        alone = str(demo_vlm.tokenizer.decode(ids, skip_special_tokens=True)).strip()
        assert by_question[(sample.image_ref, sample.question)] == alone
    # the demo VLM counts well (92.7% on the held-out scenes): both counts here are right
    assert r.metric("plain", "count", "accuracy")["value"] == 1.0  # type: ignore[index]
    assert tmp_store.load(r.run_id).to_dict() == r.to_dict()


def test_vista_with_lambda_zero_and_no_sla_matches_plain(demo_vlm: Any) -> None:
    from explorer.api.vlm import vlm_eval
    from explorer.vlm.vista import VistaParams

    r = vlm_eval(demo_vlm, "caption", n_scenes=2, n_boot=200, vista=VistaParams(vsv=True, lam=0.0), db=False)
    plain = [s["said"] for s in r.samples if s["condition"] == "plain"]
    steered = [s["said"] for s in r.samples if s["condition"] == "vista"]
    assert plain == steered and all(plain)
    assert r.latency_ratio is not None
