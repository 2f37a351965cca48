"""Hub vision-language models (LLaVA, LLaVA-NeXT, Idefics3/SmolVLM, Qwen2-VL/2.5-VL, PaliGemma,
Gemma 3) behind the `VisionLanguageModel` seam.

What differs between architectures is data, one `VLMArchitecture` per transformers
`model_type` in `VLM_ARCHITECTURES` (add one with `register_vlm_architecture`):

- where the parts live inside the `*ForConditionalGeneration` model: vision tower, projector,
  and the language side (blocks, final norm, unembedding, token embedding) as an
  `ArchitectureSpec`, so the logit lens, attention and attribution code run on it unchanged;
- which config attribute holds the image-token id (the processor expands one image marker
  into that many copies of it; `input_ids == image_token_id` are the image positions);
- how a prompt without a chat template marks the image, and how the image tokens map to a
  patch grid (`GRIDS`) and to the picture the model sees (`VIEWS`);
- the per-position model inputs (token types) and how they continue over appended text tokens.

The model runs its own forward (`uses_model_forward=True`): M-RoPE (Qwen2-VL), bidirectional
attention over the image (PaliGemma prefix, Gemma 3 images) and the anyres / tiling logic stay
exactly as transformers implements them. `VLMInputs.model_inputs` carries what that forward
needs besides `input_ids` (pixel_values, image_sizes, image_grid_thw, pixel_attention_mask,
token types).

Grids. The image tokens of LLaVA-1.5, PaliGemma, Gemma 3 and Qwen2-VL form one row-major
grid. LLaVA-NeXT adds anyres tiles after the base view: the grid is the base view's (the first
rows x cols image positions; the tile tokens, with their row-end newline tokens, follow).
Idefics3/SmolVLM split large images into tiles plus a global view; we call the processor with
`do_image_splitting=False` so the image is one global view and one grid (a documented
deviation from the model card's default, which only adds detail tiles).
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from PIL import Image

from explorer.backends.architectures import ArchitectureSpec
from explorer.backends.language import LanguageModel
from explorer.backends.loading import (
    default_device,
    hub_kwargs,
    placement_kwargs,
    resolve_dtype,
    weight_fingerprint,
)
from explorer.backends.vlm import MODALITY_IMAGE, MODALITY_TEXT, VisionLanguageModel, VLMInputs
from explorer.config import Settings
from explorer.errors import InputError, ModelNotAvailableError, UnsupportedArchitectureError
from explorer.progress import ProgressFn

GridFn = Callable[[Any, dict[str, Any], int], tuple[int, int] | None]


@dataclass(frozen=True)
class VLMArchitecture:
    """Where things are in one VLM architecture (dotted paths from the *ForConditionalGeneration).

    model_class:        transformers class that loads it (e.g. "LlavaForConditionalGeneration")
    vision_tower:       the vision encoder
    projector:          vision features -> LM embeddings (connector / merger)
    lm:                 the language side: blocks, final norm, unembedding, token embedding
    image_token_attr:   config attribute holding the id the image positions carry
    plain_prompt:       prompt without a chat template; {image} = the processor's image marker
    grid:               name in `GRIDS`: how the image tokens map to a (rows, cols) patch grid
    view:               name in `VIEWS`: how to get the picture as the model sees it
    extend_inputs:      per-position model inputs -> value for appended text (generated) tokens
    processor_kwargs:   extra keyword arguments for every processor call with an image
    text_only_prompt:   for processors that refuse a call without an image (PaliGemma): the
                        text-only prompt ({bos}, {prompt}), encoded by the tokenizer; the
                        per-position inputs of `extend_inputs` are then all 0
    rope_state:         module whose `rope_deltas` the model keeps between calls (Qwen2-VL's M-RoPE
                        offset of the text after the image, reused while decoding); cleared at
                        every call without a KV cache, so a text-only prompt never decodes with
                        the offset of an earlier image
    """

    model_class: str
    vision_tower: str
    projector: str
    lm: ArchitectureSpec
    image_token_attr: str = "image_token_id"
    plain_prompt: str = "{image}\n{prompt}"
    grid: str = "vision_patches"
    view: str = "pixel_values"
    extend_inputs: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    processor_kwargs: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    text_only_prompt: str | None = None
    rope_state: str | None = None


def _lm_spec(language_model: str, softcap: str | None = None) -> ArchitectureSpec:
    return ArchitectureSpec(
        blocks=f"{language_model}.layers",
        final_norm=f"{language_model}.norm",
        unembed="lm_head",
        embed=f"{language_model}.embed_tokens",
        logit_softcap_attr=softcap,
    )


# ---------------------------------------------------------------------------------------------
# Grids: (config, processor outputs, number of image tokens) -> (rows, cols) or None
# ---------------------------------------------------------------------------------------------
def _grid_vision_patches(config: Any, processed: dict[str, Any], n_image: int) -> tuple[int, int] | None:
    """ViT patch grid of one view (LLaVA-1.5 drops the CLS; LLaVA-NeXT: the base view)."""
    vc = config.vision_config
    side = int(vc.image_size) // int(vc.patch_size)
    return (side, side) if side * side <= n_image else None


def _grid_square(config: Any, processed: dict[str, Any], n_image: int) -> tuple[int, int] | None:
    """Square pooled grid of one view: Gemma 3 (mm_tokens_per_image), Idefics3 (image_seq_len)."""
    per_image = getattr(config, "mm_tokens_per_image", None)
    if per_image is None:
        vc = config.vision_config
        per_image = (int(vc.image_size) // int(vc.patch_size)) ** 2 // int(config.scale_factor) ** 2
    side = math.isqrt(int(per_image))
    return (side, side) if side * side == int(per_image) and per_image <= n_image else None


def _grid_thw(config: Any, processed: dict[str, Any], n_image: int) -> tuple[int, int] | None:
    """Qwen2-VL: image_grid_thw (t, h, w) in ViT patches; the merger pools merge x merge patches."""
    thw = processed["image_grid_thw"][0].tolist()
    merge = int(config.vision_config.spatial_merge_size)
    return (int(thw[1]) // merge, int(thw[2]) // merge)


GRIDS: dict[str, GridFn] = {
    "vision_patches": _grid_vision_patches,
    "square": _grid_square,
    "thw": _grid_thw,
}


# ---------------------------------------------------------------------------------------------
# Views: the image as the model sees it (for overlays)
# ---------------------------------------------------------------------------------------------
def _view_pixel_values(
    processor: Any, processed: dict[str, Any], image: Image.Image, grid: Any
) -> Image.Image:
    """Undo the normalisation of the first (base / global) view in pixel_values (..., 3, H, W)."""
    pixels = processed["pixel_values"]
    while pixels.dim() > 3:
        pixels = pixels[0]
    ip = processor.image_processor
    mean = torch.tensor(getattr(ip, "image_mean", None) or [0.0, 0.0, 0.0]).view(3, 1, 1)
    std = torch.tensor(getattr(ip, "image_std", None) or [1.0, 1.0, 1.0]).view(3, 1, 1)
    x = pixels.float().cpu() * std + mean
    if getattr(ip, "do_rescale", True):
        x = x * 255.0
    arr = x.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _view_resized_to_grid(
    processor: Any, processed: dict[str, Any], image: Image.Image, grid: Any
) -> Image.Image:
    """Qwen2-VL resizes (no crop) to a multiple of patch x merge: the grid's aspect ratio."""
    ip = processor.image_processor
    thw = processed["image_grid_thw"][0].tolist()
    patch = int(getattr(ip, "patch_size", 14))
    return image.convert("RGB").resize((int(thw[2]) * patch, int(thw[1]) * patch), Image.Resampling.BICUBIC)


