"""The registry of analyses: for each stored kind, its Params type, its compute function (the
engine's, in `analysis/` or `vlm/`), its Result type and the API entry point that runs it through
the store (`explorer.api.runner`).

Entries name their objects as "module:attribute" and resolve on use, so listing the analyses
imports nothing heavy. Attribution (of a target, and over a generation) has `params=None`: its
parameters are one Params dataclass per method (`ReagentParams`, `IGParams`, `OcclusionParams`,
chosen by the method name, plus `FaithfulnessParams`), and its cache key is built from those.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


def resolve(ref: str) -> Any:
    """The object named by "module:attribute"."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Analysis:
    """One analysis: kind (the store's name), and "module:attribute" references."""

    kind: str
    params: str | None
    compute: str
    result: str
    entry: str

    def params_type(self) -> type | None:
        return None if self.params is None else resolve(self.params)

    def result_type(self) -> type:
        return resolve(self.result)  # type: ignore[no-any-return]


ANALYSES: dict[str, Analysis] = {}


def register_analysis(analysis: Analysis) -> Analysis:
    """Add `analysis`; a kind registered twice with different parts is an error."""
    known = ANALYSES.get(analysis.kind)
    if known is not None and known != analysis:
        raise ValueError(f"analysis kind {analysis.kind!r} registered twice")
    ANALYSES[analysis.kind] = analysis
    return analysis


for _entry in (
    Analysis("lens", "explorer.analysis.logit_lens:LensParams", "explorer.analysis.logit_lens:logit_lens",
             "explorer.analysis.logit_lens:LensResult", "explorer.api.lens:run_logit_lens"),
    Analysis("attention", "explorer.analysis.attention:AttentionParams",
             "explorer.analysis.attention:analyze_attention", "explorer.analysis.attention:AttentionResult",
             "explorer.api.attention:attention"),
    Analysis("vision_attention", "explorer.analysis.vision_attention_result:VisionAttentionParams",
             "explorer.analysis.vision_attention_result:analyze_image_attention",
             "explorer.analysis.vision_attention_result:VisionAttentionResult",
             "explorer.api.attention:attention_image"),
    Analysis("attribution", None, "explorer.analysis.attribution:run_attribution",
             "explorer.analysis.attribution.result:AttributionResult", "explorer.api.attribution:attribute"),
    Analysis("attribution_generation", None, "explorer.analysis.attribution:run_generation",
             "explorer.analysis.attribution.result:GenerationAttributionResult",
             "explorer.api.attribution:attribute_generation"),
    Analysis("prune_text", "explorer.analysis.pruning.params:PruneTextParams", "explorer.analysis.pruning.text.sweep:prune_text",
             "explorer.analysis.pruning.text.result:TextPruningResult", "explorer.api.pruning:run_prune_text"),
    Analysis("prune_image", "explorer.analysis.pruning.params:PruneImageParams", "explorer.analysis.pruning.image:prune_image",
             "explorer.analysis.pruning.image:ImagePruningResult", "explorer.api.pruning:run_prune_image"),
    Analysis("vlm_lens", "explorer.analysis.logit_lens:LensParams", "explorer.vlm.lens:vlm_logit_lens",
             "explorer.vlm.lens:VLMLensResult", "explorer.api.vlm:vlm_lens"),
    Analysis("vlm_attention", "explorer.vlm.attention:VLMAttentionParams", "explorer.vlm.attention:vlm_attention",
             "explorer.vlm.attention:VLMAttentionResult", "explorer.api.vlm:run_vlm_attention"),
    Analysis("vlm_attribution", "explorer.analysis.vlm_attribution:VLMAttributionParams",
             "explorer.analysis.vlm_attribution:vlm_attribution",
             "explorer.analysis.vlm_attribution:VLMAttributionResult", "explorer.api.vlm:vlm_attribute"),
    Analysis("vlm_tokens", "explorer.vlm.tokens:TokenParams", "explorer.vlm.tokens:visual_tokens",
             "explorer.vlm.tokens:VisualTokensResult", "explorer.api.vlm:run_visual_tokens"),
    Analysis("vlm_latent", "explorer.vlm.latent:LatentParams", "explorer.vlm.latent:latent_neighbours",
             "explorer.vlm.latent:LatentNeighboursResult", "explorer.api.vlm:run_latent_neighbours"),
    Analysis("vlm_eval", "explorer.vlm.vlm_eval:EvalParams", "explorer.vlm.vlm_eval:evaluate_vlm",
             "explorer.vlm.vlm_eval:VLMEvalResult", "explorer.api.vlm:vlm_eval"),
    Analysis("vista_patterns", "explorer.vlm.vista_patterns:PatternParams",
             "explorer.vlm.vista_patterns:measure_patterns", "explorer.vlm.vista_patterns:VistaPatternsResult",
             "explorer.api.vlm:vista_patterns"),
    Analysis("token_map", "explorer.analysis.atlas.token_map:TokenMapParams",
             "explorer.analysis.atlas.token_map:token_map", "explorer.analysis.atlas.token_map:TokenMapResult",
             "explorer.api.atlas:run_token_map"),
    Analysis("vocab_health", "explorer.analysis.atlas.vocab:VocabParams", "explorer.analysis.atlas.vocab:vocab_health",
             "explorer.analysis.atlas.vocab:VocabHealthResult", "explorer.api.atlas:run_vocab_health"),
    Analysis("microscope", "explorer.analysis.atlas.microscope:MicroscopeParams", "explorer.analysis.atlas.microscope:microscope",
             "explorer.analysis.atlas.microscope:MicroscopeResult", "explorer.api.atlas:run_microscope"),
    Analysis("tokenizer_inspect", "explorer.analysis.atlas.tokenizers:TokenizerParams", "explorer.analysis.atlas.tokenizers:inspect",
             "explorer.analysis.atlas.tokenizers:TokenizerResult", "explorer.api.atlas:inspect_tokenizers"),
    Analysis("vlm_prune", "explorer.vlm.prune_eval:PruneEvalParams", "explorer.vlm.prune_eval:prune_eval",
             "explorer.vlm.prune_eval:VLMPruneResult", "explorer.api.vlm:vlm_prune"),
):  # fmt: skip
    register_analysis(_entry)

# Stored kinds that are not analyses of an input: a comparison of stored attribution runs,
# LatentLens' text bank (a cache the `vlm_latent` analysis builds once per model), and a dataset
# sweep's aggregate (one of the analyses above over every row; explorer.api.sweep).
NOT_ANALYSES = frozenset({"attribution_comparison", "latent_bank", "sweep"})
