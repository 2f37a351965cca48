"""Attention maths, once: residual-augmented attention, rollout, row entropy and attention flow.

Text attention (`analysis.attention`), vision attention (`analysis.vision_attention`), the
attention-based attribution scores (`analysis.attribution.attention_based`) and the VLM views
all call these functions; nothing else implements them.

Every function takes attention as a torch tensor or a numpy array, shape
(n_layers, n_heads, seq, seq) (query x key, rows sum to 1), and computes in float64. Tensors
stay on their device (the identity matrix is built where the input lives, so CUDA inputs work);
a numpy input gives a numpy output.

- Residual augmentation (Abnar & Zuidema 2020): A'_l = w * I + (1 - w) * mean_heads(A_l), rows
  re-normalised; w (`residual_weight`, 0.5 in the paper) stands for the residual connection.
- Rollout (same paper): rollout[l] = A'_l @ A'_{l-1} @ ... @ A'_0; rows of a product of
  row-stochastic matrices sum to 1.
- Row entropy: Shannon entropy in bits of each attention row (0 * log 0 = 0).
- Attention flow (same paper): the layered graph as a flow network whose edge
  (layer l + 1, query q) -> (layer l, key k) has capacity A'_l[q, k]; the flow from output t
  to input j is the exact max-flow between those nodes (Dinic's algorithm), normalised over j.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import overload

import numpy as np
import torch

from explorer.errors import InputError
from explorer.progress import ProgressFn

RESIDUAL_WEIGHT = 0.5  # Abnar & Zuidema's weight of the identity in each rollout step
_FLOW_EPS = 1e-12


def _as_float64(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A float64 tensor on the input's device (numpy arrays become CPU tensors)."""
    t = torch.from_numpy(np.asarray(x)) if isinstance(x, np.ndarray) else x
    return t.to(torch.float64)


