"""What each analysis does with one chunk of a sweep's rows.

`run_chunk(analysis, models, rows, params, settings)` runs the analysis's API entry point on every
row with the worker's loaded model (no store: the sweep writes shards) and returns Arrow tables:

* `<table>`: each table of every row's result (`result.to_tables()`), with a leading `row` column;
* `rows`: row, prompt, seconds;
* `measures`: (row, group, measure, x, value), the per-row numbers the aggregate averages
  (lens: the final top-1 token's probability and "is top-1" per layer at the last prompt
  position; attention: the head-mean of every per-head statistic per layer; attribute: the
  faithfulness scores; prune: every fidelity measure per strategy and keep ratio). vlm-eval
  scores its answers instead (`samples`), aggregated by `explorer.vlm.vlm_eval.aggregate`.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from explorer.config import Settings
from explorer.errors import InputError
from explorer.sweeps.rows import SweepRow

ANALYSES = ("lens", "attention", "attribute", "prune", "vlm-eval")
MEASURE_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("group", pa.string()),
        ("measure", pa.string()),
        ("x", pa.float64()),
        ("value", pa.float64()),
    ]
)
ROW_SCHEMA = pa.schema([("row", pa.int64()), ("prompt", pa.string()), ("seconds", pa.float64())])
# arguments of the entry points that a sweep sets itself (from the row or the run), not from params
_OWN = {"model", "prompt", "image", "db", "use_cache", "settings", "dtype", "progress", "target", "targets"}
VLM_EVAL_PARAMS = ("batch_size", "vista", "n_boot")


@dataclass(frozen=True)
class Models:
    """The worker's model source: a name (None = each entry point's default) loaded once per
    process by the backends' model cache, or an object already built (from a factory)."""

    model: Any
    dtype: str | None = None

    def for_row(self, analysis: str, row: SweepRow, settings: Settings) -> Any:
        if not isinstance(self.model, (str, type(None))):
            return self.model
        if analysis == "vlm-eval" or (row.image and analysis != "prune"):
            from explorer.api.vlm import resolve_vlm

            return resolve_vlm(self.model, settings, None, self.dtype)
        if row.image:  # prune of an image: the vision model's patch pruning
            from explorer.backends.vision import load_vision_model

            return load_vision_model(self.model or settings.default_vision_model, settings=settings)
        from explorer.api.runner import get_model

        return get_model(self.model, settings, None, self.dtype)


def _entry(analysis: str) -> Callable[..., Any]:
    if analysis == "lens":
        from explorer.api.lens import run_logit_lens

        return run_logit_lens
    if analysis == "attention":
        from explorer.api.attention import attention

        return attention
    if analysis == "attribute":
        from explorer.api.attribution import attribute

        return attribute
    from explorer.api.pruning import prune

    return prune


def check_params(analysis: str, params: dict[str, Any], rows: list[SweepRow]) -> None:
    """Refuse, before anything runs, parameters the analysis does not take and rows it cannot
    run (attribute of text needs a target)."""
    if analysis not in ANALYSES:
        raise InputError(f"unknown analysis {analysis!r}; choose from {', '.join(ANALYSES)}")
    if analysis == "vlm-eval":
        allowed = {*VLM_EVAL_PARAMS, "n_scenes", "seed"}
        open_ended = False
    else:
        signature = inspect.signature(_entry(analysis))
        allowed = {n for n in signature.parameters if n not in _OWN}
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = sorted(set(params) & _OWN if open_ended else set(params) - allowed)
    if unknown:
        raise InputError(
            f"params: {analysis} does not take {', '.join(unknown)}; it takes {', '.join(sorted(allowed))}"
        )
    if analysis == "prune" and rows:  # strategy names and ratios, before any model loads
        from explorer.analysis.pruning.params import PruneImageParams, PruneTextParams

        given = {k: params[k] for k in ("strategies", "keep_ratios") if k in params}
        if any(not r.image for r in rows):
            PruneTextParams.of(**given)
        if any(r.image for r in rows):
            PruneImageParams.of(**given)
    if analysis == "attribute" and not int(params.get("generate", 0) or 0):
        for r in rows:
            if not r.image and not r.target:
                raise InputError(f"attribute of text needs a 'target' column (row {r.row + 1} has none)")


