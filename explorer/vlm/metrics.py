"""Metrics of a VLM's answers over an evaluation set, each with a seeded 95% bootstrap interval.

Pure functions of per-sample arrays (no model, no torch), so every number can be checked by hand.

* **Accuracy per question type**: exact match of the normalised answer.
* **POPE** (Li et al. 2023, "Evaluating Object Hallucination in Large Vision-Language Models"):
  yes/no probes, "yes" is the positive class. An answer is read as POPE's evaluation script does:
  keep the first sentence, drop commas, and it is "no" when one of its words is "No", "no" or
  "not", otherwise "yes". accuracy, precision = TP / (TP + FP), recall = TP / (TP + FN), F1 and
  yes-ratio = share of "yes" answers. A ratio whose denominator is 0 is 0 (no "yes" answer
  gives precision 0), so the bootstrap never meets a NaN.
* **CHAIR** (Rohrbach et al. 2018, "Object Hallucination in Image Captioning"): objects a caption
  mentions are found through a synonym list; an object is hallucinated when it is not in the
  ground truth. CHAIR_i = hallucinated mentions / all object mentions; CHAIR_s = captions with at
  least one hallucinated object / all captions. Every mention counts, repeats included, as in the
  authors' `chair.py`. Here an object is a shape with its colour: "a red circle" is a mention of
  (red, circle) and is hallucinated unless the scene has a red circle; a bare shape ("a circle")
  is hallucinated only when no circle is in the scene.
* **Bootstrap**: resample the samples with replacement `n_boot` times (seeded), recompute the
  statistic, report the 2.5th and 97.5th percentiles (percentile method).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# CHAIR's synonym list for the synthetic scenes: canonical name -> words that mean it.
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "circles", "disc", "disk", "dot", "dots", "ball", "balls", "oval", "ovals"),
    "square": ("square", "squares", "box", "boxes", "rectangle", "rectangles", "cube", "cubes", "block"),
    "triangle": ("triangle", "triangles", "pyramid", "pyramids"),
    "star": ("star", "stars", "pentagram"),
}
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "green": ("green", "lime"),
    "blue": ("blue", "navy", "azure"),
    "yellow": ("yellow", "gold", "golden"),
    "purple": ("purple", "violet", "magenta", "lilac"),
    "orange": ("orange", "amber"),
}
# how many words before a shape word a colour word may stand ("a large red circle")
COLOUR_LOOKBACK = 3
_BREAKS = {"and", "or", "with", "next", "beside", "above", "below"}


def _inverse(table: Mapping[str, Sequence[str]]) -> dict[str, str]:
    return {word: canonical for canonical, words in table.items() for word in words}


_SHAPE_OF = _inverse(SHAPE_SYNONYMS)
_COLOUR_OF = _inverse(COLOUR_SYNONYMS)


def words_of(text: str) -> list[str]:
    """Lower-case words of `text` (letters only; chat end tokens removed)."""
    return re.findall(r"[a-z]+", text.replace("<|im_end|>", " ").lower())


def normalise_answer(text: str) -> str:
    """' Red.<|im_end|>' -> 'red': lower case, letters and single spaces only."""
    return " ".join(words_of(text))


# ---- POPE ---------------------------------------------------------------------------------------
def pope_says_yes(answer: str) -> bool:
    """POPE's reading of an answer: first sentence, commas dropped; "no" when a word is No/no/not."""
    text = answer.replace("<|im_end|>", " ").strip()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split()
    return not any(w in ("No", "no", "not") for w in words)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else 0.0


def pope_metrics(truth_yes: np.ndarray, said_yes: np.ndarray) -> dict[str, float]:
    """truth_yes, said_yes: (n,) bool -> accuracy, precision, recall, f1, yes_ratio."""
    t = np.asarray(truth_yes, dtype=bool)
    s = np.asarray(said_yes, dtype=bool)
    if t.shape != s.shape:
        raise ValueError(f"truth and answers differ in length: {t.shape} vs {s.shape}")
    tp = float(np.sum(t & s))
    fp = float(np.sum(~t & s))
    fn = float(np.sum(t & ~s))
    n = t.size
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "accuracy": _ratio(float(np.sum(t == s)), n),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": _ratio(float(np.sum(s)), n),
    }


# ---- CHAIR --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mention:
    """One object a caption names: its shape and (when said) its colour, and the word index."""

    shape: str
    colour: str | None
    index: int


def object_mentions(caption: str) -> list[Mention]:
    """Every shape word of the caption (through the synonym list), with the nearest colour word
    among the `COLOUR_LOOKBACK` words before it that does not cross another object or "and"."""
    words = words_of(caption)
    out = []
    for i, w in enumerate(words):
        shape = _SHAPE_OF.get(w)
        if shape is None:
            continue
        colour = None
        for j in range(i - 1, max(-1, i - 1 - COLOUR_LOOKBACK), -1):
            if words[j] in _BREAKS or words[j] in _SHAPE_OF:
                break
            if words[j] in _COLOUR_OF:
                colour = _COLOUR_OF[words[j]]
                break
        out.append(Mention(shape, colour, i))
    return out


