"""Attribution results: one method on one (prompt, target), a per-generation-step matrix, and a
comparison of several methods (built from stored single-method results, not stored itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from explorer.results import StoredFields, dense_from_table, in_meta, in_table, register_result

METRIC_LABELS = {
    "soft_nc": "Soft-NC",
    "soft_ns": "Soft-NS",
    "comprehensiveness": "Comprehensiveness",
    "sufficiency": "Sufficiency",
}


def _clean(value: Any) -> float | None:
    """A JSON-safe float (None for missing / NaN)."""
    if value is None:
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def method_deviations(method: str) -> list[str]:
    """The registered method's deviations from its paper ([] for unknown or faithful methods)."""
    from explorer.analysis.attribution import ATTRIBUTION_METHODS

    registered = ATTRIBUTION_METHODS.get(method)
    return list(registered.deviations) if registered is not None else []


@register_result
@dataclass
class AttributionResult(StoredFields):
    """One attribution method's scores for one (prompt, target).

    tokens:        P context tokens (strings), in order
    input_ids:     P ids
    scores:        (P,) float64, one per context token; larger = more important
    target:        {"token": text, "id": first id, "ids": [...], "tokens": [...]}
    contrast:      the foil in the same form, or None
    faithfulness:  {soft_nc, soft_ns, comprehensiveness, sufficiency} (None where undefined)
    extras:        method details (ReAGent: replacement, steps, stopped probes; IG: convergence delta)
    """

    kind: ClassVar[str] = "attribution"

    model: str = in_meta()
    method: str = in_meta()
    tokens: list[str] = in_meta()
    input_ids: list[int] = in_meta(json=False)
    scores: np.ndarray = in_table(json=True)
    target: dict[str, Any] = in_meta()
    faithfulness: dict[str, float | None] = in_table()
    seconds: float = in_meta()
    params: dict[str, Any] = in_meta()
    contrast: dict[str, Any] | None = in_meta(default=None, omit_empty=True)
    extras: dict[str, Any] = in_meta(default_factory=dict, json="details", omit_empty=True)
    notes: list[str] = in_meta(default_factory=list, omit_empty=True)
    run_id: str | None = None

    @property
    def replacement(self) -> str | None:
        value = self.extras.get("replacement")
        return None if value is None else str(value)

    def json_views(self) -> dict[str, Any]:
        out: dict[str, Any] = {"faithfulness": {k: _clean(v) for k, v in self.faithfulness.items()}}
        deviations = method_deviations(self.method)
        if deviations:
            out["deviations"] = deviations
        return out

    def to_tables(self) -> dict[str, pa.Table]:
        p = len(self.tokens)
        scores = pa.table(
            {
                "position": np.arange(p, dtype=np.int32),
                "token": pa.array(self.tokens, pa.string()),
                "token_id": np.asarray(self.input_ids, dtype=np.int64),
                "score": np.asarray(self.scores, dtype=np.float64),
            }
        )
        names = list(self.faithfulness)
        faith = pa.table(
            {
                "metric": pa.array(names, pa.string()),
                "value": pa.array([_clean(self.faithfulness[m]) for m in names], pa.float64()),
            }
        )
        return {"scores": scores, "faithfulness": faith}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        fa = tables["faithfulness"]
        faith = {
            str(m): (None if v is None else float(v))
            for m, v in zip(fa["metric"].to_pylist(), fa["value"].to_pylist(), strict=True)
        }
        scores = tables["scores"].sort_by("position")["score"].to_numpy().astype(np.float64)
        return {"scores": scores, "faithfulness": faith}


