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
from explorer.vlm.scenes import COLOURS, SHAPES, Scene, heldout_seeds, make_scene


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


def evaluate(
    vlm: VisionLanguageModel, n_scenes: int = 300, seed: int = 0, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Accuracy per question type on `n_scenes` held-out scenes, plus a few example answers."""
    rng = random.Random(seed)
    counts: dict[str, list[int]] = {k: [0, 0] for k in ("caption", "presence", "colour", "count", "position")}
    examples: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for i, s in enumerate(heldout_seeds(n_scenes)):
        scene = make_scene(s)
        qas = {qa.kind: qa for qa in scene.questions(rng)}
        row: dict[str, Any] = {"seed": s, "truth": scene.caption}
        for kind, qa in qas.items():
            said = answer(vlm, scene, qa.question)
            if kind == "caption":
                ok = caption_names_all(said, scene)
            else:
                ok = normalise_answer(said) == qa.answer
            counts[kind][0] += int(ok)
            counts[kind][1] += 1
            row[kind] = {"q": qa.question, "expected": qa.answer, "said": said.strip(), "ok": ok}
        if len(examples) < 12:
            examples.append(row)
        if progress is not None:
            progress((i + 1) / n_scenes, f"scene {i + 1}/{n_scenes}")
    scores = {k: round(c / n, 4) if n else None for k, (c, n) in counts.items()}
    return {
        "n_scenes": n_scenes,
        "accuracy": scores,
        "counts": counts,
        "seconds": round(time.perf_counter() - t0, 1),
        "examples": examples,
    }


if __name__ == "__main__":
    import argparse
    import json
    from pathlib import Path

    from explorer.backends.vlm import WEIGHTS_DIR, load_vlm

    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=300)
    parser.add_argument("--weights", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    model = load_vlm("tiny-vlm", weights=args.weights)
    result = evaluate(
        model, args.scenes, progress=lambda f, m: print(m, flush=True) if m.endswith("0") else None
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
