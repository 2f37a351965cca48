"""The text-pruning sweep: every strategy at every keep ratio, executed for real and measured
against the unpruned run (see the package docstring)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from explorer.analysis.pruning.common import (
    DEFAULT_KEEP_RATIOS,
    PruningRow,
    keep_count,
)
from explorer.analysis.pruning.text.cost import attribution_scores, prefill_flops, rows_per_batch
from explorer.analysis.pruning.text.fastv import padded_fastv_batch
from explorer.analysis.pruning.text.result import TextPruningResult
from explorer.analysis.pruning.text.runs import BatchRun, reference_run, run_batch
from explorer.analysis.pruning.text.strategies import (
    BEFORE_LM_LAYER,
    DEFAULT_LAYER,
    TEXT_STRATEGIES,
    TextSignals,
    select_tokens,
)
from explorer.backends.language import LanguageModel, encode
from explorer.errors import InputError
from explorer.progress import ProgressFn, or_silent

if TYPE_CHECKING:
    from explorer.analysis.pruning.params import PruneTextParams

MAX_CONTINUATION = 64
DEFAULT_BATCH_MB = 1024.0  # memory budget of one batched prefill (Settings.pruning_batch_mb)


def _decode(lm: LanguageModel, ids: list[int]) -> str:
    """Decode a continuation, cut after the first EOS."""
    eos = lm.tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return str(lm.tokenizer.decode(ids, skip_special_tokens=True))


def _resolve_target(lm: LanguageModel, target: str | None, ref_logits: torch.Tensor) -> tuple[list[int], str]:
    if target is None or target == "":
        top = int(ref_logits.argmax())
        return [top], lm.token_str(top)
    from explorer.analysis.attribution.task import resolve_continuation

    ids, text, _ = resolve_continuation(lm, target, "target")
    return ids, text


def _rank_and_prob(logp: torch.Tensor, token: int) -> tuple[int, float]:
    """1-based rank (1 + tokens with a strictly higher log-prob) and probability of `token`."""
    value = logp[token]
    return int((logp > value).sum()) + 1, float(value.exp())


def _run_rows(
    lm: LanguageModel,
    ids: torch.Tensor,
    rows: list[tuple[tuple[int, ...], list[str], bool]],
    n_cont: int,
    layer: int,
) -> BatchRun:
    """One batch of distinct kept sets (kept, strategies, is FastV), pruned prompts first: a
    plain batch of pruned prompts, or with FastV rows the padded batch (`padded_fastv_batch`)."""
    prompt_kept = [np.asarray(k) for k, _, fastv in rows if not fastv]
    fastv_kept = [np.asarray(k) for k, _, fastv in rows if fastv]
    if fastv_kept:
        batch, mask, positions, cut = padded_fastv_batch(ids, prompt_kept, fastv_kept, layer)
        return run_batch(lm, batch, n_cont, cut, attention_mask=mask, position_ids=positions)[0]
    return run_batch(lm, torch.stack([ids[torch.as_tensor(k)] for k in prompt_kept]), n_cont)[0]  # (U, keep)


def prune_text(
    lm: LanguageModel,
    prompt: str,
    params: PruneTextParams | None = None,
    *,
    strategies: Sequence[str] | str = "all",
    keep_ratios: Sequence[float] | float = DEFAULT_KEEP_RATIOS,
    layer: int = DEFAULT_LAYER,
    target: str | None = None,
    continuation_tokens: int = 8,
    seed: int = 0,
    max_tokens: int = 512,
    batch_mb: float = DEFAULT_BATCH_MB,
    progress: ProgressFn | None = None,
) -> TextPruningResult:
    """Prune `prompt` with each strategy at each keep ratio and measure the effects (see module doc).

    strategies: names from `strategy_names()` ("frugalprompt" = "frugalprompt:input_x_gradient")
    or "all"; keep_ratios: fractions in (0, 1]; layer: FastV's K; target: the token whose
    probability/rank is tracked (default: the unpruned top-1 next token; a multi-token target
    uses its first token for probability and rank, and all its tokens for attribution);
    continuation_tokens: N greedy tokens compared (0 skips the continuation measures);
    batch_mb: memory budget of one batched prefill: a keep ratio's distinct rows run in batches
    of at most `rows_per_batch` rows (at least one; the results equal one batch's).
    `params`: the `PruneTextParams` (validated by the caller, e.g. the API's runner); without it,
    the strategy / ratio / layer / target / continuation / seed keywords build one.
    Raises InputError for bad inputs before any forward pass.
    """
    from explorer.analysis.pruning.params import PruneTextParams

    if params is None:
        params = PruneTextParams.of(
            strategies,
            keep_ratios,
            layer=layer,
            target=target,
            continuation_tokens=continuation_tokens,
            seed=seed,
        )
    p = params.for_model(lm)  # validated once, in the Params; the layer checked against lm's depth
    report = or_silent(progress)
    names = list(p.strategies)
    ratios = list(p.keep_ratios)
    parsed = {name: TEXT_STRATEGIES.parse(name) for name in names}
    has_fastv = p.needs_layer
    layer, seed, target, n_cont = p.layer, p.seed, p.target, p.continuation_tokens
    if not batch_mb > 0:  # the engine's own setting (Settings.pruning_batch_mb), not a Params field
        raise InputError(
            f"batch_mb must be > 0 (the memory budget of one batched prefill, in MB), got {batch_mb}"
        )
    ids = encode(lm, prompt, max_tokens).cpu()
    n = int(ids.shape[0])
    if target is not None and target != "":
        _resolve_target(lm, target, torch.zeros(1))  # validate before any model call
    t_start = time.perf_counter()
    notes: list[str] = []

    timings = {"reference": 0.0, "attribution": 0.0, "forward": 0.0, "similarity": 0.0}
    with lm.lock:
        report(0.02, "Unpruned run")
        ref = reference_run(lm, ids, n_cont, layer if has_fastv else None)
    timings["reference"] = time.perf_counter() - t_start
    target_ids, target_text = _resolve_target(lm, target, ref.last_logits)
    if len(target_ids) > 1:
        notes.append(
            f"target {target!r} is {len(target_ids)} tokens {lm.tokens_str(target_ids)}: probability and rank "
            f"track its first token; attribution explains all of them"
        )
    signals = TextSignals(n=n, values={"self_information": ref.self_information})
    if ref.attention is not None and ref.attention_last_row is not None:
        signals.values["fastv_attention"] = ref.attention
        signals.values["fastv_last_row_attention"] = ref.attention_last_row
    methods = list(
        dict.fromkeys(m for s, m in parsed.values() if s.scoring == "attribution" and m is not None)
    )
    attribution_cost: dict[str, tuple[float, float]] = {}  # method -> (seconds, FLOPs) of scoring
    for i, method in enumerate(methods):
        report(0.05 + 0.15 * i / max(1, len(methods)), f"Attribution scores ({method})")
        scores_m, seconds_m, flops_m = attribution_scores(lm, ids, target_ids, method, seed)
        signals.values[f"attribution:{method}"] = scores_m
        attribution_cost[method] = (seconds_m, flops_m)
        timings["attribution"] += seconds_m

    ref_logp = torch.log_softmax(ref.last_logits.double(), dim=-1)
    first_target = target_ids[0]
    rank_before, prob_before = _rank_and_prob(ref_logp, first_target)
    ref_cont = ref.continuation.tolist()
    ref_text = _decode(lm, ref_cont)
    full_flops = lm.n_layers * prefill_flops(lm, n)

    outputs: dict[tuple[str, float], tuple[BatchRun, int, float]] = {}  # (name, ratio) -> (run, row, seconds)
    n_batches = largest = 0
    was_split = False  # did a keep ratio's rows need more than one batch?
    kept_of: dict[tuple[str, float], np.ndarray] = {}
    with lm.lock:
        for r_i, ratio in enumerate(ratios):
            report(0.2 + 0.7 * r_i / len(ratios), f"Keep ratio {ratio:g}")
            keep = keep_count(ratio, n)
            prompt_sets: dict[tuple[int, ...], list[str]] = {}
            fastv_sets: dict[tuple[int, ...], list[str]] = {}
            for name in names:
                kept = select_tokens(name, signals, keep, seed)
                kept_of[(name, ratio)] = kept
                sets = fastv_sets if parsed[name][0].inside_model else prompt_sets
                sets.setdefault(tuple(kept.tolist()), []).append(name)
            full = tuple(range(n))
            ref_run = BatchRun(ref.last_logits[None], ref.continuation[None], ref.prefill_seconds)
            for sets in (prompt_sets, fastv_sets):
                # a pruned prompt equal to the prompt, or FastV keeping every token (exact by
                # construction), is the unpruned run itself
                for name in sets.pop(full, []):
                    outputs[(name, ratio)] = (ref_run, 0, ref.prefill_seconds)
            # distinct rows (pruned prompts first, then FastV), in batches within the memory budget
            rows_all = [(k, group, False) for k, group in prompt_sets.items()]
            rows_all += [(k, group, True) for k, group in fastv_sets.items()]
            per_batch = rows_per_batch(lm, n if fastv_sets else keep, batch_mb * 2**20)
            was_split = was_split or len(rows_all) > per_batch
            for start in range(0, len(rows_all), per_batch):
                chunk = rows_all[start : start + per_batch]
                t_batch = time.perf_counter()
                run = _run_rows(lm, ids, chunk, n_cont, layer)
                timings["forward"] += time.perf_counter() - t_batch
                n_batches += 1
                share = run.prefill_seconds / len(chunk)
                for u, (_, group, _) in enumerate(chunk):
                    for name in group:
                        outputs[(name, ratio)] = (run, u, share)
                largest = max(largest, len(chunk))

    if was_split:
        notes.append(
            f"the pruned rows ran in {n_batches} batches of at most {largest} row{'s' if largest > 1 else ''}, "
            "to stay within the "
            f"{batch_mb:g} MB batch memory budget (EXPLORER_PRUNING_BATCH_MB); results equal one batch's"
        )
    report(0.92, "Measuring continuations")
    texts: dict[tuple[str, float], str] = {}
    for key, (run, u, _) in outputs.items():
        texts[key] = _decode(lm, run.continuation[u].tolist())
    similarity: dict[tuple[str, float], float | None] = {key: None for key in outputs}
    if n_cont:
        from explorer.backends.sentence import semantic_similarity

        t_sim = time.perf_counter()
        keys = list(outputs)  # one MiniLM batch for every continuation
        for key, value in zip(keys, semantic_similarity(ref_text, [texts[k] for k in keys]), strict=True):
            similarity[key] = value
        timings["similarity"] = time.perf_counter() - t_sim

    # what each kind of scoring ran, charged to the row: nothing (random; FastV reads its own
    # pass), the self-information forward pass over the whole prompt, or an attribution method's passes
    scoring_cost: dict[str, Callable[[str | None], tuple[float, float]]] = {
        "none": lambda option: (0.0, 0.0),
        "forward": lambda option: (ref.prefill_seconds, full_flops),
        "attribution": lambda option: attribution_cost[option or ""],
    }
    rows: list[PruningRow] = []
    ref_p = ref_logp.exp()
    for name in names:
        strategy, option = parsed[name]
        for ratio in ratios:
            run, u, seconds = outputs[(name, ratio)]
            kept = kept_of[(name, ratio)]
            logp = torch.log_softmax(run.last_logits[u].double(), dim=-1)
            kl = float((ref_p * (ref_logp - logp)).sum().clamp_min(0.0))
            rank_after, prob_after = _rank_and_prob(logp, first_target)
            cont = run.continuation[u].tolist()
            agreement = (
                float(np.mean([a == b for a, b in zip(cont, ref_cont, strict=True)])) if n_cont else None
            )
            k = len(kept)
            if strategy.inside_model:
                flops = layer * prefill_flops(lm, n) + (lm.n_layers - layer) * prefill_flops(lm, k)
            else:
                flops = lm.n_layers * prefill_flops(lm, k)
            scoring_seconds, scoring_flops = scoring_cost[strategy.scoring](option)
            rows.append(
                PruningRow(
                    strategy=name,
                    keep_ratio=ratio,
                    keep_count=k,
                    layer=layer if strategy.inside_model else BEFORE_LM_LAYER,
                    kept=[int(i) for i in kept],
                    fidelity={
                        "kl": kl,
                        "target_prob_before": prob_before,
                        "target_prob_after": prob_after,
                        "target_rank_before": float(rank_before),
                        "target_rank_after": float(rank_after),
                        "continuation_agreement": agreement,
                        "semantic_similarity": similarity[(name, ratio)],
                        "prefill_time_saved": 1.0 - seconds / ref.prefill_seconds,
                    },
                    seconds=scoring_seconds + seconds,
                    flops_ratio=(scoring_flops + flops) / full_flops,
                    scoring_seconds=scoring_seconds,
                    scoring_flops_ratio=scoring_flops / full_flops,
                    continuation=texts[(name, ratio)],
                    continuation_ids=[int(t) for t in cont],
                    top_token=lm.token_str(int(run.last_logits[u].argmax())),
                )
            )
    scores: dict[str, np.ndarray] = {}  # the signals the chosen strategies ranked by
    for strategy, option in parsed.values():
        signal = strategy.signal_name(option)
        if signal is not None:
            scores[signal] = signals.get(signal)
    report(1.0, "Done")
    seconds = time.perf_counter() - t_start
    timings["other"] = max(0.0, seconds - sum(timings.values()))
    return TextPruningResult(
        model=lm.model_id,
        tokens=lm.tokens_str(ids.tolist()),
        input_ids=[int(i) for i in ids.tolist()],
        layer=layer,
        seed=seed,
        continuation_tokens=n_cont,
        target={"token": target_text, "id": first_target, "ids": target_ids, "given": bool(target)},
        reference={
            "continuation": ref_text,
            "continuation_ids": [int(t) for t in ref_cont],
            "top_token": lm.token_str(int(ref.last_logits.argmax())),
            "prefill_seconds": ref.prefill_seconds,
        },
        rows=rows,
        scores=scores,
        deviations={s.name: s.deviation for s, _ in parsed.values()},
        notes=notes,
        seconds=seconds,
        timings=timings,
    )
