"""Visual-token pruning judged by answers: every strategy x keep ratio over an evaluation set.

`prune_eval(vlm, samples, params)` answers every distinct (image, question) once unpruned (the
reference) and once per (strategy, keep ratio < 1), greedily, in batches; scores each answer as
`vlm eval` does (accuracy per question type, POPE, CHAIR, with bootstrap intervals), adds the
agreement with the unpruned answer and the cost of the prefill:

- flops_ratio: analytic FLOPs of the LM blocks over the prompt (2*T*W + 4*T^2*d per block, with
  the token count each block actually sees: full length before a cut, the kept tokens after it),
  over the unpruned prompt's. Scoring inside the LM costs no extra FLOPs (its blocks are the
  pruned pass's own full-length prefix); scoring outside the LM (the encoder's attention maps,
  a selection over projector outputs) is not LM work and shows in the time only.
- time_ratio: measured wall time per prompt of the pruned prefill (its batch's share) plus the
  strategy's scoring (selection; VTC-CLS's encoder pass with attention maps), over the unpruned
  prefill. Rows at keep 1.0 keep every token (every plan is the identity), so they reuse the
  reference answers and costs.

Only projector VLMs (the demo "tiny-vlm" and VLMs built with `projector_vlm`) can be pruned:
hub VLMs run their own multimodal forward (M-RoPE, image attention masks), where dropping
positions would need per-architecture code.

Stored as kind "vlm_prune": per-sample answers, metric rows and cost rows; reopens without the model.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch

from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS, keep_count, resolve_keep_ratios
from explorer.analysis.pruning.image import transition_variation
from explorer.analysis.pruning.text.cost import prefill_flops
from explorer.analysis.pruning.visual import (
    NOT_IMPLEMENTED,
    PAPERS,
    VISUAL_STRATEGIES,
    VisualPlan,
    VisualSignals,
    plan_for,
    resolve_strategies,
    vtc_cls_blocks,
)
from explorer.backends.language import LanguageModel
from explorer.backends.token_cut import FastVCut
from explorer.backends.vlm import MODALITY_IMAGE, VisionLanguageModel, VLMInputs, capture_vlm, trim_at_stop
from explorer.errors import InputError
from explorer.progress import ProgressFn, or_silent
from explorer.results import StoredFields, in_meta, in_table, register_result
from explorer.vlm import eval_sets
from explorer.vlm import metrics as m
from explorer.vlm.eval_sets import EvalSample
from explorer.vlm.vlm_eval import ANSWER_FIELDS, ESTIMATE_FIELDS, MAX_BATCH, aggregate, rows_table, score

REFERENCE = "unpruned"
# the default sweep: the shared ratio list (analysis.pruning.common), from 100% down to 5%
DEFAULT_RATIOS = DEFAULT_KEEP_RATIOS


@dataclass(frozen=True)
class PruneEvalParams:
    """dataset: a built-in set or a file; n_scenes: scenes of a built-in set; strategies: names or
    ["all"]; keep_ratios: shares of visual tokens kept (1.0 = the unpruned model)."""

    dataset: str = "pope"
    n_scenes: int = 20
    strategies: tuple[str, ...] = ("all",)
    keep_ratios: tuple[float, ...] = DEFAULT_RATIOS
    seed: int = 0
    batch_size: int = 16
    n_boot: int = 1000

    def validate(self) -> PruneEvalParams:
        if not (self.dataset or "").strip():
            raise InputError(
                "dataset: choose an evaluation set: " + ", ".join(eval_sets.BUILTIN_SETS) + " or a file"
            )
        if not 1 <= self.n_scenes <= eval_sets.MAX_EVAL_SCENES:
            raise InputError(f"n_scenes must be in 1..{eval_sets.MAX_EVAL_SCENES} (got {self.n_scenes})")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InputError(f"batch_size must be in 1..{MAX_BATCH} (got {self.batch_size})")
        if not 100 <= self.n_boot <= 100_000:
            raise InputError(f"n_boot must be in 100..100000 (got {self.n_boot})")
        strategies = tuple(resolve_strategies(list(self.strategies)))
        ratios = tuple(resolve_keep_ratios(list(self.keep_ratios), "visual tokens"))
        return PruneEvalParams(
            self.dataset, self.n_scenes, strategies, ratios, self.seed, self.batch_size, self.n_boot
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "n_scenes": self.n_scenes,
            "strategies": list(self.strategies),
            "keep_ratios": list(self.keep_ratios),
            "seed": self.seed,
            "batch_size": self.batch_size,
            "n_boot": self.n_boot,
        }


# ---------------------------------------------------------------------------------------------
# Signals: one instrumented pass of the unpruned prompt
# ---------------------------------------------------------------------------------------------
def collect_signals(vlm: VisionLanguageModel, inputs: VLMInputs) -> tuple[VisualSignals, float]:
    """The prompt's VisualSignals and the seconds VTC-CLS's encoder pass took (0 without one)."""
    image = inputs.image_positions
    if not image or inputs.grid is None or inputs.inputs_embeds is None:
        raise InputError("visual-token pruning needs an image in every sample")
    trace, _ = capture_vlm(vlm, inputs, attentions=True)
    assert trace.attentions is not None
    att = trace.attentions.float().mean(dim=1)  # (L, T, T) head-mean, query x key
    img = torch.as_tensor(image)
    after = [p for p in range(image[-1] + 1, inputs.seq_len)]  # the instruction: text after the image
    received = att[:, :, img].mean(dim=1)  # (L, V) mean over all query rows
    instruction = att[:, after][:, :, img].mean(dim=1) if after else torch.zeros_like(received)
    residual = trace.residual.float()
    transition = torch.stack(
        [
            transition_variation(residual[layer, img], residual[layer + 1, img])
            for layer in range(att.shape[0])
        ]
    ).float()
    cls = None
    seconds = 0.0
    if vlm.encoder_cls_attention is not None and inputs.image is not None:
        t0 = time.perf_counter()
        cls = vlm.encoder_cls_attention(inputs.image, vtc_cls_blocks()).float()
        seconds = time.perf_counter() - t0
    signals = VisualSignals(
        embeds=inputs.inputs_embeds[img].float(),
        grid=inputs.grid,
        received=received,
        instruction=instruction,
        transition=transition,
        cls_attention=cls,
    )
    return signals, seconds


# ---------------------------------------------------------------------------------------------
# One batch of pruned prompts
# ---------------------------------------------------------------------------------------------
@dataclass
class BatchAnswers:
    """ids: greedy answer ids per row (cut after the stop token); prefill_seconds: the batch's
    prefill wall time; flops: (B,) analytic LM-block FLOPs of each row's prefill."""

    ids: list[list[int]]
    prefill_seconds: float
    flops: list[float]