VIEWS: dict[str, Callable[[Any, dict[str, Any], Image.Image, Any], Image.Image]] = {
    "pixel_values": _view_pixel_values,
    "resized_to_grid": _view_resized_to_grid,
}


_LLAVA = VLMArchitecture(
    model_class="LlavaForConditionalGeneration",
    vision_tower="model.vision_tower",
    projector="model.multi_modal_projector",
    lm=_lm_spec("model.language_model"),
)
_IDEFICS3 = VLMArchitecture(
    model_class="Idefics3ForConditionalGeneration",
    vision_tower="model.vision_model",
    projector="model.connector",
    lm=_lm_spec("model.text_model"),
    grid="square",
    processor_kwargs=MappingProxyType({"do_image_splitting": False}),
)
_QWEN2_VL = VLMArchitecture(
    model_class="Qwen2VLForConditionalGeneration",
    vision_tower="model.visual",
    projector="model.visual.merger",
    lm=_lm_spec("model.language_model"),
    plain_prompt="<|vision_start|>{image}<|vision_end|>{prompt}",
    grid="thw",
    view="resized_to_grid",
    extend_inputs=MappingProxyType({"mm_token_type_ids": 0}),
    rope_state="model",
)

VLM_ARCHITECTURES: dict[str, VLMArchitecture] = {
    "llava": _LLAVA,
    "llava_next": VLMArchitecture(
        model_class="LlavaNextForConditionalGeneration",
        vision_tower="model.vision_tower",
        projector="model.multi_modal_projector",
        lm=_lm_spec("model.language_model"),
    ),
    "idefics3": _IDEFICS3,
    "smolvlm": VLMArchitecture(
        model_class="SmolVLMForConditionalGeneration",
        vision_tower="model.vision_model",
        projector="model.connector",
        lm=_lm_spec("model.text_model"),
        grid="square",
        processor_kwargs=MappingProxyType({"do_image_splitting": False}),
    ),
    "qwen2_vl": _QWEN2_VL,
    "qwen2_5_vl": VLMArchitecture(
        model_class="Qwen2_5_VLForConditionalGeneration",
        vision_tower="model.visual",
        projector="model.visual.merger",
        lm=_lm_spec("model.language_model"),
        plain_prompt=_QWEN2_VL.plain_prompt,
        grid="thw",
        view="resized_to_grid",
        extend_inputs=_QWEN2_VL.extend_inputs,
        rope_state="model",
    ),
    "paligemma": VLMArchitecture(
        model_class="PaliGemmaForConditionalGeneration",
        vision_tower="model.vision_tower",
        projector="model.multi_modal_projector",
        lm=_lm_spec("model.language_model", softcap="final_logit_softcapping"),
        # the processor puts <bos> after the image tokens and "\n" after the prompt
        plain_prompt="{image}{prompt}",
        text_only_prompt="{bos}{prompt}\n",
        # 0 = prefix (image + prompt, attended bidirectionally), 1 = suffix (causal)
        extend_inputs=MappingProxyType({"token_type_ids": 1}),
    ),
    "gemma3": VLMArchitecture(
        model_class="Gemma3ForConditionalGeneration",
        vision_tower="model.vision_tower",
        projector="model.multi_modal_projector",
        lm=_lm_spec("model.language_model", softcap="final_logit_softcapping"),
        grid="square",
        # 1 marks image tokens (bidirectional within an image); generated text is 0
        extend_inputs=MappingProxyType({"token_type_ids": 0}),
    ),
}


