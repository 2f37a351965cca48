"""Evaluate a VLM over an evaluation set: answers, per-sample scores, metrics with bootstrap CIs.

`evaluate_vlm(vlm, samples, params)` answers every distinct (image, question) once, greedily,
in batches (POPE's "yes" probes are shared by its three splits, so they are asked once), scores
each sample and aggregates (explorer.vlm.metrics). With VISTA switched on (`params.vista`), every
prompt is answered twice, plainly and steered, and the result holds both conditions plus the
latency ratio (steered wall time / plain wall time, the steering-vector passes included).

The result is stored as kind "vlm_eval": one row per sample and condition (`samples`) and one row
per metric (`metrics`); it reopens without the model.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from explorer.backends.vlm import VisionLanguageModel, generate_batch
from explorer.errors import InputError
from explorer.progress import ProgressFn, or_silent
from explorer.results import StoredFields, float_values, in_meta, in_table, register_result
from explorer.vlm import eval_sets
from explorer.vlm import metrics as m
from explorer.vlm.eval_sets import EvalSample
from explorer.vlm.vista import DEVIATIONS as VISTA_DEVIATIONS
from explorer.vlm.vista import VistaParams, vista_generate_batch

PLAIN, STEERED = "plain", "vista"
POPE_METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
MAX_BATCH = 64


@dataclass(frozen=True)
class EvalParams:
    """dataset: a built-in set (eval_sets.BUILTIN_SETS) or a file; n_scenes: scenes of a built-in set."""

    dataset: str = "pope"
    n_scenes: int = 20
    seed: int = 0
    batch_size: int = 8
    n_boot: int = 1000
    vista: VistaParams = field(default_factory=VistaParams)

    def validate(self) -> None:
        if not (self.dataset or "").strip():
            raise InputError("choose an evaluation set: " + ", ".join(eval_sets.BUILTIN_SETS) + " or a file")
        if not 1 <= self.n_scenes <= eval_sets.MAX_EVAL_SCENES:
            raise InputError(f"n_scenes must be in 1..{eval_sets.MAX_EVAL_SCENES} (got {self.n_scenes})")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InputError(f"batch_size must be in 1..{MAX_BATCH} (got {self.batch_size})")
        if not 100 <= self.n_boot <= 100_000:
            raise InputError(f"n_boot must be in 100..100000 (got {self.n_boot})")
        self.vista.validate()

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "n_scenes": self.n_scenes,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n_boot": self.n_boot,
            "vista": self.vista.to_json(),
        }


# ---- scoring ------------------------------------------------------------------------------------
def _count_word(text: str) -> str:
    digits = {str(i): w for i, w in enumerate(("zero", "one", "two", "three", "four"))}
    return digits.get(text, text)


def score(sample: EvalSample, said: str) -> dict[str, Any]:
    """Per-sample scores: correct; for yes/no probes said_yes / truth_yes; for captions CHAIR counts."""
    answer = m.normalise_answer(said)
    row: dict[str, Any] = {"said_yes": None, "truth_yes": None, "mentioned": None, "hallucinated": None}
    if sample.is_yes_no:
        yes = m.pope_says_yes(said)
        truth = m.normalise_answer(sample.answer) == "yes"
        row.update(said_yes=yes, truth_yes=truth, correct=yes == truth)
    elif sample.qtype == "caption" and sample.objects:
        truth_set = set(sample.objects)
        n, h = m.chair_counts(said, truth_set)
        named = {(x.colour, x.shape) for x in m.object_mentions(said) if x.colour is not None}
        row.update(mentioned=n, hallucinated=h, correct=truth_set <= named)
    elif sample.qtype == "count":
        row["correct"] = _count_word(answer) == m.normalise_answer(sample.answer)
    else:
        row["correct"] = answer == m.normalise_answer(sample.answer)
    return row


# ---- the result ---------------------------------------------------------------------------------
@register_result
@dataclass
class VLMEvalResult(StoredFields):
    """samples: per sample and condition (sample_id, condition, qtype, question, expected, said,
    correct, said_yes, truth_yes, mentioned, hallucinated, image_ref);
    metrics: per condition, group (question type, POPE split, "chair") and metric: value, low, high, n."""

    kind: ClassVar[str] = "vlm_eval"

    model: str = in_meta()
    dataset: str = in_meta()
    params: dict[str, Any] = in_meta()
    samples: list[dict[str, Any]] = in_table()
    metrics: list[dict[str, Any]] = in_table()
    seconds: dict[str, float] = in_meta(decode=float_values)
    n_prompts: int = in_meta()
    deviations: list[str] = in_meta(default_factory=list)
    run_id: str | None = None

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(r["condition"] for r in self.metrics))

    @property
    def latency_ratio(self) -> float | None:
        if STEERED in self.seconds and self.seconds.get(PLAIN):
            return self.seconds[STEERED] / self.seconds[PLAIN]
        return None

    def metric(self, condition: str, group: str, name: str) -> dict[str, Any] | None:
        for r in self.metrics:
            if r["condition"] == condition and r["group"] == group and r["metric"] == name:
                return r
        return None

    def nested_metrics(self) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
        for r in self.metrics:
            out.setdefault(r["condition"], {}).setdefault(r["group"], {})[r["metric"]] = {
                k: r[k] for k in ("value", "low", "high", "n")
            }
        return out

    def json_views(self) -> dict[str, Any]:
        return {
            "n_samples": len({r["sample_id"] for r in self.samples}),
            "metrics": self.nested_metrics(),
            "seconds_per_prompt": {k: v / max(1, self.n_prompts) for k, v in self.seconds.items()},
            "latency_ratio": self.latency_ratio,
            "examples": self.samples[:12],
        }

    def to_tables(self) -> dict[str, pa.Table]:
        return {"samples": samples_table(self.samples), "metrics": metrics_table(self.metrics)}

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        return {"samples": tables["samples"].to_pylist(), "metrics": tables["metrics"].to_pylist()}


# Columns shared by every table of scored answers (here and in explorer.vlm.prune_eval): the
# question and the answer with its scores, and a metric with its bootstrap interval.
ANSWER_FIELDS = [
    ("question", pa.string()),
    ("expected", pa.string()),
    ("said", pa.string()),
    ("correct", pa.bool_()),
    ("said_yes", pa.bool_()),
    ("truth_yes", pa.bool_()),
    ("mentioned", pa.int32()),
    ("hallucinated", pa.int32()),
]
ESTIMATE_FIELDS = [
    ("group", pa.string()),
    ("metric", pa.string()),
    ("value", pa.float64()),
    ("low", pa.float64()),
    ("high", pa.float64()),
    ("n", pa.int64()),
]
SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("condition", pa.string()),
        ("qtype", pa.string()),
        ("image_ref", pa.string()),
        *ANSWER_FIELDS,
    ]
)
METRIC_SCHEMA = pa.schema([("condition", pa.string()), *ESTIMATE_FIELDS])


def rows_table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as an Arrow table of exactly `schema`'s columns (missing keys are null)."""
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def samples_table(rows: list[dict[str, Any]]) -> pa.Table:
    return rows_table(rows, SAMPLE_SCHEMA)


