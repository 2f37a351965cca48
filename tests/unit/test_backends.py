"""The backend seam: forward / capture / generate / embed / unembed, inputs as embeddings,
per-position modality, dtypes, and that nothing outside `explorer/backends/` calls the HF model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_ARCHS, make_tiny_lm

from explorer.analysis.attention import analyze_attention
from explorer.analysis.attribution import run_attribution
from explorer.analysis.logit_lens import logit_lens
from explorer.analysis.pruning.text import prune_text
from explorer.backends import DTYPE_NAMES, IMAGE, TEXT, resolve_dtype
from explorer.cli import DTYPE_CHOICES
from explorer.errors import InputError

PROMPT = "the cat sat on the mat because it was"
HALF_DTYPES = ("float16", "bfloat16")
_LMS: dict[tuple[str, str], Any] = {}


def tiny(arch: str, dtype: str = "float32") -> Any:
    """The same random weights in `dtype` (drawn in float32, then converted)."""
    if (arch, dtype) not in _LMS:
        _LMS[(arch, dtype)] = make_tiny_lm(arch, dtype=dtype)
    return _LMS[(arch, dtype)]


# Largest allowed |log p(half) - log p(float32)| of the final prediction, by dtype (bfloat16 keeps
# 8 bits of mantissa, float16 11).
LOGP_TOLERANCE = {"float16": 0.05, "bfloat16": 0.4}


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_logit_lens_in_half_precision_matches_float32(arch: str, dtype: str) -> None:
    full, half = tiny(arch), tiny(arch, dtype)
    assert half.dtype == getattr(torch, dtype)
    a = logit_lens(full, PROMPT, top_k=5, targets=["cat"])
    b = logit_lens(half, PROMPT, top_k=5, targets=["cat"])
    assert a.topk_ids.shape == b.topk_ids.shape
    assert np.isfinite(b.topk_probs).all() and np.isfinite(b.tracked["prob"]).all()
    # every layer's lens read-out (final norm + unembedding in half precision) stays close
    tol = LOGP_TOLERANCE[dtype]
    la = np.log(a.tracked_matrix("target", "prob", "cat"))
    lb = np.log(b.tracked_matrix("target", "prob", "cat"))
    assert np.nanmax(np.abs(la - lb)) < tol, np.nanmax(np.abs(la - lb))
    # the last layer is still the model's own output
    ids = torch.tensor(b.input_ids)
    with torch.no_grad():
        own = torch.log_softmax(half.forward(ids.unsqueeze(0)).logits[0].float(), -1)
    last = b.tracked_matrix("final_top1", "prob")[-1]
    top1 = own.argmax(-1)
    assert np.allclose(np.log(last), own[torch.arange(len(ids)), top1].numpy(), atol=1e-3)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_attention_attribution_and_pruning_run_in_half_precision(arch: str, dtype: str) -> None:
    full, half = tiny(arch), tiny(arch, dtype)
    att_a, att_b = analyze_attention(full, PROMPT), analyze_attention(half, PROMPT)
    assert np.abs(att_a.attentions - att_b.attentions).max() < 0.05
    for method in ("input_x_gradient", "attention_rollout"):
        r = run_attribution(half, PROMPT, " the", method=method)
        assert np.isfinite(r.scores).all()
        ref = run_attribution(full, PROMPT, " the", method=method)
        assert np.corrcoef(ref.scores, r.scores)[0, 1] > 0.9, method
    pruned = prune_text(
        half,
        PROMPT,
        strategies=["fastv", "self_information"],
        keep_ratios=[1.0, 0.5],
        layer=1,
        continuation_tokens=0,
    )
    assert all(np.isfinite(row.fidelity["kl"]) for row in pruned.rows)


def test_forward_accepts_embeddings_and_matches_ids() -> None:
    lm = tiny("llama")
    ids = torch.tensor([[5, 17, 301, 42]])
    with torch.no_grad():
        by_ids = lm.forward(ids).logits
        by_embeds = lm.forward(inputs_embeds=lm.embed(ids)).logits
        last = lm.forward(ids, logits_to_keep=1).logits
    torch.testing.assert_close(by_ids, by_embeds)
    torch.testing.assert_close(last[:, -1], by_ids[:, -1])
    with pytest.raises(ValueError):
        lm.forward(ids, inputs_embeds=lm.embed(ids))


def test_capture_from_embeddings_marks_image_positions() -> None:
    lm = tiny("gpt2")
    ids = torch.tensor([5, 17, 301, 42, 7])
    with torch.no_grad():
        embeds = lm.embed(ids).clone()
    embeds[1:3] = torch.randn(2, embeds.shape[-1])  # two "projected image patches"
    labelled = torch.tensor([5, -1, -1, 42, 7])
    trace = lm.capture(labelled, inputs_embeds=embeds)
    assert trace.modality == [TEXT, IMAGE, IMAGE, TEXT, TEXT]
    assert trace.positions(IMAGE) == [1, 2] and trace.tokens[1] == "<image>"
    assert trace.residual.shape == (lm.n_layers + 1, 5, lm.d_model)
    # the last layer read through the unembedding is the model's own output
    with torch.no_grad():
        torch.testing.assert_close(lm.unembed(trace.residual[-1]).float(), trace.logits, atol=1e-4, rtol=1e-4)
    text_only = lm.capture(ids)
    assert text_only.modality == [TEXT] * 5
    with pytest.raises(ValueError):
        lm.capture(ids, modality=["text"] * 4)


def test_generate_greedy_matches_stepwise_argmax_and_hooks_run_each_step() -> None:
    lm = tiny("qwen2")
    prompt = torch.tensor([5, 17, 301, 42])
    steps: list[int] = []
    gen = lm.generate(prompt, 4, stop_at_eos=False, step_hook=lambda s, t: steps.append(s))
    assert steps == [0, 1, 2, 3] and gen.tokens.shape == (1, 4)
    ids = prompt.clone()
    for _ in range(4):  # without a cache, one full pass per token
        with torch.no_grad():
            nxt = lm.forward(ids.unsqueeze(0)).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1)])
    assert gen.ids() == ids[4:].tolist()
    a = lm.generate(prompt, 5, sample=True, seed=3, stop_at_eos=False)
    b = lm.generate(prompt, 5, sample=True, seed=3, stop_at_eos=False)
    assert a.ids() == b.ids()


def test_dtype_names_are_validated_and_auto_means_float32_on_cpu() -> None:
    assert tuple(DTYPE_CHOICES) == DTYPE_NAMES
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(InputError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_half_precision_weights_are_stored_apart() -> None:
    assert tiny("gpt2").weight_hash != tiny("gpt2", "float16").weight_hash


def lines_outside_the_backends(pattern: str) -> list[str]:
    """file:line of every line of explorer/ outside backends/ that matches `pattern`."""
    root = Path(__file__).resolve().parents[2] / "explorer"
    regex = re.compile(pattern)
    return [
        f"{path.relative_to(root)}:{i}"
        for path in root.rglob("*.py")
        if "backends" not in path.parts
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if regex.search(line)
    ]


def test_no_module_outside_the_backends_calls_the_hf_model() -> None:
    offenders = lines_outside_the_backends(r"\.(hf_model|model)\s*\(|\.hf_model\b")
    assert not offenders, offenders


def test_only_the_backends_import_transformers() -> None:
    """The backend package is the one door to transformers."""
    offenders = lines_outside_the_backends(r"^\s*(from transformers\b|import transformers\b)")
    assert not offenders, offenders


def test_forward_and_generate_print_no_deprecation_warning() -> None:
    """The backend reads the KV cache under the name this transformers version uses: reading the
    other one (`past_key_values` on transformers 5) prints a deprecation warning on stderr, which
    the CLI must not show (its stderr is a progress bar or one line of error)."""
    import subprocess
    import sys

    code = (
        "import sys, torch; sys.path.insert(0, 'tests'); from conftest import make_tiny_lm\n"
        "lm = make_tiny_lm('llama')\n"
        "ids = torch.tensor([[1, 2, 3, 4]])\n"
        "lm.forward(ids, use_cache=False); lm.forward(ids, use_cache=True)\n"
        "lm.generate(ids, max_new_tokens=3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deprecated" not in proc.stderr, proc.stderr[-2000:]
