"""Where the parts of each supported architecture live, as data: language models and vision
encoders (the vision-language models built on them reuse both tables).

Each language-model entry maps a transformers `model_type` to dotted module paths inside the
`*ForCausalLM` model. Adding an architecture is one `register_architecture` call, not a
new code path. The logit lens needs: the list of blocks (residual stream after each), the
final norm, and the unembedding; `embed` is the token embedding (for attribution methods
that work on input embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchitectureSpec:
    """Dotted paths from the top-level causal-LM module.

    A path may list alternatives separated by "|" (module names that changed across
    transformers versions); the first that exists is used.

    blocks:      ModuleList of transformer blocks; block i maps residual i -> i+1.
    final_norm:  norm applied to the last residual before the unembedding.
    unembed:     Linear from d_model to vocab (the LM head).
    embed:       token embedding (nn.Embedding).
    logit_softcap_attr: config attribute holding a final logit soft-cap (Gemma 2), if any.
    attention:   the attention module inside one block; under eager attention its forward
                 returns (output, weights [B, n_heads, T, T]) (read layer by layer for long prompts).
    """

    blocks: str
    final_norm: str
    unembed: str
    embed: str
    logit_softcap_attr: str | None = None
    attention: str = "self_attn|attn|attention"


_LLAMA_LIKE = ArchitectureSpec(
    blocks="model.layers", final_norm="model.norm", unembed="lm_head", embed="model.embed_tokens"
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "gpt2": ArchitectureSpec(
        blocks="transformer.h", final_norm="transformer.ln_f", unembed="lm_head", embed="transformer.wte"
    ),
    "gpt_neox": ArchitectureSpec(
        blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head|embed_out",
        embed="gpt_neox.embed_in",
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": ArchitectureSpec(
        blocks="model.layers",
        final_norm="model.norm",
        unembed="lm_head",
        embed="model.embed_tokens",
        logit_softcap_attr="final_logit_softcapping",
    ),
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
}


def register_architecture(model_type: str, spec: ArchitectureSpec) -> None:
    """Teach the explorer a new architecture (call before loading such a model)."""
    ARCHITECTURES[model_type] = spec


def architecture_for(model_type: str) -> ArchitectureSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} is not registered. Call "
            f"explorer.register_architecture({model_type!r}, ArchitectureSpec(blocks=..., final_norm=..., "
            f"unembed=..., embed=...)) with the dotted module paths of its blocks, final norm, LM head and "
            f"token embedding. Known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


# ---------------------------------------------------------------------------------------------
# Vision encoders
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisionArchitecture:
    """Dotted module paths inside the backbone (a `*Model` / `*VisionModel`, no task head).

    embeddings:  module mapping pixel_values [B,3,H,W] -> tokens [B, T, D] (prefix tokens first).
    blocks:      candidate paths of the ModuleList of encoder layers (first that exists wins;
                 transformers moved ViT's from `encoder.layer` to `layers`).
    attention:   path of the attention module inside one layer; its forward returns
                 (output, weights [B, n_heads, T, T]) under eager attention.
    final_norm:  norm applied to the last hidden state.
    pre_norm:    norm applied to the embeddings before block 0 (CLIP's `pre_layrnorm`), if any.
    has_cls:     whether token 0 is a [CLS] token.
    register_attr: config attribute holding the number of register tokens (after [CLS]).
    """

    blocks: tuple[str, ...]
    attention: str
    embeddings: str = "embeddings"
    final_norm: str = "layernorm"
    pre_norm: str | None = None
    has_cls: bool = True
    register_attr: str | None = None


VISION_ARCHITECTURES: dict[str, VisionArchitecture] = {
    "dinov2": VisionArchitecture(blocks=("encoder.layer",), attention="attention"),
    "dinov2_with_registers": VisionArchitecture(
        blocks=("encoder.layer",), attention="attention", register_attr="num_register_tokens"
    ),
    "vit": VisionArchitecture(blocks=("layers", "encoder.layer"), attention="attention"),
    "clip_vision_model": VisionArchitecture(
        blocks=("encoder.layers", "vision_model.encoder.layers"),
        attention="self_attn",
        embeddings="embeddings",
        final_norm="post_layernorm",
        pre_norm="pre_layrnorm",
    ),
    "siglip_vision_model": VisionArchitecture(
        blocks=("encoder.layers", "vision_model.encoder.layers"),
        attention="self_attn",
        final_norm="post_layernorm",
        has_cls=False,
    ),
}

# Full (text+vision) model types whose vision tower we load instead.
VISION_TOWER_CLASSES = {
    "clip": "CLIPVisionModel",
    "siglip": "SiglipVisionModel",
}


def register_vision_architecture(model_type: str, arch: VisionArchitecture) -> None:
    """Teach the explorer a new vision encoder (call before loading such a model)."""
    VISION_ARCHITECTURES[model_type] = arch


def vision_architecture_for(model_type: str) -> VisionArchitecture:
    if model_type not in VISION_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"vision architecture {model_type!r} is not supported; known: {sorted(VISION_ARCHITECTURES)}"
        )
    return VISION_ARCHITECTURES[model_type]