def _row_layout(inputs: VLMInputs, plan: VisualPlan) -> tuple[torch.Tensor, list[tuple[int, list[int]]]]:
    """The row's input embeddings after `plan.before` and its stages as positions in that shorter row."""
    assert inputs.inputs_embeds is not None
    image = inputs.image_positions
    kept_before = {image[int(v)] for v in plan.before}
    sequence = [p for p in range(inputs.seq_len) if inputs.modality[p] != MODALITY_IMAGE or p in kept_before]
    new_position = {p: j for j, p in enumerate(sequence)}
    text = [new_position[p] for p in sequence if inputs.modality[p] != MODALITY_IMAGE]
    stages = [
        (block, sorted(text + [new_position[image[int(v)]] for v in kept])) for block, kept in plan.stages
    ]
    return inputs.inputs_embeds[sequence], stages


class StagedCuts:
    """FastV-style cuts at several blocks (progressive pruning): from block K_s on, only the kept
    positions of stage s remain (a subset of stage s-1's), with their original positions."""

    def __init__(self, blocks: list[int], kept: list[torch.Tensor], n_prompt: int) -> None:
        self.blocks = blocks
        self.cuts: list[FastVCut] = []
        previous: torch.Tensor | None = None
        for block, k in zip(blocks, kept, strict=True):
            hidden_index = None
            if previous is not None:  # positions of this stage's kept tokens within the previous stage's
                hidden_index = torch.searchsorted(previous, k)
            self.cuts.append(FastVCut(k, n_prompt, block, hidden_index))
            previous = k

    def finish_prefill(self) -> None:
        for cut in self.cuts:
            cut.prefill = False

    @contextmanager
    def hooks(self, lm: LanguageModel) -> Iterator[None]:
        blocks = lm.blocks()
        ends = [*self.blocks[1:], len(blocks)] if self.blocks else []
        handles = [
            blocks[i].register_forward_pre_hook(cut.hook(i), with_kwargs=True)
            for cut, start, end in zip(self.cuts, self.blocks, ends, strict=True)
            for i in range(start, end)
        ]
        if self.cuts:
            handles.append(blocks[len(blocks) - 1].register_forward_hook(self.cuts[-1].restore))
        try:
            yield
        finally:
            for h in handles:
                h.remove()