def _like(result: torch.Tensor, original: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    return result.cpu().numpy() if isinstance(original, np.ndarray) else result


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x if isinstance(x, np.ndarray) else x.detach().cpu().numpy()


def check_attentions(attentions: np.ndarray | torch.Tensor) -> None:
    """ValueError unless `attentions` is (n_layers, n_heads, seq, seq)."""
    if attentions.ndim != 4 or attentions.shape[2] != attentions.shape[3]:
        raise ValueError(f"attentions must be (n_layers, n_heads, seq, seq), got {tuple(attentions.shape)}")


def check_residual_weight(residual_weight: float) -> None:
    """InputError unless the rollout's residual weight is a number in [0, 1]."""
    w = residual_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= float(w) <= 1.0:
        raise InputError(f"the rollout residual weight must be a number in [0, 1]; got {w!r}")


@overload
def residual_augmented(attentions: np.ndarray, residual_weight: float = ...) -> np.ndarray: ...
@overload
def residual_augmented(attentions: torch.Tensor, residual_weight: float = ...) -> torch.Tensor: ...
def residual_augmented(
    attentions: np.ndarray | torch.Tensor, residual_weight: float = RESIDUAL_WEIGHT
) -> np.ndarray | torch.Tensor:
    """(L, H, seq, seq) -> (L, seq, seq) float64: A'_l = w * I + (1 - w) * mean_heads(A_l), rows
    re-normalised. The identity stands for the residual connection around each attention block."""
    check_attentions(attentions)
    check_residual_weight(residual_weight)
    att = _as_float64(attentions)
    mean = att.mean(dim=1)  # (L, seq, seq)
    eye = torch.eye(mean.shape[-1], dtype=mean.dtype, device=mean.device)
    aug = (1.0 - residual_weight) * mean + residual_weight * eye
    return _like(aug / aug.sum(dim=-1, keepdim=True), attentions)


@overload
def attention_rollout(attentions: np.ndarray, residual_weight: float = ...) -> np.ndarray: ...
@overload
def attention_rollout(attentions: torch.Tensor, residual_weight: float = ...) -> torch.Tensor: ...
def attention_rollout(
    attentions: np.ndarray | torch.Tensor, residual_weight: float = RESIDUAL_WEIGHT
) -> np.ndarray | torch.Tensor:
    """(L, H, seq, seq) -> (L, seq, seq) float64: rollout[l] = A'_l @ ... @ A'_0.

    rollout[l][q, k] is how much of position q's representation after block l traces back to
    input token k when attention is linearly combined through the residual stream."""
    aug = residual_augmented(_as_float64(attentions), residual_weight)
    out = torch.empty_like(aug)
    acc = torch.eye(aug.shape[-1], dtype=aug.dtype, device=aug.device)
    for layer in range(aug.shape[0]):
        acc = aug[layer] @ acc
        out[layer] = acc
    return _like(out, attentions)


@overload
def row_entropy(rows: np.ndarray) -> np.ndarray: ...
@overload
def row_entropy(rows: torch.Tensor) -> torch.Tensor: ...
def row_entropy(rows: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """(..., keys) -> (...) float64: Shannon entropy in bits of each row (0 log 0 = 0).

    A row with all its mass on one key has entropy 0; a uniform row over n keys, log2(n)."""
    p = _as_float64(rows)
    terms = torch.where(p > 0, -p * torch.log2(p.clamp_min(1e-300)), torch.zeros_like(p))
    return _like(terms.sum(dim=-1), rows)


def mean_row_entropy(rows: torch.Tensor) -> torch.Tensor:
    """(..., queries, keys) -> (...) float64: the mean over queries of each row's entropy in bits.

    For one layer of a long prompt (n_heads x 4,096 x 4,096): the element-wise work stays in
    the input's dtype (a float64 copy would double the layer's memory); only the per-row sums
    are averaged in float64."""
    nats = -torch.special.xlogy(rows, rows).sum(dim=-1)  # 0 log 0 = 0
    return nats.double().mean(dim=-1) / float(np.log(2.0))


def rollout_carry(
    mean: torch.Tensor, carried: torch.Tensor, residual_weight: float = RESIDUAL_WEIGHT
) -> torch.Tensor:
    """One rollout step on a carried product: A' @ carried, with A' = w * I + (1 - w) * mean
    (rows re-normalised), mean (seq, seq) the layer's mean over heads, carried (seq, m) float64.

    Starting from carried = a (seq, m) matrix M, after layers 0..l it holds rollout_l @ M: with
    M the key-block indicator that is the rollout summed over key blocks, exactly, in O(seq^2 m)
    per layer instead of the full product's O(seq^3) and O(seq^2) memory per layer kept."""
    w = residual_weight
    norm = (1.0 - w) * mean.sum(dim=-1).double() + w
    return ((1.0 - w) * (mean @ carried.to(mean.dtype)).double() + w * carried) / norm[:, None]


def rollout_rows(
    means: Sequence[torch.Tensor], rows: Sequence[int], residual_weight: float = RESIDUAL_WEIGHT
) -> torch.Tensor:
    """Rows of the rollout after the last layer, from each layer's mean over heads (seq, seq):
    (len(rows), seq) float64, equal to `attention_rollout(...)[-1][rows]`.

    Row q of A'_L ... A'_0 is e_q A'_L ... A'_0: a row vector times one matrix per layer, from
    the last layer down, O(L seq^2) instead of the full product's O(L seq^3)."""
    check_residual_weight(residual_weight)
    w = residual_weight
    seq = int(means[0].shape[-1])
    v = torch.zeros(len(rows), seq, dtype=torch.float64, device=means[0].device)
    v[torch.arange(len(rows)), torch.as_tensor(list(rows), dtype=torch.long)] = 1.0
    for mean in reversed(list(means)):
        m = mean.double()
        norm = (1.0 - w) * m.sum(dim=-1) + w  # row sums of A' before re-normalising
        scaled = v / norm[None, :]
        v = w * scaled + (1.0 - w) * (scaled @ m)
    return v


# ---- attention flow: exact max-flow on the layered graph ------------------------------------
class _FlowNetwork:
    """Directed graph with float capacities and Dinic's max-flow (BFS levels + blocking flow)."""

    def __init__(self, n_nodes: int) -> None:
        self.n = n_nodes
        self.head: list[list[int]] = [[] for _ in range(n_nodes)]  # node -> edge indices
        self.to: list[int] = []
        self.cap: list[float] = []

    def add_edge(self, u: int, v: int, capacity: float) -> None:
        self.head[u].append(len(self.to))
        self.to.append(v)
        self.cap.append(capacity)
        self.head[v].append(len(self.to))
        self.to.append(u)
        self.cap.append(0.0)

    def _levels(self, s: int, t: int) -> list[int] | None:
        level = [-1] * self.n
        level[s] = 0
        queue = deque([s])
        while queue:
            u = queue.popleft()
            for e in self.head[u]:
                v = self.to[e]
                if level[v] < 0 and self.cap[e] > _FLOW_EPS:
                    level[v] = level[u] + 1
                    queue.append(v)
        return level if level[t] >= 0 else None

    def max_flow(self, s: int, t: int) -> float:
        total = 0.0
        while (level := self._levels(s, t)) is not None:
            pointer = [0] * self.n
            while True:
                pushed = self._augment(s, t, level, pointer)
                if pushed <= _FLOW_EPS:
                    break
                total += pushed
        return total

    def _augment(self, s: int, t: int, level: list[int], pointer: list[int]) -> float:
        """Find one s-t path in the level graph (iterative DFS with current-arc pointers) and
        push its bottleneck; dead ends are skipped for the rest of the phase."""
        path: list[int] = []  # edge indices
        u = s
        while u != t:
            advanced = False
            edges = self.head[u]
            while pointer[u] < len(edges):
                e = edges[pointer[u]]
                v = self.to[e]
                if self.cap[e] > _FLOW_EPS and level[v] == level[u] + 1:
                    path.append(e)
                    u = v
                    advanced = True
                    break
                pointer[u] += 1
            if not advanced:
                if u == s:
                    return 0.0
                level[u] = -1  # dead end for this phase
                e = path.pop()
                u = self.to[e ^ 1]
                pointer[u] += 1
        bottleneck = min(self.cap[e] for e in path)
        for e in path:
            self.cap[e] -= bottleneck
            self.cap[e ^ 1] += bottleneck
        return bottleneck


def _max_flow_to_input(aug: np.ndarray, output: int, source_token: int) -> float:
    """Max-flow from node (layer L, position `output`) to (layer 0, position `source_token`).

    aug: (L, seq, seq) residual-augmented attention. Edges go (l + 1, q) -> (l, k) with
    capacity aug[l, q, k]. Only positions source_token..output can lie on a path (a causal
    edge never increases the position), so the graph is restricted to them."""
    n_l = aug.shape[0]
    j, t = source_token, output
    if n_l == 1:
        return float(aug[0, t, j])
    width = t - j + 1
    # node ids: 0 = source (L, t); 1 = sink (0, j); layer l in 1..L-1, position p -> 2 + (l-1)*width + (p-j)
    net = _FlowNetwork(2 + (n_l - 1) * width)

    def node(layer: int, pos: int) -> int:
        if layer == n_l:
            return 0
        if layer == 0:
            return 1
        return 2 + (layer - 1) * width + (pos - j)

    for layer in range(n_l, 0, -1):  # edges from node layer `layer` to `layer - 1` use block layer-1
        queries = [t] if layer == n_l else range(j, t + 1)
        keys = [j] if layer == 1 else range(j, t + 1)
        block = aug[layer - 1]
        for q in queries:
            for k in keys:
                c = float(block[q, k])
                if c > _FLOW_EPS:
                    net.add_edge(node(layer, q), node(layer - 1, k), c)
    return net.max_flow(0, 1)


def attention_flow(
    attentions: np.ndarray | torch.Tensor,
    outputs: Sequence[int],
    progress: ProgressFn | None = None,
    residual_weight: float = RESIDUAL_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """Attention flow from each output position (after the last block) to every input token.

    attentions: (L, H, seq, seq). Returns (normalised, raw), both (len(outputs), seq) float64:
    raw[i, j] = max-flow value from output outputs[i] to input j (each <= 1); normalised rows sum
    to 1 (as in Abnar & Zuidema's reference code). Inputs after an output get 0 (causal)."""
    aug = _to_numpy(residual_augmented(attentions, residual_weight))
    seq = aug.shape[-1]
    raw = np.zeros((len(outputs), seq))
    total = sum(int(t) + 1 for t in outputs)
    done = 0
    for i, t in enumerate(outputs):
        for j in range(int(t) + 1):
            raw[i, j] = _max_flow_to_input(aug, int(t), j)
            done += 1
            if progress is not None and (done % 8 == 0 or done == total):
                progress(done / total, f"Attention flow: {done}/{total} max-flows")
    sums = raw.sum(axis=1, keepdims=True)
    normalised = np.divide(raw, sums, out=np.zeros_like(raw), where=sums > 0)
    return normalised, raw
