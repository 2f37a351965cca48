"""Held-out scores of a VLM on synthetic scenes (the demo VLM's model-card numbers).

For each held-out scene (seeds disjoint from training) the model answers, greedily:
- "Describe the image." -> the caption counts as correct when it names the colour and the
  shape of every object in the scene (as "red circle", adjacent words);
- a presence probe ("Is there a red circle?", half about absent objects) -> yes/no accuracy;
- "What color is the X?" -> exact colour accuracy;
- "How many shapes are there?" and "Where is the X?" -> exact-match accuracy.
"""

from __future__ import annotations

import random
import re
import time
from typing import Any

from explorer.backends.vlm import VisionLanguageModel, generate
from explorer.progress import ProgressFn
from explorer.vlm.scenes import COLOURS, QA, SHAPES, Scene, heldout_seeds, make_scene


def normalise_answer(text: str) -> str:
    text = text.replace("<|im_end|>", "").strip().lower()
    return re.sub(r"[^a-z ]", "", text).strip()


def caption_names_all(caption: str, scene: Scene) -> bool:
    words = normalise_answer(caption)
    return all(f"{o.colour} {o.shape}" in words for o in scene.objects)


def mentioned_objects(caption: str) -> set[tuple[str, str]]:
    """(colour, shape) pairs a caption names ("a red circle and a blue square")."""
    words = normalise_answer(caption).split()
    found = set()
    for a, b in zip(words, words[1:], strict=False):
        if a in COLOURS and b in SHAPES:
            found.add((a, b))
    return found


def answer(vlm: VisionLanguageModel, scene: Scene, question: str, max_new_tokens: int = 24) -> str:
    inputs = vlm.prepare(question, scene.image)
    ids = generate(vlm, inputs, max_new_tokens)
    return str(vlm.tokenizer.decode(ids, skip_special_tokens=True))


def presence_kind(qa: QA, scene: Scene) -> str:
    """'present', 'absent colour' (a present shape in another colour) or 'absent shape'."""
    if qa.present:
        return "present"
    shape = normalise_answer(qa.question).split()[-1]
    return "absent colour" if shape in {o.shape for o in scene.objects} else "absent shape"


def evaluate(
    vlm: VisionLanguageModel,
    n_scenes: int = 300,
    seed: int = 0,
    progress: ProgressFn | None = None,
    shard: tuple[int, int] = (0, 1),
    max_new_tokens: int = 24,
) -> dict[str, Any]:
    """Accuracy per question type on `n_scenes` held-out scenes, plus a few example answers.

    `shard` (k, n) answers only the scenes whose index is k modulo n (the questions are drawn
    for every scene, so the shards' results `merge_results` into exactly the full run's)."""
    k, n_shards = shard
    if not 0 <= k < n_shards:
        raise ValueError(f"shard {k}/{n_shards}: need 0 <= k < n")
    rng = random.Random(seed)
    counts: dict[str, list[int]] = {k: [0, 0] for k in ("caption", "presence", "colour", "count", "position")}
    presence: dict[str, list[int]] = {k: [0, 0] for k in ("present", "absent colour", "absent shape")}
    examples: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, s in enumerate(heldout_seeds(n_scenes)):
        scene = make_scene(s)
        qas = {qa.kind: qa for qa in scene.questions(rng)}
        if i % n_shards != k:
            continue
        row: dict[str, Any] = {"seed": s, "truth": scene.caption}
        for kind, qa in qas.items():
            said = answer(vlm, scene, qa.question, max_new_tokens)
            if kind == "caption":
                ok = caption_names_all(said, scene)
            else:
                ok = normalise_answer(said) == qa.answer
            counts[kind][0] += int(ok)
            counts[kind][1] += 1
            if kind == "presence":
                presence[presence_kind(qa, scene)][0] += int(ok)
                presence[presence_kind(qa, scene)][1] += 1
            row[kind] = {"q": qa.question, "expected": qa.answer, "said": said.strip(), "ok": ok}
        if len(examples) < 12:
            examples.append(row)
        if progress is not None:
            progress((i + 1) / n_scenes, f"scene {i + 1}/{n_scenes}")
    return _result(n_scenes, counts, presence, time.perf_counter() - t0, examples)


def _result(
    n_scenes: int,
    counts: dict[str, list[int]],
    presence: dict[str, list[int]],
    seconds: float,
    examples: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "n_scenes": n_scenes,
        "accuracy": {k: round(c / n, 4) if n else None for k, (c, n) in counts.items()},
        "counts": counts,
        "presence_by_kind": presence,
        "seconds": round(seconds, 1),
        "examples": examples,
    }


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The results of the shards of one evaluation, as one (seconds: the slowest shard's)."""
    counts: dict[str, list[int]] = {}
    presence: dict[str, list[int]] = {}
    for part in parts:
        for total, key in ((counts, "counts"), (presence, "presence_by_kind")):
            for kind, (c, n) in part[key].items():
                total.setdefault(kind, [0, 0])
                total[kind][0] += c
                total[kind][1] += n
    examples = sorted((row for part in parts for row in part["examples"]), key=lambda r: r["seed"])[:12]
    seconds = max(part["seconds"] for part in parts)
    return _result(sum(part["n_scenes"] for part in parts) // len(parts), counts, presence, seconds, examples)


if __name__ == "__main__":
    import argparse
    import json
    from pathlib import Path

    from explorer.backends.vlm import WEIGHTS_DIR, load_vlm

    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--shard", default="0/1", help="K/N: answer only scenes K, K+N, ... (merge with --merge)"
    )
    parser.add_argument("--merge", type=Path, nargs="+", help="merge the JSON results of shards into --out")
    args = parser.parse_args()
    if args.merge:
        result = merge_results([json.loads(p.read_text()) for p in args.merge])
    else:
        model = load_vlm("tiny-vlm", weights=args.weights)
        k, n = (int(v) for v in args.shard.split("/"))
        result = evaluate(
            model,
            args.scenes,
            progress=lambda f, m: print(m, flush=True) if m.endswith("0") else None,
            shard=(k, n),
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
