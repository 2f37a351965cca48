"""SweepResult (kind "sweep"): one sweep's aggregate, stored as a run.

The shards stay in the sweep's directory; the store keeps this run (the aggregate table and where
the shards are), lists it in the Runs tab and exposes the shards to the SQL console as views
`sweep_<run_id>_<table>` (see `explorer.store.Store.query`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from explorer.results import StoredFields, in_meta, in_table, register_result
from explorer.sweeps.shards import AGGREGATE_SCHEMA


@register_result
@dataclass
class SweepResult(StoredFields):
    """aggregate: rows {condition, group, measure, x, value, low, high, n}: the mean (or, for
    vlm-eval, the metric) over the done rows with its 95% bootstrap interval; `x` is the layer
    (lens, attention) or keep ratio (prune), None where a measure has no axis."""

    kind: ClassVar[str] = "sweep"
    json_kind: ClassVar[bool] = True

    analysis: str = in_meta()
    dataset: str = in_meta()
    digest: str = in_meta()
    model: str = in_meta()
    out_dir: str = in_meta()
    params: dict[str, Any] = in_meta()
    n_rows: int = in_meta()
    n_done: int = in_meta()
    n_new: int = in_meta()
    seconds: float = in_meta()
    executor: str = in_meta()
    workers: int = in_meta()
    tables: list[str] = in_meta()
    aggregate: list[dict[str, Any]] = in_table(json=True)
    run_id: str | None = None

    @property
    def complete(self) -> bool:
        return self.n_done >= self.n_rows

    def views(self) -> list[str]:
        """The SQL console's views over this sweep's shards (known once stored)."""
        return [view_name(self.run_id, t) for t in self.tables] if self.run_id else []

    def json_views(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "rows_per_second": self.n_new / self.seconds if self.seconds > 0 else None,
            "views": self.views(),
        }

    def to_tables(self) -> dict[str, pa.Table]:
        rows = [{k: r.get(k) for k in AGGREGATE_SCHEMA.names} for r in self.aggregate]
        return {"aggregate": pa.Table.from_pylist(rows, schema=AGGREGATE_SCHEMA)}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        return {"aggregate": tables["aggregate"].to_pylist()}


def view_name(run_id: str, table: str) -> str:
    return f"sweep_{run_id}_{table}"
