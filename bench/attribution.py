"""Benchmark: our ReAGent vs Inseq's ReAGent vs Captum feature ablation on SmolLM2-135M.

20 factual prompts, each with the model's own greedy next token as the target. For every
method: wall time per attribution and mean Soft-NC / Soft-NS computed by *our* faithfulness
code (same seeds, same masks) on each method's scores.

Needs (installs nothing itself):  .venv/bin/pip install inseq textblob
Run:  HF_HUB_OFFLINE=1 .venv/bin/python bench/attribution.py [--inseq-steps 30] [--out bench/attribution.json]

Inseq offline: its ReAGent always uses a POS-tag token sampler that calls nltk.download()
(impossible offline). It first reads a cached vocabulary->tag pickle at
$INSEQ_ARTIFACTS_CACHE/pos_tag_sampler_cache/<model dir name>.pkl, which this script writes
with TextBlob's built-in tagger (no download) into cache/inseq/. Inseq's defaults (16 probes,
3000 max probe steps) take about an hour for 20 prompts here, so the probe-step cap is
lowered (--inseq-steps); everything else is Inseq's default (keep_top_n 5, top-3 stopping,
replacing ratio 0.3, 16 probes). When no Inseq probe meets its stopping condition, Inseq
returns NaN scores; those prompts are counted and scored as a uniform attribution.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("INSEQ_ARTIFACTS_CACHE", str(ROOT / "cache" / "inseq"))

import torch  # noqa: E402

PROMPTS = [
    "The capital of France is",
    "The capital of Japan is",
    "The Eiffel Tower is located in the city of",
    "Water is made of hydrogen and",
    "The largest planet in the solar system is",
    "The author of Romeo and Juliet is William",
    "The currency of the United Kingdom is the pound",
    "When my flight landed in Japan, I converted my currency and went to the capital city of",
    "The chemical symbol for gold is",
    "The first man to walk on the moon was Neil",
    "The Great Wall is located in",
    "Monday, Tuesday, Wednesday, Thursday,",
    "The opposite of hot is",
    "The Pacific is the largest",
    "Paris is to France as Berlin is to",
    "The fastest land animal is the",
    "The Statue of Liberty is in New",
    "One, two, three, four,",
    "The sun rises in the",
    "Shakespeare was born in the town of Stratford-upon-",
]


def write_pos_cache(tokenizer: Any, name: str) -> Path:
    """The POS-tag sampler cache Inseq reads before it would call nltk.download()."""
    from textblob.en import tag

    path = Path(os.environ["INSEQ_ARTIFACTS_CACHE"]) / "pos_tag_sampler_cache" / f"{name}.pkl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    pos2ids: dict[str, list[int]] = {}
    for i in range(tokenizer.vocab_size):
        word = tokenizer.decode([i]).strip()
        tags = tag(word, tokenize=False) if word else []
        pos2ids.setdefault(tags[0][1] if tags else "NN", []).append(i)
    with path.open("wb") as f:
        pickle.dump(pos2ids, f)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inseq-steps", type=int, default=30, help="Inseq max_probe_steps (default 30)")
    parser.add_argument(
        "--ours-steps",
        type=int,
        default=None,
        help="our ReAGent's max_steps (default: the same probe-step budget as --inseq-steps)",
    )
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "attribution.json"))
    args = parser.parse_args()

    import inseq

    from explorer.analysis.attribution import build_task, run_method
    from explorer.analysis.attribution import get_method as method
    from explorer.analysis.attribution.faithfulness import FaithfulnessParams, faithfulness
    from explorer.backends.embedded import resolve_model_source
    from explorer.backends.language import load_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    lm = load_model("smollm2-135m")
    model_dir = resolve_model_source(
        "smollm2-135m", __import__("explorer.config", fromlist=["Settings"]).Settings.from_env()
    )
    write_pos_cache(lm.tokenizer, Path(model_dir).name)
    inseq_model = inseq.load_model(
        model_dir,
        "reagent",
        model_kwargs={"attn_implementation": "eager"},
        max_probe_steps=args.inseq_steps,
    )
    from captum.attr import FeatureAblation, LLMAttribution, TextTokenInput

    captum_fa = LLMAttribution(FeatureAblation(lm.hf_model), lm.tokenizer)
    faith_params = FaithfulnessParams()
    ours = method("reagent")
    ours_steps = args.ours_steps if args.ours_steps is not None else args.inseq_steps
    ours_params = ours.make_params({"replacement": "causal", "max_steps": ours_steps}).to_json()

    with torch.inference_mode():  # warm-up: the first forwards after loading are several times slower
        for _ in range(3):
            lm.hf_model(input_ids=lm.tokenizer(PROMPTS[0], return_tensors="pt").input_ids, use_cache=False)
    rows: dict[str, list[dict[str, Any]]] = {
        "ours_reagent": [],
        "inseq_reagent": [],
        "captum_feature_ablation": [],
    }
    inseq_nan = 0
    for n, prompt in enumerate(PROMPTS[: args.prompts]):
        ids = lm.tokenizer(prompt, return_tensors="pt").input_ids[0]
        with torch.inference_mode():
            target_id = int(lm.hf_model(input_ids=ids.unsqueeze(0)).logits[0, -1].argmax())
        target = lm.token_str(target_id)
        task, *_ = build_task(lm, prompt, target, None, 512)

        t0 = time.perf_counter()
        scores, extras, _ = run_method(lm, task, ours, ours_params, seed=n)
        rows["ours_reagent"].append(
            {"seconds": time.perf_counter() - t0, "scores": scores, "steps": extras["steps"]}
        )

        t0 = time.perf_counter()
        out = inseq_model.attribute(prompt, prompt + target, show_progress=False, skip_special_tokens=False)
        secs = time.perf_counter() - t0
        attr = out.sequence_attributions[0]
        mat = attr.target_attributions if attr.source_attributions is None else attr.source_attributions
        mat = mat.float()
        while mat.dim() > 2:
            mat = mat.sum(-1)
        ins = mat[: task.n_context, 0]
        if not torch.isfinite(ins).all():
            inseq_nan += 1
            ins = torch.full((task.n_context,), 1.0 / task.n_context)
        rows["inseq_reagent"].append({"seconds": secs, "scores": ins.double().numpy()})

        t0 = time.perf_counter()
        res = captum_fa.attribute(TextTokenInput(prompt, lm.tokenizer), target=target)
        secs = time.perf_counter() - t0
        fa = res.seq_attr.detach().double()
        if fa.numel() != task.n_context:
            raise RuntimeError(f"Captum returned {fa.numel()} scores for {task.n_context} tokens")
        rows["captum_feature_ablation"].append({"seconds": secs, "scores": fa.numpy()})

        for name in rows:
            r = rows[name][-1]
            r.update(faithfulness(lm, task, torch.as_tensor(r["scores"]), faith_params, seed=n))
        print(
            f"[{n + 1}/{args.prompts}] {prompt!r} -> {target!r}: "
            + ", ".join(
                f"{k} {v[-1]['seconds']:.1f}s nc={v[-1]['soft_nc']} ns={v[-1]['soft_ns']}"
                for k, v in rows.items()
            ),
            flush=True,
        )
        partial = {
            k: [{kk: vv for kk, vv in r.items() if kk != "scores"} for r in v] for k, v in rows.items()
        }
        Path(args.out).with_suffix(".partial.json").write_text(json.dumps(partial, indent=1))

    def mean(values: list[Any]) -> float | None:
        vals = [float(v) for v in values if v is not None]
        return statistics.fmean(vals) if vals else None

    summary = {
        name: {
            "seconds_per_attribution": mean([r["seconds"] for r in rs]),
            "soft_nc": mean([r["soft_nc"] for r in rs]),
            "soft_ns": mean([r["soft_ns"] for r in rs]),
            "comprehensiveness": mean([r["comprehensiveness"] for r in rs]),
            "sufficiency": mean([r["sufficiency"] for r in rs]),
        }
        for name, rs in rows.items()
    }
    report = {
        "model": "smollm2-135m",
        "prompts": args.prompts,
        "threads": torch.get_num_threads(),
        "ours_params": ours_params,
        "inseq_params": {
            "max_probe_steps": args.inseq_steps,
            "other": "Inseq defaults (16 probes, keep_top_n 5, top-3, r 0.3)",
        },
        "inseq_nan_prompts": inseq_nan,
        "ours_mean_steps": mean([r["steps"] for r in rows["ours_reagent"]]),
        "summary": summary,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("\n| method | s / attribution | Soft-NC | Soft-NS | hard comp. (20%) | hard suff. (20%) |")
    print("|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(
            f"| {name} | {s['seconds_per_attribution']:.2f} | {s['soft_nc']:.3f} | {s['soft_ns']:.3f} | "
            f"{s['comprehensiveness']:.3f} | {s['sufficiency']:.3f} |"
        )
    print(f"\nInseq prompts with no stopped probe (NaN -> uniform): {inseq_nan}/{args.prompts}")


if __name__ == "__main__":
    main()
