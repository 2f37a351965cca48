"""Replacement models for ReAGent: who proposes the token that takes a context token's place.

ReAGent (Zhao & Shan 2024) replaces a random subset of context tokens by *plausible*
alternatives predicted by a masked LM (RoBERTa in the paper) and measures how much the
analysed model's confidence in the target drops. Three choices, each labelled in the result:

- `mlm` — a masked LM by hub id or local directory (the paper's choice; RoBERTa by default).
  For every context position i we mask that position in the decoded text, take the MLM's top
  predictions, and map each back into the analysed LM's vocabulary through its text (the
  first token of its re-tokenisation, keeping a leading space when the original token had
  one). One batched MLM pass covers all positions.
- `causal` — the analysed causal LM itself (works offline, the default when no MLM is
  available): at position i, the top candidates from its next-token distribution given the
  left context x_<i, re-ranked by the likelihood of the *whole* sequence with the candidate in
  place (so the right context counts too). Position 0 has no left context; its pool is the
  union of the other positions' candidates.
- `uniform` — uniform random vocabulary tokens (an ablation: implausible replacements).

The original token is never proposed. Candidates are computed once per attribution from the
original context: the paper's replacement does not depend on the evolving importance scores,
and precomputing lets every probe step sample replacements without another model call. With
`candidates=1` every position always receives its single best replacement (the paper's argmax);
with more, each replacement is drawn in proportion to the replacement model's score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from explorer.analysis.attribution.task import sequence_loglik
from explorer.backends.language import LanguageModel
from explorer.backends.masked import MaskedLM, load_masked_lm
from explorer.errors import InputError, ModelNotAvailableError

REPLACEMENTS = ("auto", "causal", "mlm", "uniform")
DEFAULT_MLM = "FacebookAI/roberta-base"
MLM_TOP = 50  # MLM predictions inspected per position before mapping to the LM vocabulary
# Budget for the causal re-ranking pass: pool x P sequences of P tokens each.
CAUSAL_RERANK_BUDGET = 160_000


@dataclass
class CandidateTable:
    """Per-position replacement candidates.

    ids:   (P, C) int64 token ids in the analysed LM's vocabulary (never the original token)
    probs: (P, C) float32 sampling weights per row (rows sum to 1; zero for padding slots)
    label: what produced them, e.g. "causal:smollm2-135m", "mlm:FacebookAI/roberta-base"
    """

    ids: torch.Tensor
    probs: torch.Tensor
    label: str

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw one replacement per position for `n` probes: (n, P) int64."""
        p, c = self.ids.shape
        if c == 1:
            return self.ids[:, 0].unsqueeze(0).expand(n, p).clone()
        flat = self.probs.unsqueeze(0).expand(n, p, c).reshape(n * p, c)
        choice = torch.multinomial(flat, 1, generator=generator).view(n, p)
        return self.ids.unsqueeze(0).expand(n, p, c).gather(-1, choice.unsqueeze(-1)).squeeze(-1)


@dataclass
class UniformSampler:
    """Uniform random vocabulary tokens, never the original token at that position."""

    context_ids: torch.Tensor
    vocab_size: int
    label: str = "uniform"

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        p = self.context_ids.shape[0]
        draw = torch.randint(0, self.vocab_size - 1, (n, p), generator=generator)
        # skip the original id: values >= original shift up by one (uniform over the rest)
        return draw + (draw >= self.context_ids.unsqueeze(0)).long()


Sampler = CandidateTable | UniformSampler


def _special_ids(tokenizer: Any) -> set[int]:
    return {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}


def causal_rerank_fits(n_tokens: int, pool: int = 8) -> bool:
    """Whether re-ranking `pool` candidates per token by whole-sequence likelihood fits the budget
    (pool x P sequences of P tokens); longer prompts use the left context's predictions alone."""
    return pool * n_tokens * n_tokens <= CAUSAL_RERANK_BUDGET