def register_vlm_architecture(model_type: str, arch: VLMArchitecture) -> None:
    """Teach the explorer a new hub VLM architecture (call before loading such a model)."""
    if arch.grid not in GRIDS:
        raise ValueError(f"unknown grid {arch.grid!r}; one of {', '.join(GRIDS)}")
    if arch.view not in VIEWS:
        raise ValueError(f"unknown view {arch.view!r}; one of {', '.join(VIEWS)}")
    VLM_ARCHITECTURES[model_type] = arch


def vlm_architecture_for(model_type: str) -> VLMArchitecture:
    try:
        return VLM_ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"vision-language architecture {model_type!r} is not registered. Call "
            f"explorer.backends.vlm_hub.register_vlm_architecture({model_type!r}, VLMArchitecture(model_class=..., "
            "vision_tower=..., projector=..., lm=ArchitectureSpec(blocks=..., final_norm=..., unembed=..., "
            "embed=...), image_token_attr=...)) with the transformers class and the dotted module paths inside "
            f"it. Known: {', '.join(sorted(VLM_ARCHITECTURES))}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Wrapping a loaded model + processor
# ---------------------------------------------------------------------------------------------
def _image_token_id(model: Any, processor: Any, arch: VLMArchitecture) -> int:
    value = getattr(model.config, arch.image_token_attr, None)
    if value is None:
        value = getattr(processor, "image_token_id", None)
    if value is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}'s config has no {arch.image_token_attr!r}: set image_token_attr in its "
            "register_vlm_architecture entry"
        )
    return int(value)


def _image_marker(processor: Any) -> str:
    """The text the processor expands into the image tokens (one per image)."""
    return str(getattr(processor, "image_token", None) or "<image>")


