"""Vision-language models behind one interface: images enter the LM as embeddings.

`VisionLanguageModel` is the backend every VLM view uses. It holds the language side as a
`LanguageModel` (blocks, final norm, unembedding, tokenizer: so the logit lens, attention and
attribution code work on it unchanged) and knows how to turn (prompt, image) into the LM's
input: `prepare` returns a `VLMInputs` with the full sequence of input embeddings, the
token ids (image positions hold the model's image-token id), and the modality of every
position ("text" / "image") plus the patch grid the image tokens cover.

Two implementations of `prepare`:
- the embedded demo VLM ("tiny-vlm"): DINOv2-S -> trained projector -> SmolLM2 (this module);
- hub VLMs (LLaVA, Idefics3/SmolVLM, Qwen2-VL, PaliGemma, Gemma 3): explorer.vlm.hub.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from explorer.config import Settings
from explorer.errors import InputError
from explorer.models.loading import MODEL_CACHE, LanguageModel

ProgressFn = Callable[[float, str], None]
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TINY_VLM = "tiny-vlm"
EMBEDDED_VLMS = (TINY_VLM,)
MODALITY_TEXT = "text"
MODALITY_IMAGE = "image"


@dataclass
class VLMInputs:
    """One multimodal sequence, ready for the language model.

    inputs_embeds: (seq, d_model) float, what block 0's input embedding layer would give
    input_ids:     (seq,) int64; image positions hold `image_token_id`
    modality:      seq strings, "text" or "image"
    grid:          (rows, cols) of the image tokens (row-major), or None without an image
    image:         the image as the model sees it (square RGB), for overlays; None without one
    model_inputs:  extra keyword arguments for a hub VLM's own forward (pixel_values, ...)
    """

    inputs_embeds: torch.Tensor | None
    input_ids: torch.Tensor
    modality: list[str]
    grid: tuple[int, int] | None
    image: Image.Image | None
    model_inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def image_positions(self) -> list[int]:
        return [i for i, m in enumerate(self.modality) if m == MODALITY_IMAGE]


@dataclass
class VisionLanguageModel:
    """A VLM: `lm` is its language side; `prepare` builds its inputs; `image_token_id` marks
    image positions in `input_ids`; `image_label` is how image positions are shown."""

    model_id: str
    lm: LanguageModel
    weight_hash: str
    prepare_fn: Callable[[str, Image.Image | None], VLMInputs]
    image_token_id: int
    chat: Callable[[str, bool], str]
    n_visual_tokens: int
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # hub VLMs run their own forward (M-RoPE, bidirectional image attention...): True for those
    uses_model_forward: bool = False
    # (model_inputs, n_appended) -> model_inputs whose per-position entries (token types) also
    # cover `n_appended` text tokens after the prompt; None when nothing is per-position
    extend_model_inputs: Callable[[dict[str, Any], int], dict[str, Any]] | None = None

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @property
    def n_layers(self) -> int:
        return self.lm.n_layers

    def prepare(self, prompt: str, image: Image.Image | None, max_tokens: int = 512) -> VLMInputs:
        if prompt is None or not prompt.strip():
            raise InputError("the prompt is empty: type a question about the image")
        inputs = self.prepare_fn(prompt, image)
        if inputs.seq_len > max_tokens:
            n_img = len(inputs.image_positions)
            raise InputError(
                f"the prompt is {inputs.seq_len} tokens long including {n_img} visual tokens; the maximum "
                f"is {max_tokens} (set EXPLORER_MAX_PROMPT_TOKENS to raise it)"
            )
        return inputs

    def forward(
        self,
        inputs: VLMInputs,
        extra_ids: list[int] | None = None,
        output_attentions: bool = False,
        past: Any = None,
        use_cache: bool = False,
    ) -> Any:
        """One forward pass of the whole sequence (plus `extra_ids` text tokens after it)."""
        embeds, ids = _with_extra(self, inputs, extra_ids or [])
        dev = self.lm.device
        if self.uses_model_forward:
            model_inputs = inputs.model_inputs
            if extra_ids and self.extend_model_inputs is not None:
                model_inputs = self.extend_model_inputs(model_inputs, len(extra_ids))
            return self.lm.hf_model(
                input_ids=ids.unsqueeze(0).to(dev),
                output_attentions=output_attentions,
                use_cache=use_cache,
                **model_inputs,
            )
        assert embeds is not None
        return self.lm.hf_model(
            inputs_embeds=embeds.unsqueeze(0).to(dev, self.lm.hf_model.dtype),
            output_attentions=output_attentions,
            use_cache=use_cache,
        )


def _with_extra(
    vlm: VisionLanguageModel, inputs: VLMInputs, extra: list[int]
) -> tuple[torch.Tensor | None, torch.Tensor]:
    ids = torch.cat([inputs.input_ids, torch.tensor(extra, dtype=torch.long)])
    if inputs.inputs_embeds is None or not extra:
        return inputs.inputs_embeds, ids
    with torch.inference_mode():
        more = vlm.lm.embed_module()(torch.tensor(extra, device=vlm.lm.device)).float().cpu()
    return torch.cat([inputs.inputs_embeds, more]), ids


# ---------------------------------------------------------------------------------------------
# Generation (KV cache; greedy or seeded sampling)
# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def generate(
    vlm: VisionLanguageModel,
    inputs: VLMInputs,
    max_new_tokens: int,
    *,
    sample: bool = False,
    temperature: float = 1.0,
    seed: int = 0,
    stop_at_eos: bool = True,
    step_hook: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
    progress: ProgressFn | None = None,
) -> list[int]:
    """Decode up to `max_new_tokens` after the multimodal prompt. `step_hook(step, logits)` may
    return replacement logits (steering). Stops after the end-of-turn / EOS token (kept)."""
    lm = vlm.lm
    stops = _stop_ids(vlm)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out: list[int] = []
    past = None
    with vlm.lock, lm.lock:
        res = vlm.forward(inputs, use_cache=True)
        for step in range(max_new_tokens):
            if progress is not None:
                progress(step / max(1, max_new_tokens), f"Generating token {step + 1} of {max_new_tokens}")
            past = _cache_of(res)
            logits = res.logits[0, -1].float()
            if step_hook is not None:
                replaced = step_hook(step, logits)
                logits = replaced if replaced is not None else logits
            if sample:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                nxt = int(torch.multinomial(probs, 1, generator=gen).item())
            else:
                nxt = int(logits.argmax().item())
            out.append(nxt)
            if stop_at_eos and nxt in stops:
                break
            res = _decode_step(vlm, nxt, past, len(inputs.input_ids) + len(out))
    return out


def _cache_of(res: Any) -> Any:
    cache = getattr(res, "cache", None)
    return cache if cache is not None else getattr(res, "past_key_values", None)


def _cache_kwarg(model: Any) -> str:
    """transformers >= 5.x calls the KV cache `cache`; older versions `past_key_values`."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode_step(vlm: VisionLanguageModel, token: int, past: Any, total_len: int) -> Any:
    """One cached step. No attention mask: one unpadded sequence needs none, and from a mask
    Qwen2-VL derives positions for the whole sequence instead of the new token's M-RoPE position
    (cache length + its stored rope delta)."""
    model = vlm.lm.hf_model
    ids = torch.tensor([[token]], device=vlm.lm.device)
    kwargs = {_cache_kwarg(model): past}
    return model(input_ids=ids, use_cache=True, **kwargs)


