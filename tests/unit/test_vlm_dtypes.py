"""Every VLM view in float16 and bfloat16 against float32: hub VLMs (a tiny random model of each
registered family, built in code) and the projector VLM (the demo VLM's shape at test size).

Like the text dtype tests (tests/unit/test_backends.py): the same random weights are drawn in
float32 and then converted, so any difference is the dtype's. A tiny random LM is nearly uniform
over its vocabulary, which would hide any error; the final norm's gain is raised so every
layer's lens read-out is peaked (a few nats between the top tokens), as in the attribution tests.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_tiny_lm, make_tiny_projector
from PIL import Image

from explorer.analysis.logit_lens import LensParams
from explorer.analysis.vlm_attribution import VLMAttributionParams, vlm_attribution
from explorer.backends.vision import Preprocessing, wrap_vision_model
from explorer.backends.vlm import VisionLanguageModel, capture_vlm, generate, load_vlm, projector_vlm
from explorer.backends.vlm_hub import wrap_hub_vlm
from explorer.vlm.attention import VLMAttentionParams, vlm_attention
from explorer.vlm.lens import vlm_logit_lens
from explorer.vlm.tokens import TokenParams, visual_tokens
from tests.unit.test_vlm_hub import ARCHS, BUILDERS, QUARANTINE, _picture

HALF = ("float16", "bfloat16")
PROMPT = "What is in the picture?"
LOGIT_STD = 3.0  # the final norm's gain is set so the last layer's logits have about this spread
# largest allowed |log p(half) - log p(float32)| of a tracked token at any layer and position
LOGP_TOLERANCE = {"float16": 0.05, "bfloat16": 0.5}
ATTENTION_TOLERANCE = {"float16": 0.01, "bfloat16": 0.05}


def _peaked(model: torch.nn.Module, final_norm: torch.nn.Module, unembed: torch.nn.Module) -> None:
    """Raise the final norm's gain so the logits' spread is about LOGIT_STD (normed residual entries
    have unit scale, so logits scale with gain * std(W_U) * sqrt(d)). Gemma's RMSNorm multiplies by
    1 + weight (zero-initialised)."""
    with torch.no_grad():
        w_u = unembed.weight
        gain = LOGIT_STD / (float(w_u.float().std()) * w_u.shape[-1] ** 0.5)
        w = final_norm.weight
        if float(w.abs().max()) == 0.0:
            w.fill_(gain - 1.0)
        else:
            w.mul_(gain)


_HUB: dict[tuple[str, str], VisionLanguageModel] = {}


def hub_pair(arch: str, dtype: str) -> tuple[VisionLanguageModel, VisionLanguageModel]:
    """(float32, `dtype`) wrapped copies of the same tiny random hub VLM."""
    if arch in QUARANTINE:
        pytest.skip(f"quarantined: {QUARANTINE[arch]}")
    if (arch, "float32") not in _HUB:
        torch.manual_seed(0)
        model, processor = BUILDERS[arch]()
        model.set_attn_implementation("eager")
        full = wrap_hub_vlm(model, processor, model_id=f"tiny-{arch}")
        _peaked(model, full.lm.final_norm_module(), full.lm.unembed_module())
        _HUB[(arch, "float32")] = wrap_hub_vlm(model, processor, model_id=f"tiny-{arch}")
        _HUB[(arch, "processor")] = processor
    if (arch, dtype) not in _HUB:
        full = _HUB[(arch, "float32")]
        half = copy.deepcopy(full.lm.hf_model)
        _HUB[(arch, dtype)] = wrap_hub_vlm(half, _HUB[(arch, "processor")], f"tiny-{arch}", dtype=dtype)
    return _HUB[(arch, "float32")], _HUB[(arch, dtype)]


_REFERENCE: dict[int, Any] = {}
N_TARGETS = 3  # always this many tracked targets: the lens's fused read-out compiles once per count


def _targets(vlm: VisionLanguageModel, image: Image.Image | None) -> LensParams:
    """Lens parameters tracking the N_TARGETS tokens the float32 model predicts most often."""
    trace, _ = capture_vlm(vlm, vlm.prepare(PROMPT, image))
    ids, counts = np.unique(trace.logits.argmax(-1).numpy(), return_counts=True)
    order = [int(i) for i in ids[np.argsort(-counts, kind="stable")]]
    order += [i for i in range(vlm.lm.vocab_size) if i not in order][:N_TARGETS]
    targets = [vlm.lm.token_str(i) for i in order[:N_TARGETS]]
    return LensParams(top_k=3, targets=tuple(targets))


def _lens_gap(full: VisionLanguageModel, half: VisionLanguageModel, image: Image.Image | None) -> float:
    """Lens of both over the same prompt, tracking the float32 model's most frequent top-1 tokens:
    the largest |log p(half) - log p(float32)| over tracked tokens, layers and positions."""
    if id(full) not in _REFERENCE:
        params = _targets(full, image)
        _REFERENCE[id(full)] = (params, vlm_logit_lens(full, PROMPT, image, params=params))
    params, a = _REFERENCE[id(full)]
    b = vlm_logit_lens(half, PROMPT, image, params=params)
    assert a.tokens == b.tokens and a.modality == b.modality and a.grid == b.grid
    assert np.isfinite(b.topk_probs).all()
    gaps = []
    for target in a.target_tokens:
        la = np.log(a.tracked_matrix("target", "prob", target))
        lb = np.log(b.tracked_matrix("target", "prob", target))
        gaps.append(float(np.nanmax(np.abs(la - lb))))
    # the lens is not trivially flat: the last layer separates its top tokens by about a nat
    spread = np.log(a.topk_probs[-1, :, 0]) - np.log(a.topk_probs[-1, :, 2])
    assert float(spread.mean()) > 0.5, spread
    return max(gaps)


def _last_layer_is_the_models_output(vlm: VisionLanguageModel, image: Image.Image) -> None:
    """In any dtype, the last layer's lens read-out is the model's own output."""
    inputs = vlm.prepare(PROMPT, image)
    trace, _ = capture_vlm(vlm, inputs)
    with torch.no_grad():
        lens_last = vlm.lm.unembed(trace.residual[-1].to(vlm.lm.device)).float().cpu()
    torch.testing.assert_close(lens_last, trace.logits, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("arch", ARCHS)
def test_hub_vlm_lens_attention_and_generation_in_half_match_float32(arch: str, dtype: str) -> None:
    full, half = hub_pair(arch, dtype)
    assert half.lm.dtype == getattr(torch, dtype) and full.lm.dtype == torch.float32
    vision = half.lm.hf_model.get_submodule(_vision_path(arch))
    assert next(vision.parameters()).dtype == getattr(torch, dtype)  # the whole model converted
    assert half.weight_hash != full.weight_hash  # runs in different dtypes are stored apart
    image = _picture()
    gap = _lens_gap(full, half, image)
    assert gap < LOGP_TOLERANCE[dtype], gap
    _last_layer_is_the_models_output(half, image)
    # greedy generation with the KV cache = the argmax of a full forward pass, in the half model
    inputs = half.prepare(PROMPT, image)
    out = generate(half, inputs, 3, stop_at_eos=False)
    trace, _ = capture_vlm(half, inputs, out)
    n = inputs.seq_len
    assert trace.logits[n - 1 : n + 2].argmax(-1).tolist() == out
    # attention to the image: the same maps, within the dtype's precision
    params = VLMAttentionParams(generate=0)
    att_a = vlm_attention(full, PROMPT, image, params=params)
    att_b = vlm_attention(half, PROMPT, image, params=params)
    assert att_a.attention.shape == att_b.attention.shape
    assert np.abs(att_a.attention - att_b.attention).max() < ATTENTION_TOLERANCE[dtype]
    assert np.abs(att_a.rollout - att_b.rollout).max() < ATTENTION_TOLERANCE[dtype]
    assert np.abs(att_a.shares - att_b.shares).max() < ATTENTION_TOLERANCE[dtype]


def _vision_path(arch: str) -> str:
    from explorer.backends.vlm_hub import VLM_ARCHITECTURES

    return VLM_ARCHITECTURES[arch].vision_tower


# ---- the projector VLM (tiny-vlm's shape) ------------------------------------------------------
IMAGE_SIZE = 32


def _tiny_vision() -> Any:
    import transformers

    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=IMAGE_SIZE, patch_size=8
    )  # fmt: skip
    torch.manual_seed(1)
    backbone = transformers.AutoModel.from_config(config, attn_implementation="eager")
    return wrap_vision_model(
        backbone, model_id="tiny-dinov2", preprocessing=Preprocessing(image_size=IMAGE_SIZE), device="cpu"
    )


_PROJ: dict[str, VisionLanguageModel] = {}


def projector_pair(dtype: str) -> tuple[VisionLanguageModel, VisionLanguageModel]:
    """(float32, `dtype`) projector VLMs: the same LM weights, vision encoder and projector; only
    the LM is converted (as `load_vlm("tiny-vlm", dtype=...)` does)."""
    for name in ("float32", dtype):
        if name not in _PROJ:
            lm = make_tiny_lm("llama", seed=3)
            _peaked(lm.hf_model, lm.final_norm_module(), lm.unembed_module())
            if name != "float32":
                lm.hf_model.to(getattr(torch, name))
            vision = _PROJ["vision"] if "vision" in _PROJ else _tiny_vision()
            _PROJ["vision"] = vision
            projector = make_tiny_projector(lm)
            _PROJ[name] = projector_vlm(lm, vision, projector, model_id="tiny-test-vlm")
    return _PROJ["float32"], _PROJ[dtype]


def _scene() -> Image.Image:
    arr = np.full((40, 40, 3), 230, dtype=np.uint8)
    arr[4:18, 4:18] = (220, 30, 30)
    arr[22:36, 22:36] = (30, 30, 220)
    return Image.fromarray(arr, "RGB")


@pytest.mark.parametrize("dtype", HALF)
def test_projector_vlm_views_in_half_match_float32(dtype: str) -> None:
    full, half = projector_pair(dtype)
    assert half.lm.dtype == getattr(torch, dtype)
    image = _scene()
    # the visual tokens are computed in float32 (encoder and projector) and cast as they enter the LM
    a, b = full.prepare(PROMPT, image), half.prepare(PROMPT, image)
    assert a.image_positions == b.image_positions and b.inputs_embeds is not None
    pos = a.image_positions
    torch.testing.assert_close(b.inputs_embeds[pos], a.inputs_embeds[pos], atol=0, rtol=0)  # type: ignore[index]
    gap = _lens_gap(full, half, image)
    assert gap < LOGP_TOLERANCE[dtype], gap
    _last_layer_is_the_models_output(half, image)
    # lens over generated steps: KV-cache generation = a full forward's argmax
    inputs = half.prepare(PROMPT, image)
    out = generate(half, inputs, 3, stop_at_eos=False)
    trace, _ = capture_vlm(half, inputs, out)
    n = inputs.seq_len
    assert trace.logits[n - 1 : n + 2].argmax(-1).tolist() == out
    lens = vlm_logit_lens(half, PROMPT, image, params=dataclasses.replace(_targets(full, image), generate=3))
    assert len(lens.generated) == 3 and np.isfinite(lens.topk_probs).all()
    # attention
    params = VLMAttentionParams(generate=0)
    att_a, att_b = (
        vlm_attention(full, PROMPT, image, params=params),
        vlm_attention(half, PROMPT, image, params=params),
    )
    assert np.abs(att_a.attention - att_b.attention).max() < ATTENTION_TOLERANCE[dtype]
    # attribution to the patches, scored against the same given answer
    for method in ("occlusion", "reagent"):
        extra = {"num_probes": 4, "max_steps": 12, "random_trials": 2} if method == "reagent" else {}
        p = VLMAttributionParams(method=method, target=" blue", **extra)  # type: ignore[arg-type]
        ra, rb = vlm_attribution(full, PROMPT, image, p), vlm_attribution(half, PROMPT, image, p)
        assert np.isfinite(rb.scores).all() and np.isfinite(rb.answer_logprob)
        assert abs(ra.answer_logprob - rb.answer_logprob) < LOGP_TOLERANCE[dtype]
        if method == "occlusion":  # deterministic: the same ranking signal
            assert np.corrcoef(ra.scores, rb.scores)[0, 1] > 0.9
    # EmbedLens categories: the same sink / dead / alive counts at float16; finite at bfloat16
    ta = visual_tokens(full, PROMPT, image, params=TokenParams(answer_tokens=2))
    tb = visual_tokens(half, PROMPT, image, params=TokenParams(answer_tokens=2))
    assert np.isfinite(tb.norms).all()
    if dtype == "float16":
        assert ta.counts() == tb.counts()


def test_load_vlm_passes_the_dtype_through(tmp_path: Path, settings: Any) -> None:
    """load_vlm(dir, dtype=...) and settings.dtype (the CLI's --dtype) load a hub VLM in that dtype;
    the API stores runs of different dtypes apart."""
    import explorer
    from explorer.api.runner import open_store

    full, _ = hub_pair("llava", "bfloat16")
    full.lm.hf_model.save_pretrained(tmp_path / "m")
    _, processor = BUILDERS["llava"]()
    processor.save_pretrained(tmp_path / "m")
    path = str(tmp_path / "m")
    bf16 = load_vlm(path, settings=settings, dtype="bfloat16")
    assert bf16.lm.dtype == torch.bfloat16
    assert next(bf16.lm.hf_model.parameters()).dtype == torch.bfloat16
    assert load_vlm(path, settings=settings, dtype="bfloat16") is bf16  # cached per dtype
    from dataclasses import replace

    assert load_vlm(path, settings=replace(settings, dtype="float16")).lm.dtype == torch.float16
    assert load_vlm(path, settings=settings).lm.dtype == torch.float32  # auto on CPU
    image = tmp_path / "scene.png"
    _picture().save(image)
    a = explorer.logit_lens(
        path, PROMPT, image=str(image), dtype="bfloat16", settings=settings, targets=["a", "b", "c"]
    )
    b = explorer.logit_lens(
        path, PROMPT, image=str(image), dtype="float32", settings=settings, targets=["a", "b", "c"]
    )
    assert a.run_id != b.run_id
    # the CLI's --dtype reaches the VLM: the stored run carries the bfloat16 weights' hash
    from explorer.cli import main

    rc = main(["lens", "--model", path, "--image", str(image), "--prompt", "Hi", "--dtype", "float16", "--target", "a", "--target", "b", "--target", "c",
               "--db", str(settings.database)])  # fmt: skip
    assert rc == 0
    store = open_store(None, settings)
    assert store is not None
    hashes = {row.weight_hash for row in store.list_runs()}
    assert load_vlm(path, settings=settings, dtype="float16").weight_hash in hashes
