"""VISTA's three patterns (explorer.vlm.vista_patterns) on a tiny VLM built in code, and on planted rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_vlm import tiny_vlm  # noqa: F401  (the module-scoped tiny VLM fixture)

from explorer.errors import InputError
from explorer.vlm.vista_patterns import (
    ABSENT,
    DECODED,
    HALLUCINATED,
    HIDDEN,
    PatternParams,
    categorise,
    stage_of,
    summarise,
    token_type,
)


def test_categories_follow_the_scene_and_chairs_rule() -> None:
    objects = [("red", "circle"), ("blue", "square")]
    cats = categorise("a red circle and a green star", objects)
    assert cats["red"] == DECODED and cats["circle"] == DECODED
    assert cats["green"] == HALLUCINATED and cats["star"] == HALLUCINATED
    assert cats["blue"] == HIDDEN and cats["square"] == HIDDEN
    assert cats["yellow"] == ABSENT and cats["triangle"] == ABSENT
    # a word in a genuine and a hallucinated mention counts as decoded genuine
    assert categorise("a red circle and a red star", objects)["red"] == DECODED


def test_token_types_and_equal_stages() -> None:
    assert token_type(" circle") == "object word" and token_type(" Red") == "object word"
    assert token_type(" the") == "function word" and token_type(",") == "punctuation"
    assert token_type(" zebra") == "other"
    assert stage_of(7).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert stage_of(2).tolist() == [0, 1]


def _rows(
    genuine_late: float, halluc_late: float, n_scenes: int = 12
) -> tuple[list[Any], list[Any], list[Any]]:
    ranks, words, emitted = [], [], []
    for s in range(n_scenes):
        sample = f"s{s}"
        for cat, early, late in (
            (DECODED, 10.0, genuine_late),
            (HALLUCINATED, 500.0, halluc_late),
            (HIDDEN, 50.0, 50.0),
            (ABSENT, 3000.0, 3000.0),
        ):
            for stage, value in (("early", early), ("mid", (early + late) / 2), ("late", late)):
                for layer in range(4):
                    ranks.append(
                        {
                            "sample": sample,
                            "word": cat,
                            "category": cat,
                            "stage": stage,
                            "layer": layer,
                            "mean_rank": value * (1 + 0.01 * s),
                        }
                    )
            words.append(
                {
                    "sample": sample,
                    "word": cat,
                    "category": cat,
                    "token_id": 0,
                    "min_rank": int(early),
                    "median_rank": early,
                    "emitted": False,
                }
            )
        for step in range(4):
            emitted.append(
                {
                    "sample": sample,
                    "step": step,
                    "token": " red",
                    "token_type": "object word",
                    "peak_layer": 2,
                    "peak_prob": 0.5,
                    "final_prob": 0.4,
                }
            )
            emitted.append(
                {
                    "sample": sample,
                    "step": step,
                    "token": " the",
                    "token_type": "function word",
                    "peak_layer": 3,
                    "peak_prob": 0.5,
                    "final_prob": 0.5,
                }
            )
    return ranks, words, emitted


def test_planted_patterns_are_found_and_their_absence_is_reported() -> None:
    ranks, words, emitted = _rows(genuine_late=100.0, halluc_late=20.0)
    s = summarise(ranks, words, emitted, n_layers=4, top_k=100, n_boot=200, seed=0)
    loss = s["information_loss"]["final"]
    assert loss[DECODED]["late_over_early"]["value"] == pytest.approx(10.0)
    assert loss[HALLUCINATED]["late_over_early"]["value"] == pytest.approx(0.04)
    assert s["information_loss"]["verdict"].startswith("partly")  # hidden genuine words do not sink (x1.0)
    assert s["early_excitation"]["verdict"].startswith("appears")  # object words peak at 2 < 3, function at 3
    assert s["hidden_genuine"]["verdict"].startswith("appears")  # rank 50 <= 100, the control 3000
    # nothing planted: nothing appears
    flat_ranks, flat_words, _ = _rows(genuine_late=10.0, halluc_late=500.0)
    flat = summarise(flat_ranks, flat_words, [], n_layers=4, top_k=10, n_boot=200, seed=0)
    assert flat["information_loss"]["verdict"].startswith("does not appear")
    assert flat["early_excitation"]["verdict"].startswith("not measurable")
    assert flat["hidden_genuine"]["verdict"].startswith("does not appear")


def test_ranks_match_the_models_own_logits_at_the_last_layer(tiny_vlm: Any) -> None:  # noqa: F811
    from explorer.backends.vlm import capture_vlm, generate
    from explorer.vlm.eval_sets import builtin_set
    from explorer.vlm.vista_patterns import lens_ranks, word_token_ids

    sample = builtin_set("caption", 1)[0]
    inputs = tiny_vlm.prepare(sample.question, sample.image())
    ids = generate(tiny_vlm, inputs, 5, stop_at_eos=False)
    word_ids = word_token_ids(tiny_vlm)
    ranks, probs = lens_ranks(tiny_vlm, sample, ids, word_ids, 4096)
    trace, _ = capture_vlm(tiny_vlm, inputs, extra_ids=ids)
    start = len(inputs.input_ids) - 1
    logits = trace.logits[start : start + len(ids)].float()
    for w, tid in enumerate(word_ids.values()):
        expected = (logits > logits[:, tid : tid + 1]).sum(-1) + 1
        assert ranks[w, -1].tolist() == expected.tolist()
    emitted_p = torch.softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)]
    assert np.allclose(probs[-1], emitted_p.numpy(), atol=1e-5)
    # greedy decoding: the emitted token is the top of the final layer
    assert all(
        p == pytest.approx(float(torch.softmax(logits[i], -1).max()), abs=1e-5)
        for i, p in enumerate(probs[-1])
    )


def test_patterns_run_store_and_reopen(tiny_vlm: Any, tmp_store: Any) -> None:  # noqa: F811
    from explorer.api.vlm import vista_patterns
    from explorer.plots import figures_for

    r = vista_patterns(tiny_vlm, n_scenes=2, max_new_tokens=6, n_boot=100, db=tmp_store)
    assert r.run_id and len(r.captions) == 2
    assert {row["category"] for row in r.words} <= {DECODED, HIDDEN, HALLUCINATED, ABSENT}
    assert all(1 <= e["peak_layer"] < r.n_layers for e in r.emitted)
    again = tmp_store.load(r.run_id)
    assert again.to_dict() == r.to_dict()
    names = [f.name for f in figures_for(again)]
    assert names == ["information_loss", "layer_ranks", "early_excitation", "hidden_genuine"]
    for spec in figures_for(again):
        fig = spec.build(again)
        assert len(fig.data) > 0 and fig.layout.xaxis.title.text and fig.layout.yaxis.title.text
        assert spec.data(again).num_rows > 0
    assert vista_patterns(tiny_vlm, n_scenes=2, max_new_tokens=6, n_boot=100, db=tmp_store).run_id == r.run_id


@pytest.mark.parametrize(
    "kwargs", [{"n_scenes": 0}, {"top_k": 0}, {"max_new_tokens": 1}, {"n_boot": 5}, {"batch_size": 0}]
)
def test_bad_parameters_are_input_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InputError):
        PatternParams(**kwargs).validate()


def test_cli_bad_input_exits_2(tmp_path: Any, capsys: Any) -> None:
    from explorer.cli import main

    rc = main(["vista-patterns", "--scenes", "0", "--db", str(tmp_path / "x.duckdb")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_scenes" in err[0]


def test_rank_axes_never_show_a_lone_label() -> None:
    """Ranks within a decade (one scene: 40-300) get 1-2-5 ticks inside the range; a range of
    more than 1.5 decades keeps one tick per decade."""
    from explorer.plots.vista_patterns import rank_ticks

    narrow = rank_ticks([40.0, 95.0, 300.0, None])
    assert narrow["tickvals"] == [50, 100, 200] and narrow["ticktext"] == ["50", "100", "200"]
    assert len(rank_ticks([90.0, 110.0])["tickvals"]) >= 3
    assert rank_ticks([3.0, 20_000.0]) == {"dtick": 1}
