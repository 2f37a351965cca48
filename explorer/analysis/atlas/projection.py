"""2-D projections of token vectors: UMAP (cosine metric, umap-learn) and PCA for comparison.

UMAP here is UMAP with the cosine metric, made fast without changing what it looks at:

- Cosine distance between two vectors is a fixed monotone function of the Euclidean distance between
  the unit vectors (||u - v||^2 = 2 (1 - cos)), so the rows are unit-normalised and UMAP runs with the
  Euclidean metric on them: the same nearest neighbours as cosine on the raw vectors.
- Those unit vectors are first reduced by PCA to `pca_dims` (50) dimensions (an orthogonal projection:
  Euclidean distances are kept up to the variance left out, which the fit reports). Nearest-neighbour
  descent and the spectral initialisation then work in 50 dimensions instead of 576-2048.
  `pca_dims=0` switches this off (exact cosine UMAP on the raw vectors, slower).
- Layout epochs: umap-learn's own large-data setting (200 instead of 500) from `LARGE_MAP` points on.

umap-learn compiles with numba on first import (~17 s cold); it is imported here, inside the
function, so `import explorer` stays light. `NUMBA_CACHE_DIR` defaults to `<cache_dir>/numba` so
the compiled code is reused across processes. Even so, the first fit in a process compiles or loads
the kernels it touches, and a map above 4,096 points touches more of them (the nearest-neighbour
descent) than a small one: `warm_up_umap` runs one small fit that forces that path, so every kernel
a map uses is ready. The app runs it in a background thread at start, `make run` / `make test` run
it once to fill the disk cache, and `bench/atlas_umap.py` measures a 10,000-point fit after it.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorer.errors import InputError

METHODS = ("umap", "pca")
MIN_UMAP_POINTS = 5
LARGE_MAP = 4000
PCA_DIMS = 50


@dataclass(frozen=True)
class ProjectionParams:
    """method: "umap" (cosine metric) or "pca" (of the unit-normalised vectors, so that it sees the
    same cosine geometry). n_neighbors / min_dist: UMAP's; seed fixes UMAP's randomness."""

    method: str = "umap"
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0
    pca_dims: int = PCA_DIMS  # UMAP only: PCA pre-reduction of the unit vectors (0 = none, exact cosine)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method: unknown projection {self.method!r}; choose from {list(METHODS)}")
        if not 2 <= self.n_neighbors <= 200:
            raise InputError(f"n_neighbors must be between 2 and 200, got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise InputError(f"min_dist must be between 0 and 1, got {self.min_dist}")
        if self.pca_dims != 0 and not 5 <= self.pca_dims <= 1000:
            raise InputError(
                f"pca_dims must be 0 (no pre-reduction) or between 5 and 1000, got {self.pca_dims}"
            )

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "n_neighbors": self.n_neighbors,
            "min_dist": self.min_dist,
            "seed": self.seed,
            **({"pca_dims": self.pca_dims} if self.method == "umap" else {}),
        }


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def fit_pca(x: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(n, d) -> (n, 2) PCA coordinates of the unit-normalised rows, and the explained-variance
    ratios of the two components."""
    u = unit_rows(x.astype(np.float64))
    centred = u - u.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    var = s**2
    ratio = (var[:2] / max(float(var.sum()), 1e-12)).tolist()
    return coords.astype(np.float32), [float(r) for r in ratio]


def ensure_numba_cache(cache_dir: Path | None = None) -> None:
    """Point numba's cache at a writable directory before umap is imported."""
    if "NUMBA_CACHE_DIR" not in os.environ:
        target = (cache_dir or Path.cwd() / "cache") / "numba"
        target.mkdir(parents=True, exist_ok=True)
        os.environ["NUMBA_CACHE_DIR"] = str(target)


STABLE_UUID_PREFIX = "explorer-stable:"
_KERNELS_LOCK = threading.Lock()  # the app's warm-up thread and a user's first map may start together


def cache_umap_kernels() -> int:
    """`_cache_umap_kernels` once per process, also when two threads' first fits start together."""
    with _KERNELS_LOCK:
        return _cache_umap_kernels()