def _chat_text(processor: Any, arch: VLMArchitecture, prompt: str, has_image: bool) -> str:
    """The prompt as the model was trained to see it: the processor's chat template when it has
    one (a user turn with the image first, then the generation prompt), else `plain_prompt`."""
    if getattr(processor, "chat_template", None):
        content: list[dict[str, str]] = [{"type": "image"}] if has_image else []
        content.append({"type": "text", "text": prompt})
        messages = [{"role": "user", "content": content}]
        return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    if not has_image:
        return prompt
    return arch.plain_prompt.format(image=_image_marker(processor), prompt=prompt)


def _mirror_softcap(model: Any, arch: VLMArchitecture) -> None:
    """`LanguageModel.unembed` reads the logit soft-cap from the top-level config; VLMs keep it in
    text_config (PaliGemma 2, Gemma 3): copy it up when the top level lacks it."""
    attr = arch.lm.logit_softcap_attr
    if attr is None:
        return
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(model.config, attr, None) is None and getattr(text, attr, None) is not None:
        setattr(model.config, attr, getattr(text, attr))


def _clear_rope_state_on_prefill(model: torch.nn.Module, holder: torch.nn.Module) -> None:
    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if kwargs.get("cache") is None and kwargs.get("past_key_values") is None:
            setattr(holder, "rope_deltas", None)  # noqa: B010 (nn.Module's __setattr__ is typed for tensors)

    model.register_forward_pre_hook(hook, with_kwargs=True)


def wrap_hub_vlm(
    model: Any, processor: Any, model_id: str = "in-memory", dtype: str | torch.dtype | None = None
) -> VisionLanguageModel:
    """Wrap a loaded transformers VLM (`*ForConditionalGeneration`) and its processor.

    `dtype` (optional): convert the weights first, in place (vision tower, projector and LM alike);
    pixel values are cast to the model's dtype when a prompt is prepared."""
    model_type = str(getattr(model.config, "model_type", ""))
    arch = vlm_architecture_for(model_type)
    if dtype is not None:
        model.to(resolve_dtype(dtype, next(model.parameters()).device))
    model.eval()
    _mirror_softcap(model, arch)
    for path in (arch.vision_tower, arch.projector):
        try:
            model.get_submodule(path)
        except AttributeError:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__} has no module {path!r}; fix its register_vlm_architecture entry"
            ) from None
    if arch.rope_state is not None:
        _clear_rope_state_on_prefill(model, model.get_submodule(arch.rope_state))
    device = next(model.parameters()).device
    tokenizer = processor.tokenizer
    lm = LanguageModel(
        model_id=model_id,
        hf_model=model,
        tokenizer=tokenizer,
        spec=arch.lm,
        weight_hash=weight_fingerprint(model),
        device=device,
    )
    for check in (lm.blocks, lm.final_norm_module, lm.unembed_module, lm.embed_module):
        check()  # raises UnsupportedArchitectureError naming the wrong path
    image_token_id = _image_token_id(model, processor, arch)
    forward_params = set(inspect.signature(model.forward).parameters)
    grid_fn = GRIDS[arch.grid]
    view_fn = VIEWS[arch.view]

    def prepare(prompt: str, image: Image.Image | None) -> VLMInputs:
        processed: dict[str, Any]
        if image is None and arch.text_only_prompt is not None:
            text = arch.text_only_prompt.format(bos=tokenizer.bos_token or "", prompt=prompt)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            processed = {"input_ids": ids, **{k: torch.zeros_like(ids) for k in arch.extend_inputs}}
        else:
            text = _chat_text(processor, arch, prompt, image is not None)
            kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
            if image is not None:
                kwargs["images"] = [image.convert("RGB")]
                kwargs.update(arch.processor_kwargs)
            processed = dict(processor(**kwargs))
        processed.pop("labels", None)  # PaliGemma's processor adds training labels
        input_ids = processed.pop("input_ids")[0].long()
        processed.pop("attention_mask", None)  # one unpadded sequence
        is_image = input_ids == image_token_id
        n_image = int(is_image.sum())
        modality = [MODALITY_IMAGE if flag else MODALITY_TEXT for flag in is_image.tolist()]
        if image is None:
            if n_image:
                raise InputError(
                    f"the prompt contains the image token {_image_marker(processor)!r} but no image"
                )
            # text-only: per-position token types are all "text"; no pixels
            model_inputs = {k: v.to(device) for k, v in processed.items() if k in arch.extend_inputs}
            return VLMInputs(None, input_ids, modality, None, None, model_inputs)
        if n_image == 0:
            raise InputError("the processor marked no image positions: is the image token in its vocabulary?")
        grid = grid_fn(model.config, processed, n_image)
        view = view_fn(processor, processed, image, grid)
        model_inputs = {
            k: (v.to(device, model.dtype) if torch.is_floating_point(v) else v.to(device))
            if isinstance(v, torch.Tensor)
            else v
            for k, v in processed.items()
            if k in forward_params  # processors also return bookkeeping (num_crops, ...)
        }
        return VLMInputs(None, input_ids, modality, grid, view, model_inputs)

    def extend(model_inputs: dict[str, Any], n_extra: int) -> dict[str, Any]:
        out = dict(model_inputs)
        for key, fill in arch.extend_inputs.items():
            value = out.get(key)
            if isinstance(value, torch.Tensor) and n_extra:
                out[key] = torch.cat([value, value.new_full((value.shape[0], n_extra), fill)], dim=-1)
        return out

    n_visual = _expected_visual_tokens(model.config, arch)
    return VisionLanguageModel(
        model_id=model_id,
        lm=lm,
        weight_hash=lm.weight_hash,
        prepare_fn=prepare,
        image_token_id=image_token_id,
        chat=lambda q, has_image: _chat_text(processor, arch, q, bool(has_image)),
        n_visual_tokens=n_visual,
        uses_model_forward=True,
        extend_model_inputs=extend,
    )


