"""GlitchHunter (Li et al. 2024, "Glitch Tokens in Large Language Models: Categorization Taxonomy and
Effective Detection", FSE 2024): iterative clustering of a token embedding graph, with a hypothesis
test on each cluster.

The paper's workflow, as implemented here:
1. Build the Token Embedding Graph (TEG) of the tokens: one node per token, an edge from each token to
   its `k` nearest neighbours by cosine similarity of the input embeddings, weighted by that similarity.
2. Candidate clustering: Leiden communities of the TEG (leidenalg, modularity-type quality with a
   resolution parameter; a fixed seed).
3. Hypothesis test per community: verify a random sample of its tokens (the caller's `screen`: our
   repetition check), and keep the community when a one-sided exact binomial test rejects "the glitch
   rate is at most `p0`" at level `alpha`.
4. The tokens of the kept communities form the updated TEG; repeat from 1 until the TEG no longer
   changes (or `max_rounds`). The tokens of the final TEG are GlitchHunter's glitch tokens.

Deviations (listed in the UI): neighbours of the first, whole-vocabulary graph are found exactly, but in a
`PCA_DIMS`-dimensional PCA of the unit-normalised embeddings (the later, smaller graphs use all
dimensions), so the first graph costs seconds instead of a 49k x 49k full-dimension similarity matrix; the
glitch check is Magikarp's repetition probe rather than the paper's three tasks (repetition, spelling,
length); `k`, the resolution, the sample size and the test's p0/alpha are ours (the paper's values were not
available to us).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PCA_DIMS = 64
FULL_DIMS_BELOW = 8192  # graphs of fewer tokens find neighbours in all dimensions
BLOCK = 4096


@dataclass(frozen=True)
class HunterParams:
    neighbors: int = 10
    resolution: float = 1.0
    sample: int = 3
    p0: float = 0.1
    alpha: float = 0.1
    max_rounds: int = 5
    seed: int = 0


@dataclass
class RoundTrace:
    """One round of `hunt`: the graph's tokens, their community labels, each community's screened
    sample (token ids), how many of it were glitchy, the test's p-value, and the kept communities."""

    tokens: np.ndarray
    labels: np.ndarray
    samples: list[np.ndarray]
    glitchy: list[int]
    pvalues: list[float]
    kept: list[int]

    def where(self, ids: np.ndarray, params: HunterParams) -> list[dict[str, Any]]:
        """The communities that hold `ids`, most of them first: size, how many of `ids` they hold, their
        sample, its test, and the chance that a sample of this size passes the test if exactly those ids
        are the community's glitch tokens (drawn without replacement; others are taken as not glitchy, so
        it is a lower bound when some are)."""
        from scipy.stats import hypergeom

        pos = np.flatnonzero(np.isin(self.tokens, ids))
        counts = np.bincount(self.labels[pos], minlength=len(self.samples))
        out = []
        for c in np.argsort(-counts, kind="stable"):
            if counts[c] == 0:
                break
            size = int((self.labels == c).sum())
            n = int(self.samples[c].size)
            need = min_glitchy(n, params)
            out.append({
                "community": int(c), "size": size, "holds": int(counts[c]),
                "sample": [int(i) for i in self.samples[c]], "glitchy_in_sample": int(self.glitchy[c]),
                "p_value": round(float(self.pvalues[c]), 4), "kept": int(c) in set(self.kept),
                "glitchy_needed": need,
                "pass_chance": round(float(hypergeom.sf(need - 1, size, int(counts[c]), n)), 4),
            })  # fmt: skip
        return out


def min_glitchy(size: int, params: HunterParams) -> int:
    """The fewest glitchy tokens in a sample of `size` that the test keeps (size + 1: none does)."""
    return next((g for g in range(size + 1) if binomial_p(g, size, params.p0) <= params.alpha), size + 1)


