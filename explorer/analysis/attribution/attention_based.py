"""Attention-based scores, for comparison (they are not explanations of the output in general).

Both read the attention patterns of one forward pass over context + target[:-1] (via
`capture`), at the query positions that predict the target tokens (P-1 ... P+K-2), and keep
the columns of the context tokens:

- last_layer_attention: the last layer's attention averaged over heads (and over the query
  positions of a multi-token target).
- attention_rollout (Abnar & Zuidema 2020): per layer A' = 0.5 * mean_heads(A) + 0.5 * I,
  rows renormalised; R = A'_L ... A'_1; the query rows of R (`analysis.attention_math`).
"""

from __future__ import annotations

from typing import Any

import torch

from explorer.analysis import attention_math
from explorer.analysis.attribution.gradients import NoParams
from explorer.analysis.attribution.task import AttributionTask
from explorer.backends.language import LanguageModel, capture
from explorer.errors import InputError


def _attentions(lm: LanguageModel, task: AttributionTask) -> torch.Tensor:
    """(L, H, T, T) attention patterns over context + target[:-1]."""
    if task.foil_ids is not None:
        raise InputError("attention-based scores do not support contrastive attribution (contrast)")
    # The context is already bounded by the prompt limit (Settings.max_prompt_tokens, in build_task).
    ids = torch.cat([task.context_ids.cpu(), task.target_ids.cpu()[:-1]])
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


def rollout_scores(
    lm: LanguageModel, task: AttributionTask, params: NoParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Attention rollout with residual mixing 0.5 (`attention_math.attention_rollout`): (P,) >= 0."""
    rollout = rollout_after_last_block(_attentions(lm, task))  # (T, T), on the model's device
    rows = rollout[_query_rows(task), : task.n_context]
    return rows.mean(dim=0).float().cpu(), {}, []


def rollout_after_last_block(attentions: torch.Tensor) -> torch.Tensor:
    """(L, H, T, T) -> (T, T) float64: the rollout after the last block."""
    return attention_math.attention_rollout(attentions)[-1]
