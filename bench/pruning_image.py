"""Bench: an image-pruning sweep against its floor.

The sweep is `prune_image(vm, image, strategies="all", keep_ratios=<8 ratios>, layer=layer)` on
one 224x224 image: every registered strategy at every ratio, with all fidelity measures (including the saliency
decoder for each pruned run). The floor is the bare compute the sweep cannot avoid: the
same number of plain encoder passes (all blocks + final norm) on inputs of the pruned
sizes, batched per ratio like the sweep. Both are timed in the same process, after a
warm-up, alternately (so background load hits both alike); medians of `repeats` rounds; `ratio` is the median of the per-round (paired) ratios. Target: sweep / floor <= 1.5.

Run as a script to print JSON: `python bench/pruning_image.py`.
"""

from __future__ import annotations

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

from explorer.analysis.pruning.image import IMAGE_STRATEGIES, keep_count, prune_image  # noqa: E402
from explorer.backends.images import load_image, sample_images  # noqa: E402
from explorer.backends.vision import VisionModel, load_vision_model  # noqa: E402

RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 1.0)
TARGET = 1.5


@torch.inference_mode()
def _floor_pass(vm: VisionModel, n_patches: int, ratios: tuple[float, ...], n_strategies: int) -> None:
    """Plain encoder passes on inputs of the pruned sizes: per ratio one batch of n_strategies."""
    for ratio in ratios:
        tokens = vm.n_prefix + keep_count(ratio, n_patches)
        x = torch.randn(n_strategies, tokens, vm.hidden_size, device=vm.device)
        x, _ = vm.run_blocks(x, 0, vm.n_layers)
        vm.final_norm(x)


def bench_image_sweep(
    model: str | None = None, layer: int = 0, repeats: int = 3, image: str = "chelsea_cat"
) -> dict[str, Any]:
    """Time the full sweep and its floor; return seconds and their ratio (target <= 1.5)."""
    torch.manual_seed(0)
    vm = load_vision_model(model, device="cpu")
    samples = sample_images()
    picture = load_image(samples.get(image) or next(iter(samples.values())))
    n_patches = vm.grid()[0] * vm.grid()[1]
    n_strategies = len(IMAGE_STRATEGIES)

    prune_image(vm, picture, strategies="all", keep_ratios=[0.5], layer=layer)  # warm-up
    _floor_pass(vm, n_patches, (0.5,), n_strategies)

    sweep_times, floor_times = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = prune_image(vm, picture, strategies="all", keep_ratios=list(RATIOS), layer=layer)
        sweep_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _floor_pass(vm, n_patches, RATIOS, n_strategies)
        floor_times.append(time.perf_counter() - t0)
    sweep, floor = statistics.median(sweep_times), statistics.median(floor_times)
    return {
        "bench": "pruning_image",
        "model": vm.model_id,
        "image_size": vm.image_size,
        "layer": layer,
        "strategies": n_strategies,
        "ratios": list(RATIOS),
        "runs": len(result.rows),
        "sweep_seconds": round(sweep, 4),
        "floor_seconds": round(floor, 4),
        "ratio": round(statistics.median(a / b for a, b in zip(sweep_times, floor_times, strict=True)), 3),
        "ratio_of_medians": round(sweep / floor, 3),
        "target": TARGET,
        "ok": statistics.median(a / b for a, b in zip(sweep_times, floor_times, strict=True)) <= TARGET,
        "all_seconds": {
            "sweep": [round(t, 3) for t in sweep_times],
            "floor": [round(t, 3) for t in floor_times],
        },
        "threads": torch.get_num_threads(),
    }


if __name__ == "__main__":
    print(json.dumps(bench_image_sweep(), indent=1))
