"""Benchmark: the per-prompt cost of `vlm-eval` against plain generation, and VISTA's latency ratio.

Plain generation = for every distinct prompt of the set, `vlm.prepare` (image encoding + projector)
and one greedy `generate` with the same token limit, one prompt at a time: what a user would run
by hand. The evaluation = `evaluate_vlm` (batched answers, scoring, bootstrap intervals; no store
writes). Target (issue 9): at most 1.2x plain generation per sample. With VISTA (VSV + SLA) the
evaluation answers every prompt twice; its latency ratio (steered / plain answering time) is
reported next to the paper's x1.27.

Run: `.venv/bin/python bench/vlm_eval.py [--scenes 5] [--batch-size 8]` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from explorer.backends.vlm import generate, load_vlm  # noqa: E402
from explorer.vlm.eval_sets import builtin_set  # noqa: E402
from explorer.vlm.vista import VistaParams  # noqa: E402
from explorer.vlm.vlm_eval import EvalParams, evaluate_vlm  # noqa: E402


def main(scenes: int, batch_size: int, dataset: str) -> dict[str, object]:
    vlm = load_vlm("tiny-vlm")
    samples = builtin_set(dataset, scenes)
    prompts = list({(s.image_ref, s.question): s for s in samples}.values())
    generate(vlm, vlm.prepare(prompts[0].question, prompts[0].image()), 2)  # warm-up

    t0 = time.perf_counter()
    for s in prompts:
        generate(vlm, vlm.prepare(s.question, s.image()), s.max_new_tokens)
    plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluate_vlm(vlm, samples, EvalParams(dataset=dataset, n_scenes=scenes, batch_size=batch_size))
    evaluation = time.perf_counter() - t0

    steered = evaluate_vlm(
        vlm,
        samples,
        EvalParams(
            dataset=dataset, n_scenes=scenes, batch_size=batch_size, vista=VistaParams(vsv=True, sla=True)
        ),
    )
    return {
        "dataset": dataset,
        "scenes": scenes,
        "samples": len(samples),
        "distinct_prompts": len(prompts),
        "batch_size": batch_size,
        "plain_generation_s_per_prompt": plain / len(prompts),
        "evaluation_s_per_prompt": evaluation / len(prompts),
        "evaluation_over_plain_generation": evaluation / plain,
        "target": "<= 1.2",
        "vista_latency_ratio": steered.latency_ratio,
        "paper_latency_ratio": 1.27,
        "note": "measured on a shared, loaded machine",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dataset", default="all")
    args = parser.parse_args()
    print(json.dumps(main(args.scenes, args.batch_size, args.dataset), indent=2))
