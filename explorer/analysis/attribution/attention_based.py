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
from explorer.backends.language import LanguageModel
from explorer.errors import InputError


def _head_means(lm: LanguageModel, task: AttributionTask, last_only: bool = False) -> list[torch.Tensor]:
    """Each layer's attention over context + target[:-1], mean over heads: (T, T) per layer.

    Read layer by layer (`attention_pass`), so a long prompt never holds every head's matrix
    (n_layers x n_heads x T^2); `last_only` runs the pass up to the last block and keeps it alone."""
    if task.foil_ids is not None:
        raise InputError("attention-based scores do not support contrastive attribution (contrast)")
    # The context is already bounded by the prompt limit (Settings.max_prompt_tokens, in build_task).
    ids = torch.cat([task.context_ids.cpu(), task.target_ids.cpu()[:-1]])
    means: list[torch.Tensor] = []
    layers = [lm.n_layers - 1] if last_only else None
    lm.attention_pass(ids, lambda layer, w: means.append(w.mean(dim=0)), layers=layers)
    return means


def _query_rows(task: AttributionTask) -> slice:
    return slice(task.n_context - 1, task.n_context - 1 + task.n_target)


def last_layer_attention(
    lm: LanguageModel, task: AttributionTask, params: NoParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Mean over heads of the last layer's attention from the predicting positions: (P,) >= 0."""
    att = _head_means(lm, task, last_only=True)[-1]  # (T, T)
    rows = att[_query_rows(task), : task.n_context]  # (K, P)
    return rows.mean(dim=0).float().cpu(), {}, []


def rollout_scores(
    lm: LanguageModel, task: AttributionTask, params: NoParams, seed: int = 0
) -> tuple[torch.Tensor, dict[str, Any], list[str]]:
    """Attention rollout with residual mixing 0.5 (`attention_math.attention_rollout`): (P,) >= 0."""
    query = _query_rows(task)
    rollout = attention_math.rollout_rows(_head_means(lm, task), range(query.start, query.stop))  # (K, T)
    rows = rollout[:, : task.n_context]
    return rows.mean(dim=0).float().cpu(), {}, []