def metrics_table(rows: list[dict[str, Any]]) -> pa.Table:
    return rows_table(rows, METRIC_SCHEMA)


# ---- aggregation --------------------------------------------------------------------------------
def aggregate(rows: list[dict[str, Any]], *, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Metric rows per condition: accuracy per question type; POPE metrics per yes/no type;
    CHAIR_s / CHAIR_i over the captions with ground truth."""
    out: list[dict[str, Any]] = []

    def add(condition: str, group: str, name: str, e: m.Estimate) -> None:
        out.append({"condition": condition, "group": group, "metric": name, **e.to_dict()})

    by_condition: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_condition[r["condition"]].append(r)
    for condition, crow in by_condition.items():
        by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in crow:
            by_type[r["qtype"]].append(r)
        for qtype, trow in by_type.items():
            yes_no = [r for r in trow if r["said_yes"] is not None]
            if yes_no and len(yes_no) == len(trow):
                t = np.array([r["truth_yes"] for r in yes_no], dtype=bool)
                s = np.array([r["said_yes"] for r in yes_no], dtype=bool)
                for name, e in m.pope_estimates(t, s, n_boot=n_boot, seed=seed).items():
                    add(condition, qtype, name, e)
            else:
                c = np.array([bool(r["correct"]) for r in trow])
                add(condition, qtype, "accuracy", m.accuracy_estimate(c, n_boot=n_boot, seed=seed))
        captions = [r for r in crow if r["mentioned"] is not None]
        if captions:
            mentioned = np.array([r["mentioned"] for r in captions])
            hallucinated = np.array([r["hallucinated"] for r in captions])
            for name, e in m.chair_estimates(mentioned, hallucinated, n_boot=n_boot, seed=seed).items():
                add(condition, "caption", name, e)
    return out


# ---- running ------------------------------------------------------------------------------------
def _answer_all(
    vlm: VisionLanguageModel,
    prompts: list[EvalSample],
    params: EvalParams,
    vista: VistaParams | None,
    max_tokens: int,
    report: ProgressFn,
    done: int,
    total: int,
) -> tuple[list[str], float]:
    """Answers of `prompts` (in order) and the wall time, batched by answer length."""
    answers: list[str] = [""] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].max_new_tokens, prompts[i].qtype))
    t0 = time.perf_counter()
    for start in range(0, len(order), params.batch_size):
        chunk = order[start : start + params.batch_size]
        limit = max(prompts[i].max_new_tokens for i in chunk)
        batch = [vlm.prepare(prompts[i].question, prompts[i].image(), max_tokens) for i in chunk]
        if vista is None:
            ids = generate_batch(vlm, batch, limit)
        else:
            ids = vista_generate_batch(
                vlm, batch, [prompts[i].question for i in chunk], limit, vista, max_tokens
            )
        for i, out in zip(chunk, ids, strict=True):
            answers[i] = str(vlm.tokenizer.decode(out, skip_special_tokens=True)).strip()
        done += len(chunk)
        report(done / total, f"{'VISTA' if vista else 'plain'}: {done}/{total} answers")
    return answers, time.perf_counter() - t0


def evaluate_vlm(
    vlm: VisionLanguageModel,
    samples: list[EvalSample],
    params: EvalParams,
    *,
    max_tokens: int = 4096,
    progress: ProgressFn | None = None,
) -> VLMEvalResult:
    """Answer, score and aggregate `samples` (plain, and steered when params.vista is enabled)."""
    params.validate()
    if not samples:
        raise InputError("the evaluation set is empty")
    params.vista.validate(vlm.n_layers)
    report = or_silent(progress)
    keys = list(dict.fromkeys((s.image_ref, s.question) for s in samples))
    first: dict[tuple[str, str], EvalSample] = {}
    for s in samples:
        first.setdefault((s.image_ref, s.question), s)
    prompts = [first[k] for k in keys]
    conditions: list[tuple[str, VistaParams | None]] = [(PLAIN, None)]
    if params.vista.enabled:
        conditions.append((STEERED, params.vista))
    total = len(prompts) * len(conditions)
    rows: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    for index, (condition, vista) in enumerate(conditions):
        answers, secs = _answer_all(
            vlm, prompts, params, vista, max_tokens, report, index * len(prompts), total
        )
        seconds[condition] = secs
        said_of = dict(zip(keys, answers, strict=True))
        for s in samples:
            said = said_of[(s.image_ref, s.question)]
            rows.append(
                {
                    "sample_id": s.sample_id,
                    "condition": condition,
                    "qtype": s.qtype,
                    "image_ref": s.image_ref,
                    "question": s.question,
                    "expected": s.answer,
                    "said": said,
                    **score(s, said),
                }
            )
    report(1.0, "bootstrap intervals")
    deviations = list(eval_sets.DEVIATIONS)
    if params.vista.enabled:
        deviations += list(VISTA_DEVIATIONS)
    return VLMEvalResult(
        model=vlm.model_id,
        dataset=params.dataset,
        params=params.to_json(),
        samples=rows,
        metrics=aggregate(rows, n_boot=params.n_boot, seed=params.seed),
        seconds=seconds,
        n_prompts=len(prompts),
        deviations=deviations,
    )
