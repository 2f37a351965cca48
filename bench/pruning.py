"""Bench: pruning sweeps against their floors, text and image, in one run.

Text: `prune_text(SmolLM2, 128-token prompt, "all", 8 ratios)`: every default text strategy at
every ratio with all fidelity measures (attribution scores, 8-token greedy continuations,
MiniLM similarity), and the same sweep without continuations (`continuation_tokens=0`).

The floor is the forward passes such a sweep must make, executed plainly and batched: for each
of the 8 ratios one batch of n_strategies rows of keep-count tokens (the pruned inputs at their
pruned size; ratio 1.0 = the unpruned prompt), prefilled with `logits_to_keep=1`, plus, when
continuations are measured, the same N-1 greedy decode steps per batch with a KV cache. Inputs
are the prompt's last k tokens (the content does not change the cost). Everything else the sweep
does is its extra cost: the unpruned reference run with its signals (self-information over all
positions, FastV's attention), attribution (Captum input x gradient, one backward pass), token
selection, FastV's cut and padding, metrics, decoding strings, and the MiniLM encoding of the
continuations. `timings` in the output splits the sweep's wall time into reference / attribution
/ forward (the pruned batches) / similarity / other.

Image: `bench/pruning_image.py` (every image strategy x 8 ratios on one 224x224 image against
its floor of batched encoder passes at the pruned sizes).

Floor and sweep are timed alternately in the same process after a warm-up, so background load
hits both alike; reported are the medians of `repeats` rounds and, as `ratio`, the median of
the per-round sweep / floor ratios (paired, so a burst of load in one round does not skew it).
Target: sweep / floor <= 1.5.
Run as a script to print JSON: `python bench/pruning.py [--repeats N] [--skip-image]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from explorer.analysis.pruning.text import (  # noqa: E402
    DEFAULT_KEEP_RATIOS,
    DEFAULT_STRATEGIES,
    keep_count,
    prune_text,
)
from explorer.backends.language import LanguageModel, load_model  # noqa: E402

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
def text_floor(
    lm: LanguageModel, ids: torch.Tensor, ratios: tuple[float, ...], n_strategies: int, n_continue: int
) -> None:
    """Plain forward passes at the pruned sizes: per ratio one batch of n_strategies rows of k
    tokens (prefill, last-position logits), then n_continue - 1 greedy decode steps with the cache."""
    n = int(ids.shape[0])
    for ratio in ratios:
        k = keep_count(ratio, n)
        batch = ids[n - k :].unsqueeze(0).expand(n_strategies, -1)
        out = lm.forward(batch, use_cache=n_continue > 1, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        for _ in range(n_continue - 1):
            out = lm.forward(token, cache=out.cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def bench_text_sweep(
    model: str | None = None, repeats: int = 3, layer: int = 2, continuation: int = 8
) -> dict[str, Any]:
    """Alternate sweep and floor (with and without continuations) `repeats` times; medians."""
    torch.manual_seed(0)
    lm = load_model(model, device="cpu")
    prompt = prompt_of_length(lm)
    ids = lm.tokenizer(prompt, return_tensors="pt").input_ids[0]
    ratios = tuple(DEFAULT_KEEP_RATIOS)
    n_strategies = len(DEFAULT_STRATEGIES)

    prune_text(lm, prompt, keep_ratios=(0.5,), layer=layer)  # warm-up (also loads MiniLM)
    text_floor(lm, ids, (0.5,), n_strategies, continuation)
    times: dict[str, list[float]] = {"sweep": [], "floor": [], "sweep_quick": [], "floor_quick": []}
    parts: list[dict[str, float]] = []
    quick_parts: list[dict[str, float]] = []
    result = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = prune_text(lm, prompt, keep_ratios=ratios, layer=layer, continuation_tokens=continuation)
        times["sweep"].append(time.perf_counter() - t0)
        parts.append(result.timings)
        t0 = time.perf_counter()
        text_floor(lm, ids, ratios, n_strategies, continuation)
        times["floor"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        quick = prune_text(lm, prompt, keep_ratios=ratios, layer=layer, continuation_tokens=0)
        times["sweep_quick"].append(time.perf_counter() - t0)
        quick_parts.append(quick.timings)
        t0 = time.perf_counter()
        text_floor(lm, ids, ratios, n_strategies, 0)
        times["floor_quick"].append(time.perf_counter() - t0)
    assert result is not None
    med = {k: _median(v) for k, v in times.items()}
    out: dict[str, Any] = {
        "bench": "pruning_text",
        "model": lm.model_id,
        "prompt_tokens": int(ids.shape[0]),
        "layer": layer,
        "strategies": list(DEFAULT_STRATEGIES),
        "ratios": list(ratios),
        "runs": len(result.rows),
        "continuation_tokens": continuation,
        "repeats": repeats,
        "sweep_seconds": round(med["sweep"], 3),
        "floor_seconds": round(med["floor"], 3),
        "ratio": round(_median([a / b for a, b in zip(times["sweep"], times["floor"], strict=True)]), 3),
        "ratio_of_medians": round(med["sweep"] / med["floor"], 3),
        "timings": {k: round(_median([p[k] for p in parts]), 3) for k in parts[0]},
        "sweep_no_continuation_seconds": round(med["sweep_quick"], 3),
        "floor_no_continuation_seconds": round(med["floor_quick"], 3),
        "ratio_no_continuation": round(
            _median([a / b for a, b in zip(times["sweep_quick"], times["floor_quick"], strict=True)]), 3
        ),
        "timings_no_continuation": {
            k: round(_median([p[k] for p in quick_parts]), 3) for k in quick_parts[0]
        },
        "all_seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "target": TARGET,
        "ok": None,
        "threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }
    out["ok"] = out["ratio"] <= TARGET and out["ratio_no_continuation"] <= TARGET
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
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
