"""2-D projections of token vectors: UMAP (cosine metric, umap-learn) and PCA for comparison.

umap-learn compiles with numba on first import (~17 s cold); it is imported here, inside the
function, so `import explorer` stays light. `NUMBA_CACHE_DIR` defaults to `<cache_dir>/numba` so
the compiled code is reused across processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorer.errors import InputError

METHODS = ("umap", "pca")
MIN_UMAP_POINTS = 5
LARGE_MAP = 4000


@dataclass(frozen=True)
class ProjectionParams:
    """method: "umap" (cosine metric) or "pca" (of the unit-normalised vectors, so that it sees the
    same cosine geometry). n_neighbors / min_dist: UMAP's; seed fixes UMAP's randomness."""

    method: str = "umap"
    n_neighbors: int = 15
    min_dist: float = 0.1
    seed: int = 0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"unknown projection {self.method!r}; choose from {list(METHODS)}")
        if not 2 <= self.n_neighbors <= 200:
            raise InputError(f"n_neighbors must be between 2 and 200, got {self.n_neighbors}")
        if not 0.0 <= self.min_dist <= 1.0:
            raise InputError(f"min_dist must be between 0 and 1, got {self.min_dist}")

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "n_neighbors": self.n_neighbors,
            "min_dist": self.min_dist,
            "seed": self.seed,
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


def fit_umap(x: np.ndarray, params: ProjectionParams, cache_dir: Path | None = None) -> np.ndarray:
    """(n, d) -> (n, 2) UMAP embedding with the cosine metric. n_neighbors is capped at n - 1."""
    n = x.shape[0]
    if n < MIN_UMAP_POINTS:
        raise InputError(
            f"UMAP needs at least {MIN_UMAP_POINTS} points, got {n}: use a longer prompt, all layers, or PCA"
        )
    ensure_numba_cache(cache_dir)
    import warnings

    import umap

    reducer = umap.UMAP(
        n_components=2,
        metric="cosine",
        n_neighbors=min(params.n_neighbors, n - 1),
        min_dist=params.min_dist,
        random_state=params.seed,
        init="spectral" if n > 20 else "random",
        # umap-learn runs 500 layout epochs up to 10,000 points and 200 above; we use its large-data
        # setting from 4,000 points on (the layout phase of a 10,000-point map takes 2.5x less time)
        n_epochs=200 if n > LARGE_MAP else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", spectral-init fallbacks
        coords = reducer.fit_transform(x.astype(np.float32))
    return np.asarray(coords, dtype=np.float32)


def project(
    x: np.ndarray, params: ProjectionParams, cache_dir: Path | None = None
) -> tuple[np.ndarray, dict[str, object]]:
    """Project (n, d) -> (n, 2) with `params.method`; also return facts about the fit."""
    t0 = time.perf_counter()
    if params.method == "pca":
        coords, ratio = fit_pca(x)
        info: dict[str, object] = {"explained_variance": ratio}
    else:
        coords = fit_umap(x, params, cache_dir)
        info = {"n_neighbors": min(params.n_neighbors, x.shape[0] - 1)}
    info["fit_seconds"] = time.perf_counter() - t0
    info["n_points"] = int(x.shape[0])
    return coords, info