@functools.lru_cache(maxsize=1)
def _cache_umap_kernels() -> int:
    """Make numba's on-disk cache work for umap-learn's and pynndescent's kernels across processes.
    Runs once per process, after `import umap` and before the first fit; returns how many kernels it
    switched on.

    1. Turn on caching for every kernel that does not declare `cache=True` (most of their layout, graph
       and descent kernels): without it a fresh process recompiles them at its first fit (measured: 15.9
       CPU-s for a first 2,000-point fit against 4.6 s for the next one, with NUMBA_CACHE_DIR filled).
    2. Give every kernel a stable identity. The nearest-neighbour descent kernels (`init_rp_tree`,
       `init_random`, `process_candidates`, `generate_leaf_updates`, ...) take the distance function, a
       numba dispatcher, as an argument, so the distance's dispatcher is part of the cache's key; numba
       pickles a dispatcher by a random per-process uuid, so a new process never found those entries
       (and appended another copy to the cache at every first fit). A uuid derived from the kernel's
       module and name makes the key the same in every process.

    Still compiled in every process: `nn_descent` and `nn_descent_internal` (maps above 4,096 points),
    which call `numba.get_num_threads()` (a ctypes pointer numba refuses to cache), and the kernels
    umap-learn compiles eagerly at import with an explicit signature."""
    import sys

    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    switched = 0
    for name, module in list(sys.modules.items()):
        if not name.startswith(("umap", "pynndescent")):
            continue
        for value in list(vars(module).values()):
            if not isinstance(value, CPUDispatcher):
                continue
            func = value.py_func
            if getattr(func, "__module__", None) == name and getattr(value, "_MemoMixin__uuid", None) is None:
                value._set_uuid(f"{STABLE_UUID_PREFIX}{name}.{func.__qualname__}")  # type: ignore[attr-defined]
            if isinstance(getattr(value, "_cache", None), NullCache):
                try:
                    value.enable_caching()
                except Exception:  # noqa: BLE001 - e.g. a kernel whose source file cannot be located
                    continue
                switched += 1
    return switched


def reduce_unit_rows(x: np.ndarray, dims: int) -> tuple[np.ndarray, float]:
    """(n, d) -> (n, k) PCA coordinates of the unit-normalised rows, k = min(dims, d, n), and the share
    of their variance kept. Euclidean distances between these coordinates approximate those between
    the unit vectors (i.e. cosine distances, ||u - v||^2 = 2 (1 - cos)); with dims >= d nothing is lost."""
    u = unit_rows(x.astype(np.float32))
    centred = u - u.mean(axis=0, keepdims=True)
    k = min(dims, u.shape[1], u.shape[0])
    if k >= u.shape[1]:
        return centred, 1.0
    cov = centred.T.astype(np.float64) @ centred.astype(np.float64)  # (d, d): cheaper than an SVD of n x d
    vals, vecs = np.linalg.eigh(cov)
    top = vecs[:, ::-1][:, :k].astype(np.float32)
    kept = float(vals[::-1][:k].sum() / max(float(vals.sum()), 1e-12))
    return centred @ top, kept


def umap_epochs(n: int) -> int | None:
    """umap-learn runs 500 layout epochs up to 10,000 points and 200 above; we use its large-data
    setting from LARGE_MAP points on (a 10,000-point layout takes 2.5x less time). None = its default."""
    return 200 if n > LARGE_MAP else None


WARM_UP_POINTS = 1200
# pynndescent splits its random-projection trees breadth-first (other kernels) while a node holds more
# than 1 MiB of rows, which 50-dimensional maps reach above 5,242 points; 256 dimensions reach it at 1,024
WARM_UP_DIMS = 256


