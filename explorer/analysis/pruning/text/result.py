"""The result of a text-pruning sweep: rows of the shared `PruningRow` type plus the signals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from explorer.analysis.pruning.common import PruningRow, retention_curve, rows_from_table, rows_table
from explorer.errors import InputError
from explorer.results import register_result

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
class TextPruningResult:
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

    model: str
    tokens: list[str]
    input_ids: list[int]
    layer: int
    seed: int
    continuation_tokens: int
    target: dict[str, Any]
    reference: dict[str, Any]
    rows: list[PruningRow]
    scores: dict[str, np.ndarray]
    deviations: dict[str, str]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "run_id": self.run_id,
            "model": self.model,
            "tokens": self.tokens,
            "n_tokens": self.n_tokens,
            "layer": self.layer,
            "seed": self.seed,
            "target": self.target,
            "continuation_tokens": self.continuation_tokens,
            "reference": self.reference,
            "rows": [r.to_dict(("continuation", "top_token")) for r in self.rows],
            "deviations": self.deviations,
            "notes": self.notes,
            "seconds": self.seconds,
            "timings": self.timings,
        }

    def to_meta(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tokens": self.tokens,
            "input_ids": self.input_ids,
            "layer": self.layer,
            "seed": self.seed,
            "continuation_tokens": self.continuation_tokens,
            "target": self.target,
            "reference": self.reference,
            "deviations": self.deviations,
            "notes": self.notes,
            "seconds": self.seconds,
            "timings": self.timings,
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
    def from_store(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> TextPruningResult:
        rows = rows_from_table(tables["rows"], FIDELITY_KEYS, ROW_EXTRAS)
        n = len(meta["tokens"])
        scores: dict[str, np.ndarray] = {}
        scores_table = tables.get("scores")
        for r in scores_table.to_pylist() if scores_table is not None else []:
            scores.setdefault(r["signal"], np.zeros(n))[r["position"]] = r["score"]
        return cls(
            model=str(meta.get("model", meta.get("model_id"))),  # runs stored before the rename: "model_id"
            tokens=list(meta["tokens"]),
            input_ids=list(meta["input_ids"]),
            layer=int(meta["layer"]),
            seed=int(meta["seed"]),
            continuation_tokens=int(meta["continuation_tokens"]),
            target=dict(meta["target"]),
            reference=dict(meta["reference"]),
            rows=rows,
            scores=scores,
            deviations=dict(meta.get("deviations", {})),
            notes=list(meta.get("notes", [])),
            seconds=float(meta.get("seconds", 0.0)),
            timings={k: float(v) for k, v in meta.get("timings", {}).items()},
            run_id=meta.get("run_id"),
        )
