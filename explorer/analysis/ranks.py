"""Rank and probability read-outs over full-vocabulary logits.

The logit lens decodes (n_layers + 1) x seq rows of `vocab` logits. Reading ranks and
probabilities out of them costs several passes over memory when done op by op; on CPU
with a large vocabulary we fuse them into one kernel with `torch.compile` (cached on disk
by inductor; ~15 s the very first time, ~3 s per new process after). Small vocabularies
and any platform where compilation fails use the identical eager code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)
FUSE_MIN_VOCAB = 16_384

Readout = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def readout(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row of `logits` (rows, vocab) and tracked ids (rows, t):

    returns (log-partition (rows, 1), the ids' logits (rows, t), the ids' ranks (rows, t) int32).
    Rank 1 = top. Ties are broken by token id (lower id first), so the ranks of all vocab
    ids in a row are exactly a permutation of 1..vocab.
    """
    m = logits.amax(-1, keepdim=True)
    lse = m + (logits - m).exp().sum(-1, keepdim=True).log()
    target = logits.gather(1, ids)
    vocab_ids = torch.arange(logits.shape[1], device=logits.device)
    ranks = []
    for j in range(ids.shape[1]):
        t = target[:, j : j + 1]
        before = (logits > t) | ((logits == t) & (vocab_ids < ids[:, j : j + 1]))
        ranks.append(before.sum(-1, dtype=torch.int32) + 1)
    return lse, target, torch.stack(ranks, 1)


class _FusedReadout:
    """Lazily compiled `readout`; falls back to eager for good if compilation fails."""

    def __init__(self) -> None:
        self._compiled: Readout | None = None
        self._failed = False
        self._lock = threading.Lock()

    def get(self, vocab: int) -> Readout:
        if vocab < FUSE_MIN_VOCAB or self._failed:
            return readout
        with self._lock:
            if self._compiled is None:
                self._compiled = torch.compile(readout, dynamic=True)
            return self._compiled

    def __call__(
        self, logits: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fn = self.get(logits.shape[1])
        if fn is readout:
            return readout(logits, ids)
        try:
            return fn(logits, ids)
        except Exception as exc:  # compiler missing or unsupported platform: stay correct, go eager
            log.warning("fused rank read-out unavailable (%s); using the eager path", exc)
            self._failed = True
            return readout(logits, ids)


fused_readout = _FusedReadout()


def ranks_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rank (1 = top) of `ids` (rows, t) in each row of `logits` (rows, vocab) -> (rows, t)."""
    return readout(logits, ids)[2]
