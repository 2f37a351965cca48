"""Benchmark: UMAP (cosine) of 10,000 token states of the embedded SmolLM2 (target: at most 30 s).

The points are real hidden states: every layer (31 residual layers) of natural-English prompts
from CPython's bundled pydoc topics, 10,000 points in all (768 ... 576-dimensional vectors).
Numba compiles umap-learn's kernels once per machine (cached in NUMBA_CACHE_DIR) and the first fit
in a process JIT-loads them: a warm-up fit on 500 points runs first and is reported separately.
Then the 10,000-point fit (`explorer.analysis.atlas.projection.project`, exactly what a map
request runs) is timed REPEATS times. PCA of the same points is timed for comparison.

Run: `.venv/bin/python bench/atlas_umap.py` (prints JSON).
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from explorer.analysis.atlas.projection import ProjectionParams, project  # noqa: E402
from explorer.models.loading import load_model  # noqa: E402
from explorer.trace import capture  # noqa: E402

N_POINTS = 10_000
REPEATS = 3


def hidden_states(n_points: int) -> np.ndarray:
    from pydoc_data.topics import topics

    lm = load_model("smollm2-135m")
    rows: list[np.ndarray] = []
    total = 0
    for name in sorted(topics):
        ids = lm.tokenizer(topics[name], return_tensors="pt").input_ids[0][:256]
        if ids.numel() < 32:
            continue
        trace = capture(lm, ids, attentions=False)
        res = trace.residual.reshape(-1, trace.residual.shape[-1]).numpy()
        rows.append(res)
        total += res.shape[0]
        if total >= n_points:
            break
    return np.concatenate(rows)[:n_points]


def main() -> None:
    t0 = time.perf_counter()
    x = hidden_states(N_POINTS)
    collect = time.perf_counter() - t0
    params = ProjectionParams(method="umap")
    t0 = time.perf_counter()
    project(x[:500], params)
    warmup = time.perf_counter() - t0
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        coords, _ = project(x, params)
        times.append(time.perf_counter() - t0)
        assert coords.shape == (N_POINTS, 2) and np.isfinite(coords).all()
    t0 = time.perf_counter()
    project(x, ProjectionParams(method="pca"))
    pca = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "points": int(x.shape[0]),
                "dims": int(x.shape[1]),
                "collect_hidden_states_s": round(collect, 2),
                "first_fit_500_points_s (numba JIT load)": round(warmup, 2),
                "umap_10k_s": [round(t, 2) for t in times],
                "umap_10k_median_s": round(statistics.median(times), 2),
                "target_s": 30,
                "pca_10k_s": round(pca, 3),
                "cpu_count": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
