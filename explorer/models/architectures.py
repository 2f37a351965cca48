"""Where the parts of each supported architecture live, as data.

Each entry maps a transformers `model_type` to dotted module paths inside the
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
    """

    blocks: str
    final_norm: str
    unembed: str
    embed: str
    logit_softcap_attr: str | None = None


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