def _umap_fit(
    data: np.ndarray,
    metric: str,
    n_neighbors: int,
    min_dist: float,
    seed: int,
    epochs: int | None,
    force_approximation: bool = False,
) -> np.ndarray:
    import warnings

    import umap

    cache_umap_kernels()
    n = data.shape[0]
    reducer = umap.UMAP(
        n_components=2,
        metric=metric,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        random_state=seed,
        init="spectral" if n > 20 else "random",
        n_epochs=epochs,
        low_memory=True,
        force_approximation_algorithm=force_approximation,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", spectral-init fallbacks
        return np.asarray(reducer.fit_transform(np.ascontiguousarray(data, dtype=np.float32)))


def warm_up_umap(cache_dir: Path | None = None) -> float:
    """Compile (or load from NUMBA_CACHE_DIR) the numba kernels a map fit uses, on `WARM_UP_POINTS`
    random unit vectors: the nearest-neighbour descent that maps above 4,096 points use (forced here),
    with the breadth-first tree splits of large maps (`WARM_UP_DIMS`), the fuzzy graph, the spectral
    initialisation and the layout (the kernels' signatures depend on the arrays' types, not their sizes).
    After it, a new process's first 10,000-point map compiles only `nn_descent` (uncacheable, see
    `cache_umap_kernels`), umap's eagerly typed random-number kernels and one small float64 distance.
    Returns its seconds."""
    t0 = time.perf_counter()
    ensure_numba_cache(cache_dir)
    x = unit_rows(np.random.default_rng(0).normal(size=(WARM_UP_POINTS, WARM_UP_DIMS)).astype(np.float32))
    _umap_fit(x, "euclidean", 15, 0.1, 0, umap_epochs(LARGE_MAP), force_approximation=True)
    return time.perf_counter() - t0


def fit_umap(
    x: np.ndarray, params: ProjectionParams, cache_dir: Path | None = None
) -> tuple[np.ndarray, dict[str, object]]:
    """(n, d) -> (n, 2) UMAP embedding under the cosine metric (see the module docstring for how
    the PCA pre-reduction keeps it cosine), and facts about the fit. n_neighbors is capped at n - 1."""
    n = x.shape[0]
    if n < MIN_UMAP_POINTS:
        raise InputError(
            f"UMAP needs at least {MIN_UMAP_POINTS} points, got {n}: use a longer prompt, all layers, or PCA"
        )
    ensure_numba_cache(cache_dir)
    info: dict[str, object] = {"n_neighbors": min(params.n_neighbors, n - 1)}
    if params.pca_dims:
        t0 = time.perf_counter()
        data, kept = reduce_unit_rows(x, params.pca_dims)
        metric = "euclidean"  # on unit vectors: the cosine neighbours (see the module docstring)
        info.update(pca_dims=int(data.shape[1]), pca_variance_kept=round(kept, 4),
                    pca_seconds=round(time.perf_counter() - t0, 3))  # fmt: skip
        note = (
            f"UMAP under the cosine metric: rows unit-normalised (Euclidean distance between unit vectors is "
            f"√(2·cosine distance), so neighbours are the cosine ones), reduced by PCA to {data.shape[1]} "
            f"dimensions keeping {100 * kept:.1f}% of their variance, for speed."
        )
    else:
        data, metric = x.astype(np.float32), "cosine"
        note = "UMAP with the cosine metric on the raw vectors (no PCA pre-reduction)."
    epochs = umap_epochs(n)
    coords = _umap_fit(data, metric, min(params.n_neighbors, n - 1), params.min_dist, params.seed, epochs)
    info.update(metric=metric, n_epochs=epochs or (500 if n <= 10_000 else 200), notes=[note])
    return np.asarray(coords, dtype=np.float32), info


def project(
    x: np.ndarray, params: ProjectionParams, cache_dir: Path | None = None
) -> tuple[np.ndarray, dict[str, object]]:
    """Project (n, d) -> (n, 2) with `params.method`; also return facts about the fit."""
    t0 = time.perf_counter()
    if params.method == "pca":
        coords, ratio = fit_pca(x)
        info: dict[str, object] = {
            "explained_variance": ratio,
            "notes": ["PCA of the unit-normalised vectors (the cosine geometry UMAP uses), for comparison."],
        }
    else:
        coords, info = fit_umap(x, params, cache_dir)
    info["fit_seconds"] = time.perf_counter() - t0
    info["n_points"] = int(x.shape[0])
    return coords, info