def is_hallucinated(mention: Mention, truth: set[tuple[str, str]]) -> bool:
    """truth: the scene's (colour, shape) pairs."""
    if mention.colour is None:
        return mention.shape not in {shape for _, shape in truth}
    return (mention.colour, mention.shape) not in truth


def chair_counts(caption: str, truth: set[tuple[str, str]]) -> tuple[int, int]:
    """(object mentions, hallucinated mentions) of one caption."""
    mentions = object_mentions(caption)
    return len(mentions), sum(is_hallucinated(m, truth) for m in mentions)


def chair_scores(mentioned: np.ndarray, hallucinated: np.ndarray) -> dict[str, float]:
    """Per caption counts (n,) -> CHAIR_s and CHAIR_i (as fractions, not percent)."""
    m = np.asarray(mentioned, dtype=np.float64)
    h = np.asarray(hallucinated, dtype=np.float64)
    return {
        "chair_s": _ratio(float(np.sum(h > 0)), m.size),
        "chair_i": _ratio(float(h.sum()), float(m.sum())),
    }


# ---- bootstrap ----------------------------------------------------------------------------------
def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(indices)` over `n` samples.

    `statistic` receives an index array (n,) drawn with replacement and returns the statistic
    on those samples. Seeded: the same (n, n_boot, seed) gives the same interval."""
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(n_boot)])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


@dataclass(frozen=True)
class Estimate:
    """A metric over `n` samples with its bootstrap interval."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def estimate(
    statistic: Callable[[np.ndarray], float], n: int, *, n_boot: int = 1000, seed: int = 0
) -> Estimate:
    """statistic on all samples + its 95% bootstrap interval."""
    if n == 0:
        nan = float("nan")
        return Estimate(nan, nan, nan, 0)
    lo, hi = bootstrap_ci(statistic, n, n_boot=n_boot, seed=seed)
    return Estimate(float(statistic(np.arange(n))), lo, hi, n)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) resampled indices, drawn exactly as `bootstrap_ci` draws them (one row per
    resample, in order), so a vectorised statistic gives the same interval."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, n, n) for _ in range(n_boot)])


def _vector_estimate(value: float, resampled: np.ndarray, n: int, level: float = 0.95) -> Estimate:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(resampled, [tail, 100 - tail])
    return Estimate(float(value), float(lo), float(hi), n)


def _nan_estimate() -> Estimate:
    nan = float("nan")
    return Estimate(nan, nan, nan, 0)


def accuracy_estimate(correct: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Share of true values with its interval (vectorised; equal to `estimate` of the mean)."""
    c = np.asarray(correct, dtype=np.float64)
    if c.size == 0:
        return _nan_estimate()
    idx = bootstrap_indices(c.size, n_boot, seed)
    return _vector_estimate(float(c.mean()), c[idx].mean(axis=1), c.size)


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def pope_estimates(
    truth_yes: np.ndarray, said_yes: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    """POPE's five metrics with intervals; the resamples are vectorised (the same indices and
    values as `estimate(pope_metrics(...))`, every metric being a ratio of counts)."""
    t = np.asarray(truth_yes, dtype=bool)
    s = np.asarray(said_yes, dtype=bool)
    names = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    if t.size == 0:
        return {name: _nan_estimate() for name in names}
    full = pope_metrics(t, s)
    idx = bootstrap_indices(t.size, n_boot, seed)
    tt, ss = t[idx], s[idx]  # (n_boot, n)
    tp = (tt & ss).sum(axis=1).astype(np.float64)
    fp = (~tt & ss).sum(axis=1).astype(np.float64)
    fn = (tt & ~ss).sum(axis=1).astype(np.float64)
    precision = _safe_ratio(tp, tp + fp)
    recall = _safe_ratio(tp, tp + fn)
    resampled = {
        "accuracy": (tt == ss).sum(axis=1) / float(t.size),
        "precision": precision,
        "recall": recall,
        "f1": _safe_ratio(2 * precision * recall, precision + recall),
        "yes_ratio": ss.sum(axis=1) / float(t.size),
    }
    return {name: _vector_estimate(full[name], resampled[name], t.size) for name in names}


def chair_estimates(
    mentioned: np.ndarray, hallucinated: np.ndarray, *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Estimate]:
    m = np.asarray(mentioned)
    h = np.asarray(hallucinated)

    def stat(name: str) -> Callable[[np.ndarray], float]:
        return lambda idx: chair_scores(m[idx], h[idx])[name]

    return {name: estimate(stat(name), m.size, n_boot=n_boot, seed=seed) for name in ("chair_s", "chair_i")}
