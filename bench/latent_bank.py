"""Benchmark: building the LatentLens text bank of the demo VLM (target: at most 2 min on 2 cores).

Encodes the whole shipped corpus (`explorer.vlm.latent_corpus.default_corpus()`) with the demo
VLM's language model (SmolLM2-135M), keeps the contextual states at the stored layers (float16),
writes the cache file to a temporary directory, then times a neighbour search of one scene.
Model loading is excluded (done once before). Prints JSON: seconds, entries, tokens encoded,
tokens per second, the process's CPU seconds, file size, torch threads and the machine's load
average (numbers taken under load are not the machine's speed; CPU seconds / threads is an
estimate of the idle wall time).

Run: `.venv/bin/python bench/latent_bank.py [batch_size]`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from explorer.backends.vlm import load_vlm  # noqa: E402
from explorer.vlm.latent import build_text_bank, latent_neighbours, save_bank  # noqa: E402
from explorer.vlm.latent_corpus import default_corpus  # noqa: E402
from explorer.vlm.scenes import compose_scene  # noqa: E402


def main(batch_size: int = 32) -> dict[str, object]:
    vlm = load_vlm("tiny-vlm")
    corpus = default_corpus()
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    bank = build_text_bank(vlm.lm, corpus, batch_size=batch_size)
    build, cpu = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bank.npz"
        t1 = time.perf_counter()
        save_bank(bank, path)
        save = time.perf_counter() - t1
        size = path.stat().st_size
    image = compose_scene([("red", "circle", "left"), ("blue", "square", "right")]).image
    t2 = time.perf_counter()
    latent_neighbours(vlm, "What is in the picture?", image, bank)
    search = time.perf_counter() - t2
    return {
        "build_seconds": round(build, 1),
        "build_cpu_seconds": round(cpu, 1),  # all threads; on an idle 2-core machine wall ~ cpu / 2
        "save_seconds": round(save, 2),
        "neighbours_seconds": round(search, 2),
        "sentences": len(corpus),
        "tokens_encoded": bank.n_tokens_encoded,
        "entries": bank.n_entries,
        "layers": bank.layers,
        "tokens_per_second": round(bank.n_tokens_encoded / build, 1),
        "file_mb": round(size / 1e6, 1),
        "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
    }


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:]))))
