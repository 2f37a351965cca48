"""ReAGent: Recursive Attribution Generator (Zhao & Shan, 2024, arXiv:2402.00794).

The algorithm, per probe (an independent chain; several run in parallel and are averaged):

1. Initialise logit-scale importance s_i ~ U(0, 1) for every context token.
2. Repeat:
   a. Draw a random set R of context positions, each with probability r (replacing ratio),
      and replace those tokens by the replacement model's predictions (see `replacement`).
   b. Delta = p(y | x) - p(y | x with R replaced): the drop in the target's probability.
   c. Update s_i += logit(0.5 + 0.5 * d_i) with d_i = +Delta for i in R and -Delta otherwise:
      if replacing R hurt the prediction, R gains importance and the rest loses it.
   d. Stopping criterion: keep the top-n most important tokens (by softmax(s)), replace all
      the *unimportant* others; stop when the target is still within the model's top-k
      predictions.
3. The probe's importance is softmax(s). The result averages the probes that stopped.

Deviations from the paper and the authors' code (casszhao/ReAGent), each a parameter:
- Rational size: the authors keep a fixed n (5 or 8) in the stopping check. On a prompt of
  <= n tokens nothing is replaced, the check passes after the first update, and the scores
  stay close to their U(0, 1) start. We cap n at ceil(max_keep_ratio * P) (default 0.5;
  1.0 restores the paper), see `rational_size`.
- Defaults: 8 probes (the authors' configurations use 3-10, Inseq 16) and at most 30 steps
  (the authors allow 3000), so an attribution takes seconds on a CPU.
- Replacements come from a masked LM when one is available locally, else from the analysed
  causal LM (see `replacement`); the authors use RoBERTa or POS-matched random tokens.
- Replacement choice: the paper takes the replacement model's argmax, and so do we by default
  (`candidates` = 1); `candidates` > 1 draws among the top candidates (weighted), an option.

Implementation notes (ours, not the paper's):
- Probes are batched: all active probes' replaced sequences, *and* their stopping checks, go
  through the model in one forward pass per step. The stopping check for step t-1 and the
  update for step t are independent, so they share a batch; if the check says "stop", the
  update computed alongside it is discarded. This is exactly the sequential algorithm.
- Stopped probes leave the batch; only the last position's logits are computed
  (`logits_to_keep`).
- Multi-token targets: p(y) is the joint probability of all target tokens (teacher forced);
  the stopping criterion requires every target token within the top-k at its position.
- If no probe stops within `max_steps`, all probes are averaged and the result says so
  (Inseq's implementation returns NaN in that case).
- Contrastive attribution is not supported: the update rule is defined on a probability
  in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from explorer.analysis.attribution.replacement import REPLACEMENTS, Sampler, build_sampler
from explorer.analysis.attribution.task import AttributionTask, continuation_logprob_ids
from explorer.backends.language import LanguageModel
from explorer.errors import InputError
from explorer.params import params_json

# Where ReAGent here departs from the paper (Zhao & Shan 2024) and the authors' code; shown in the
# Attribution tab, the README and the JSON (`deviations`) of every ReAGent result.
DEVIATIONS: tuple[str, ...] = (
    "rational size: capped at max_keep_ratio (default 0.5) of the prompt; the paper keeps a fixed n (5), "
    "with which the stopping check keeps every token of a prompt of <= n tokens and stops at once",
    "defaults: 8 probes and at most 30 steps (the authors' configurations use 3-10 probes and allow 3000 "
    "steps), so an attribution takes seconds on a CPU",
    "replacement model: a masked LM (RoBERTa, the paper's choice) when available locally, else the analysed "
    "causal LM proposes replacements (top candidates from the left context re-ranked by whole-sequence "
    "likelihood), or uniform random tokens; the result says which",
    "replacement choice: the replacement model's argmax, as the paper, by default; the `candidates` option "
    "(> 1) draws among the top candidates instead",
    "no probe stopped within the step cap: all probes are averaged (a note says so) instead of NaN",
)
MAX_PROBES = 256
MAX_STEPS = 10_000
EPS = 1e-6
# Rows x tokens per batched probe pass: 16 probe rows of a 128-token prompt go in one pass, a
# 4,096-token prompt goes one or two rows at a time (memory stays bounded at any length).
PROBE_BATCH_TOKENS = 8192


@dataclass(frozen=True)
class ReagentParams:
    """ReAGent's parameters. Defaults follow the paper/Inseq (r = 0.3, top-3, rational size 5),
    except: `num_probes` 8 (the authors' configurations use 3-10 probes, Inseq 16), `max_steps`
    30 (so an attribution takes seconds on a CPU; the paper allows 3000) and `max_keep_ratio`
    (see `rational_size`).

    replacing_ratio: probability that a context token is replaced in an update step (r).
    stop_top_k:      stop when the target is within the top-k after replacing the unimportant tokens.
    keep_top_n:      rational size: tokens kept (by importance) in the stopping check.
    max_keep_ratio:  cap on the rational size as a share of the prompt (ours; 1.0 = the paper).
    num_probes:      parallel chains, averaged.
    max_steps:       cap on update steps per probe.
    replacement:     'auto' | 'causal' | 'mlm' | 'uniform' (see `replacement`).
    mlm_model:       hub id or local dir of the masked LM (default FacebookAI/roberta-base).
    candidates:      replacement candidates per position (1 = the replacement model's argmax, as the
                     paper; more draws among the top candidates, a deviation).
    """

    replacing_ratio: float = 0.3
    stop_top_k: int = 3
    keep_top_n: int = 5
    max_keep_ratio: float = 0.5
    num_probes: int = 8
    max_steps: int = 30
    replacement: str = "auto"
    mlm_model: str | None = None
    candidates: int = 1

    def validate(self) -> None:
        if not 0.0 < self.replacing_ratio < 1.0:
            raise InputError(f"replacing_ratio must be in (0, 1), got {self.replacing_ratio}")
        if self.stop_top_k < 1:
            raise InputError(f"stop_top_k must be >= 1, got {self.stop_top_k}")
        if self.keep_top_n < 1:
            raise InputError(f"keep_top_n must be >= 1, got {self.keep_top_n}")
        if not 0.0 < self.max_keep_ratio <= 1.0:
            raise InputError(f"max_keep_ratio must be in (0, 1], got {self.max_keep_ratio}")
        if not 1 <= self.num_probes <= MAX_PROBES:
            raise InputError(f"num_probes must be between 1 and {MAX_PROBES}, got {self.num_probes}")
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise InputError(f"max_steps must be between 1 and {MAX_STEPS}, got {self.max_steps}")
        if self.replacement not in REPLACEMENTS:
            raise InputError(
                f"replacement: unknown replacement {self.replacement!r}; choose from {list(REPLACEMENTS)}"
            )
        if not 1 <= self.candidates <= 64:
            raise InputError(f"candidates must be between 1 and 64, got {self.candidates}")

    def to_json(self) -> dict[str, Any]:
        return params_json(self)


def rational_size(n_context: int, keep_top_n: int, max_keep_ratio: float) -> int:
    """Tokens kept in the stopping check: min(keep_top_n, ceil(max_keep_ratio * P)), at least 1.

    The paper (and Inseq) keep a fixed n = 5. On a prompt of <= 5 tokens that keeps *every*
    token, so the check passes trivially after one update and the scores stay close to their
    random start. Capping n at a share of the prompt keeps the check meaningful.
    """
    return max(1, min(keep_top_n, math.ceil(max_keep_ratio * n_context)))


def _replace(
    context: torch.Tensor, mask: torch.Tensor, sampler: Sampler, gen: torch.Generator
) -> torch.Tensor:
    """context (P,), mask (B, P) bool -> (B, P) ids with masked positions replaced."""
    proposals = sampler.sample(mask.shape[0], gen)
    return torch.where(mask, proposals, context.unsqueeze(0).expand_as(mask))


def reagent(
    lm: LanguageModel, task: AttributionTask, params: ReagentParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Run ReAGent on `task`.

    Returns scores (P,) float32 (a distribution: non-negative, sums to 1; larger = more
    important), extras {replacement, steps, stopped_probes, converged}, and notes.
    """
    params.validate()
    if task.foil_ids is not None:
        raise InputError(
            "contrast: ReAGent does not support contrastive attribution; use a gradient method or occlusion"
        )
    ctx = task.context_ids.cpu()
    p = int(ctx.shape[0])
    sampler, notes = build_sampler(lm, ctx, params.replacement, params.mlm_model, params.candidates)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    n = params.num_probes
    keep_n = rational_size(p, params.keep_top_n, params.max_keep_ratio)
    target = task.target_ids.cpu()

    rows_per_pass = max(1, PROBE_BATCH_TOKENS // (p + int(target.numel())))

    def run(batch: torch.Tensor, need_hit: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """log p(target) (and the stopping check) of each row; rows x tokens per pass bounded by
        PROBE_BATCH_TOKENS, fused attention (no (rows, heads, T, T) weights: long prompts fit)."""
        lps, hits = [], []
        with torch.inference_mode(), lm.lock, lm.memory_efficient_attention():
            for start in range(0, batch.shape[0], rows_per_pass):
                chunk = batch[start : start + rows_per_pass]
                lp, hit = continuation_logprob_ids(
                    lm, chunk, target, top_k=params.stop_top_k if need_hit else 0
                )
                lps.append(lp.cpu())
                if hit is not None:
                    hits.append(hit.cpu())
        return torch.cat(lps), (torch.cat(hits) if hits else None)

    base_lp, _ = run(ctx.unsqueeze(0), False)
    p_orig = float(base_lp.exp()[0])
    scores = torch.rand(n, p, generator=gen)  # logit-scale importance
    stopped = torch.zeros(n, dtype=torch.bool)
    steps = 0

    def stop_batch(rows: torch.Tensor) -> torch.Tensor:
        """Replace everything except each probe's top-n important tokens."""
        imp = torch.softmax(scores[rows], dim=-1)
        keep = torch.zeros_like(imp, dtype=torch.bool)
        keep.scatter_(1, imp.topk(keep_n, dim=-1).indices, True)
        return _replace(ctx, ~keep, sampler, gen)

    prev_rows: torch.Tensor | None = None  # probes whose check (on the last update) is pending
    for step in range(params.max_steps):
        rows = (~stopped).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        steps = step + 1
        mask = torch.rand(rows.numel(), p, generator=gen) < params.replacing_ratio
        upd = _replace(ctx, mask, sampler, gen)
        checks = stop_batch(prev_rows) if prev_rows is not None else None
        batch = upd if checks is None else torch.cat([upd, checks])
        lp, hit = run(batch, checks is not None)
        if checks is not None and prev_rows is not None and hit is not None:
            stopped[prev_rows] |= hit[rows.numel() :]
        go_on = ~stopped[rows]
        delta = p_orig - lp[: rows.numel()].exp()  # (B,)
        d = torch.where(mask, delta.unsqueeze(1), -delta.unsqueeze(1)).clamp(-1 + EPS, 1 - EPS)
        upd_scores = scores[rows] + torch.logit(0.5 * d + 0.5)
        scores[rows[go_on]] = upd_scores[go_on]
        prev_rows = rows[go_on]
    if prev_rows is not None and prev_rows.numel():  # the last update's stopping check
        _, hit = run(stop_batch(prev_rows), True)
        if hit is not None:
            stopped[prev_rows] |= hit
    probs = torch.softmax(scores, dim=-1)
    n_stopped = int(stopped.sum())
    if n_stopped:
        final = probs[stopped].mean(dim=0)
    else:
        final = probs.mean(dim=0)
        notes.append(
            f"ReAGent: no probe met the stopping condition (target in the top-{params.stop_top_k} with only the "
            f"{keep_n} most important tokens kept) within {params.max_steps} steps; the scores average all "
            f"{n} probes. Raise max_steps for a converged result."
        )
    extras = {
        "replacement": sampler.label,
        "steps": steps,
        "stopped_probes": n_stopped,
        "num_probes": n,
        "converged": n_stopped > 0,
        "target_prob": p_orig,
    }
    if not math.isfinite(float(final.sum())):
        raise RuntimeError("ReAGent produced non-finite scores")
    return final.float(), extras, notes