def _stop_ids(vlm: VisionLanguageModel) -> set[int]:
    tok = vlm.tokenizer
    stops = set()
    if tok.eos_token_id is not None:
        stops.add(int(tok.eos_token_id))
    for text in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<end_of_utterance>"):
        tid = tok.convert_tokens_to_ids(text) if hasattr(tok, "convert_tokens_to_ids") else None
        if isinstance(tid, int) and tid != getattr(tok, "unk_token_id", None) and tid >= 0:
            stops.add(tid)
    return stops


# ---------------------------------------------------------------------------------------------
# The embedded demo VLM
# ---------------------------------------------------------------------------------------------
def _tiny_vlm(settings: Settings, weights: Path, progress: ProgressFn | None) -> VisionLanguageModel:
    from safetensors import safe_open

    from explorer.images import model_view, normalize
    from explorer.models.loading import load_model
    from explorer.models.vision import load_vision_model
    from explorer.vlm.tiny_vlm import (
        IMAGE_PLACEHOLDER,
        Projector,
        ProjectorConfig,
        chat_prompt,
        visual_features,
    )

    path = weights / "projector.safetensors"
    if not path.exists():
        raise InputError(
            f"the demo VLM's projector weights are missing ({path.name}); "
            "run `explorer train-demo-vlm` to train them"
        )
    lm = load_model("smollm2-135m", settings=settings, progress=progress)
    vision = load_vision_model("dinov2-small-focus", settings=settings, progress=progress)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118
    config = ProjectorConfig(**json.loads(meta.get("config", "{}")))
    projector = Projector(config)
    projector.load_state_dict(state)
    projector.eval()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    tok = lm.tokenizer
    image_token_id = int(tok.unk_token_id if tok.unk_token_id is not None else 0)

    def prepare(prompt: str, image: Image.Image | None) -> VLMInputs:
        text = chat_prompt(prompt)
        embed = lm.embed_module()
        if image is None:
            ids = tok(text.replace(IMAGE_PLACEHOLDER + "\n", ""), add_special_tokens=False).input_ids
            ids_t = torch.tensor(ids, dtype=torch.long)
            with torch.inference_mode():
                emb = embed(ids_t.to(lm.device)).float().cpu()
            return VLMInputs(emb, ids_t, [MODALITY_TEXT] * len(ids), None, None)
        before, after = text.split(IMAGE_PLACEHOLDER)
        ids_before = tok(before, add_special_tokens=False).input_ids
        ids_after = tok(after, add_special_tokens=False).input_ids
        view = model_view(vision, image)
        with torch.inference_mode():
            feats = visual_features(vision, normalize(view, vision.preprocessing).to(vision.device))
            visual = projector(feats.cpu())[0]
            emb_b = embed(torch.tensor(ids_before, device=lm.device)).float().cpu()
            emb_a = embed(torch.tensor(ids_after, device=lm.device)).float().cpu()
        n = visual.shape[0]
        ids = ids_before + [image_token_id] * n + ids_after
        modality = [MODALITY_TEXT] * len(ids_before) + [MODALITY_IMAGE] * n + [MODALITY_TEXT] * len(ids_after)
        return VLMInputs(
            torch.cat([emb_b, visual, emb_a]),
            torch.tensor(ids, dtype=torch.long),
            modality,
            (config.grid, config.grid),
            view,
        )

    return VisionLanguageModel(
        model_id=TINY_VLM,
        lm=lm,
        weight_hash=f"{lm.weight_hash[:8]}{vision.weight_hash[:4]}{digest}",
        prepare_fn=prepare,
        image_token_id=image_token_id,
        chat=lambda q, img: chat_prompt(q),
        n_visual_tokens=config.n_visual_tokens,
    )


def load_vlm(
    name_or_path: str | None = None,
    *,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    weights: Path | None = None,
) -> VisionLanguageModel:
    """Load (once per process) a VLM: "tiny-vlm" (embedded demo), or a hub id / local dir."""
    settings = settings or Settings.from_env()
    name = (name_or_path or TINY_VLM).strip()
    if name == TINY_VLM:
        w = weights or WEIGHTS_DIR
        return MODEL_CACHE.get(("vlm:" + name, str(w)), lambda: _tiny_vlm(settings, w, progress))  # type: ignore[no-any-return]
    from explorer.vlm.hub import load_hub_vlm

    return MODEL_CACHE.get(("vlm:" + name, "auto"), lambda: load_hub_vlm(name, settings, progress))  # type: ignore[no-any-return]


def is_vlm_name(name: str | None) -> bool:
    return bool(name) and name in EMBEDDED_VLMS


def image_token_grid(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n_image_tokens, ...) -> (rows, cols, ...) in row-major order."""
    return values.reshape(grid[0], grid[1], *values.shape[1:])
