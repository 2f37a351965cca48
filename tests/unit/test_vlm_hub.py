"""Hub VLMs on tiny random configs of each registered architecture, built in code (no downloads).

Every architecture gets a model from a tiny config (asserted < 3M parameters) and a processor
built from config too: a PIL image processor with small sizes and the SmolLM2 tokenizer with
the architecture's image tokens added as special tokens. The test matrix is generated from
`VLM_ARCHITECTURES`, so a registered architecture without a builder here fails
`test_every_architecture_has_a_builder`.

QUARANTINE lists architectures that cannot be built tiny offline with the installed
transformers, each with the reason; they are skipped (never xfail). It is empty today.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.analysis.logit_lens import LensParams
from explorer.backends.vlm import MODALITY_IMAGE, capture_vlm, generate
from explorer.backends.vlm_hub import VLM_ARCHITECTURES, load_hub_vlm, vlm_architecture_for, wrap_hub_vlm
from explorer.errors import ModelNotAvailableError, UnsupportedArchitectureError
from explorer.vlm.lens import vlm_logit_lens
from tests.conftest import MAX_TINY_PARAMS

QUARANTINE: dict[str, str] = {}

H = 32  # hidden size of every tiny LM
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}IMAGE_MARKER"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _template(marker: str) -> str:
    return CHATML.replace("IMAGE_MARKER", marker)


def _tokenizer(extra: list[str], named: dict[str, str] | None = None) -> Any:
    """The SmolLM2 tokenizer (converted once into cache/models) with `extra` special tokens."""
    from transformers import AutoTokenizer

    from explorer.config import Settings
    from explorer.models.loading import resolve_model_source

    source = resolve_model_source("smollm2-135m", Settings.from_env())
    tok = AutoTokenizer.from_pretrained(source, extra_special_tokens=named or {})
    tok.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
    return tok


def _llama(tok: Any, **kw: Any) -> dict[str, Any]:
    return dict(
        model_type="llama", hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **kw,
    )  # fmt: skip


def _clip(image_size: int = 32, patch: int = 8) -> Any:
    import transformers as tf

    return tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch, projection_dim=32,
    )  # fmt: skip


def _siglip(image_size: int = 32, patch: int = 8) -> Any:
    import transformers as tf

    return tf.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=image_size, patch_size=patch, vision_use_head=False,
    )  # fmt: skip


def build_llava() -> tuple[Any, Any]:
    import transformers as tf

    tok = _tokenizer(["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    config = tf.LlavaConfig(
        vision_config=_clip(), text_config=_llama(tok), image_token_index=image_id, image_seq_length=16,
        vision_feature_layer=-1, tie_word_embeddings=True,
    )  # fmt: skip
    ip = tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = tf.LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_template("<image>\n"),
    )  # fmt: skip
    return tf.LlavaForConditionalGeneration(config), proc


def build_llava_next() -> tuple[Any, Any]:
    import transformers as tf

    tok = _tokenizer(["<image>"])
    image_id = tok.convert_tokens_to_ids("<image>")
    pinpoints = [[32, 32], [32, 64], [64, 32]]
    config = tf.LlavaNextConfig(
        vision_config=_clip(), text_config=_llama(tok), image_token_index=image_id, image_grid_pinpoints=pinpoints,
        vision_feature_layer=-1, tie_word_embeddings=True,
    )  # fmt: skip
    ip = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=pinpoints
    )
    proc = tf.LlavaNextProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=_template("<image>\n"),
    )  # fmt: skip
    return tf.LlavaNextForConditionalGeneration(config), proc


def _idefics3_like(
    model_cls: str, config_cls: str, vision_cls: str, ip_cls: str, proc_cls: str
) -> tuple[Any, Any]:
    import transformers as tf

    tok = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    ip = getattr(tf, ip_cls)(
        size={"longest_edge": 32}, max_image_size={"longest_edge": 32}, do_image_splitting=False
    )
    proc = getattr(tf, proc_cls)(
        image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=_template("<image>")
    )
    vision = getattr(tf, vision_cls)(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    config = getattr(tf, config_cls)(
        vision_config=vision, text_config=_llama(tok), scale_factor=2,
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
    )  # fmt: skip
    return getattr(tf, model_cls)(config), proc


def build_idefics3() -> tuple[Any, Any]:
    return _idefics3_like(
        "Idefics3ForConditionalGeneration", "Idefics3Config", "Idefics3VisionConfig",
        "Idefics3ImageProcessorPil", "Idefics3Processor",
    )  # fmt: skip


def build_smolvlm() -> tuple[Any, Any]:
    """SmolVLM's model with Idefics3's processor: SmolVLMProcessor needs `num2words` and a video
    processor, and transformers' video processors need torchvision (neither is installed). The
    two processors mark images with the same tokens; only the prompt layout differs."""
    return _idefics3_like(
        "SmolVLMForConditionalGeneration", "SmolVLMConfig", "SmolVLMVisionConfig",
        "Idefics3ImageProcessorPil", "Idefics3Processor",
    )  # fmt: skip


def _without_video(processor_cls: type) -> type:
    """`processor_cls` accepting video_processor=None: transformers' video processors need
    torchvision (not installed here), and without it even the processor's class check of the
    video processor fails. Image-only calls never use it."""

    class ImageOnly(processor_cls):  # type: ignore[misc, valid-type]
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return type(None)
            return super().check_argument_for_proper_class(argument_name, argument)

    return ImageOnly


def _qwen_vl(version: str) -> tuple[Any, Any]:
    import transformers as tf

    tok = _tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")}
    text = _llama(tok, rope_scaling={"rope_type": "default", "mrope_section": [2, 1, 1]})
    text.pop("model_type")
    common_vision = dict(depth=2, num_heads=4, patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    if version == "qwen2_vl":
        vision = dict(embed_dim=32, hidden_size=H, mlp_ratio=2, **common_vision)
        config_cls, model_cls = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration
    else:
        vision = dict(
            hidden_size=32, out_hidden_size=H, intermediate_size=64, window_size=16, fullatt_block_indexes=[1],
            **common_vision,
        )  # fmt: skip
        config_cls, model_cls = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration
    config = config_cls(
        vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"), vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True,
    )  # fmt: skip
    ip = tf.Qwen2VLImageProcessorPil(
        patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=32 * 32
    )
    marker = "<|vision_start|><|image_pad|><|vision_end|>"
    base = tf.Qwen2VLProcessor if version == "qwen2_vl" else tf.Qwen2_5_VLProcessor
    proc = _without_video(base)(
        image_processor=ip, tokenizer=tok, video_processor=None, chat_template=_template(marker)
    )
    return model_cls(config), proc


def build_qwen2_vl() -> tuple[Any, Any]:
    return _qwen_vl("qwen2_vl")


def build_qwen2_5_vl() -> tuple[Any, Any]:
    return _qwen_vl("qwen2_5_vl")


def build_paligemma() -> tuple[Any, Any]:
    import transformers as tf

    tok = _tokenizer([])
    ip = tf.SiglipImageProcessorPil(size={"height": 32, "width": 32})
    ip.image_seq_length = 16
    proc = tf.PaliGemmaProcessor(image_processor=ip, tokenizer=tok)  # adds <image> and loc/seg tokens
    text = dict(
        model_type="gemma", hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, vocab_size=len(proc.tokenizer), pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    config = tf.PaliGemmaConfig(
        vision_config=_siglip(), text_config=text, image_token_index=proc.image_token_id, projection_dim=H,
        hidden_size=H, vocab_size=len(proc.tokenizer),
    )  # fmt: skip
    return tf.PaliGemmaForConditionalGeneration(config), proc


def build_gemma3() -> tuple[Any, Any]:
    import transformers as tf

    named = {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    }
    tok = _tokenizer(list(named.values()), named)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in named.items()}
    text = tf.Gemma3TextConfig(
        hidden_size=H, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        head_dim=8, vocab_size=len(tok), sliding_window=8, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    config = tf.Gemma3Config(
        text_config=text, vision_config=_siglip(patch=4), mm_tokens_per_image=16, boi_token_index=ids["boi_token"],
        eoi_token_index=ids["eoi_token"], image_token_index=ids["image_token"],
    )  # fmt: skip
    ip = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = tf.Gemma3Processor(
        image_processor=ip, tokenizer=tok, image_seq_length=16, chat_template=_template("<start_of_image>")
    )
    return tf.Gemma3ForConditionalGeneration(config), proc


BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "llava": build_llava,
    "llava_next": build_llava_next,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
    "qwen2_vl": build_qwen2_vl,
    "qwen2_5_vl": build_qwen2_5_vl,
    "paligemma": build_paligemma,
    "gemma3": build_gemma3,
}
ARCHS = sorted(VLM_ARCHITECTURES)
_BUILT: dict[str, Any] = {}


def tiny_hub_vlm(arch: str) -> Any:
    """The wrapped tiny random VLM of `arch` (built once per session, eager attention)."""
    if arch in QUARANTINE:
        pytest.skip(f"quarantined: {QUARANTINE[arch]}")
    if arch not in _BUILT:
        torch.manual_seed(0)
        model, processor = BUILDERS[arch]()
        model.config._attn_implementation = "eager"
        model.set_attn_implementation("eager")
        n_params = sum(p.numel() for p in model.parameters())
        assert n_params < MAX_TINY_PARAMS, f"test VLM {arch} is not tiny: {n_params} params"
        _BUILT[arch] = wrap_hub_vlm(model, processor, model_id=f"tiny-{arch}")
    return _BUILT[arch]


def _picture() -> Image.Image:
    """A 48x40 picture: a red left half and a blue right half."""
    arr = np.zeros((40, 48, 3), dtype=np.uint8)
    arr[:, :24] = (220, 30, 30)
    arr[:, 24:] = (30, 30, 220)
    return Image.fromarray(arr, "RGB")


def test_every_architecture_has_a_builder() -> None:
    assert set(VLM_ARCHITECTURES) == set(BUILDERS), "add a tiny builder (or a QUARANTINE entry) for each"


@pytest.mark.parametrize("arch", ARCHS)
def test_image_positions_match_the_models_image_features(arch: str) -> None:
    vlm = tiny_hub_vlm(arch)
    inputs = vlm.prepare("What is in the picture?", _picture())
    positions = inputs.image_positions
    assert positions, "no image positions found"
    assert all(int(inputs.input_ids[i]) == vlm.image_token_id for i in positions)
    assert inputs.modality.count(MODALITY_IMAGE) == int((inputs.input_ids == vlm.image_token_id).sum())
    # the model's own count of image features: its forward checks tokens == features, and
    # get_image_features gives the features themselves
    model = vlm.lm.hf_model
    feature_kwargs = {
        k: v for k, v in inputs.model_inputs.items() if k != "token_type_ids" and "mm_token" not in k
    }
    with torch.no_grad():
        feats = model.model.get_image_features(**feature_kwargs)
    pooled = getattr(feats, "pooler_output", feats)
    n_features = sum(int(f.reshape(-1, f.shape[-1]).shape[0]) for f in pooled)
    assert len(positions) == n_features
    assert inputs.grid is not None
    rows, cols = inputs.grid
    assert rows * cols <= len(positions)
    if arch != "llava_next":  # anyres: the grid is the base view; tiles follow
        assert rows * cols == len(positions)
    assert inputs.image is not None and inputs.image.mode == "RGB"
    # the image positions are contiguous within each view
    assert positions[: rows * cols] == list(range(positions[0], positions[0] + rows * cols))


@pytest.mark.parametrize("arch", ARCHS)
def test_last_layer_lens_equals_the_models_logits(arch: str) -> None:
    vlm = tiny_hub_vlm(arch)
    inputs = vlm.prepare("Describe the picture.", _picture())
    trace, modality = capture_vlm(vlm, inputs, attentions=True)
    assert trace.residual.shape == (vlm.n_layers + 1, inputs.seq_len, H)
    assert trace.attentions is not None and trace.attentions.shape[-1] == inputs.seq_len
    with torch.no_grad():
        lens_last = vlm.lm.unembed(trace.residual[-1].to(vlm.lm.device)).float().cpu()
    torch.testing.assert_close(lens_last, trace.logits, atol=1e-4, rtol=1e-4)
    # and through the VLM logit lens: its last layer's top-1 is the model's argmax
    result = vlm_logit_lens(vlm, "Describe the picture.", _picture(), params=LensParams(top_k=3))
    assert result.topk_ids[-1, :, 0].tolist() == trace.logits.argmax(-1).tolist()
    assert result.grid == list(inputs.grid) if inputs.grid else result.grid is None
    tokens, probs = result.patch_top_tokens(vlm.n_layers) if arch != "llava_next" else (None, None)
    if tokens is not None:
        assert tokens.shape == tuple(inputs.grid)


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_matches_a_full_forward(arch: str) -> None:
    """Greedy decoding with the KV cache gives the tokens a full forward pass would pick."""
    vlm = tiny_hub_vlm(arch)
    inputs = vlm.prepare("What colour is it?", _picture())
    out = generate(vlm, inputs, 4, stop_at_eos=False)
    assert len(out) == 4
    trace, modality = capture_vlm(vlm, inputs, out)
    assert modality[-4:] == ["text"] * 4
    n = inputs.seq_len
    full = trace.logits[n - 1 : n + 3].argmax(-1).tolist()
    assert full == out


@pytest.mark.parametrize("arch", ARCHS)
def test_text_only_prompt(arch: str) -> None:
    vlm = tiny_hub_vlm(arch)
    # an image first, so any per-model state (Qwen2-VL's rope deltas) is set from it
    generate(vlm, vlm.prepare("What is this?", _picture()), 2, stop_at_eos=False)
    inputs = vlm.prepare("Hello there", None)
    assert inputs.image_positions == [] and inputs.grid is None and inputs.image is None
    out = generate(vlm, inputs, 3, stop_at_eos=False)
    trace, _ = capture_vlm(vlm, inputs, out)
    n = inputs.seq_len
    assert trace.logits[n - 1 : n + 2].argmax(-1).tolist() == out
    result = vlm_logit_lens(vlm, "Hello there", None, params=LensParams(top_k=2))
    assert result.grid is None and any("no image" in note for note in result.notes)


def test_unknown_architecture_names_what_to_register() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="register_vlm_architecture\\('blip_2'"):
        vlm_architecture_for("blip_2")

    class Config:
        model_type = "mystery_vlm"

    class Model(torch.nn.Module):
        config = Config()

    with pytest.raises(UnsupportedArchitectureError, match="mystery_vlm.*register_vlm_architecture"):
        wrap_hub_vlm(Model(), object())


def test_missing_model_fails_fast(settings: Any) -> None:
    import time

    t0 = time.perf_counter()
    with pytest.raises(ModelNotAvailableError, match="not available"):
        load_hub_vlm("nobody/no-such-vlm-anywhere", settings)
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_hub_vlm("./no/such/dir", settings)
    assert time.perf_counter() - t0 < 10


def test_loads_from_a_local_directory(tmp_path: Any, settings: Any) -> None:
    """save_pretrained + load_hub_vlm(dir): the same logits as the in-memory model."""
    vlm = tiny_hub_vlm("llava")
    vlm.lm.hf_model.save_pretrained(tmp_path)
    # the processor's tokenizer and image processor round-trip through the directory too
    from transformers import LlavaProcessor

    _, processor = build_llava()
    processor.save_pretrained(tmp_path)
    assert isinstance(processor, LlavaProcessor)
    loaded = load_hub_vlm(str(tmp_path), settings)
    assert loaded.uses_model_forward and loaded.lm.hf_model.config._attn_implementation == "eager"
    a = capture_vlm(vlm, vlm.prepare("Hi", _picture()))[0].logits
    b = capture_vlm(loaded, loaded.prepare("Hi", _picture()))[0].logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
