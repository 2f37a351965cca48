"""Evaluation metrics and sets, checked against numbers computed by hand."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.errors import InputError
from explorer.vlm import eval_sets
from explorer.vlm import metrics as m
from explorer.vlm.scenes import HELDOUT_SEED_BASE, TRAIN_SEED_BASE

# ---- POPE ----------------------------------------------------------------------------------------


def test_pope_metrics_by_hand() -> None:
    # truth:  Y Y Y N N N N N ; said: Y Y N Y N N N Y -> TP 2, FN 1, FP 2, TN 3
    truth = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    said = np.array([1, 1, 0, 1, 0, 0, 0, 1], dtype=bool)
    r = m.pope_metrics(truth, said)
    assert r["accuracy"] == pytest.approx(5 / 8)
    assert r["precision"] == pytest.approx(2 / 4)
    assert r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))  # 4/7
    assert r["f1"] == pytest.approx(4 / 7)
    assert r["yes_ratio"] == pytest.approx(4 / 8)


def test_pope_metrics_without_any_yes_are_zero_not_nan() -> None:
    r = m.pope_metrics(np.array([True, False]), np.array([False, False]))
    assert r == {"accuracy": 0.5, "precision": 0.0, "recall": 0.0, "f1": 0.0, "yes_ratio": 0.0}


@pytest.mark.parametrize(
    ("answer", "yes"),
    [
        ("yes", True),
        ("Yes, there is a red circle.", True),
        ("No", False),
        ("no<|im_end|>", False),
        ("There is not a star.", False),
        ("Yes. No other shapes.", True),  # only the first sentence counts
        ("Nope", True),  # POPE's reading: only the words No / no / not mean "no"
    ],
)
def test_pope_reads_answers_like_its_script(answer: str, yes: bool) -> None:
    assert m.pope_says_yes(answer) is yes


# ---- CHAIR ---------------------------------------------------------------------------------------


def test_object_mentions_use_synonyms_and_nearby_colours() -> None:
    found = [
        (x.colour, x.shape) for x in m.object_mentions("A large crimson disk and a box, next to a blue star.")
    ]
    assert found == [("red", "circle"), (None, "square"), ("blue", "star")]


def test_chair_by_hand() -> None:
    truth = {("red", "circle"), ("blue", "square")}
    # caption 1: red circle (ok), blue square (ok)             -> 2 mentions, 0 hallucinated
    # caption 2: green circle (wrong colour), star (absent)    -> 2 mentions, 2 hallucinated
    # caption 3: a circle (bare shape, present) and a red star -> 2 mentions, 1 hallucinated
    # caption 4: no objects                                    -> 0 mentions
    caps = [
        "a red circle and a blue square",
        "a green circle and a star",
        "a circle and a red star",
        "nothing to see",
    ]
    counts = [m.chair_counts(c, truth) for c in caps]
    assert counts == [(2, 0), (2, 2), (2, 1), (0, 0)]
    mentioned, hallucinated = zip(*counts, strict=True)
    r = m.chair_scores(np.array(mentioned), np.array(hallucinated))
    assert r["chair_s"] == pytest.approx(2 / 4)  # captions 2 and 3
    assert r["chair_i"] == pytest.approx(3 / 6)


def test_chair_counts_repeated_mentions_like_the_authors_code() -> None:
    assert m.chair_counts("a star, a star and a star", {("red", "circle")}) == (3, 3)


# ---- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    correct = np.array([1] * 30 + [0] * 10)
    a = m.accuracy_estimate(correct, n_boot=500, seed=3)
    assert a == m.accuracy_estimate(correct, n_boot=500, seed=3)
    values = np.random.default_rng(0).normal(size=50)
    ci = [m.bootstrap_ci(lambda idx: float(values[idx].mean()), 50, n_boot=300, seed=s) for s in (1, 1, 2)]
    assert ci[0] == ci[1] and ci[0] != ci[2]
    assert a.value == pytest.approx(0.75)
    assert a.low < 0.75 < a.high
    # the normal approximation of the interval: 0.75 +- 1.96 * sqrt(0.75 * 0.25 / 40) = +- 0.134
    assert a.high - a.low == pytest.approx(2 * 0.134, abs=0.06)


def test_bootstrap_of_a_constant_has_no_width() -> None:
    e = m.accuracy_estimate(np.ones(20), n_boot=200)
    assert (e.value, e.low, e.high) == (1.0, 1.0, 1.0)


# ---- evaluation sets ----------------------------------------------------------------------------


def test_eval_seeds_are_disjoint_from_training_and_heldout() -> None:
    seeds = eval_sets.eval_seeds(500)
    assert min(seeds) >= HELDOUT_SEED_BASE + 1000 and min(seeds) > TRAIN_SEED_BASE + 100_000
    with pytest.raises(InputError):
        eval_sets.eval_seeds(0)


def test_pope_negatives_follow_the_definitions() -> None:
    rc, bs, gt, ys = ("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "star")
    # the data set: bs is the most frequent object; gt co-occurs most with rc
    scenes = [[rc, gt], [rc, gt], [rc, gt], [bs], [bs], [bs], [bs], [ys, rc]]
    freq, cooc = eval_sets.object_statistics(scenes)
    assert freq[bs] == 4 and freq[rc] == 4 and cooc[rc][gt] == 3 and cooc[rc][ys] == 1
    rng = __import__("random").Random(0)
    # scene with only the red circle: popular = most frequent absent objects: bs (4), then gt (3)
    assert eval_sets.pope_negatives([rc], 2, "popular", freq, cooc, rng) == [bs, gt]
    # adversarial = most co-occurring with the red circle: gt (3), then ys (1)
    assert eval_sets.pope_negatives([rc], 2, "adversarial", freq, cooc, rng) == [gt, ys]
    random_pick = eval_sets.pope_negatives([rc], 5, "random", freq, cooc, rng)
    assert len(set(random_pick)) == 5 and rc not in random_pick


def test_builtin_pope_set_is_balanced_and_correct() -> None:
    samples = eval_sets.builtin_set("pope", 6, seed=1)
    for split in eval_sets.POPE_SPLITS:
        rows = [s for s in samples if s.qtype == split]
        answers = Counter(s.answer for s in rows)
        assert answers["yes"] == answers["no"] > 0
        for s in rows:
            assert (s.probe in s.objects) == (s.answer == "yes")
            assert (
                s.question
                == f"Is there {'an' if s.probe[0][0] in 'aeiou' else 'a'} {s.probe[0]} {s.probe[1]}?"
            )
    # the "yes" probes are the same in every split
    yes = [
        {(s.image_ref, s.question) for s in samples if s.qtype == sp and s.answer == "yes"}
        for sp in eval_sets.POPE_SPLITS
    ]
    assert yes[0] == yes[1] == yes[2]


def test_builtin_qa_and_caption_sets() -> None:
    samples = eval_sets.builtin_set("all", 3)
    types = Counter(s.qtype for s in samples)
    assert types["caption"] == 3 and types["count"] == 3
    assert types["colour"] == types["position"] == sum(len(s.objects) for s in samples if s.qtype == "count")
    scene = next(s for s in samples if s.qtype == "caption")
    assert all(f"{c} {sh}" in scene.answer for c, sh in scene.objects)
    assert scene.image().size == (224, 224)


def _write_images(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "img" / "a.png")


def test_user_data_in_three_formats(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    _write_images(tmp_path)
    rows = [
        {"image": "img/a.png", "question": "What color is it?", "answer": "red"},
        {"image": "img/a.png", "question": "Is there a square?", "answer": "no", "type": "pope_user"},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text(
        "image,question,answer,type\nimg/a.png,What color is it?,red,\nimg/a.png,Is there a square?,no,pope_user\n"
    )
    pq.write_table(
        pa.Table.from_pylist([{**r, "type": r.get("type", "")} for r in rows]), tmp_path / "d.parquet"
    )
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        samples = eval_sets.load_eval_set(str(tmp_path / name))
        assert [s.qtype for s in samples] == ["user", "pope_user"], name
        assert samples[0].image_ref == str(tmp_path / "img" / "a.png")
        assert samples[1].is_yes_no and samples[0].image().size == (32, 32)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"image": "img/a.png", "question": "q"}', r"lacks the column\(s\) answer"),
        ('{"image": "img/missing.png", "question": "q", "answer": "a"}', "not found"),
        ('{"image": "img/a.png", "question": " ", "answer": "a"}', "'question' is empty"),
        ("not json", "cannot read"),
    ],
)
def test_bad_user_data_is_refused_clearly(tmp_path: Path, content: str, message: str) -> None:
    _write_images(tmp_path)
    (tmp_path / "bad.jsonl").write_text(content)
    with pytest.raises(InputError, match=message):
        eval_sets.load_eval_set(str(tmp_path / "bad.jsonl"))


def test_unknown_set_and_format_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown evaluation set"):
        eval_sets.load_eval_set("coco")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="unknown format"):
        eval_sets.user_set(tmp_path / "x.txt")
