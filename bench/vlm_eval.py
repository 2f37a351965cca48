"""Benchmarks of issue 9's measured experiments on the demo VLM (prints JSON).

1. Evaluation vs plain generation. Plain generation = for every distinct prompt of the set,
   `vlm.prepare` (image encoding + projector) and one greedy `generate` with the same token limit,
   one prompt at a time: what a user would run by hand. The evaluation = `evaluate_vlm` (batched
   answers, scoring, bootstrap intervals; no store writes). Target: at most 1.2x per sample. With
   VISTA (VSV + SLA) every prompt is answered twice; its latency ratio (steered / plain answering
   time) is reported next to the paper's x1.27.
2. Pruning sweep vs its floor. The sweep = `prune_eval` over strategies x keep ratios (signals,
   plans, batched pruned answers, scoring, bootstrap). The floor = the batched pruned forward
   passes alone: every prompt prepared once, then for the unpruned model and every (strategy,
   ratio) the same `answer_batch` calls on plans computed beforehand (untimed). Target: <= 1.5x.
3. Sweep throughput: `explorer.sweep(..., analysis="vlm-eval")` over the same set with 1 local
   worker (this process) and with 2 (a spawned pool, each loading the model once): rows per second,
   start-up included.

Run: `.venv/bin/python bench/vlm_eval.py [--scenes 5] [--prune-scenes 3] [--sweep-scenes 12] [--parts evaluation,pruning,sweep]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from explorer.backends.vlm import generate, load_vlm  # noqa: E402
from explorer.vlm.eval_sets import builtin_set  # noqa: E402
from explorer.vlm.vista import VistaParams  # noqa: E402
from explorer.vlm.vlm_eval import EvalParams, evaluate_vlm  # noqa: E402

PRUNE_STRATEGIES = ("fastv", "vtc_cls", "idpruner", "random")
PRUNE_RATIOS = (1.0, 0.5, 0.25, 0.1)


def evaluation_vs_generation(vlm: object, scenes: int, batch_size: int, dataset: str) -> dict[str, object]:
    samples = builtin_set(dataset, scenes)
    prompts = list({(s.image_ref, s.question): s for s in samples}.values())
    generate(vlm, vlm.prepare(prompts[0].question, prompts[0].image()), 2)  # type: ignore[attr-defined]

    t0 = time.perf_counter()
    for s in prompts:
        generate(vlm, vlm.prepare(s.question, s.image()), s.max_new_tokens)  # type: ignore[attr-defined]
    plain = time.perf_counter() - t0

    t0 = time.perf_counter()
    evaluate_vlm(vlm, samples, EvalParams(dataset=dataset, n_scenes=scenes, batch_size=batch_size))  # type: ignore[arg-type]
    evaluation = time.perf_counter() - t0

    steering = VistaParams(vsv=True, sla=True)
    steered = evaluate_vlm(
        vlm,  # type: ignore[arg-type]
        samples,
        EvalParams(dataset=dataset, n_scenes=scenes, batch_size=batch_size, vista=steering),
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
    }


def pruning_vs_floor(vlm: object, scenes: int, batch_size: int) -> dict[str, object]:
    import numpy as np

    from explorer.analysis.pruning.common import keep_count
    from explorer.analysis.pruning.visual import VisualPlan, plan_for
    from explorer.vlm.prune_eval import PruneEvalParams, answer_batch, collect_signals, prune_eval

    samples = builtin_set("pope", scenes)
    params = PruneEvalParams(
        dataset="pope",
        n_scenes=scenes,
        strategies=PRUNE_STRATEGIES,
        keep_ratios=PRUNE_RATIOS,
        batch_size=batch_size,
    ).validate()
    t0 = time.perf_counter()
    prune_eval(vlm, samples, params)  # type: ignore[arg-type]
    sweep = time.perf_counter() - t0

    prompts = list({(s.image_ref, s.question): s for s in samples}.values())
    t0 = time.perf_counter()
    inputs = [vlm.prepare(s.question, s.image()) for s in prompts]  # type: ignore[attr-defined]
    floor = time.perf_counter() - t0
    signals = [collect_signals(vlm, x)[0] for x in inputs]  # type: ignore[arg-type]
    n_vis = signals[0].n_visual
    plan_sets = [[VisualPlan(np.arange(n_vis, dtype=np.int64)) for _ in prompts]]
    for ratio in PRUNE_RATIOS:
        keep = keep_count(ratio, n_vis)
        if keep < n_vis:
            plan_sets += [[plan_for(name, sig, keep, 0) for sig in signals] for name in PRUNE_STRATEGIES]
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].max_new_tokens, prompts[i].qtype))
    for plans in plan_sets:
        t0 = time.perf_counter()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            limit = max(prompts[i].max_new_tokens for i in chunk)
            answer_batch(vlm, [(inputs[i], plans[i]) for i in chunk], limit)  # type: ignore[arg-type]
        floor += time.perf_counter() - t0
    return {
        "strategies": list(PRUNE_STRATEGIES),
        "keep_ratios": list(PRUNE_RATIOS),
        "distinct_prompts": len(prompts),
        "sweep_s": sweep,
        "floor_s": floor,
        "sweep_over_floor": sweep / floor,
        "target": "<= 1.5",
    }


def sweep_throughput(scenes: int, batch_size: int) -> dict[str, object]:
    import explorer

    out: dict[str, object] = {"dataset": "pope", "scenes": scenes}
    root = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        for workers in (1, 2):
            t0 = time.perf_counter()
            r = explorer.sweep(
                "pope",
                "vlm-eval",
                root / f"w{workers}",
                params={"n_scenes": scenes, "batch_size": batch_size},
                workers=workers,
                shard_size=batch_size,
                db=False,
            )
            seconds = time.perf_counter() - t0
            out[f"workers_{workers}"] = {
                "rows": r.n_done,
                "seconds": seconds,
                "rows_per_second": r.n_done / seconds,
            }
        w1, w2 = out["workers_1"], out["workers_2"]
        out["speed_up_2_over_1"] = w2["rows_per_second"] / w1["rows_per_second"]  # type: ignore[index]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(
    scenes: int, batch_size: int, dataset: str, prune_scenes: int, sweep_scenes: int, parts: list[str]
) -> dict[str, object]:
    """Each part's result is also printed to stderr as soon as it is measured (a long run under
    load still leaves the parts it finished)."""
    import sys

    vlm = load_vlm("tiny-vlm")
    out: dict[str, object] = {"load_average_at_start": os.getloadavg()}
    runs = {
        "evaluation": lambda: evaluation_vs_generation(vlm, scenes, batch_size, dataset),
        "pruning": lambda: pruning_vs_floor(vlm, prune_scenes, 16),
        "sweep": lambda: sweep_throughput(sweep_scenes, batch_size),
    }
    for part in parts:
        out[part] = runs[part]()
        print(json.dumps({part: out[part], "load_average": os.getloadavg()}), file=sys.stderr, flush=True)
    out["load_average_at_end"] = os.getloadavg()
    worst = max(out["load_average_at_start"][0], out["load_average_at_end"][0])  # type: ignore[index]
    cores = os.cpu_count() or 1
    out["note"] = (
        f"quiet machine (1-min load <= {worst:.1f} on {cores} cores)"
        if worst <= cores + 0.5
        else f"under load (1-min load up to {worst:.1f} on {cores} cores): ratios are not reliable"
    )
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dataset", default="all")
    parser.add_argument("--prune-scenes", type=int, default=3)
    parser.add_argument("--sweep-scenes", type=int, default=12)
    parser.add_argument("--parts", default="evaluation,pruning,sweep", help="comma-separated parts to run")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    result = main(args.scenes, args.batch_size, args.dataset, args.prune_scenes, args.sweep_scenes, parts)
    print(json.dumps(result, indent=2))
