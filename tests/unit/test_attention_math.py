"""The one attention-maths module: rollout, row entropy and flow, for numpy and torch inputs.

Invariants: rollout rows sum to 1 for any residual weight; weight 1 gives the identity; numpy
and torch inputs give the same numbers; a tensor's result stays on its device (the identity is
built where the input lives). And the maths exists once: no other module under explorer/
defines a rollout or a row entropy.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.analysis.attention_math import (
    attention_flow,
    attention_rollout,
    residual_augmented,
    rollout_rows,
    row_entropy,
)
from explorer.errors import InputError

EXPLORER = Path(__file__).resolve().parents[2] / "explorer"


def causal_attention(n_layers: int, n_heads: int, seq: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_layers, n_heads, seq, seq)) * 2
    logits[..., np.triu(np.ones((seq, seq), dtype=bool), 1)] = -np.inf
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)  # type: ignore[no-any-return]


@pytest.mark.parametrize("weight", [0.0, 0.25, 0.5, 1.0])
def test_rollout_rows_sum_to_one_for_any_residual_weight(weight: float) -> None:
    att = causal_attention(4, 3, 9)
    rollout = attention_rollout(att, weight)
    assert rollout.shape == (4, 9, 9) and rollout.dtype == np.float64
    np.testing.assert_allclose(rollout.sum(-1), 1.0, atol=1e-12)
    if weight == 1.0:
        np.testing.assert_allclose(rollout[-1], np.eye(9), atol=1e-12)


def test_rollout_is_the_product_of_the_augmented_layers() -> None:
    att = causal_attention(3, 2, 6, seed=3)
    aug = residual_augmented(att)
    np.testing.assert_allclose(attention_rollout(att)[-1], aug[2] @ aug[1] @ aug[0], atol=1e-12)


def test_numpy_and_torch_inputs_agree() -> None:
    att = causal_attention(3, 2, 7, seed=1)
    from_torch = attention_rollout(torch.from_numpy(att).float(), 0.3)
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float64
    np.testing.assert_allclose(from_torch.numpy(), attention_rollout(att.astype(np.float32), 0.3), atol=1e-12)
    np.testing.assert_allclose(row_entropy(torch.from_numpy(att)).numpy(), row_entropy(att), atol=1e-12)


def test_result_stays_on_the_input_device() -> None:
    """The identity is built on the input's device: a 'meta' tensor (no data, no CPU) goes through."""
    att = torch.empty(2, 3, 5, 5, device="meta")
    assert attention_rollout(att).device.type == "meta"
    assert residual_augmented(att).device.type == "meta"
    assert row_entropy(att).device.type == "meta"
    means = [torch.empty(5, 5, device="meta") for _ in range(2)]
    assert rollout_rows(means, [4]).device.type == "meta"  # attention-based attribution


def test_rollout_rows_equal_the_full_rollout() -> None:
    """The row-vector rollout (attention-based attribution, long prompts) is the full product's rows."""
    att = causal_attention(4, 3, 9, seed=2)
    means = [torch.from_numpy(att[layer].mean(axis=0)).float() for layer in range(4)]
    full = attention_rollout(att.astype(np.float32), 0.4)[-1]
    np.testing.assert_allclose(rollout_rows(means, [8, 3], 0.4).numpy(), full[[8, 3]], atol=1e-6)


def test_row_entropy_bounds() -> None:
    one_hot = np.zeros((2, 5))
    one_hot[:, 2] = 1.0
    np.testing.assert_allclose(row_entropy(one_hot), 0.0)
    np.testing.assert_allclose(row_entropy(np.full((3, 8), 1 / 8)), 3.0)


def test_bad_residual_weight_is_an_input_error() -> None:
    att = causal_attention(1, 1, 3)
    with pytest.raises(InputError, match="residual weight"):
        attention_rollout(att, 1.5)


def test_flow_accepts_tensors() -> None:
    att = causal_attention(2, 2, 5, seed=2)
    norm_np, raw_np = attention_flow(att, [4])
    norm_t, raw_t = attention_flow(torch.from_numpy(att), [4])
    np.testing.assert_allclose(raw_t, raw_np, atol=1e-12)
    np.testing.assert_allclose(norm_t.sum(), 1.0, atol=1e-12)


def test_attention_maths_is_defined_once() -> None:
    """Rollout, flow and row entropy live only in attention_math; the attention modules call it."""
    definition = re.compile(r"def (attention_rollout|attention_flow|residual_augmented|row_entropy)\b")
    own_maths = re.compile(r"(np|torch)\.(eye|log2)\(")  # an identity for rollout, a log for entropy
    offenders = []
    for path in EXPLORER.rglob("*.py"):
        if path.name == "attention_math.py":
            continue
        text = path.read_text()
        offenders += [f"{path.relative_to(EXPLORER)}: def {name}" for name in definition.findall(text)]
        in_analysis = path.relative_to(EXPLORER).parts[0] == "analysis"
        if in_analysis and "attention" in path.name and own_maths.search(text):
            offenders.append(f"{path.relative_to(EXPLORER)}: {own_maths.search(text).group(0)}")  # type: ignore[union-attr]
    assert not offenders, offenders
