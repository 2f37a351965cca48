"""What a text-pruning row costs: analytic FLOPs of the blocks, and attribution scores with the
passes they ran (counted as they run; backward = 2x forward)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from explorer.backends.language import LanguageModel


@contextmanager
def counted_block_flops(lm: LanguageModel) -> Iterator[list[float]]:
    """Count the analytic FLOPs of every pass through the blocks inside the context.

    A pass over a (B, T) batch costs B * n_layers * prefill_flops(T); under autograd (the input
    requires grad) the backward pass is counted as twice the forward, so 3x. Yields a one-element
    list holding the running total."""
    total = [0.0]
    n_layers = lm.n_layers

    def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        if isinstance(hidden, torch.Tensor) and hidden.dim() == 3:
            factor = 3.0 if torch.is_grad_enabled() and hidden.requires_grad else 1.0
            total[0] += factor * hidden.shape[0] * n_layers * prefill_flops(lm, int(hidden.shape[1]))

    handle = lm.blocks()[0].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield total
    finally:
        handle.remove()


def attribution_scores(
    lm: LanguageModel, ids: torch.Tensor, target_ids: list[int], method: str, seed: int
) -> tuple[np.ndarray, float, float]:
    """(n,) scores of `method` for the prompt towards `target_ids` (their summed log-probability),
    with what computing them cost: (scores, seconds, FLOPs of the model passes it ran)."""
    from explorer.analysis.attribution import AttributionTask, get_method, run_method

    m = get_method(method)
    task = AttributionTask(
        context_ids=ids.cpu(),
        target_ids=torch.tensor(target_ids, dtype=torch.long),
        foil_ids=None,
        tokens=lm.tokens_str(ids.tolist()),
    )
    t0 = time.perf_counter()
    with counted_block_flops(lm) as flops:
        scores, _, _ = run_method(lm, task, m, m.make_params({}).to_json(), seed)
    return np.asarray(scores, dtype=np.float64), time.perf_counter() - t0, flops[0]


def block_weight_count(lm: LanguageModel) -> int:
    """Weights of one block used in matmuls (every parameter with >= 2 dims: Linear or Conv1D)."""
    return sum(p.numel() for p in lm.blocks()[0].parameters() if p.dim() >= 2)


def prefill_flops(lm: LanguageModel, tokens: int) -> float:
    """Analytic FLOPs of one block on `tokens` tokens: 2*T*W (matmuls) + 4*T^2*d (attention)."""
    d_attn = int(getattr(lm.config, "num_attention_heads", 1)) * int(
        getattr(lm.config, "head_dim", None) or lm.config.hidden_size // lm.config.num_attention_heads
    )
    return 2.0 * tokens * block_weight_count(lm) + 4.0 * tokens * tokens * d_attn
