"""Benchmark: the logit lens on a long prompt (default 4,096 tokens) against its floor, with peak memory.

Floor = one forward pass with hidden states, then every layer x position unembedded in chunks of
1,024 rows and reduced to its top-10 (a whole (layers x positions x vocab) tensor would not fit:
31 x 4,096 x 49,152 float32 is 25 GB). Each measurement runs in a fresh process so its peak
resident memory (ru_maxrss) is its own; "model_only" is the same process after loading the model.

Run: `.venv/bin/python bench/long_prompt.py [--tokens 4096] [--repeats 3] [--json]`: prints a table
(min and median seconds, lens / floor, peak RSS per mode, and the load average: a loaded machine's
numbers are flagged as unreliable), or the same report as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CHILD = r"""
import json, resource, sys, time
import torch
sys.path.insert(0, {root!r})
from bench.lens import prompt_of_tokens
from explorer.analysis.logit_lens import logit_lens
from explorer.backends.language import load_model

mode, n = sys.argv[1], int(sys.argv[2])
lm = load_model("smollm2-135m")
prompt = prompt_of_tokens(lm, n)
ids = lm.tokenizer(prompt, return_tensors="pt").input_ids
t0 = time.perf_counter()
if mode == "floor":
    with torch.inference_mode():
        out = lm.hf_model(input_ids=ids, output_hidden_states=True)
        hidden = torch.stack(out.hidden_states)[:, 0].reshape(-1, out.hidden_states[0].shape[-1])
        for start in range(0, hidden.shape[0], 1024):
            lm.unembed(hidden[start:start + 1024]).topk(10, dim=-1)
elif mode == "lens":
    logit_lens(lm, prompt, top_k=10, max_tokens=n + 8)
seconds = time.perf_counter() - t0
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"mode": mode, "tokens": int(ids.shape[1]), "seconds": seconds, "peak_rss_mb": peak_mb}}))
"""


def measure(mode: str, tokens: int) -> dict[str, object]:
    root = str(Path(__file__).resolve().parent.parent)
    code = CHILD.format(root=root)
    out = subprocess.run(
        [sys.executable, "-c", code, mode, str(tokens)], capture_output=True, text=True, check=False, cwd=root
    )
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"the {mode} run failed (exit {out.returncode}):\n" + "\n".join(tail))
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def summarise(tokens: int, repeats: int) -> dict[str, object]:
    """Each mode `repeats` times (fresh processes, interleaved floor / lens so drifting load hits
    both alike); seconds: the minimum and the median; peak RSS: the largest."""
    runs: dict[str, list[dict[str, object]]] = {"model_only": [], "floor": [], "lens": []}
    for i in range(repeats):
        for mode in runs:
            if mode == "model_only" and i:
                continue  # its peak does not change
            print(f"  run {i + 1}/{repeats}: {mode} ...", file=sys.stderr, flush=True)
            runs[mode].append(measure(mode, tokens))

    def seconds(mode: str) -> list[float]:
        return sorted(float(r["seconds"]) for r in runs[mode])  # type: ignore[arg-type]

    def peak(mode: str) -> int:
        return round(max(float(r["peak_rss_mb"]) for r in runs[mode]))  # type: ignore[arg-type]

    floor, lens = seconds("floor"), seconds("lens")
    return {
        "model": "smollm2-135m",
        "prompt_tokens": runs["lens"][0]["tokens"],
        "repeats": repeats,
        "floor_s": {"min": round(floor[0], 2), "median": round(statistics.median(floor), 2)},
        "lens_s": {"min": round(lens[0], 2), "median": round(statistics.median(lens), 2)},
        "ratio_vs_floor": {
            "min": round(lens[0] / floor[0], 3),
            "median": round(statistics.median(lens) / statistics.median(floor), 3),
        },
        "peak_rss_mb": {mode: peak(mode) for mode in runs},
        "load_average_1m": {"start": LOAD_AT_START, "end": round(os.getloadavg()[0], 2)},
        "cpu_count": os.cpu_count(),
    }


def table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table."""
    floor, lens, peak = report["floor_s"], report["lens_s"], report["peak_rss_mb"]
    load = report["load_average_1m"]
    rows = [
        ("model only", "", "", "", f"{peak['model_only']:,}"),
        ("floor", f"{floor['min']:.2f}", f"{floor['median']:.2f}", "1.00", f"{peak['floor']:,}"),
        ("lens", f"{lens['min']:.2f}", f"{lens['median']:.2f}", f"{report['ratio_vs_floor']['median']:.3f}",
         f"{peak['lens']:,}"),
    ]  # fmt: skip
    head = ("", "min s", "median s", "x floor", "peak RSS MB")
    widths = [max(len(str(r[i])) for r in (*rows, head)) for i in range(5)]
    lines = [
        f"Logit lens vs its floor: {report['model']}, {report['prompt_tokens']:,}-token prompt, "
        f"{report['repeats']} run(s) each in fresh processes",
        "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths, strict=True))),
    ]
    for r in rows:
        lines.append(
            "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    lines.append(
        f"x floor = median lens / median floor (min/min: {report['ratio_vs_floor']['min']:.3f}); "
        f"load average {load['start']} at start, {load['end']} at end on {report['cpu_count']} CPUs"
        + (" (UNDER LOAD: numbers are unreliable)" if max(load["start"], load["end"]) > 1.5 else "")
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="prompt length in tokens (default 4096)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the floor and the lens (default 1)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = parser.parse_args()
    if args.tokens < 2 or args.repeats < 1:
        parser.error("--tokens must be >= 2 and --repeats >= 1")
    report = summarise(args.tokens, args.repeats)
    print(json.dumps(report, indent=2) if args.json else table(report))


LOAD_AT_START = round(os.getloadavg()[0], 2)

if __name__ == "__main__":
    main()
