"""What every pruning result row has, whatever is pruned (text tokens or image patches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa


def row_columns(rows: Sequence[Any], fidelity_keys: Sequence[str]) -> dict[str, pa.Array]:
    """Long-form columns shared by text and image pruning rows: idx, strategy, keep_ratio,
    keep_count, layer, kept (indices), one float column per fidelity measure, and the cost:
    seconds and flops_ratio (scoring + pruned pass, over the unpruned pass) with their scoring
    parts scoring_seconds and scoring_flops_ratio. Each result adds its own columns to these."""
    fidelity = {k: pa.array([r.fidelity.get(k) for r in rows], type=pa.float64()) for k in fidelity_keys}
    return {
        "idx": pa.array(range(len(rows)), type=pa.int32()),
        "strategy": pa.array([r.strategy for r in rows], type=pa.string()),
        "keep_ratio": pa.array([r.keep_ratio for r in rows], type=pa.float64()),
        "keep_count": pa.array([r.keep_count for r in rows], type=pa.int32()),
        "layer": pa.array([r.layer for r in rows], type=pa.int32()),
        "kept": pa.array([r.kept for r in rows], type=pa.list_(pa.int32())),
        **fidelity,
        "seconds": pa.array([r.seconds for r in rows], type=pa.float64()),
        "flops_ratio": pa.array([r.flops_ratio for r in rows], type=pa.float64()),
        "scoring_seconds": pa.array([r.scoring_seconds for r in rows], type=pa.float64()),
        "scoring_flops_ratio": pa.array([r.scoring_flops_ratio for r in rows], type=pa.float64()),
    }
