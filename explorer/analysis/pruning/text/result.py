"""The result of a text-pruning sweep: rows of the shared `PruningRow` type plus the signals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from explorer.analysis.pruning.common import PruningRow, retention_curve, rows_from_table, rows_table
from explorer.errors import InputError
from explorer.results import StoredFields, float_values, in_meta, in_table, register_result

FIDELITY_KEYS = (
    "kl",
    "target_prob_before",
    "target_prob_after",
    "target_rank_before",
    "target_rank_after",
    "continuation_agreement",
    "semantic_similarity",
    "prefill_time_saved",
)
ROW_EXTRAS = ("continuation", "continuation_ids", "top_token")  # PruningRow's text-only fields


@register_result
@dataclass
class TextPruningResult(StoredFields):
    """A pruning sweep over strategies x keep ratios on one prompt.

    tokens / input_ids: the n prompt tokens; rows: one per (strategy, ratio), strategies outer,
    ratios inner (1.0 first); target: {"token", "id", "ids"} the measured target;
    reference: {"continuation", "continuation_ids", "top_token", "prefill_seconds"};
    scores: signal name -> (n,) scores the strategies ranked by ("self_information",
    "attribution:<method>", "fastv_attention"); deviations: strategy -> how it departs from its paper.
    seconds: wall time of the sweep; timings: its breakdown in seconds ("reference": the unpruned
    run with its signals, "attribution", "forward": the pruned batches' prefill + decoding,
    "similarity": MiniLM, "other": selection, metrics and glue).
    """

    kind: ClassVar[str] = "prune_text"
    json_kind: ClassVar[bool] = True

    model: str = in_meta(old=("model_id",))  # runs stored before the rename: "model_id"
    tokens: list[str] = in_meta()
    input_ids: list[int] = in_meta(json=False)
    layer: int = in_meta()
    seed: int = in_meta()
    continuation_tokens: int = in_meta()
    target: dict[str, Any] = in_meta()
    reference: dict[str, Any] = in_meta()
    rows: list[PruningRow] = in_table()
    scores: dict[str, np.ndarray] = in_table()
    deviations: dict[str, str] = in_meta(default_factory=dict)
    notes: list[str] = in_meta(default_factory=list)
    seconds: float = in_meta(default=0.0, decode=float)
    timings: dict[str, float] = in_meta(default_factory=dict, decode=float_values)
    run_id: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)

    @property
    def strategies(self) -> list[str]:
        return list(dict.fromkeys(r.strategy for r in self.rows))

    @property
    def keep_ratios(self) -> list[float]:
        return sorted({r.keep_ratio for r in self.rows}, reverse=True)

    def row(self, strategy: str, keep_ratio: float) -> PruningRow:
        for r in self.rows:
            if r.strategy == strategy and r.keep_ratio == keep_ratio:
                return r
        raise InputError(f"no row for strategy {strategy!r} at keep ratio {keep_ratio}")

    def retention_curve(self, metric: str = "kl") -> dict[str, list[tuple[float, float | None]]]:
        """strategy -> [(keep_ratio, value)] from 1.0 down, for retention plots."""
        return retention_curve(self.rows, metric, FIDELITY_KEYS, ("flops_ratio", "seconds"), descending=True)

    def json_views(self) -> dict[str, Any]:
        return {
            "n_tokens": self.n_tokens,
            "rows": [r.to_dict(("continuation", "top_token")) for r in self.rows],
        }

    def to_tables(self) -> dict[str, pa.Table]:
        rows = rows_table(self.rows, FIDELITY_KEYS, ROW_EXTRAS)
        names, positions, tokens, values = [], [], [], []
        for name, arr in self.scores.items():
            for pos, value in enumerate(np.asarray(arr, dtype=np.float64)):
                names.append(name)
                positions.append(pos)
                tokens.append(self.tokens[pos])
                values.append(float(value))
        scores_table = pa.table(
            {
                "signal": pa.array(names, type=pa.string()),
                "position": pa.array(positions, type=pa.int32()),
                "token": pa.array(tokens, type=pa.string()),
                "score": pa.array(values, type=pa.float64()),
            }
        )
        return {"rows": rows, "scores": scores_table}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        n = len(meta["tokens"])
        scores: dict[str, np.ndarray] = {}
        scores_table = tables.get("scores")
        for r in scores_table.to_pylist() if scores_table is not None else []:
            scores.setdefault(r["signal"], np.zeros(n))[r["position"]] = r["score"]
        return {"rows": rows_from_table(tables["rows"], FIDELITY_KEYS, ROW_EXTRAS), "scores": scores}