def _left_context_candidates(
    lm: LanguageModel, logits: torch.Tensor, pools: list[list[int]], candidates: int
) -> CandidateTable:
    """Each position's first `candidates` pool entries, weights = softmax of their next-token
    logits from the left context (position 0, which has none, gets uniform weights)."""
    p = len(pools)
    ids = torch.zeros(p, candidates, dtype=torch.long)
    weights = torch.zeros(p, candidates)
    for i, pool_i in enumerate(pools):
        chosen = (pool_i * candidates)[:candidates]  # repeat when the pool is short
        ids[i] = torch.tensor(chosen)
        if i == 0:
            weights[i] = 1.0 / candidates
        else:
            weights[i] = torch.softmax(logits[i - 1, ids[i]], dim=0)
    return CandidateTable(ids=ids, probs=weights, label=f"causal:{lm.model_id}")


def causal_candidates(
    lm: LanguageModel, context_ids: torch.Tensor, candidates: int = 4, pool: int = 8
) -> CandidateTable:
    """Candidates from the analysed causal LM, re-ranked by whole-sequence likelihood.

    context_ids: (P,). For each position take `pool` top next-token predictions from the left
    context (excluding the original and special tokens), score each by the log-likelihood of
    the full context with it in place, keep the best `candidates`, weights = softmax of those
    log-likelihoods.
    """
    p = int(context_ids.shape[0])
    pool = max(pool, candidates)
    rerank = causal_rerank_fits(p, pool)
    special = _special_ids(lm.tokenizer)
    with torch.inference_mode():
        logits = lm.forward(context_ids.unsqueeze(0)).logits[0].float().cpu()
    # logits[i] predicts position i + 1
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool)
    for s in special:
        if s < banned.numel():
            banned[s] = True
    pools: list[list[int]] = [[] for _ in range(p)]
    for i in range(1, p):
        row = logits[i - 1].clone()
        row[banned] = -float("inf")
        row[int(context_ids[i])] = -float("inf")
        pools[i] = row.topk(pool).indices.tolist()
    if p == 1:
        row = logits[0].clone()
        row[banned] = -float("inf")
        row[int(context_ids[0])] = -float("inf")
        pools[0] = row.topk(pool).indices.tolist()
    else:
        union: list[int] = []
        for i in range(1, p):
            for c in pools[i]:
                if c not in union and c != int(context_ids[0]):
                    union.append(c)
        pools[0] = union[:pool] if union else [int((int(context_ids[0]) + 1) % lm.vocab_size)]
    if not rerank:  # a long prompt: the left context's predictions, weighted by their logits
        return _left_context_candidates(lm, logits, pools, candidates)
    # whole-sequence likelihood of every (position, candidate) variant
    variants = []
    owners = []
    for i in range(p):
        for c in pools[i]:
            v = context_ids.clone()
            v[i] = c
            variants.append(v)
            owners.append((i, c))
    with lm.lock:
        ll = sequence_loglik(lm, torch.stack(variants))
    ids = torch.zeros(p, candidates, dtype=torch.long)
    weights = torch.zeros(p, candidates)
    by_pos: dict[int, list[tuple[float, int]]] = {}
    for (i, c), score in zip(owners, ll.tolist(), strict=True):
        by_pos.setdefault(i, []).append((score, c))
    for i in range(p):
        best = sorted(by_pos[i], key=lambda t: -t[0])[:candidates]
        scores = torch.tensor([s for s, _ in best])
        w = torch.softmax(scores - scores.max(), dim=0)
        for j, (_, c) in enumerate(best):
            ids[i, j] = c
            weights[i, j] = w[j]
        for j in range(len(best), candidates):  # fewer than asked: repeat the best, weight 0
            ids[i, j] = best[0][1]
    return CandidateTable(ids=ids, probs=weights, label=f"causal:{lm.model_id}")