@torch.inference_mode()
def answer_batch(
    vlm: VisionLanguageModel, rows: Sequence[tuple[VLMInputs, VisualPlan]], max_new_tokens: int
) -> BatchAnswers:
    """Greedy answers of prompts pruned by their plans, as one left-padded batch (one KV cache).

    Every row's plan must have the same shape (stage blocks, kept counts): the rows of one
    (strategy, keep ratio). Pad positions are carried through the cuts (masked keys), so every
    row keeps the same number of positions at each block."""
    lm = vlm.lm
    layouts = [_row_layout(inputs, plan) for inputs, plan in rows]
    lengths = [int(e.shape[0]) for e, _ in layouts]
    longest = max(lengths)
    d = int(layouts[0][0].shape[-1])
    embeds = torch.zeros(len(rows), longest, d)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    positions = torch.zeros(len(rows), longest, dtype=torch.long)
    for row, ((e, _), n) in enumerate(zip(layouts, lengths, strict=True)):
        embeds[row, longest - n :] = e
        mask[row, longest - n :] = 1
        positions[row, longest - n :] = torch.arange(n)
    blocks = [b for b, _ in layouts[0][1]]
    if any([b for b, _ in stages] != blocks for _, stages in layouts):
        raise RuntimeError("the rows of one batch must cut at the same blocks")
    kept_per_stage = []
    for s in range(len(blocks)):
        kept = [
            list(range(longest - n)) + [longest - n + p for p in st[s][1]]
            for (_, st), n in zip(layouts, lengths, strict=True)
        ]
        if len({len(k) for k in kept}) != 1:
            raise RuntimeError("the rows of one batch must keep the same number of visual tokens")
        kept_per_stage.append(torch.tensor(kept, dtype=torch.long))
    cuts = StagedCuts(blocks, kept_per_stage, longest)
    with cuts.hooks(lm):
        out = lm.generate(
            inputs_embeds=embeds,
            max_new_tokens=max_new_tokens,
            attention_mask=mask,
            position_ids=positions,
            stop_at_eos=False,
            step_hook=lambda step, tokens: cuts.finish_prefill(),
        )
    flops = []
    for (_, stages), n in zip(layouts, lengths, strict=True):
        counts = [n] * lm.n_layers
        for block, stage_kept in stages:
            counts[block:] = [len(stage_kept)] * (lm.n_layers - block)
        flops.append(sum(prefill_flops(lm, c) for c in counts))
    return BatchAnswers(
        ids=[trim_at_stop(vlm, out.ids(row)) for row in range(len(rows))],
        prefill_seconds=out.prefill_seconds,
        flops=flops,
    )


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@register_result
@dataclass
class VLMPruneResult(StoredFields):
    """samples: per sample, strategy and keep ratio (sample_id, strategy, keep_ratio, qtype,
    question, expected, said, correct, said_yes, truth_yes, mentioned, hallucinated, agree);
    metrics: per strategy, keep ratio, group (question type, POPE split, "caption", "all",
    "agreement") and metric: value, low, high, n;
    costs: per strategy and keep ratio: kept (visual tokens in the final set), flops_ratio,
    time_ratio, prefill_seconds and scoring_seconds (per prompt), scoring (what the scoring runs);
    strategies: name -> {label, paper, deviation, scoring, inside_model}."""

    kind: ClassVar[str] = "vlm_prune"

    model: str = in_meta()
    dataset: str = in_meta()
    params: dict[str, Any] = in_meta()
    samples: list[dict[str, Any]] = in_table()
    metrics: list[dict[str, Any]] = in_table()
    costs: list[dict[str, Any]] = in_table(json=True)
    strategies: dict[str, dict[str, Any]] = in_meta()
    n_prompts: int = in_meta()
    n_visual: int = in_meta()
    reference_seconds: float = in_meta(decode=float)
    deviations: list[str] = in_meta(default_factory=list)
    run_id: str | None = None

    def metric(self, strategy: str, keep_ratio: float, group: str, name: str) -> dict[str, Any] | None:
        for r in self.metrics:
            if (r["strategy"], r["keep_ratio"], r["group"], r["metric"]) == (
                strategy,
                keep_ratio,
                group,
                name,
            ):
                return r
        return None

    def curve(self, group: str = "all", name: str = "accuracy") -> dict[str, list[dict[str, Any]]]:
        """strategy -> [{keep_ratio, value, low, high, n}] sorted by keep ratio (ascending)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for r in self.metrics:
            if r["group"] == group and r["metric"] == name:
                out.setdefault(r["strategy"], []).append(
                    {k: r[k] for k in ("keep_ratio", "value", "low", "high", "n")}
                )
        return {k: sorted(v, key=lambda p: p["keep_ratio"]) for k, v in out.items()}

    def nested_metrics(self) -> dict[str, dict[str, dict[str, dict[str, dict[str, Any]]]]]:
        """strategy -> keep ratio (as text) -> group -> metric -> {value, low, high, n}."""
        out: dict[str, dict[str, dict[str, dict[str, dict[str, Any]]]]] = {}
        for r in self.metrics:
            out.setdefault(r["strategy"], {}).setdefault(f"{r['keep_ratio']:g}", {}).setdefault(
                r["group"], {}
            )[r["metric"]] = {k: r[k] for k in ("value", "low", "high", "n")}
        return out

    def json_views(self) -> dict[str, Any]:
        return {
            "n_samples": len({r["sample_id"] for r in self.samples}),
            "retention": self.curve(),
            "agreement": self.curve("agreement", "rate"),
            "metrics": self.nested_metrics(),
            "not_implemented": dict(NOT_IMPLEMENTED),
            "examples": self.samples[:12],
        }

    def to_tables(self) -> dict[str, pa.Table]:
        return {
            "samples": rows_table(self.samples, SAMPLE_SCHEMA),
            "metrics": rows_table(self.metrics, METRIC_SCHEMA),
            "costs": rows_table(self.costs, COST_SCHEMA),
        }

    @classmethod
    def fields_from_tables(cls, meta: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, Any]:
        return {name: tables[name].to_pylist() for name in ("samples", "metrics", "costs")}


SAMPLE_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("strategy", pa.string()),
        ("keep_ratio", pa.float64()),
        ("qtype", pa.string()),
        *ANSWER_FIELDS,
        ("agree", pa.bool_()),
    ]
)
METRIC_SCHEMA = pa.schema([("strategy", pa.string()), ("keep_ratio", pa.float64()), *ESTIMATE_FIELDS])
COST_SCHEMA = pa.schema(
    [
        ("strategy", pa.string()),
        ("keep_ratio", pa.float64()),
        ("kept", pa.float64()),
        ("flops_ratio", pa.float64()),
        ("time_ratio", pa.float64()),
        ("prefill_seconds", pa.float64()),
        ("scoring_seconds", pa.float64()),
        ("scoring", pa.string()),
    ]
)


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------
@dataclass
class _Prompt:
    sample: EvalSample
    inputs: VLMInputs
    signals: VisualSignals
    cls_seconds: float


def _answer_plans(
    vlm: VisionLanguageModel,
    prompts: list[_Prompt],
    plans: list[VisualPlan],
    batch_size: int,
) -> tuple[list[str], float, list[float]]:
    """Answers of every prompt under its plan, batched by answer length: (answers, prefill
    seconds in total, FLOPs per prompt)."""
    answers = [""] * len(prompts)
    flops = [0.0] * len(prompts)
    seconds = 0.0
    order = sorted(
        range(len(prompts)), key=lambda i: (prompts[i].sample.max_new_tokens, prompts[i].sample.qtype)
    )
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        limit = max(prompts[i].sample.max_new_tokens for i in chunk)
        out = answer_batch(vlm, [(prompts[i].inputs, plans[i]) for i in chunk], limit)
        seconds += out.prefill_seconds
        for i, ids, f in zip(chunk, out.ids, out.flops, strict=True):
            answers[i] = str(vlm.tokenizer.decode(ids, skip_special_tokens=True)).strip()
            flops[i] = f
    return answers, seconds, flops


def prune_eval(
    vlm: VisionLanguageModel,
    samples: list[EvalSample],
    params: PruneEvalParams,
    *,
    max_tokens: int = 4096,
    progress: ProgressFn | None = None,
) -> VLMPruneResult:
    """Answer `samples` unpruned and under every (strategy, keep ratio); score and aggregate."""
    params = params.validate()
    if vlm.uses_model_forward:
        raise InputError(
            f"visual-token pruning needs a projector VLM such as tiny-vlm; {vlm.model_id!r} runs its own "
            "multimodal forward, where dropped positions would need per-architecture code"
        )
    if not samples:
        raise InputError("the evaluation set is empty")
    report = or_silent(progress)
    keys = list(dict.fromkeys((s.image_ref, s.question) for s in samples))
    first: dict[tuple[str, str], EvalSample] = {}
    for s in samples:
        first.setdefault((s.image_ref, s.question), s)
    prompts: list[_Prompt] = []
    for i, key in enumerate(keys):
        sample = first[key]
        inputs = vlm.prepare(sample.question, sample.image(), max_tokens)
        signals, cls_seconds = collect_signals(vlm, inputs)
        prompts.append(_Prompt(sample, inputs, signals, cls_seconds))
        if i % 16 == 0:
            report(0.2 * i / len(keys), f"signals: {i}/{len(keys)} prompts")
    n_visual = {p.signals.n_visual for p in prompts}
    if len(n_visual) != 1:
        raise InputError("every image must give the same number of visual tokens")
    n_vis = n_visual.pop()
    pruned_ratios = [r for r in params.keep_ratios if keep_count(r, n_vis) < n_vis]
    total = 1 + len(pruned_ratios) * len(params.strategies)
    identity = [VisualPlan(np.arange(n_vis, dtype=np.int64)) for _ in prompts]
    report(0.2, "unpruned answers")
    ref_answers, ref_seconds, ref_flops = _answer_plans(vlm, prompts, identity, params.batch_size)
    runs: dict[tuple[str, float], tuple[list[str], list[float], float, float, float]] = {}
    done = 1
    for ratio in pruned_ratios:
        keep = keep_count(ratio, n_vis)
        for name in params.strategies:
            report(0.2 + 0.75 * done / total, f"{name} keeping {keep}/{n_vis} visual tokens")
            t0 = time.perf_counter()
            plans = [plan_for(name, p.signals, keep, params.seed) for p in prompts]
            selection = time.perf_counter() - t0
            scoring = selection
            if VISUAL_STRATEGIES[name].scoring == "encoder_attention":
                scoring += sum(p.cls_seconds for p in prompts)
            answers, seconds, flops = _answer_plans(vlm, prompts, plans, params.batch_size)
            kept = float(np.mean([len(p.kept) for p in plans]))
            runs[(name, ratio)] = (answers, flops, seconds, scoring, kept)
            done += 1
    report(0.95, "scoring and bootstrap intervals")
    rows: list[dict[str, Any]] = []
    costs: list[dict[str, Any]] = []
    ref_said = dict(zip(keys, ref_answers, strict=True))
    n_prompts = len(prompts)
    for name in params.strategies:
        for ratio in params.keep_ratios:
            if (name, ratio) in runs:
                answers, flops, seconds, scoring, kept = runs[(name, ratio)]
            else:
                answers, flops, seconds, scoring, kept = (
                    ref_answers,
                    ref_flops,
                    ref_seconds,
                    0.0,
                    float(n_vis),
                )
            costs.append(
                {
                    "strategy": name,
                    "keep_ratio": ratio,
                    "kept": kept,
                    "flops_ratio": float(np.sum(flops) / np.sum(ref_flops)),
                    "time_ratio": (seconds + scoring) / ref_seconds if ref_seconds > 0 else float("nan"),
                    "prefill_seconds": seconds / n_prompts,
                    "scoring_seconds": scoring / n_prompts,
                    "scoring": VISUAL_STRATEGIES[name].scoring,
                }
            )
            said_of = dict(zip(keys, answers, strict=True))
            for s in samples:
                said = said_of[(s.image_ref, s.question)]
                ref = ref_said[(s.image_ref, s.question)]
                rows.append(
                    {
                        "sample_id": s.sample_id,
                        "strategy": name,
                        "keep_ratio": ratio,
                        "qtype": s.qtype,
                        "question": s.question,
                        "expected": s.answer,
                        "said": said,
                        "agree": m.normalise_answer(said) == m.normalise_answer(ref),
                        **score(s, said),
                    }
                )
    metrics = _metrics(rows, params)
    report(1.0, "done")
    return VLMPruneResult(
        model=vlm.model_id,
        dataset=params.dataset,
        params=params.to_json(),
        samples=rows,
        metrics=metrics,
        costs=costs,
        strategies={
            name: {
                "label": VISUAL_STRATEGIES[name].label,
                "paper": PAPERS[name],
                "deviation": VISUAL_STRATEGIES[name].deviation,
                "scoring": VISUAL_STRATEGIES[name].scoring,
                "inside_model": VISUAL_STRATEGIES[name].inside_model,
            }
            for name in params.strategies
        },
        n_prompts=n_prompts,
        n_visual=n_vis,
        reference_seconds=ref_seconds / n_prompts,
        deviations=list(eval_sets.DEVIATIONS),
    )


def _metrics(rows: list[dict[str, Any]], params: PruneEvalParams) -> list[dict[str, Any]]:
    """vlm_eval's metrics per (strategy, keep ratio), plus accuracy over all samples ("all") and
    the agreement rate with the unpruned answers ("agreement"), each with its bootstrap interval."""
    grouped: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[(r["strategy"], r["keep_ratio"])].append(r)
    out: list[dict[str, Any]] = []
    for (name, ratio), group in grouped.items():
        condition_rows = [{**r, "condition": "x"} for r in group]
        for metric in aggregate(condition_rows, n_boot=params.n_boot, seed=params.seed):
            metric.pop("condition")
            out.append({"strategy": name, "keep_ratio": ratio, **metric})
        correct = np.array([bool(r["correct"]) for r in group])
        agree = np.array([bool(r["agree"]) for r in group])
        for grp, name_, values in (("all", "accuracy", correct), ("agreement", "rate", agree)):
            e = m.accuracy_estimate(values, n_boot=params.n_boot, seed=params.seed)
            out.append({"strategy": name, "keep_ratio": ratio, "group": grp, "metric": name_, **e.to_dict()})
    return out
