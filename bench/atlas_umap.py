"""Benchmark: UMAP (cosine) of 10,000 token states of the embedded SmolLM2 (target: at most 30 s).

The points are real hidden states: every layer (31 residual layers) of natural-English prompts
from CPython's bundled pydoc topics, 10,000 points of 576 dimensions.

What a map request runs (`explorer.analysis.atlas.projection.project`, default parameters): rows
unit-normalised, PCA to 50 dimensions, UMAP (Euclidean on those = cosine neighbours), 200 layout
epochs, spectral init, fixed seed. Numba compiles umap-learn's kernels once per machine (cached in
NUMBA_CACHE_DIR, which `make run` / `make test` fill once) and every process still compiles or loads
the kernels its first fit touches; a map above 4,096 points touches the nearest-neighbour descent
that small maps skip. `warm_up_umap` (what the app runs in a background thread at start) forces that
path on 1,200 random points; it runs first and is reported separately (`warm_up_s`). Then the
10,000-point fit is timed REPEATS times: the first of them is a process's first real map. Faithfulness of the reduction: the share
of each point's 15 nearest neighbours under the exact cosine metric on the raw 576-D vectors that are
also its 15 nearest in the 50-D PCA space (`knn15_recall`). PCA of the same points is timed for
comparison. `--exact` also times one fit with the cosine metric on the raw vectors (pca_dims=0).

Before all that, a fresh process (a subprocess) imports umap and fits the same 10,000 points once without
the warm-up: what a new process pays for its first map when NUMBA_CACHE_DIR is filled
(`fresh_process_first_fit_10k`: wall and CPU seconds, the NUMBA_CACHE_DIR it used, and every kernel it
still had to compile, with its CPU seconds).

Run: `.venv/bin/python bench/atlas_umap.py [--exact]` (prints JSON).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from explorer.analysis.atlas.projection import (  # noqa: E402
    PCA_DIMS,
    ProjectionParams,
    ensure_numba_cache,
    project,
    reduce_unit_rows,
    unit_rows,
    warm_up_umap,
)
from explorer.models.loading import load_model  # noqa: E402
from explorer.trace import capture  # noqa: E402

N_POINTS = 10_000
REPEATS = 3
K = 15


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


def knn(x: np.ndarray, k: int, cosine: bool, chunk: int = 1000) -> np.ndarray:
    """(n, k) exact nearest neighbours (self excluded), brute force in chunks."""
    out = np.empty((x.shape[0], k), dtype=np.int64)
    sq = (x * x).sum(axis=1)
    for start in range(0, x.shape[0], chunk):
        block = x[start : start + chunk]
        d = -(block @ x.T) if cosine else sq[start : start + chunk, None] + sq[None, :] - 2 * block @ x.T
        d[np.arange(block.shape[0]), np.arange(start, start + block.shape[0])] = np.inf
        part = np.argpartition(d, k, axis=1)[:, :k]
        out[start : start + chunk] = part
    return out


def knn_recall(x: np.ndarray) -> float:
    exact = knn(unit_rows(x.astype(np.float32)), K, cosine=True)
    reduced, _ = reduce_unit_rows(x, PCA_DIMS)
    approx = knn(reduced, K, cosine=False)
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(exact, approx, strict=True)]))


def fresh_fit(path: str) -> None:
    """In a new process: import umap and fit the saved points once, without the warm-up (what a fresh
    process pays for its first map with NUMBA_CACHE_DIR already filled). Prints wall and CPU seconds,
    and every numba kernel the fit still had to compile (a cache miss: numba only compiles what it
    cannot load from NUMBA_CACHE_DIR), outermost first, with its CPU seconds (nested compiles included)."""
    from numba.core import event

    compiled: list[tuple[str, float]] = []

    class Compiles(event.Listener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.depth = 0
            self.started: list[float] = []

        def on_start(self, ev: event.Event) -> None:
            self.started.append(time.process_time())

        def on_end(self, ev: event.Event) -> None:
            seconds = time.process_time() - self.started.pop()
            if not self.started:  # outermost compile only (it includes the nested ones)
                func = ev.data["dispatcher"].py_func
                compiled.append((f"{func.__module__}.{func.__qualname__}", round(seconds, 2)))

    event.register("numba:compile", Compiles())
    c0, t0 = time.process_time(), time.perf_counter()
    x = np.load(path)
    coords, _ = project(x, ProjectionParams(method="umap"))
    assert coords.shape == (x.shape[0], 2)
    print(
        json.dumps(
            {
                "wall_s": round(time.perf_counter() - t0, 2),
                "cpu_s": round(time.process_time() - c0, 2),
                "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR"),
                "compiled_kernels_cpu_s": compiled,
            }
        )
    )


def fresh_process_first_fit(x: np.ndarray) -> dict[str, float]:
    import subprocess
    import tempfile

    ensure_numba_cache()  # the child inherits NUMBA_CACHE_DIR: the cache `make` fills (cache/numba)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "points.npy")
        np.save(path, x)
        out = subprocess.run(
            [sys.executable, __file__, "--fresh-fit", path], capture_output=True, text=True, check=True
        ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    if "--fresh-fit" in sys.argv:
        fresh_fit(sys.argv[sys.argv.index("--fresh-fit") + 1])
        return
    load = os.getloadavg()
    t0 = time.perf_counter()
    x = hidden_states(N_POINTS)
    collect = time.perf_counter() - t0
    fresh = fresh_process_first_fit(x)  # first: a new process's first fit, before this one warms up
    params = ProjectionParams(method="umap")
    warmup = warm_up_umap()
    times, info = [], {}
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        coords, info = project(x, params)
        times.append(time.perf_counter() - t0)
        assert coords.shape == (N_POINTS, 2) and np.isfinite(coords).all()
    t0 = time.perf_counter()
    project(x, ProjectionParams(method="pca"))
    pca = time.perf_counter() - t0
    out = {
        "points": int(x.shape[0]),
        "dims": int(x.shape[1]),
        "collect_hidden_states_s": round(collect, 2),
        "warm_up_s (numba compile/load, once per process; in the app a background thread at start)": round(
            warmup, 2
        ),
        "fresh_process_first_fit_10k (import + fit, no warm-up)": fresh,
        "umap_10k_s": [round(t, 2) for t in times],
        "umap_10k_median_s": round(statistics.median(times), 2),
        "target_s": 30,
        "fit": {k: v for k, v in info.items() if k != "notes"},
        "knn15_recall_pca50_vs_exact_cosine": round(knn_recall(x), 4),
        "pca_10k_s": round(pca, 3),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(v, 2) for v in load],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
    }
    if "--exact" in sys.argv:
        t0 = time.perf_counter()
        project(x, ProjectionParams(method="umap", pca_dims=0))
        out["umap_10k_exact_cosine_no_pca_s"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