def _with_row(table: pa.Table, row: int) -> pa.Table:
    return table.add_column(0, "row", pa.array(np.full(table.num_rows, row, dtype=np.int64)))


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def measures(analysis: str, result: Any) -> list[tuple[str, str, float | None, float]]:
    """(group, measure, x, value) of one row's result (see the module docstring)."""
    out: list[tuple[str, str, float | None, float]] = []
    tables = result.to_tables()
    if analysis == "lens":
        # the last prompt position: where the model predicts the first token after the prompt
        last = int(result.prompt_len) - 1
        probs = result.tracked_matrix("final_top1", "prob")[:, last]
        ranks = result.tracked_matrix("final_top1", "rank")[:, last]
        for layer, (p, rank) in enumerate(zip(probs, ranks, strict=True)):
            if np.isfinite(p):
                out.append(("final top-1", "probability", float(layer), float(p)))
                out.append(("final top-1", "is top-1", float(layer), float(rank == 1)))
    elif analysis == "attention" and "heads" in tables:
        heads = tables["heads"]
        layers = np.asarray(heads.column("layer").to_numpy())
        for name in heads.column_names:
            if name in ("layer", "head") or not pa.types.is_floating(heads.schema.field(name).type):
                continue
            values = np.asarray(heads.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
            for layer in np.unique(layers):
                v = values[layers == layer]
                v = v[np.isfinite(v)]
                if v.size:
                    out.append(("heads", name.replace("_", " "), float(layer), float(v.mean())))
    elif analysis == "attribute":
        faith = result.to_dict().get("faithfulness") or {}
        for name, value in sorted(faith.items()):
            v = _finite(value)
            if v is not None:
                out.append(("faithfulness", name, None, v))
    elif analysis == "prune":
        for r in result.to_dict().get("rows", []):
            for name, value in sorted((r.get("fidelity") or {}).items()):
                if name.endswith("_before"):  # the unpruned run's value: the same for every strategy
                    continue
                v = _finite(value)
                if v is not None:
                    out.append((str(r["strategy"]), name, float(r["keep_ratio"]), v))
    return out


def _concat(parts: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(parts, promote_options="permissive")


def run_chunk(
    analysis: str, models: Models, rows: list[SweepRow], params: dict[str, Any], settings: Settings
) -> dict[str, pa.Table]:
    """Run `analysis` on `rows` (one shard's worth) and return the shard's tables."""
    if analysis == "vlm-eval":
        return _eval_chunk(models, rows, params, settings)
    entry = _entry(analysis)
    per_table: dict[str, list[pa.Table]] = {}
    measure_rows: list[dict[str, Any]] = []
    row_rows: list[dict[str, Any]] = []
    for r in rows:
        model = models.for_row(analysis, r, settings)
        kwargs = dict(params)
        if analysis == "lens" and r.target:
            kwargs["targets"] = [r.target]
        if analysis in ("attribute", "prune") and r.target:
            kwargs["target"] = r.target
        t0 = time.perf_counter()
        if analysis == "prune":
            result = entry(
                prompt=r.prompt if not r.image else None,
                image=r.image,
                model=model,
                db=False,
                settings=settings,
                **kwargs,
            )
        else:
            result = entry(model, r.prompt, image=r.image, db=False, settings=settings, **kwargs)
        seconds = time.perf_counter() - t0
        for name, table in result.to_tables().items():
            per_table.setdefault(name, []).append(_with_row(table, r.row))
        for group, measure, x, value in measures(analysis, result):
            measure_rows.append({"row": r.row, "group": group, "measure": measure, "x": x, "value": value})
        row_rows.append({"row": r.row, "prompt": r.prompt, "seconds": seconds})
    out = {name: _concat(parts) for name, parts in per_table.items()}
    out["measures"] = pa.Table.from_pylist(measure_rows, schema=MEASURE_SCHEMA)
    out["rows"] = pa.Table.from_pylist(row_rows, schema=ROW_SCHEMA)
    return out


def _eval_chunk(
    models: Models, rows: list[SweepRow], params: dict[str, Any], settings: Settings
) -> dict[str, pa.Table]:
    from explorer.vlm.vista import VistaParams
    from explorer.vlm.vlm_eval import EvalParams, evaluate_vlm, samples_table

    vlm = models.for_row("vlm-eval", rows[0], settings)
    vista = params.get("vista")
    eval_params = EvalParams(
        dataset="sweep",
        batch_size=int(params.get("batch_size", 8)),
        vista=vista if isinstance(vista, VistaParams) else VistaParams.from_json(vista),
    )
    samples = [r.sample for r in rows]
    t0 = time.perf_counter()
    result = evaluate_vlm(vlm, samples, eval_params, max_tokens=settings.max_prompt_tokens)
    seconds = (time.perf_counter() - t0) / max(1, len(rows))
    row_of = {s.sample_id: r.row for s, r in zip(samples, rows, strict=True)}
    table = samples_table(result.samples)
    table = table.add_column(
        0, "row", pa.array([row_of[s] for s in table.column("sample_id").to_pylist()], pa.int64())
    )
    return {
        "samples": table,
        "rows": pa.Table.from_pylist(
            [{"row": r.row, "prompt": r.prompt, "seconds": seconds} for r in rows], schema=ROW_SCHEMA
        ),
    }
