"""Benchmark: the logit lens on a long prompt (default 4,096 tokens) against its floor, with peak memory.

Floor = one forward pass with hidden states, then every layer x position unembedded in chunks of
1,024 rows and reduced to its top-10 (a whole (layers x positions x vocab) tensor would not fit:
31 x 4,096 x 49,152 float32 is 25 GB). Each measurement runs in a fresh process so its peak
resident memory (ru_maxrss) is its own; "model_only" is the same process after loading the model.

Run: `.venv/bin/python bench/long_prompt.py [--tokens 4096]` (prints JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

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
        [sys.executable, "-c", code, mode, str(tokens)], capture_output=True, text=True, check=True, cwd=root
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="prompt length in tokens (default 4096)")
    args = parser.parse_args()
    base = measure("model_only", args.tokens)
    floor = measure("floor", args.tokens)
    lens = measure("lens", args.tokens)
    print(
        json.dumps(
            {
                "model": "smollm2-135m",
                "prompt_tokens": lens["tokens"],
                "floor_s": round(float(floor["seconds"]), 2),  # type: ignore[arg-type]
                "lens_s": round(float(lens["seconds"]), 2),  # type: ignore[arg-type]
                "ratio_vs_floor": round(float(lens["seconds"]) / float(floor["seconds"]), 3),  # type: ignore[arg-type]
                "peak_rss_mb": {
                    "model_only": round(float(base["peak_rss_mb"])),  # type: ignore[arg-type]
                    "floor": round(float(floor["peak_rss_mb"])),  # type: ignore[arg-type]
                    "lens": round(float(lens["peak_rss_mb"])),  # type: ignore[arg-type]
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
