"""Faithfulness of an attribution: soft-normalised comprehensiveness / sufficiency
(Soft-NC, Soft-NS; Zhao & Aletras 2023, the metrics the ReAGent paper reports) and hard
comprehensiveness / sufficiency at k% deletion.

Notation: p = p(y | x), the target's probability (joint over a multi-token target; with a
contrastive foil we still measure the target's probability).

Importance is normalised to a distribution, as in the ReAGent authors' evaluation code
(casszhao/ReAGent, src/evaluation: the stored scores — ReAGent's softmax, or Inseq's
L1-normalised aggregates — are used directly as Bernoulli keep-probabilities):
s_i = max(a_i, 0) / sum_j max(a_j, 0); negative attributions count as unimportant; an
attribution with no positive score becomes uniform. Consequence: keep-probabilities for soft
sufficiency are small (about 1/P each), the masked input is close to the all-zero baseline, and
Soft-NS is close to 0 for every method on all but very short prompts. That is the metric as the
authors compute it, not an artefact of one method; compare methods on it with that in mind.
Where a version of the authors' code measures sufficiency/comprehensiveness as a distance
between whole output distributions (Hellinger / KL), we keep the paper's definition on the
target's probability, below.

Soft erasure (Zhao & Aletras): for a causal LM, "removing" part of a token means zeroing
elements of its *input embedding*; positions stay where they are. Each embedding element of
token i is kept by an independent Bernoulli draw:

- Soft sufficiency  S(x') = 1 - max(0, p - p(y | x')), x' keeps element (i, j) w.p. s_i
- Soft compr.       C(x') = max(0, p - p(y | x'')),    x'' keeps element (i, j) w.p. 1 - s_i
- Zero baseline     S0 = S(all embeddings zero)
- Soft-NS = max(0, S(x') - S0) / (1 - S0);  Soft-NC = C(x'') / (1 - S0)
  (normalisation as in the paper; undefined — None — when the empty input already predicts
  the target at least as well as the full input, i.e. 1 - S0 = 0)

Hard erasure (DeYoung et al. 2020) *deletes* tokens from the sequence (zeroing a whole token's
embedding is far outside what a causal LM has seen and breaks every prediction alike):
- Hard comprehensiveness = max(0, p - p(y | x without its top-k% tokens))
- Hard sufficiency       = 1 - max(0, p - p(y | only the top-k% tokens, in order))
All four are "higher is better". Soft metrics average `n_samples` Bernoulli draws (seeded);
the perturbed embeddings go through the model in batches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from explorer.analysis.attribution.task import (
    AttributionTask,
    context_embeddings,
    continuation_logprob_embeds,
    continuation_logprob_ids,
)
from explorer.backends.language import LanguageModel
from explorer.errors import InputError

METRICS = ("soft_nc", "soft_ns", "comprehensiveness", "sufficiency")
MAX_ROWS_PER_FORWARD = 32
MAX_TOKENS_PER_FORWARD = 8192  # rows x tokens per pass, so a 4,096-token prompt runs 2 rows at a time


@dataclass(frozen=True)
class FaithfulnessParams:
    """n_samples: Bernoulli draws per soft metric; fraction: top share of tokens for the hard metrics."""

    n_samples: int = 10
    fraction: float = 0.2

    def validate(self) -> None:
        if not 1 <= self.n_samples <= 200:
            raise InputError(f"n_samples must be between 1 and 200, got {self.n_samples}")
        if not 0.0 < self.fraction < 1.0:
            raise InputError(f"fraction (of tokens hard-deleted) must be in (0, 1), got {self.fraction}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def normalise_importance(scores: torch.Tensor) -> torch.Tensor:
    """(P,) attribution -> (P,) distribution over tokens: positive parts over their sum
    (uniform when nothing is positive or a value is not finite)."""
    s = scores.double()
    pos = s.clamp(min=0)
    total = float(pos.sum())
    if not math.isfinite(total) or total <= 1e-12:
        return torch.full_like(s, 1.0 / max(1, s.numel()))
    return pos / total


def top_fraction_mask(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """(P,) bool: the ceil(fraction * P) highest-scoring tokens (at least one)."""
    p = scores.shape[0]
    k = max(1, math.ceil(fraction * p))
    mask = torch.zeros(p, dtype=torch.bool)
    mask[torch.argsort(scores.double(), descending=True, stable=True)[:k]] = True
    return mask


def target_probs(lm: LanguageModel, task: AttributionTask, embeds: torch.Tensor) -> torch.Tensor:
    """p(target | each context) for embeds (B, P, d) -> (B,) float64, chunked."""
    out = []
    tokens = embeds.shape[1] + task.n_target
    rows = max(1, min(MAX_ROWS_PER_FORWARD, MAX_TOKENS_PER_FORWARD // tokens))  # long prompts: fewer rows
    with torch.inference_mode(), lm.lock, lm.memory_efficient_attention():
        for start in range(0, embeds.shape[0], rows):
            lp = continuation_logprob_embeds(lm, embeds[start : start + rows], task.target_ids)
            out.append(lp.double().exp().cpu())
    return torch.cat(out)


def deletion_prob(lm: LanguageModel, task: AttributionTask, keep: torch.Tensor) -> float:
    """p(target | only the context tokens where `keep` (P,) bool is True, in order).

    An empty context falls back to the tokenizer's BOS (or EOS) token when it has one, else
    the zero embedding of a single position."""
    ids = task.context_ids.cpu()[keep.cpu()]
    if ids.numel() == 0:
        tok = lm.tokenizer
        fallback = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if fallback is None:
            emb = torch.zeros(1, 1, context_embeddings(lm, task).shape[-1], device=lm.device)
            return float(target_probs(lm, task, emb)[0])
        ids = torch.tensor([int(fallback)])
    with torch.inference_mode(), lm.lock:
        lp, _ = continuation_logprob_ids(lm, ids.unsqueeze(0), task.target_ids)
    return float(lp.double().exp()[0])


def faithfulness(
    lm: LanguageModel,
    task: AttributionTask,
    scores: torch.Tensor,
    params: FaithfulnessParams | None = None,
    seed: int = 0,
) -> dict[str, float | None]:
    """Soft-NC, Soft-NS, hard comprehensiveness and sufficiency of `scores` (P,) for `task`."""
    params = params or FaithfulnessParams()
    params.validate()
    emb = context_embeddings(lm, task)  # (P, d)
    p_len, d = emb.shape
    s = normalise_importance(scores.cpu()).float()  # (P,)
    gen = torch.Generator(device="cpu").manual_seed(int(seed) + 7919)
    n = params.n_samples
    u_suff = torch.rand(n, p_len, d, generator=gen)
    u_comp = torch.rand(n, p_len, d, generator=gen)
    keep_suff = (u_suff < s.view(1, p_len, 1)).to(emb.dtype).to(emb.device)
    keep_comp = (u_comp < (1 - s).view(1, p_len, 1)).to(emb.dtype).to(emb.device)
    batch = torch.cat(
        [
            emb.unsqueeze(0),  # original
            torch.zeros_like(emb).unsqueeze(0),  # zero baseline
            emb.unsqueeze(0) * keep_suff,
            emb.unsqueeze(0) * keep_comp,
        ]
    )
    probs = target_probs(lm, task, batch)
    p, p0 = float(probs[0]), float(probs[1])
    p_ss = probs[2 : 2 + n]
    p_sc = probs[2 + n : 2 + 2 * n]
    top = top_fraction_mask(scores.cpu(), params.fraction)
    p_hc = deletion_prob(lm, task, ~top)
    p_hs = deletion_prob(lm, task, top)
    soft_s = float((1 - (p - p_ss).clamp(min=0)).mean())
    soft_c = float((p - p_sc).clamp(min=0).mean())
    s0 = 1 - max(0.0, p - p0)
    den = 1 - s0
    soft_ns: float | None = None
    soft_nc: float | None = None
    if den > 1e-9:
        soft_ns = max(0.0, soft_s - s0) / den
        soft_nc = soft_c / den
    return {
        "soft_nc": soft_nc,
        "soft_ns": soft_ns,
        "comprehensiveness": max(0.0, p - p_hc),
        "sufficiency": 1 - max(0.0, p - p_hs),
    }
