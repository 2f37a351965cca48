"""Evaluation sets for VLMs: built from the seeded scene generator, or read from the user's file.

Built-in sets (ground truth from `explorer.vlm.scenes`, scenes from `eval_seeds`, a seed range
disjoint from the training scenes and from the model card's held-out scenes):

* ``caption``: "Describe the image." per scene; scored by CHAIR against the scene's objects.
* ``pope``: POPE-style yes/no probes (Li et al. 2023). The object vocabulary is every
  (colour, shape) pair (24 objects). Per scene, every present object is a "yes" probe and as many
  absent objects are "no" probes, sampled three ways exactly as POPE defines them:
  - random: drawn uniformly (seeded) from the absent objects;
  - popular: the k most frequent objects over the whole evaluation set that are absent;
  - adversarial: objects ranked by how often they co-occur with the scene's ground-truth objects
    over the evaluation set, the k most frequent that are absent.
  Ties break by overall frequency, then by the vocabulary order (fixed, so the sets are
  deterministic). The "yes" probes are the same in the three splits, as in POPE.
* ``qa``: "How many shapes are there?", and per object "What color is the <shape>?" and "Where
  is the <shape>?" (exact-match accuracy).
* ``all``: the three together.

Deviations from POPE, shown with every run: the question is the demo VLM's training format
("Is there a red circle?") instead of "Is there a <object> in the image?"; POPE takes 3 + 3
probes per COCO image with at least 3 objects, here k = the scene's 1-3 objects; and on scenes
whose colours and shapes are drawn uniformly, "popular" and "adversarial" statistics are close to
flat, so those splits are far less adversarial than on COCO.

User data: a JSONL, CSV or Parquet file with one row per sample and the columns `image` (a path,
relative to the file, or absolute), `question`, `answer`; optional `type` (a question type for
the per-type accuracy; "pope..." types and yes/no answers are read as POPE probes).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from explorer.errors import InputError
from explorer.vlm.scenes import (
    COLOURS,
    HELDOUT_SEED_BASE,
    NUMBER_WORDS,
    SHAPES,
    TRAIN_SEED_BASE,
    Scene,
    article,
    make_scene,
)

# Evaluation scenes: 1,000,000 seeds after the held-out base, so neither the training scenes
# (TRAIN_SEED_BASE + i) nor the model card's held-out scenes (HELDOUT_SEED_BASE + i) overlap.
EVAL_SEED_BASE = HELDOUT_SEED_BASE + 1_000_000
MAX_EVAL_SCENES = 100_000
BUILTIN_SETS = ("all", "caption", "pope", "qa")
POPE_SPLITS = ("pope_random", "pope_popular", "pope_adversarial")
QUESTION_TYPES = ("caption", *POPE_SPLITS, "count", "colour", "position")
USER_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_USER_ROWS = 100_000
# answer lengths: a caption needs a sentence, the rest a word or two (+ the end-of-turn token)
MAX_NEW_TOKENS = {"caption": 32}
SHORT_ANSWER_TOKENS = 6

DEVIATIONS = (
    "POPE probes use the demo VLM's question format ('Is there a red circle?'), not 'Is there a <object> in "
    "the image?'.",
    "POPE: k yes + k no probes per scene, k = the scene's 1-3 objects (POPE: 3 + 3 per COCO image).",
    "POPE popular / adversarial statistics come from uniformly drawn synthetic scenes, so they are close to "
    "flat: these splits are far less adversarial than on COCO.",
    "CHAIR objects are (colour, shape) pairs found through a small synonym list; a bare shape counts as a "
    "mention of that shape.",
)

Object = tuple[str, str]  # (colour, shape)
VOCABULARY: tuple[Object, ...] = tuple((c, s) for s in SHAPES for c in COLOURS)


def eval_seeds(n: int) -> list[int]:
    if not 1 <= n <= MAX_EVAL_SCENES:
        raise InputError(f"the number of scenes must be in 1..{MAX_EVAL_SCENES} (got {n})")
    seeds = [EVAL_SEED_BASE + i for i in range(n)]
    assert seeds[0] > TRAIN_SEED_BASE + MAX_EVAL_SCENES and seeds[0] >= HELDOUT_SEED_BASE + MAX_EVAL_SCENES
    return seeds


@dataclass
class EvalSample:
    """One question about one image.

    image_ref:  "scene:<seed>" for a generated scene, else the image's path
    qtype:      the question type (QUESTION_TYPES for built-in sets, the row's type for user data)
    objects:    the scene's (colour, shape) objects (built-in sets; for CHAIR), else empty
    probe:      for POPE probes, the asked object
    """

    sample_id: str
    image_ref: str
    question: str
    answer: str
    qtype: str
    objects: list[Object] = field(default_factory=list)
    probe: Object | None = None
    _image: Image.Image | None = field(default=None, repr=False)

    @property
    def is_yes_no(self) -> bool:
        return self.qtype.startswith("pope") or self.answer.strip().lower() in ("yes", "no")

    @property
    def max_new_tokens(self) -> int:
        return MAX_NEW_TOKENS.get(self.qtype, SHORT_ANSWER_TOKENS)

    def image(self) -> Image.Image:
        if self._image is None:
            if self.image_ref.startswith("scene:"):
                self._image = make_scene(int(self.image_ref.split(":", 1)[1])).image
            else:
                self._image = _open_image(Path(self.image_ref))
        return self._image


def _open_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the image {path}: {exc}") from exc


def _objects(scene: Scene) -> list[Object]:
    return [(o.colour, o.shape) for o in scene.objects]


def _name(obj: Object) -> str:
    return f"{obj[0]} {obj[1]}"


def presence_question(obj: Object) -> str:
    name = _name(obj)
    return f"Is there {article(name)} {name}?"


# ---- POPE ----------------------------------------------------------------------------------------
def object_statistics(
    scenes: Iterable[list[Object]],
) -> tuple[Counter[Object], dict[Object, Counter[Object]]]:
    """How often each object appears in the set, and how often each pair of objects shares a scene."""
    frequency: Counter[Object] = Counter()
    cooccurrence: dict[Object, Counter[Object]] = {o: Counter() for o in VOCABULARY}
    for objects in scenes:
        present = list(dict.fromkeys(objects))
        frequency.update(present)
        for a in present:
            for b in present:
                if a != b:
                    cooccurrence[a][b] += 1
    return frequency, cooccurrence


def pope_negatives(
    objects: list[Object],
    k: int,
    strategy: str,
    frequency: Counter[Object],
    cooccurrence: dict[Object, Counter[Object]],
    rng: random.Random,
) -> list[Object]:
    """k absent objects for a scene with `objects`, by POPE's random / popular / adversarial rule."""
    absent = [o for o in VOCABULARY if o not in set(objects)]
    k = min(k, len(absent))
    order = {o: i for i, o in enumerate(VOCABULARY)}
    if strategy == "random":
        return rng.sample(absent, k)
    if strategy == "popular":
        return sorted(absent, key=lambda o: (-frequency[o], order[o]))[:k]
    if strategy == "adversarial":
        score = {o: sum(cooccurrence[g][o] for g in objects) for o in absent}
        return sorted(absent, key=lambda o: (-score[o], -frequency[o], order[o]))[:k]
    raise ValueError(f"unknown POPE strategy {strategy!r}")


def pope_samples(scenes: list[Scene], seed: int = 0) -> list[EvalSample]:
    """The three POPE splits over `scenes` (statistics from these scenes)."""
    truth = [_objects(s) for s in scenes]
    frequency, cooccurrence = object_statistics(truth)
    rng = random.Random(seed)
    out = []
    for split in POPE_SPLITS:
        strategy = split.split("_", 1)[1]
        for scene, objects in zip(scenes, truth, strict=True):
            ref = f"scene:{scene.seed}"
            for obj in objects:
                out.append(
                    EvalSample(
                        f"{split}:{scene.seed}:{_name(obj)}",
                        ref,
                        presence_question(obj),
                        "yes",
                        split,
                        objects,
                        obj,
                    )
                )
            for obj in pope_negatives(objects, len(objects), strategy, frequency, cooccurrence, rng):
                out.append(
                    EvalSample(
                        f"{split}:{scene.seed}:{_name(obj)}",
                        ref,
                        presence_question(obj),
                        "no",
                        split,
                        objects,
                        obj,
                    )
                )
    return out


# ---- the other question types -------------------------------------------------------------------
def caption_samples(scenes: list[Scene]) -> list[EvalSample]:
    return [
        EvalSample(
            f"caption:{s.seed}", f"scene:{s.seed}", "Describe the image.", s.caption, "caption", _objects(s)
        )
        for s in scenes
    ]


def qa_samples(scenes: list[Scene]) -> list[EvalSample]:
    out = []
    for s in scenes:
        ref, objects = f"scene:{s.seed}", _objects(s)
        out.append(
            EvalSample(
                f"count:{s.seed}",
                ref,
                "How many shapes are there?",
                NUMBER_WORDS[len(s.objects)],
                "count",
                objects,
            )
        )
        for o in s.objects:
            out.append(
                EvalSample(
                    f"colour:{s.seed}:{o.shape}",
                    ref,
                    f"What color is the {o.shape}?",
                    o.colour,
                    "colour",
                    objects,
                )
            )
            out.append(
                EvalSample(
                    f"position:{s.seed}:{o.shape}",
                    ref,
                    f"Where is the {o.shape}?",
                    o.position,
                    "position",
                    objects,
                )
            )
    return out


def builtin_set(name: str, n_scenes: int, seed: int = 0) -> list[EvalSample]:
    """The built-in set `name` over the first `n_scenes` evaluation scenes (POPE's random split
    drawn with `seed`)."""
    if name not in BUILTIN_SETS:
        raise InputError(
            f"unknown evaluation set {name!r}; choose from {', '.join(BUILTIN_SETS)} or give a file"
        )
    scenes = [make_scene(s) for s in eval_seeds(n_scenes)]
    images = {f"scene:{s.seed}": s.image for s in scenes}
    out: list[EvalSample] = []
    if name in ("all", "caption"):
        out += caption_samples(scenes)
    if name in ("all", "pope"):
        out += pope_samples(scenes, seed)
    if name in ("all", "qa"):
        out += qa_samples(scenes)
    for sample in out:
        sample._image = images[sample.image_ref]
    return out


# ---- user data ----------------------------------------------------------------------------------
def _read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    from explorer.table_files import read_table

    table = read_table(path, fmt)
    if table.num_rows > MAX_USER_ROWS:
        raise InputError(f"{path} has {table.num_rows} rows; at most {MAX_USER_ROWS} are allowed")
    missing = [c for c in ("image", "question", "answer") if c not in table.column_names]
    if missing:
        raise InputError(
            f"{path} lacks the column(s) {', '.join(missing)}; every row needs image, question and answer "
            f"(found: {', '.join(table.column_names) or 'none'})"
        )
    return table.to_pylist()  # type: ignore[no-any-return]


def user_set(path: str | Path) -> list[EvalSample]:
    """Rows of a JSONL / CSV / Parquet file -> samples. Image paths are relative to the file.
    Every row is checked (strings present, image file exists) before anything runs."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"evaluation file {file} does not exist")
    fmt = USER_FORMATS.get(file.suffix.lower())
    if fmt is None:
        raise InputError(
            f"evaluation file {file}: unknown format {file.suffix!r}; use .jsonl, .csv or .parquet"
        )
    rows = _read_rows(file, fmt)
    if not rows:
        raise InputError(f"{file} has no rows")
    out = []
    for i, row in enumerate(rows, start=1):
        values = {}
        for column in ("image", "question", "answer"):
            value = row.get(column)
            if value is None or not str(value).strip():
                raise InputError(f"{file} row {i}: the column {column!r} is empty")
            values[column] = str(value).strip()
        image = Path(values["image"]).expanduser()
        image = image if image.is_absolute() else file.parent / image
        if not image.is_file():
            raise InputError(f"{file} row {i}: image {values['image']!r} not found (looked at {image})")
        qtype = str(row.get("type") or "").strip() or "user"
        out.append(EvalSample(f"row:{i}", str(image), values["question"], values["answer"], qtype))
    return out


def load_eval_set(dataset: str, n_scenes: int = 50, seed: int = 0) -> list[EvalSample]:
    """A built-in set name (BUILTIN_SETS) or the path of a user file."""
    if dataset in BUILTIN_SETS:
        return builtin_set(dataset, n_scenes, seed)
    if Path(dataset).suffix.lower() in USER_FORMATS or Path(dataset).exists():
        return user_set(dataset)
    raise InputError(
        f"unknown evaluation set {dataset!r}: give one of {', '.join(BUILTIN_SETS)} or a .jsonl/.csv/.parquet file"
    )