def _expected_visual_tokens(config: Any, arch: VLMArchitecture) -> int:
    """Visual tokens of one view (0 when it depends on the image size, as in Qwen2-VL)."""
    grid = GRIDS[arch.grid]
    if arch.grid == "thw":
        return 0
    try:
        found = grid(config, {}, 1 << 30)
    except (AttributeError, TypeError, ValueError):
        return 0
    return found[0] * found[1] if found else 0


# ---------------------------------------------------------------------------------------------
# Loading by hub id or local directory
# ---------------------------------------------------------------------------------------------
def load_hub_vlm(
    name: str, settings: Settings, progress: ProgressFn | None = None, dtype: str | torch.dtype | None = None
) -> VisionLanguageModel:
    """Load a hub VLM by id or local directory (processor + model; eager attention; never remote
    code) in `dtype` ("auto" = float32 on CPU, float16 on CUDA; default: settings.dtype). Offline,
    only local dirs and cached models load, and a missing one fails fast with
    `ModelNotAvailableError`."""
    import transformers
    from transformers import AutoConfig, AutoProcessor

    prog = progress or (lambda f, m: None)
    name = (name or "").strip()
    if not name:
        raise ModelNotAvailableError("no vision-language model given")
    is_local = Path(name).expanduser().exists()
    if not is_local and (name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1)):
        raise ModelNotAvailableError(f"model path {name!r} does not exist")
    source = str(Path(name).expanduser()) if is_local else name
    extra = hub_kwargs(is_local)
    prog(0.1, f"Reading {name}'s config")
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=False, **extra)
    except (OSError, ValueError) as exc:
        hint = (
            " (offline: only local directories and models already in the Hugging Face cache load)"
            if extra
            else ""
        )
        raise ModelNotAvailableError(
            f"vision-language model {name!r} is not available{hint}. Details: {str(exc).splitlines()[0][:300]}"
        ) from exc
    arch = vlm_architecture_for(str(getattr(config, "model_type", "")))
    model_class = getattr(transformers, arch.model_class, None)
    if model_class is None:
        raise UnsupportedArchitectureError(
            f"the installed transformers {transformers.__version__} has no {arch.model_class}; upgrade it"
        )
    device = default_device()
    torch_dtype = resolve_dtype(dtype if dtype is not None else settings.dtype, device)
    prog(0.3, f"Loading {name}")
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=False, **extra)
        model = model_class.from_pretrained(
            source,
            dtype=torch_dtype,
            attn_implementation="eager",
            trust_remote_code=False,
            **extra,
            **placement_kwargs(settings.device_map),
        )
    except (OSError, ValueError, ImportError) as exc:
        # ImportError: e.g. Qwen2-VL's and SmolVLM's processors build a video processor, which
        # needs torchvision; SmolVLM's also needs num2words
        raise ModelNotAvailableError(
            f"vision-language model {name!r} could not be loaded: {str(exc).splitlines()[0][:300]}"
        ) from exc
    if getattr(model, "hf_device_map", None) is None:  # device_map="auto" placed it already
        model.to(device)
    prog(0.9, "Fingerprinting the weights")
    return wrap_hub_vlm(model, processor, model_id=name)
