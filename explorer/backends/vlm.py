"""Vision-language models behind one interface: images enter the LM as embeddings.

`VisionLanguageModel` is the backend every VLM view uses. It holds the language side as a
`LanguageModel` (blocks, final norm, unembedding, tokenizer: so the logit lens, attention and
attribution code work on it unchanged) and knows how to turn (prompt, image) into the LM's
input: `prepare` returns a `VLMInputs` with the full sequence of input embeddings, the
token ids (image positions hold the model's image-token id), and the modality of every
position ("text" / "image") plus the patch grid the image tokens cover.

Two implementations of `prepare`:
- the embedded demo VLM ("tiny-vlm"): DINOv2-S -> trained projector -> SmolLM2 (this module);
- hub VLMs (LLaVA, Idefics3/SmolVLM, Qwen2-VL, PaliGemma, Gemma 3): explorer.backends.vlm_hub.

This module (with explorer.backends.vlm_hub) is the only door to a VLM's transformers modules.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from explorer.backends.language import LanguageModel, LogitsHook, _first_tensor
from explorer.backends.loading import MODEL_CACHE, cache_kwarg, cache_of
from explorer.backends.trace import Trace
from explorer.config import Settings
from explorer.errors import InputError
from explorer.model_policy import admit_model, load_errors_hidden
from explorer.progress import ProgressFn

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "vlm" / "weights"  # the shipped demo VLM
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
    # (image, encoder blocks) -> (n_visual_tokens,) the vision encoder's head-mean [CLS] attention
    # to the patches behind each visual token, averaged over those blocks; None: not exposed
    encoder_cls_attention: Callable[[Image.Image, Sequence[int]], torch.Tensor] | None = None

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
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Any:
        """One forward pass of the whole sequence (plus `extra_ids` text tokens after it).

        Returns an object with `.logits` (1, T, vocab), `.attentions` and the KV cache.
        `logits_to_keep` > 0: logits of the last k positions only, where the model allows it
        (a 4,096-token pass needs no (T, vocab) logits)."""
        embeds, ids = _with_extra(self, inputs, extra_ids or [])
        if self.uses_model_forward:
            dev = self.lm.device
            model_inputs = dict(inputs.model_inputs)
            if extra_ids and self.extend_model_inputs is not None:
                model_inputs = self.extend_model_inputs(model_inputs, len(extra_ids))
            if logits_to_keep > 0 and self.lm.supports_logits_to_keep:
                model_inputs["logits_to_keep"] = logits_to_keep
            with self.lm.lock:
                return self.lm.hf_model(
                    input_ids=ids.unsqueeze(0).to(dev),
                    output_attentions=output_attentions,
                    use_cache=use_cache,
                    **model_inputs,
                )
        assert embeds is not None
        return self.lm.forward(
            inputs_embeds=embeds.unsqueeze(0),
            output_attentions=output_attentions,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
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
    progress: ProgressFn | None = None,
    logits_hook: LogitsHook | None = None,
) -> list[int]:
    """Decode up to `max_new_tokens` after the multimodal prompt (KV cache; greedy or seeded
    sampling). Stops after the end-of-turn / EOS token, which is kept. `logits_hook(step,
    logits (1, vocab))` may replace the next-token logits before each choice."""
    if not vlm.uses_model_forward:
        assert inputs.inputs_embeds is not None
        if progress is not None:
            progress(0.0, f"Generating up to {max_new_tokens} tokens")
        out = vlm.lm.generate(
            inputs_embeds=inputs.inputs_embeds,
            max_new_tokens=max_new_tokens,
            sample=sample,
            temperature=temperature,
            seed=seed,
            stop_at_eos=stop_at_eos,
            logits_hook=logits_hook,
        )
        return out.ids()
    # hub VLMs: their own forward (pixel values, M-RoPE, image attention masks) for the prefill
    lm = vlm.lm
    stops = _stop_ids(vlm)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    out_ids: list[int] = []
    with vlm.lock, lm.lock:
        res = vlm.forward(inputs, use_cache=True)
        for step in range(max_new_tokens):
            if progress is not None:
                progress(step / max(1, max_new_tokens), f"Generating token {step + 1} of {max_new_tokens}")
            past = cache_of(res, cache_kwarg(lm.hf_model))
            logits = res.logits[0, -1].float()
            if logits_hook is not None:
                logits = logits_hook(step, logits.unsqueeze(0))[0]
            if sample:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                nxt = int(torch.multinomial(probs, 1, generator=gen).item())
            else:
                nxt = int(logits.argmax().item())
            out_ids.append(nxt)
            if stop_at_eos and nxt in stops:
                break
            res = _decode_step(vlm, nxt, past, len(inputs.input_ids) + len(out_ids))
    return out_ids


def _left_padded(vlm: VisionLanguageModel, batch: list[VLMInputs]) -> tuple[torch.Tensor, ...]:
    """Input embeddings (B, T, d) left-padded with zeros, attention mask (B, T) and position ids
    (B, T) (0 on padding, 0.. on each row's tokens) of projector-VLM inputs."""
    longest = max(b.seq_len for b in batch)
    d = int(batch[0].inputs_embeds.shape[-1])  # type: ignore[union-attr]
    embeds = torch.zeros(len(batch), longest, d)
    mask = torch.zeros(len(batch), longest, dtype=torch.long)
    positions = torch.zeros(len(batch), longest, dtype=torch.long)
    for row, b in enumerate(batch):
        n = b.seq_len
        assert b.inputs_embeds is not None
        embeds[row, longest - n :] = b.inputs_embeds
        mask[row, longest - n :] = 1
        positions[row, longest - n :] = torch.arange(n)
    return embeds, mask, positions


def trim_at_stop(vlm: VisionLanguageModel, ids: list[int]) -> list[int]:
    stops = _stop_ids(vlm)
    for i, t in enumerate(ids):
        if t in stops:
            return ids[: i + 1]
    return ids


@torch.inference_mode()
def generate_batch(
    vlm: VisionLanguageModel,
    batch: list[VLMInputs],
    max_new_tokens: int,
    *,
    logits_hook: LogitsHook | None = None,
) -> list[list[int]]:
    """Greedy answers of several prompts at once: each row stops after its end-of-turn / EOS
    token (kept), as `generate` would. Projector VLMs decode the rows together (left-padded, one
    KV cache); hub VLMs run their own forward row by row. `logits_hook(step, logits (B, vocab))`
    may replace the next-token logits before each choice."""
    if not batch:
        return []
    if vlm.uses_model_forward or len(batch) == 1:
        return [generate(vlm, b, max_new_tokens, logits_hook=logits_hook) for b in batch]
    embeds, mask, positions = _left_padded(vlm, batch)
    out = vlm.lm.generate(
        inputs_embeds=embeds,
        max_new_tokens=max_new_tokens,
        attention_mask=mask,
        position_ids=positions,
        logits_hook=logits_hook,
    )
    return [trim_at_stop(vlm, out.ids(row)) for row in range(len(batch))]


@torch.inference_mode()
def last_token_residuals(vlm: VisionLanguageModel, batch: list[VLMInputs]) -> torch.Tensor:
    """The residual stream at each prompt's last position: (B, n_layers + 1, d_model) float32 on
    the CPU (layer 0 = input embeddings, l = output of block l-1). Projector VLMs run the rows
    together (left-padded); hub VLMs one traced forward per row."""
    if vlm.uses_model_forward or len(batch) == 1:
        rows = []
        for b in batch:
            trace, _ = capture_vlm(vlm, b)
            rows.append(trace.residual[:, -1])
        return torch.stack(rows).float().cpu()
    lm = vlm.lm
    embeds, mask, positions = _left_padded(vlm, batch)
    layers = list(range(1, lm.n_layers + 1))
    with lm.residual_recorder(layers) as record:
        lm.forward(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1)
        per_layer = [embeds[:, -1].to(lm.device)] + [record[layer] for layer in layers]
    return torch.stack([r.float() for r in per_layer], dim=1).cpu()


def _decode_step(vlm: VisionLanguageModel, token: int, past: Any, total_len: int) -> Any:
    """One cached step. No attention mask: one unpadded sequence needs none, and from a mask
    Qwen2-VL derives positions for the whole sequence instead of the new token's M-RoPE position
    (cache length + its stored rope delta)."""
    model = vlm.lm.hf_model
    ids = torch.tensor([[token]], device=vlm.lm.device)
    kwargs = {cache_kwarg(model): past}
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
def projector_vlm(
    lm: LanguageModel, vision: Any, projector: Any, model_id: str = TINY_VLM, weights_digest: str = ""
) -> VisionLanguageModel:
    """A LLaVA-style VLM from parts: `vision` (a VisionModel) -> `projector` -> `lm`.

    The chat prompt's `<image>` placeholder is replaced by the projector's visual tokens; the
    image-token id shown at those positions is the tokenizer's unknown token (never a real
    input). Used for the embedded "tiny-vlm" and for tiny test models built in code."""
    from explorer.backends.images import model_view, normalize
    from explorer.vlm.tiny_vlm import IMAGE_PLACEHOLDER, chat_prompt, visual_features

    tok = lm.tokenizer
    image_token_id = int(tok.unk_token_id if tok.unk_token_id is not None else 0)
    grid = int(projector.config.grid)

    def embed_ids(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return lm.embed_module()(torch.tensor(ids, dtype=torch.long, device=lm.device)).float().cpu()

    last: dict[str, torch.Tensor] = {}  # the latest image's visual tokens (questions about one image)

    def visual_tokens(view: Image.Image) -> torch.Tensor:
        key = hashlib.sha256(view.tobytes()).hexdigest() + f"{view.mode}{view.size}"
        hit = last.get(key)
        if hit is None:
            with torch.inference_mode():
                feats = visual_features(
                    vision,
                    normalize(view, vision.preprocessing).to(vision.device),
                    projector.config.feature_layers,
                    colour=projector.config.colour_dim > 0,
                )
                hit = projector(feats.cpu().float())[0].float()
            last.clear()
            last[key] = hit
        return hit.clone()

    def prepare(prompt: str, image: Image.Image | None) -> VLMInputs:
        text = chat_prompt(prompt)
        if image is None:
            ids = list(tok(text.replace(IMAGE_PLACEHOLDER + "\n", ""), add_special_tokens=False).input_ids)
            return VLMInputs(
                embed_ids(ids), torch.tensor(ids, dtype=torch.long), [MODALITY_TEXT] * len(ids), None, None
            )
        before, after = text.split(IMAGE_PLACEHOLDER)
        ids_before = list(tok(before, add_special_tokens=False).input_ids)
        ids_after = list(tok(after, add_special_tokens=False).input_ids)
        view = model_view(vision, image)
        visual = visual_tokens(view)
        n = int(visual.shape[0])
        ids = ids_before + [image_token_id] * n + ids_after
        modality = [MODALITY_TEXT] * len(ids_before) + [MODALITY_IMAGE] * n + [MODALITY_TEXT] * len(ids_after)
        embeds = torch.cat([embed_ids(ids_before), visual, embed_ids(ids_after)])
        return VLMInputs(embeds, torch.tensor(ids, dtype=torch.long), modality, (grid, grid), view)

    def encoder_cls_attention(image: Image.Image, blocks: Sequence[int]) -> torch.Tensor:
        """(grid * grid,) head-mean [CLS] -> patch attention of the encoder `blocks` (negative: from the end),
        averaged over them and summed over the patches each visual token pools (row-major)."""
        if not vision.has_cls:
            raise InputError(f"the vision encoder of {model_id!r} has no [CLS] token")
        n = vision.n_layers
        if not blocks or any(not -n <= b < n for b in blocks):
            raise InputError(f"encoder blocks must be in -{n}..{n - 1} (got {list(blocks)})")
        blocks = sorted({b % n for b in blocks})
        view = model_view(vision, image)
        with torch.inference_mode():
            hidden = vision.embed(normalize(view, vision.preprocessing).to(vision.device))
            _, attentions = vision.run_blocks(hidden, 0, max(blocks) + 1, attentions=True)
        n_prefix = vision.n_prefix
        rows = torch.stack([attentions[b][0, :, 0, n_prefix:].float().mean(dim=0) for b in blocks])
        per_patch = rows.mean(dim=0).cpu()  # (P,)
        side = int(round(per_patch.shape[0] ** 0.5))
        pooled = (
            torch.nn.functional.avg_pool2d(per_patch.view(1, 1, side, side), side // grid)
            * (side // grid) ** 2
        )
        return pooled.flatten()

    return VisionLanguageModel(
        model_id=model_id,
        lm=lm,
        weight_hash=f"{lm.weight_hash[:8]}{vision.weight_hash[:4]}{weights_digest}",
        prepare_fn=prepare,
        image_token_id=image_token_id,
        chat=lambda q, img: chat_prompt(q),
        n_visual_tokens=grid * grid,
        encoder_cls_attention=encoder_cls_attention,
    )


def load_projector(path: Path) -> Any:
    """The trained projector (fp16 safetensors with its config in the metadata), in float32."""
    from safetensors import safe_open

    from explorer.vlm.tiny_vlm import Projector, ProjectorConfig

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118
    projector = Projector(ProjectorConfig(**json.loads(meta.get("config", "{}"))))
    projector.load_state_dict(state)
    return projector.eval()


def _tiny_vlm(
    settings: Settings, weights: Path, progress: ProgressFn | None, dtype: str | None = None
) -> VisionLanguageModel:
    from explorer.backends.language import load_model
    from explorer.backends.vision import load_vision_model

    path = weights / "projector.safetensors"
    if not path.exists():
        raise InputError(
            "the demo VLM's projector weights are missing; run `explorer train-demo-vlm --out DIR` to train them"
        )
    # parts of the admitted demo VLM: loaded even when the allow-list names only "tiny-vlm"
    lm = load_model("smollm2-135m", settings=settings, progress=progress, dtype=dtype, check_allowed=False)
    # the vision encoder and projector stay in float32 whatever the LM's dtype: the projector was
    # trained on float32 features, and the visual tokens are cast as they enter the LM
    vision = load_vision_model(
        "dinov2-small-focus", settings=settings, progress=progress, dtype="float32", check_allowed=False
    )
    digest = hashlib.sha256(path.read_bytes())
    lora = weights / "lora.safetensors"
    if lora.exists():
        digest.update(lora.read_bytes())
        lm = _with_lora(lm, lora)
    return projector_vlm(lm, vision, load_projector(path), TINY_VLM, digest.hexdigest()[:8])


def _with_lora(lm: LanguageModel, path: Path) -> LanguageModel:
    """A private copy of `lm` with the LoRA adapters in `path` merged into its weights (the
    shared, cached text model stays untouched)."""
    import copy

    from safetensors import safe_open

    from explorer.backends.loading import weight_fingerprint
    from explorer.vlm.tiny_vlm import merge_lora

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    model = copy.deepcopy(lm.hf_model)
    merge_lora(model, state, float(meta["alpha"]) / float(meta["rank"]))
    model.eval()
    return LanguageModel(
        model_id=f"{TINY_VLM}:language",
        hf_model=model,
        tokenizer=lm.tokenizer,
        spec=lm.spec,
        weight_hash=weight_fingerprint(model),
        device=lm.device,
    )


def load_vlm(
    name_or_path: str | None = None,
    *,
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    weights: Path | None = None,
    dtype: str | None = None,
) -> VisionLanguageModel:
    """Load (once per process and dtype) a VLM: "tiny-vlm" (embedded demo), or a hub id / local dir.

    `dtype` ("auto", "float32", "float16", "bfloat16"; default: settings.dtype) is the dtype of
    the language model's weights. The demo VLM's vision encoder and projector stay in float32
    (their visual tokens are cast when they enter the LM); a hub VLM loads whole in `dtype`."""
    from explorer.backends.loading import default_device, dtype_name, resolve_dtype

    settings = settings or Settings.from_env()
    requested = (name_or_path or TINY_VLM).strip()
    chosen = dtype_name(resolve_dtype(dtype if dtype is not None else settings.dtype, default_device()))
    with load_errors_hidden(requested, settings):
        name = admit_model(requested, EMBEDDED_VLMS)  # the host's allow-list; one spelling per dir
        if name == TINY_VLM:
            w = weights or WEIGHTS_DIR
            key = ("vlm:" + name, str(w.resolve()), chosen)
            return MODEL_CACHE.get(key, lambda: _tiny_vlm(settings, w, progress, chosen))  # type: ignore[no-any-return]
        from explorer.backends.vlm_hub import load_hub_vlm

        return MODEL_CACHE.get(  # type: ignore[no-any-return]
            ("vlm:" + name, chosen), lambda: load_hub_vlm(name, settings, progress, dtype=chosen)
        )


def is_vlm_name(name: str | None) -> bool:
    return bool(name) and name in EMBEDDED_VLMS


def image_token_grid(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n_image_tokens, ...) -> (rows, cols, ...) in row-major order."""
    return values.reshape(grid[0], grid[1], *values.shape[1:])


# ---------------------------------------------------------------------------------------------
# One traced forward pass
# ---------------------------------------------------------------------------------------------
def position_labels(vlm: VisionLanguageModel, ids: list[int], modality: list[str], grid: Any) -> list[str]:
    """Text positions by their token; image positions as `<img r,c>` (row, column of the grid)."""
    labels = []
    image_index = 0
    cols = grid[1] if grid else 1
    for tid, mod in zip(ids, modality, strict=True):
        if mod == MODALITY_IMAGE:
            r, c = divmod(image_index, cols)
            labels.append(f"<img {r},{c}>")
            image_index += 1
        else:
            labels.append(vlm.lm.token_str(tid))
    return labels


@torch.no_grad()
def capture_vlm(
    vlm: VisionLanguageModel,
    inputs: VLMInputs,
    extra_ids: list[int] | None = None,
    attentions: bool = False,
) -> tuple[Trace, list[str]]:
    """Trace of the LM over prompt (+ `extra_ids`, e.g. generated tokens) -> (Trace, modality).

    Residuals of every LM block (layer 0 = the input embeddings, text and projected image
    tokens alike), attentions when asked for, and the model's own logits."""
    extra = list(extra_ids or [])
    ids = torch.cat([inputs.input_ids, torch.tensor(extra, dtype=torch.long)])
    modality = inputs.modality + [MODALITY_TEXT] * len(extra)
    if not vlm.uses_model_forward:
        embeds, _ = _with_extra(vlm, inputs, extra)
        trace = vlm.lm.capture(ids, inputs_embeds=embeds, modality=modality, attentions=attentions)
    else:
        trace = _capture_model_forward(vlm, inputs, extra, ids, modality, attentions)
    trace.tokens = position_labels(vlm, ids.tolist(), modality, inputs.grid)
    return trace, modality


@torch.no_grad()
def vlm_attention_pass(
    vlm: VisionLanguageModel,
    inputs: VLMInputs,
    extra_ids: list[int],
    on_layer: Callable[[int, torch.Tensor], None],
    on_residual: Callable[[int, torch.Tensor], None],
) -> None:
    """One pass of the LM over prompt (+ `extra_ids`) that hands every block's attention weights
    (n_heads, T, T) float32 to `on_layer(block, weights)` and every residual (T, d_model)
    float32 to `on_residual(layer, residual)` (layer 0 = the input embeddings, l + 1 = the
    output of block l) as they are computed, and keeps none of them: memory is one layer's
    matrices, where `capture_vlm(attentions=True)` holds n_layers x n_heads x T^2.

    Order: on_residual(0), then per block on_layer(l), on_residual(l + 1). Projector VLMs and
    hub VLMs (their own forward) alike; needs eager attention."""
    lm = vlm.lm
    blocks = lm.blocks()

    def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        on_residual(0, _first_tensor(hidden)[0].float())

    def make_hook(i: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            on_residual(i + 1, _first_tensor(output)[0].float())

        return hook

    with vlm.lock, lm.lock, lm.attention_hooks(on_layer):
        handles = [blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
        handles += [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks)]
        try:
            vlm.forward(inputs, extra_ids=extra_ids, logits_to_keep=1)
        finally:
            for h in handles:
                h.remove()


def _capture_model_forward(
    vlm: VisionLanguageModel,
    inputs: VLMInputs,
    extra: list[int],
    ids: torch.Tensor,
    modality: list[str],
    attentions: bool,
) -> Trace:
    """Hub VLMs: hook the LM blocks while the model runs its own multimodal forward."""
    blocks = vlm.lm.blocks()
    captured: list[torch.Tensor | None] = [None] * (len(blocks) + 1)

    def pre_hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        hidden = args[0] if args else kwargs.get("hidden_states")
        captured[0] = _first_tensor(hidden)

    def make_hook(i: int) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured[i + 1] = _first_tensor(output)

        return hook

    with vlm.lock, vlm.lm.lock:
        handles = [blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True)]
        handles += [block.register_forward_hook(make_hook(i)) for i, block in enumerate(blocks)]
        try:
            out = vlm.forward(inputs, extra_ids=extra, output_attentions=attentions)
        finally:
            for h in handles:
                h.remove()
    if any(c is None for c in captured):
        raise RuntimeError("a block did not run: the architecture spec points at the wrong modules")
    residual = torch.stack([c[0].float() for c in captured if c is not None]).cpu()
    att = None
    if attentions:
        if not out.attentions or out.attentions[0] is None:
            raise RuntimeError("the model returned no attentions; load it with attn_implementation='eager'")
        att = torch.stack([a[0].float() for a in out.attentions]).cpu()
    return Trace(
        input_ids=ids,
        tokens=[""] * len(modality),
        residual=residual,
        attentions=att,
        logits=out.logits[0].float().cpu(),
        modality=modality,
    )


# ---------------------------------------------------------------------------------------------
# Training hooks for the demo VLM (explorer.vlm.train)
# ---------------------------------------------------------------------------------------------
def freeze_language_model(lm: LanguageModel) -> None:
    """requires_grad off for every LM weight (the demo VLM trains a projector and adapters)."""
    for p in lm.hf_model.parameters():
        p.requires_grad_(False)


def attach_lora(lm: LanguageModel, rank: int, alpha: float) -> list[torch.nn.Parameter]:
    """Wrap the LM's attention projections with trainable LoRA adapters (in place, for training
    only); returns the adapter parameters."""
    from explorer.vlm.tiny_vlm import add_lora

    add_lora(lm.hf_model, rank, alpha)
    return [p for n, p in lm.hf_model.named_parameters() if "lora_" in n]


def load_lora(lm: LanguageModel, path: Path) -> None:
    """Load saved LoRA adapters into an LM wrapped by `attach_lora` (same rank; a warm start)."""
    from explorer.vlm.train import load_lora_adapters

    load_lora_adapters(lm.hf_model, path)


def lora_weights(lm: LanguageModel) -> dict[str, torch.Tensor]:
    from explorer.vlm.tiny_vlm import lora_state

    return lora_state(lm.hf_model)