@register_result
@dataclass
class GenerationAttributionResult(StoredFields):
    """Each generated token attributed to every token before it.

    prompt_tokens:  P prompt tokens
    generated:      S generated tokens (step s produced generated[s])
    matrix:         (S, P + S - 1) float64; row s scores sources 0 .. P + s - 1, NaN after that
    faithfulness:   per metric, S values (None where undefined)
    """

    kind: ClassVar[str] = "attribution_generation"

    model: str = in_meta()
    method: str = in_meta()
    prompt_tokens: list[str] = in_meta(json="tokens")
    generated: list[str] = in_meta()
    generated_ids: list[int] = in_meta(json=False)
    matrix: np.ndarray = in_table()
    faithfulness: dict[str, list[float | None]] = in_meta()
    seconds: float = in_meta()
    params: dict[str, Any] = in_meta()
    notes: list[str] = in_meta(default_factory=list, omit_empty=True)
    run_id: str | None = None

    @property
    def sources(self) -> list[str]:
        """All tokens that can be a source: the prompt then all but the last generated token."""
        return self.prompt_tokens + self.generated[:-1]

    def json_views(self) -> dict[str, Any]:
        rows = [[None if not math.isfinite(v) else float(v) for v in row] for row in self.matrix]
        return {"sources": self.sources, "matrix": rows}

    def to_tables(self) -> dict[str, pa.Table]:
        s, t = self.matrix.shape
        step, source = np.meshgrid(np.arange(s), np.arange(t), indexing="ij")
        keep = np.isfinite(self.matrix)
        return {
            "cells": pa.table(
                {
                    "step": step[keep].astype(np.int32),
                    "source": source[keep].astype(np.int32),
                    "score": self.matrix[keep].astype(np.float64),
                }
            )
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        s = len(meta["generated"])
        shape = (s, len(meta["prompt_tokens"]) + s - 1)
        return {
            "matrix": dense_from_table(
                tables["cells"], ("step", "source"), "score", shape, np.float64, np.nan
            )
        }


@dataclass
class AttributionComparison:
    """Several methods on the same prompt and target (each stored as its own run).

    `to_dict()` returns the CLI's JSON for `--method all`: a list of the results' objects.
    `references`: other methods' results on the same prompt and target that are shown only
    as a yardstick for the faithfulness of `results` (e.g. occlusion beside one ReAGent run).
    """

    kind: ClassVar[str] = "attribution_comparison"

    results: list[AttributionResult]
    notes: list[str] = field(default_factory=list)
    run_id: str | None = None
    references: list[AttributionResult] = field(default_factory=list)

    @property
    def tokens(self) -> list[str]:
        return self.results[0].tokens if self.results else []

    @property
    def methods(self) -> list[str]:
        return [r.method for r in self.results]

    def to_dict(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [r.to_dict() for r in self.results]

    def best(self) -> dict[str, str | None]:
        """Per metric (higher is better), the method with the highest value; also 'seconds' (lowest)."""
        out: dict[str, str | None] = {}
        for metric in METRIC_LABELS:
            vals = [(r.faithfulness.get(metric), r.method) for r in self.results]
            finite = [(v, m) for v, m in vals if v is not None and math.isfinite(v)]
            out[metric] = max(finite)[1] if finite else None
        out["seconds"] = min((r.seconds, r.method) for r in self.results)[1] if self.results else None
        return out

    def table(self) -> pa.Table:
        """One row per method: faithfulness metrics, seconds, and which are best."""
        best = self.best()
        cols: dict[str, Any] = {"method": [r.method for r in self.results]}
        for metric in METRIC_LABELS:
            cols[metric] = pa.array([_clean(r.faithfulness.get(metric)) for r in self.results], pa.float64())
        cols["seconds"] = [float(r.seconds) for r in self.results]
        cols["replacement"] = pa.array([r.replacement for r in self.results], pa.string())
        cols["best_in"] = [",".join(k for k, v in best.items() if v == r.method) for r in self.results]
        cols["run_id"] = pa.array([r.run_id for r in self.results], pa.string())
        return pa.table(cols)

    def scores_table(self) -> pa.Table:
        """Long form: method, position, token, score, normalised score (min-max per method)."""
        rows: dict[str, list[Any]] = {
            "method": [],
            "position": [],
            "token": [],
            "score": [],
            "normalised": [],
        }
        for r in self.results:
            s = np.asarray(r.scores, dtype=np.float64)
            lo, hi = float(np.min(s)), float(np.max(s))
            norm = (s - lo) / (hi - lo) if hi - lo > 1e-12 else np.full_like(s, 0.5)
            for i, tok in enumerate(r.tokens):
                rows["method"].append(r.method)
                rows["position"].append(i)
                rows["token"].append(tok)
                rows["score"].append(float(s[i]))
                rows["normalised"].append(float(norm[i]))
        return pa.table(rows)