def mlm_candidates(
    lm: LanguageModel, context_ids: torch.Tensor, mlm: MaskedLM, candidates: int = 4
) -> CandidateTable:
    """Candidates from a masked LM, one masked position at a time, mapped into the LM's vocabulary.

    context_ids: (P,). Position i is masked in the decoded text (prefix + mask + suffix, with
    the original token's leading space kept); the MLM's top predictions are decoded, stripped
    of WordPiece/BPE markers, re-tokenised by the analysed LM, and their first token kept.
    """
    p = int(context_ids.shape[0])
    pieces = lm.tokens_str(context_ids.tolist())
    special_lm = _special_ids(lm.tokenizer)
    mask = mlm.tokenizer.mask_token
    texts = []
    for i in range(p):
        prefix = "".join(pieces[:i])
        suffix = "".join(pieces[i + 1 :])
        lead = " " if pieces[i].startswith(" ") and prefix else ""
        texts.append(prefix + lead + mask + suffix)
    enc, logits = mlm.predict(texts)
    special_mlm = _special_ids(mlm.tokenizer)
    ids = torch.zeros(p, candidates, dtype=torch.long)
    weights = torch.zeros(p, candidates)
    mask_id = mlm.tokenizer.mask_token_id
    for i in range(p):
        where = (enc["input_ids"][i] == mask_id).nonzero()
        chosen: list[tuple[int, float]] = []
        if len(where):
            row = torch.softmax(logits[i, int(where[0, 0])], dim=-1)
            top = row.topk(min(MLM_TOP, row.numel()))
            for prob, mid in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                if mid in special_mlm:
                    continue
                text = str(mlm.tokenizer.decode([mid])).replace("##", "").strip()
                if not text:
                    continue
                if pieces[i].startswith(" "):
                    text = " " + text
                lm_ids = lm.tokenizer(text, add_special_tokens=False).input_ids
                if not lm_ids:
                    continue
                cand = int(lm_ids[0])
                if cand == int(context_ids[i]) or cand in special_lm or any(cand == c for c, _ in chosen):
                    continue
                chosen.append((cand, prob))
                if len(chosen) == candidates:
                    break
        if not chosen:  # nothing usable (e.g. the position was truncated): any other token
            chosen = [(int((int(context_ids[i]) + 1) % lm.vocab_size), 1.0)]
        total = sum(w for _, w in chosen)
        for j in range(candidates):
            c, w = chosen[j] if j < len(chosen) else (chosen[0][0], 0.0)
            ids[i, j] = c
            weights[i, j] = w / total
    return CandidateTable(ids=ids, probs=weights, label=f"mlm:{mlm.name}")


def _note_long_causal(context_ids: torch.Tensor, notes: list[str]) -> None:
    p = int(context_ids.shape[0])
    if not causal_rerank_fits(p):
        notes.append(
            f"replacement candidates: the prompt is {p} tokens, too long to re-rank candidates by whole-sequence "
            "likelihood (pool x P sequences of P tokens); the causal LM's own next-token predictions from the "
            "left context are used, weighted by their probabilities"
        )


def build_sampler(
    lm: LanguageModel,
    context_ids: torch.Tensor,
    replacement: str = "auto",
    mlm_model: str | None = None,
    candidates: int = 4,
) -> tuple[Sampler, list[str]]:
    """The replacement model for one attribution, plus notes (e.g. why 'auto' fell back).

    replacement: 'auto' (the MLM if it loads from local files, else 'causal'), 'mlm', 'causal',
    'uniform'. mlm_model: hub id or local dir (default FacebookAI/roberta-base).
    """
    notes: list[str] = []
    if replacement not in REPLACEMENTS:
        raise InputError(f"unknown replacement model {replacement!r}; choose from {list(REPLACEMENTS)}")
    if candidates < 1:
        raise InputError(f"candidates must be >= 1, got {candidates}")
    name = mlm_model or DEFAULT_MLM
    if replacement == "auto":
        try:
            mlm = load_masked_lm(name, lm.device, local_only=True)
        except ModelNotAvailableError:
            notes.append(
                f"replacement model: masked LM {name!r} (the paper's choice) is not available locally; "
                f"the analysed causal LM proposes the replacements instead"
            )
            _note_long_causal(context_ids, notes)
            return causal_candidates(lm, context_ids, candidates), notes
        return mlm_candidates(lm, context_ids, mlm, candidates), notes
    if replacement == "mlm":
        return mlm_candidates(lm, context_ids, load_masked_lm(name, lm.device), candidates), notes
    if replacement == "causal":
        _note_long_causal(context_ids, notes)
        return causal_candidates(lm, context_ids, candidates), notes
    return UniformSampler(context_ids=context_ids.clone(), vocab_size=lm.vocab_size), notes