def _reduce(rows: np.ndarray, dims: int) -> torch.Tensor:
    """Unit rows; above FULL_DIMS_BELOW rows, projected on their top `dims` principal components and
    re-normalised (cosine neighbours in the PCA space)."""
    x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if x.shape[0] < FULL_DIMS_BELOW or x.shape[1] <= dims:
        return x
    centred = x - x.mean(dim=0, keepdim=True)
    _, vecs = torch.linalg.eigh((centred.T @ centred).double())
    y = centred @ vecs[:, -dims:].float()
    return y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_graph(rows: np.ndarray, k: int, dims: int = PCA_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """Undirected k-NN graph of the rows by cosine similarity: (edges (E, 2) with i < j, weights (E,) =
    the similarity, clipped at 0). An edge found from both ends appears once."""
    x = _reduce(rows, dims)
    n = x.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0)
    nbr = torch.empty(n, k, dtype=torch.long)
    sim = torch.empty(n, k)
    for start in range(0, n, BLOCK):
        s = x[start : start + BLOCK] @ x.T
        s[torch.arange(s.shape[0]), torch.arange(start, start + s.shape[0])] = -2.0  # no self-loops
        val, ind = s.topk(k, dim=1)
        nbr[start : start + s.shape[0]], sim[start : start + s.shape[0]] = ind, val
    src = np.repeat(np.arange(n), k)
    dst = nbr.numpy().ravel()
    w = sim.numpy().ravel().astype(np.float64).clip(0.0, None)
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = lo * n + hi
    order = np.lexsort((-w, key))  # for a pair found twice keep one (same weight either way)
    key, lo, hi, w = key[order], lo[order], hi[order], w[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return np.stack([lo[first], hi[first]], axis=1), w[first]


def leiden(n: int, edges: np.ndarray, weights: np.ndarray, resolution: float, seed: int) -> np.ndarray:
    """Leiden communities (leidenalg, RBConfiguration = modularity with a resolution): a label per node."""
    import igraph as ig
    import leidenalg as la

    graph = ig.Graph(n=n, edges=edges.tolist(), directed=False)
    graph.es["weight"] = weights.tolist()
    part = la.find_partition(
        graph, la.RBConfigurationVertexPartition, weights="weight", resolution_parameter=resolution, seed=seed
    )
    return np.asarray(part.membership, dtype=np.int64)


def binomial_p(glitchy: int, n: int, p0: float) -> float:
    """One-sided exact binomial test: P(X >= glitchy) for X ~ Binomial(n, p0)."""
    from scipy.stats import binomtest

    return float(binomtest(glitchy, n, p0, alternative="greater").pvalue)


def hunt(
    emb: np.ndarray,
    pool: np.ndarray,
    screen: Callable[[Sequence[int]], np.ndarray],
    is_glitch: Callable[[float], bool],
    params: HunterParams,
    progress: Callable[[str], None] | None = None,
    trace: list[RoundTrace] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Run GlitchHunter over the tokens `pool` (ids into the rows of `emb`, the input embeddings).

    `screen(ids)` returns the verification probability of each id (each id is screened once; results are
    remembered); `is_glitch(p)` is the verdict. Returns (the glitch tokens = the final TEG, community label
    per row (-1 = not in the final TEG; labels are round * 1e6 + community), screening probability per row
    (NaN = not sampled), one log entry per round). With `trace`, each round's graph, communities,
    samples and tests are appended to it (to explain afterwards where given tokens fell)."""
    rng = np.random.default_rng(params.seed)
    n_rows = emb.shape[0]
    screened = np.full(n_rows, np.nan)
    community = np.full(n_rows, -1, dtype=np.int64)
    rounds: list[dict[str, Any]] = []
    current = np.asarray(pool, dtype=np.int64)
    for r in range(params.max_rounds):
        if current.size < 2:
            break
        edges, weights = knn_graph(emb[current], params.neighbors)
        labels = leiden(current.size, edges, weights, params.resolution, params.seed + r)
        n_comm = int(labels.max()) + 1
        members = [np.flatnonzero(labels == c) for c in range(n_comm)]
        samples = [current[rng.choice(m, size=min(params.sample, m.size), replace=False)] for m in members]
        todo = np.concatenate(samples)
        need = np.unique(todo[np.isnan(screened[todo])])
        if progress is not None:
            progress(
                f"round {r + 1}: {current.size} tokens, {n_comm} Leiden communities, screening {need.size}"
            )
        if need.size:
            screened[need] = screen(need.tolist())
        glitchy = [sum(is_glitch(float(p)) for p in screened[s]) for s in samples]
        pvalues = [binomial_p(g, s.size, params.p0) for g, s in zip(glitchy, samples, strict=True)]
        kept = [c for c, p in enumerate(pvalues) if p <= params.alpha]
        if trace is not None:
            trace.append(RoundTrace(current.copy(), labels, samples, glitchy, pvalues, kept))
        keep_mask = np.isin(labels, kept)
        nxt = current[keep_mask]
        rounds.append({
            "round": r, "tokens": int(current.size), "edges": int(edges.shape[0]), "communities": n_comm,
            "median_size": float(np.median([m.size for m in members])), "kept_communities": len(kept),
            "kept_tokens": int(nxt.size), "screened": int(need.size),
        })  # fmt: skip
        community[current] = -1
        community[nxt] = labels[keep_mask] + 1_000_000 * r
        if nxt.size == current.size:  # the TEG did not change: done
            break
        current = nxt
    return current, community, screened, rounds
