"""Attention-based scores, for comparison (they are not explanations of the output in general).

Both read the attention patterns of one forward pass over context + target[:-1] (via
`capture`), at the query positions that predict the target tokens (P-1 ... P+K-2), and keep
the columns of the context tokens:

- last_layer_attention: the last layer's attention averaged over heads (and over the query
  positions of a multi-token target).
- attention_rollout (Abnar & Zuidema 2020): per layer A' = 0.5 * mean_heads(A) + 0.5 * I,
  rows renormalised; R = A'_L ... A'_1; the query rows of R.
"""

from __future__ import annotations

from typing import Any

import torch

from explorer.analysis.attribution.gradients import NoParams
from explorer.analysis.attribution.task import AttributionTask
from explorer.backends.language import LanguageModel, capture
from explorer.errors import InputError

MAX_ATTENTION_TOKENS = 2048


def _attentions(lm: LanguageModel, task: AttributionTask) -> torch.Tensor:
    """(L, H, T, T) attention patterns over context + target[:-1]."""
    if task.foil_ids is not None:
        raise InputError("attention-based scores do not support contrastive attribution (--contrast)")
    ids = torch.cat([task.context_ids.cpu(), task.target_ids.cpu()[:-1]])
    if ids.numel() > MAX_ATTENTION_TOKENS:
        raise InputError(
            f"attention-based scores are limited to {MAX_ATTENTION_TOKENS} tokens, got {ids.numel()}"
        )
    trace = capture(lm, ids, attentions=True)
    if trace.attentions is None:
        raise RuntimeError("the model returned no attentions")
    return trace.attentions


def _query_rows(task: AttributionTask) -> slice:
    return slice(task.n_context - 1, task.n_context - 1 + task.n_target)


def last_layer_attention(
    lm: LanguageModel, task: AttributionTask, params: NoParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Mean over heads of the last layer's attention from the predicting positions: (P,) >= 0."""
    att = _attentions(lm, task)[-1].mean(dim=0)  # (T, T)
    rows = att[_query_rows(task), : task.n_context]  # (K, P)
    return rows.mean(dim=0).float().cpu(), {}, []


def attention_rollout(
    lm: LanguageModel, task: AttributionTask, params: NoParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Attention rollout with residual mixing 0.5: (P,) >= 0."""
    att = _attentions(lm, task).mean(dim=1).double()  # (L, T, T)
    t = att.shape[-1]
    eye = torch.eye(t, dtype=att.dtype)
    rollout = eye
    for layer in range(att.shape[0]):
        a = 0.5 * att[layer] + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    rows = rollout[_query_rows(task), : task.n_context]
    return rows.mean(dim=0).float().cpu(), {}, []
