"""What a text-pruning row costs: analytic FLOPs of the blocks, attribution scores with the
passes they ran (counted as they run; backward = 2x forward), and the memory of a batched row
(which sizes the sweep's batches)."""

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


def row_bytes(lm: LanguageModel, tokens: int) -> int:
    """Peak bytes one row of a batched eager prefill of `tokens` tokens adds (+ its decoding):
    one block's attention scores and probabilities (2 x heads x T^2, the T^2 term that dominates
    long prompts), the block's activations (residual, q/k/v, MLP: about 8 x d_model + 3 x d_ff per
    token), the KV cache of every block (2 x layers x kv heads x head dim x T) and the last
    position's logits and log-probabilities (2 x vocab), in the model's element size."""
    config = lm.config
    heads = int(getattr(config, "num_attention_heads", 1))
    d_model = int(config.hidden_size)
    head_dim = int(getattr(config, "head_dim", None) or d_model // heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    d_ff = int(getattr(config, "intermediate_size", None) or 4 * d_model)
    vocab = int(getattr(config, "vocab_size", 0))
    t = int(tokens)
    elements = 2 * heads * t * t + (8 * d_model + 3 * d_ff) * t + 2 * lm.n_layers * kv_heads * head_dim * t
    return (elements + 2 * vocab) * torch.tensor([], dtype=lm.dtype).element_size()


def rows_per_batch(lm: LanguageModel, tokens: int, budget_bytes: float) -> int:
    """How many rows of `tokens` tokens one prefill batch may hold within `budget_bytes` (at least 1)."""
    return max(1, int(budget_bytes // row_bytes(lm, tokens)))
