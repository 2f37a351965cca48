"""Feature attribution for causal LMs: which context tokens made the model predict the target?

One registry, `ATTRIBUTION_METHODS` (name -> `AttributionMethod`), feeds the CLI's
`--method`, the UI's dropdown and the test matrix. Every method is a function
`(lm, task, params, seed) -> (scores (P,), extras, notes)` with its own params dataclass;
`run_attribution` adds faithfulness metrics and timing and returns an `AttributionResult`.

Methods: ReAGent (ours, `reagent`), Captum baselines on input embeddings (`gradients`) and
attention-based scores (`attention_based`). Faithfulness: `faithfulness`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from explorer.analysis.attribution import attention_based, gradients, reagent
from explorer.analysis.attribution.faithfulness import FaithfulnessParams, faithfulness
from explorer.analysis.attribution.result import (
    AttributionComparison,
    AttributionResult,
    GenerationAttributionResult,
)
from explorer.analysis.attribution.task import AttributionTask, resolve_continuation
from explorer.backends.language import LanguageModel, encode
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.text_input import check_text

MethodFn = Callable[
    [LanguageModel, AttributionTask, Any, int], tuple[torch.Tensor, dict[str, Any], list[str]]
]
MAX_GENERATE = 64


@dataclass(frozen=True)
class AttributionMethod:
    """A registered attribution method.

    name: CLI/UI identifier; label: display name; params: its parameter dataclass (defaults
    are the method's defaults); contrastive: whether it accepts a foil; description: one line;
    deviations: where it departs from its paper (shown in the UI, README and JSON).
    """

    name: str
    label: str
    fn: MethodFn
    params: type
    contrastive: bool
    description: str
    deviations: tuple[str, ...] = ()

    def param_names(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.params)}

    def make_params(self, values: dict[str, Any]) -> Any:
        """Params from the subset of `values` this method knows; validated."""
        known = {k: v for k, v in values.items() if k in self.param_names() and v is not None}
        params = self.params(**known)
        params.validate()
        return params

    def validated(self, params: Any) -> Any:
        """`params` as is when it is this method's Params (the caller validated it), else
        `make_params` of the dict (None: the defaults)."""
        return params if isinstance(params, self.params) else self.make_params(params or {})


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {
    m.name: m
    for m in (
        AttributionMethod(
            "reagent", "ReAGent", reagent.reagent, reagent.ReagentParams, False,
            "recursive replacement of random context tokens (Zhao & Shan 2024); model-agnostic, gradient-free",
            reagent.DEVIATIONS,
        ),
        AttributionMethod(
            "integrated_gradients", "Integrated gradients", gradients.integrated_gradients, gradients.IGParams, True,
            "path integral of gradients from the zero embedding (Captum)",
        ),
        AttributionMethod(
            "input_x_gradient", "Input x gradient", gradients.input_x_gradient, gradients.NoParams, True,
            "embedding times gradient, summed over dimensions (Captum)",
        ),
        AttributionMethod(
            "saliency", "Gradient saliency", gradients.saliency, gradients.NoParams, True,
            "L2 norm of the gradient w.r.t. each token's embedding (Captum)",
        ),
        AttributionMethod(
            "occlusion", "Occlusion (feature ablation)", gradients.occlusion, gradients.OcclusionParams, True,
            "drop in the objective when one token's embedding is zeroed (Captum FeatureAblation)",
        ),
        AttributionMethod(
            "last_layer_attention", "Last-layer attention", attention_based.last_layer_attention, gradients.NoParams, False,
            "last layer's attention from the predicting position, mean over heads",
        ),
        AttributionMethod(
            "attention_rollout", "Attention rollout", attention_based.rollout_scores, gradients.NoParams, False,
            "attention rollout through all layers (Abnar & Zuidema 2020)",
        ),
    )
}  # fmt: skip

FAITHFULNESS_KEYS = {"soft_samples": "n_samples", "hard_fraction": "fraction"}


def method_names() -> list[str]:
    return list(ATTRIBUTION_METHODS)


def get_method(name: str) -> AttributionMethod:
    if name not in ATTRIBUTION_METHODS:
        raise InputError(f"unknown attribution method {name!r}; choose from {method_names()} or 'all'")
    return ATTRIBUTION_METHODS[name]


def split_params(
    methods: list[AttributionMethod], values: dict[str, Any]
) -> tuple[dict[str, Any], FaithfulnessParams]:
    """Validate `values` (method parameters + faithfulness keys) against `methods`.

    Returns each method's validated Params (defaults filled in; `.to_json()` is its part of the
    cache key) and the faithfulness params. Unknown keys raise InputError naming the accepted ones.
    """
    known = set(FAITHFULNESS_KEYS)
    for m in methods:
        known |= m.param_names()
    unknown = sorted(k for k in values if k not in known)
    if unknown:
        raise InputError(
            f"unknown parameter(s) {unknown} for {[m.name for m in methods]}; accepted: {sorted(known)}"
        )
    faith = FaithfulnessParams(
        **{FAITHFULNESS_KEYS[k]: v for k, v in values.items() if k in FAITHFULNESS_KEYS and v is not None}
    )
    faith.validate()
    return {m.name: m.make_params(values) for m in methods}, faith


def build_task(
    lm: LanguageModel, prompt: str, target: str, contrast: str | None, max_tokens: int
) -> tuple[AttributionTask, dict[str, Any], dict[str, Any] | None, list[str]]:
    """Tokenise and validate; returns the task, target/contrast descriptions, notes."""
    ids = encode(lm, prompt, max_tokens)
    check_text(target, "the target")
    if contrast:
        check_text(contrast, "the contrast foil")
    t_ids, t_text, t_toks = resolve_continuation(lm, target, "target")
    notes: list[str] = []
    if len(t_ids) > 1:
        notes.append(
            f"target {target!r} is {len(t_ids)} tokens {t_toks}: attributing the sum of their log-probabilities"
        )
    target_info = {"token": t_text, "id": t_ids[0], "ids": t_ids, "tokens": t_toks}
    foil = None
    contrast_info = None
    if contrast is not None and contrast != "":
        f_ids, f_text, f_toks = resolve_continuation(lm, contrast, "contrast foil")
        if f_ids == t_ids:
            raise InputError("the contrast foil is the same as the target: choose a different token")
        foil = torch.tensor(f_ids, dtype=torch.long)
        contrast_info = {"token": f_text, "id": f_ids[0], "ids": f_ids, "tokens": f_toks}
    task = AttributionTask(
        context_ids=ids.cpu(),
        target_ids=torch.tensor(t_ids, dtype=torch.long),
        foil_ids=foil,
        tokens=lm.tokens_str(ids.tolist()),
    )
    return task, target_info, contrast_info, notes


def run_method(
    lm: LanguageModel, task: AttributionTask, method: AttributionMethod, params: dict[str, Any], seed: int
) -> tuple[np.ndarray, dict[str, Any], list[str]]:
    """Run one method; checks one finite score per context token."""
    if task.foil_ids is not None and not method.contrastive:
        raise InputError(
            f"contrast: {method.name} does not support contrastive attribution; give no contrast, or choose a gradient method or occlusion"
        )
    scores, extras, notes = method.fn(lm, task, method.params(**params), seed)
    arr = scores.detach().double().cpu().numpy().reshape(-1)
    if arr.shape[0] != task.n_context or not np.all(np.isfinite(arr)):
        raise RuntimeError(
            f"{method.name} returned {arr.shape[0]} scores (finite: {np.isfinite(arr).all()}) for {task.n_context} tokens"
        )
    return arr, extras, notes


def run_attribution(
    lm: LanguageModel,
    prompt: str,
    target: str,
    *,
    method: str = "reagent",
    contrast: str | None = None,
    seed: int = 0,
    params: Any = None,
    faith: FaithfulnessParams | None = None,
    max_tokens: int = 512,
    progress: ProgressFn | None = None,
) -> AttributionResult:
    """Attribute `target` after `prompt` with one registered method, plus faithfulness.

    `params`: the method's Params (e.g. `ReagentParams`, from `split_params`: validated by the
    caller and used as is) or its values as a dict (validated here). `seconds` is the
    method's wall time (faithfulness evaluation excluded, so methods compare fairly).
    """
    prog = progress or (lambda f, m: None)
    m = get_method(method)
    task, target_info, contrast_info, notes = build_task(lm, prompt, target, contrast, max_tokens)
    json_params = m.validated(params).to_json()
    prog(0.1, f"{m.label}: attributing")
    t0 = time.perf_counter()
    scores, extras, method_notes = run_method(lm, task, m, json_params, seed)
    seconds = time.perf_counter() - t0
    prog(0.8, f"{m.label}: faithfulness")
    faith_values = faithfulness(lm, task, torch.from_numpy(scores), faith, seed=seed)
    if contrast_info is not None:
        notes.append("faithfulness is measured on the target's probability (not the contrast)")
    prog(1.0, "Done")
    return AttributionResult(
        model=lm.model_id,
        method=m.name,
        tokens=task.tokens,
        input_ids=task.context_ids.tolist(),
        scores=scores,
        target=target_info,
        faithfulness=faith_values,
        seconds=seconds,
        params={**json_params, "seed": seed, **(faith or FaithfulnessParams()).to_json()},
        contrast=contrast_info,
        extras=extras,
        notes=notes + method_notes,
    )


def greedy_generate(lm: LanguageModel, prompt_ids: torch.Tensor, n: int) -> list[int]:
    """Greedy-decode up to `n` tokens after `prompt_ids` (P,); stops after the EOS token."""
    return lm.generate(prompt_ids, n).ids()


def run_generation(
    lm: LanguageModel,
    prompt: str,
    *,
    generate: int,
    method: str = "input_x_gradient",
    seed: int = 0,
    params: Any = None,
    faith: FaithfulnessParams | None = None,
    max_tokens: int = 512,
    progress: ProgressFn | None = None,
) -> GenerationAttributionResult:
    """Greedy-generate `generate` tokens, then attribute each to every token before it.

    Row s of the matrix scores sources 0 .. P+s-1 for generated token s (NaN beyond).
    """
    if not 1 <= generate <= MAX_GENERATE:
        raise InputError(f"generate must be between 1 and {MAX_GENERATE} tokens, got {generate}")
    prog = progress or (lambda f, m: None)
    m = get_method(method)
    json_params = m.validated(params).to_json()
    prompt_ids = encode(lm, prompt, max_tokens).cpu()
    prog(0.05, f"Generating {generate} tokens")
    gen_ids = greedy_generate(lm, prompt_ids, generate)
    p = int(prompt_ids.numel())
    s_total = len(gen_ids)
    matrix = np.full((s_total, p + s_total - 1), np.nan)
    faith_rows: dict[str, list[float | None]] = {}
    method_seconds = 0.0
    for s in range(s_total):
        prog(0.1 + 0.9 * s / s_total, f"{m.label}: step {s + 1}/{s_total}")
        context = torch.cat([prompt_ids, torch.tensor(gen_ids[:s], dtype=torch.long)])
        task = AttributionTask(
            context_ids=context,
            target_ids=torch.tensor([gen_ids[s]], dtype=torch.long),
            foil_ids=None,
            tokens=lm.tokens_str(context.tolist()),
        )
        t_m = time.perf_counter()
        scores, _, _ = run_method(lm, task, m, json_params, seed)
        method_seconds += time.perf_counter() - t_m
        matrix[s, : context.numel()] = scores
        for k, v in faithfulness(lm, task, torch.from_numpy(scores), faith, seed=seed).items():
            faith_rows.setdefault(k, []).append(v)
    prog(1.0, "Done")
    return GenerationAttributionResult(
        model=lm.model_id,
        method=m.name,
        prompt_tokens=lm.tokens_str(prompt_ids.tolist()),
        generated=lm.tokens_str(gen_ids),
        generated_ids=gen_ids,
        matrix=matrix,
        faithfulness=faith_rows,
        seconds=method_seconds,
        params={**json_params, "seed": seed, "generate": generate},
    )


__all__ = [
    "ATTRIBUTION_METHODS",
    "AttributionComparison",
    "AttributionMethod",
    "AttributionResult",
    "AttributionTask",
    "GenerationAttributionResult",
    "build_task",
    "get_method",
    "method_names",
    "run_attribution",
    "run_generation",
    "split_params",
]
