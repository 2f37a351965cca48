"""FastV inside the LM: the one batch that runs pruned prompts and FastV rows of a keep ratio
together. The hooks that cut the sequence after block K-1 are the backend's
(`explorer.backends.token_cut`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from explorer.backends.token_cut import FastVCut


def padded_fastv_batch(
    ids: torch.Tensor, prompt_kept: Sequence[np.ndarray], fastv_kept: Sequence[np.ndarray], layer: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, FastVCut]:
    """One batch for all rows of a keep ratio: pruned prompts and FastV rows together.

    ids: (n,) the prompt; prompt_kept: U kept sets (k each) of strategies that prune the prompt;
    fastv_kept: V kept sets (k each) of FastV. Returns input_ids, attention_mask, position_ids
    (each (U + V, n)) and the cut. A pruned prompt is left-padded to n tokens (mask 0, position 0)
    and its k real tokens get positions 0..k-1, so blocks 0..K-1 compute it exactly as a fresh
    k-token prompt (the padded keys are masked); FastV rows are the whole prompt. At block K the
    cut keeps, per row, the last k positions (pruned prompt) or FastV's kept set, so blocks
    K..L-1 and their KV cache hold k tokens for every row, and decoding runs all rows as one batch.
    The price is that blocks 0..K-1 run the U pruned prompts at length n instead of k."""
    n = int(ids.shape[0])
    rows, masks, positions, kept = [], [], [], []
    for k_set in prompt_kept:
        k = len(k_set)
        rows.append(torch.cat([ids.new_zeros(n - k), ids[torch.as_tensor(k_set)]]))
        masks.append(torch.cat([torch.zeros(n - k, dtype=torch.long), torch.ones(k, dtype=torch.long)]))
        positions.append(torch.cat([torch.zeros(n - k, dtype=torch.long), torch.arange(k)]))
        kept.append(torch.arange(n - k, n))
    for k_set in fastv_kept:
        rows.append(ids)
        masks.append(torch.ones(n, dtype=torch.long))
        positions.append(torch.arange(n))
        kept.append(torch.as_tensor(k_set, dtype=torch.long))
    cut = FastVCut(torch.stack(kept), n, layer)
    return torch.stack(rows), torch.stack(masks), torch.stack(positions), cut
