"""Bench: pruning sweeps against their floors, text and image, in one run.

Text: `prune_text(SmolLM2, 128-token prompt, "all", 8 ratios)`: every default text strategy at
every ratio with all fidelity measures (attribution scores, 8-token greedy continuations,
MiniLM similarity). Its floor is the bare compute a sweep cannot avoid: the same number of plain
forward passes on inputs of the pruned sizes, batched per ratio (one batch of n_strategies rows
of keep-count tokens, logits at the last position only). Also timed: the sweep without
continuations (`continuation_tokens=0`), to show what the decoding costs.

Image: `bench/pruning_image.py` (every image strategy x 8 ratios on one 224x224 image against
its floor of batched encoder passes at the pruned sizes).

Both are timed in the same process after a warm-up, best of `repeats`. Target: sweep / floor
<= 1.5. Run as a script to print JSON: `python bench/pruning.py [--repeats N] [--skip-image]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from explorer.analysis.pruning.text import (  # noqa: E402
    DEFAULT_STRATEGIES,
    SWEEP_RATIOS,
    keep_count,
    prune_text,
)
from explorer.models.loading import LanguageModel, load_model  # noqa: E402

TARGET = 1.5
PROMPT_TOKENS = 128


def prompt_of_length(lm: LanguageModel, n_tokens: int = PROMPT_TOKENS) -> str:
    """English prose (CPython's pydoc topics, always installed) cut to exactly `n_tokens` tokens."""
    from pydoc_data.topics import topics

    text = " ".join(topics["assert"].split())
    ids = lm.tokenizer(text, add_special_tokens=True).input_ids
    for cut in range(n_tokens, n_tokens + 8):
        candidate = str(lm.tokenizer.decode(ids[:cut], skip_special_tokens=True))
        if len(lm.tokenizer(candidate, add_special_tokens=True).input_ids) == n_tokens:
            return candidate
    raise RuntimeError(f"could not cut the bench prompt to {n_tokens} tokens")


@torch.inference_mode()
def text_floor(lm: LanguageModel, ids: torch.Tensor, ratios: tuple[float, ...], n_strategies: int) -> None:
    """Plain forward passes at the pruned sizes: per ratio one batch of n_strategies rows."""
    n = int(ids.shape[0])
    for ratio in ratios:
        k = keep_count(ratio, n)
        batch = ids[n - k :].unsqueeze(0).expand(n_strategies, -1).to(lm.device)
        lm.model(input_ids=batch, use_cache=False, logits_to_keep=1)


def bench_text_sweep(model: str | None = None, repeats: int = 2, layer: int = 2) -> dict[str, Any]:
    torch.manual_seed(0)
    lm = load_model(model, device="cpu")
    prompt = prompt_of_length(lm)
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids[0]
    ratios = tuple(SWEEP_RATIOS)
    n_strategies = len(DEFAULT_STRATEGIES)

    prune_text(lm, prompt, keep_ratios=(0.5,), layer=layer)  # warm-up (also loads MiniLM)
    text_floor(lm, ids, (0.5,), n_strategies)
    sweep_t, quick_t, floor_t = [], [], []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = prune_text(lm, prompt, keep_ratios=ratios, layer=layer)
        sweep_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        prune_text(lm, prompt, keep_ratios=ratios, layer=layer, continuation_tokens=0)
        quick_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        text_floor(lm, ids, ratios, n_strategies)
        floor_t.append(time.perf_counter() - t0)
    assert result is not None
    sweep, quick, floor = min(sweep_t), min(quick_t), min(floor_t)
    return {
        "bench": "pruning_text",
        "model": lm.model_id,
        "prompt_tokens": int(ids.shape[0]),
        "layer": layer,
        "strategies": list(DEFAULT_STRATEGIES),
        "ratios": list(ratios),
        "runs": len(result.rows),
        "sweep_seconds": round(sweep, 3),
        "sweep_no_continuation_seconds": round(quick, 3),
        "floor_seconds": round(floor, 3),
        "ratio": round(sweep / floor, 3),
        "ratio_no_continuation": round(quick / floor, 3),
        "target": TARGET,
        "ok": sweep / floor <= TARGET,
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-image", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {"text": bench_text_sweep(repeats=args.repeats)}
    if not args.skip_image:
        try:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from pruning_image import bench_image_sweep  # the vision engineer's helper
        except ImportError:
            out["image"] = {"skipped": "bench/pruning_image.py is not available"}
        else:
            out["image"] = bench_image_sweep(repeats=args.repeats)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
