"""Public API of the pruning lab (re-exported by `explorer` and `explorer.api`).

`prune_text(model, prompt, ...)` prunes a text prompt (before the LM, or inside it with FastV)
and `prune_image(image, ...)` prunes image patches inside a vision transformer; `prune(...)`
dispatches on which of the two it is given. Every pruned input is really run through the model
and compared with the unpruned run; the sweep is stored in DuckDB (one run per request, keyed by
model, weights, prompt or image hash and parameters) and reopens without a model.

Defaults: keep ratios 1.0, 0.9, 0.75, 0.5, 0.3, 0.2, 0.1, 0.05; keep count max(1, round(ratio *
n)); for text the last prompt token is always kept. Bad input (keep ratio outside (0, 1], layer
out of range, unknown strategy, unreadable / too large image) raises InputError before anything
is computed or stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from explorer.analysis.pruning import text as _text
from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS
from explorer.analysis.pruning.params import PruneImageParams, PruneTextParams
from explorer.api.runner import DbArg, ProgressFn, cache_params, get_model, open_store, run_cached
from explorer.backends.images import ImageInput, load_image
from explorer.backends.language import LanguageModel
from explorer.backends.vision import VisionModel, load_vision_model
from explorer.config import Settings
from explorer.errors import InputError
from explorer.results import StoredResult
from explorer.text_input import check_prompt

B = TypeVar("B")
R = TypeVar("R", bound=StoredResult)
SWEEP_RATIOS = DEFAULT_KEEP_RATIOS  # the one default list (analysis.pruning.common)
TextPruningResult = _text.TextPruningResult


def run_prune_text(
    model: str | LanguageModel | None,
    prompt: str,
    *,
    strategies: Sequence[str] | str = "all",
    keep_ratios: Sequence[float] | float = SWEEP_RATIOS,
    layer: int = _text.DEFAULT_LAYER,
    target: str | None = None,
    continuation_tokens: int = 8,
    seed: int = 0,
    params: PruneTextParams | None = None,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> _text.TextPruningResult:
    """Prune `prompt` with each strategy at each keep ratio; measure each against the unpruned run.

    `model`: embedded name (default "smollm2-135m"), hub id, local dir or a loaded
    `LanguageModel`. `strategies`: "all" or names from `text_strategy_names()`
    (frugalprompt:<attribution method>, self_information, bottom_k:<method>, random, fastv).
    `layer`: FastV's K (blocks 0..K-1 see every token). `target`: the token whose probability and
    rank are tracked (default: the unpruned top-1 next token). `continuation_tokens`: N greedy
    tokens compared. `params`: a `PruneTextParams` instead of those keywords (it wins when given).
    Returns a `TextPruningResult`; `.to_dict()` is the CLI's JSON.
    """
    settings = settings or Settings.from_env()
    if params is None:
        params = PruneTextParams.of(
            strategies,
            keep_ratios,
            layer=layer,
            target=target,
            continuation_tokens=continuation_tokens,
            seed=seed,
        )
    params.validate()  # before the model loads
    check_prompt(prompt, settings.max_prompt_tokens)  # by characters, before the model loads
    lm = _loaded(lambda: get_model(model, settings, progress, dtype), "Loading model", progress)
    p = params.for_model(lm)
    return _run_sweep(
        _text.TextPruningResult.kind,
        lm,
        prompt,
        cache_params(p, max_tokens=settings.max_prompt_tokens),
        lambda: _text.prune_text(
            lm,
            prompt,
            p,
            max_tokens=settings.max_prompt_tokens,
            batch_mb=settings.pruning_batch_mb,
            progress=progress,
        ),
        db=db,
        settings=settings,
        use_cache=use_cache,
    )


def _loaded(load: Callable[[], B], message: str, progress: ProgressFn | None) -> B:
    """Load a backend, telling the progress bar first."""
    if progress is not None:
        progress(0.0, message)
    return load()


def _run_sweep(
    kind: str,
    backend: Any,
    prompt: str,
    params: dict[str, Any],
    compute: Callable[[], R],
    *,
    db: DbArg,
    settings: Settings,
    use_cache: bool,
) -> R:
    """Serve a text or image pruning sweep from the store, or compute and store it: keyed by the
    backend's model and weights, the prompt (or image hash) and the validated `params`
    (`cache_params` of the kind's Params plus its context)."""
    return run_cached(
        kind,
        model=backend.model_id,
        weight_hash=backend.weight_hash,
        prompt=prompt,
        params=params,
        compute=compute,
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def _image_engine() -> Any:
    from explorer.analysis.pruning import image

    return image


def run_prune_image(
    image: ImageInput,
    *,
    model: str | VisionModel | None = None,
    strategies: Sequence[str] | str = "all",
    keep_ratios: Sequence[float] | float = SWEEP_RATIOS,
    layer: int = 0,
    seed: int = 0,
    params: PruneImageParams | None = None,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """Prune patches of `image` inside a vision transformer with each strategy at each keep ratio.

    `image`: a path, bytes or PIL image (validated: not an image / corrupt / too large ->
    InputError, nothing stored). `model`: embedded name (default "dinov2-small-focus", DINOv2-small
    with a saliency decoder), hub id, local dir or a loaded `VisionModel`. `layer`: blocks
    0..layer-1 run on every patch, the rest on the kept ones. The run is keyed by the SHA-256 of
    the decoded pixels (the prompt column reads "image sha256:<hex>"). Returns an
    `ImagePruningResult`; `.to_dict()` is the CLI's JSON. `params`: a `PruneImageParams` instead of
    the strategy / ratio / layer / seed keywords (it wins when given).
    """
    from explorer.analysis.vision_attention_result import image_sha256

    engine = _image_engine()
    settings = settings or Settings.from_env()
    if params is None:
        params = PruneImageParams.of(strategies, keep_ratios, layer=layer, seed=seed)
    params.validate()  # before the image is read or the model loads
    pil = load_image(image, settings)
    vm = (
        model
        if isinstance(model, VisionModel)
        else _loaded(
            lambda: load_vision_model(
                model or settings.default_vision_model, settings=settings, progress=progress, dtype=dtype
            ),
            "Loading vision model",
            progress,
        )
    )
    p = params.for_model(vm)
    return _run_sweep(
        engine.ImagePruningResult.kind,
        vm,
        f"image sha256:{image_sha256(pil)}",
        cache_params(p, **vm.preprocessing.cache_key()),
        lambda: engine.prune_image(vm, pil, p, progress=progress),
        db=db,
        settings=settings,
        use_cache=use_cache,
    )


def prune(
    prompt: str | None = None,
    image: ImageInput | None = None,
    *,
    model: str | LanguageModel | VisionModel | None = None,
    strategies: Sequence[str] | str = "all",
    keep_ratios: Sequence[float] | float = SWEEP_RATIOS,
    layer: int | None = None,
    target: str | None = None,
    continuation_tokens: int = 8,
    seed: int = 0,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """`prune_text` when given a `prompt`, `prune_image` when given an `image` (exactly one).

    `layer` defaults to 2 for text (FastV's K) and 0 for images; `target` and
    `continuation_tokens` apply to text only."""
    if (prompt is None) == (image is None):
        raise InputError("give exactly one of a prompt (text pruning) or an image (patch pruning)")
    if image is not None:
        if target:
            raise InputError("target applies to text prompts only (not to an image)")
        if isinstance(model, LanguageModel):
            raise InputError("image pruning needs a vision model, not a language model")
        return run_prune_image(
            image,
            model=model,
            strategies=strategies,
            keep_ratios=keep_ratios,
            layer=0 if layer is None else layer,
            seed=seed,
            db=db,
            use_cache=use_cache,
            settings=settings,
            dtype=dtype,
            progress=progress,
        )
    if isinstance(model, VisionModel):
        raise InputError("text pruning needs a language model, not a vision model")
    assert prompt is not None
    return run_prune_text(
        model,
        prompt,
        strategies=strategies,
        keep_ratios=keep_ratios,
        layer=_text.DEFAULT_LAYER if layer is None else layer,
        target=target,
        continuation_tokens=continuation_tokens,
        seed=seed,
        db=db,
        use_cache=use_cache,
        settings=settings,
        dtype=dtype,
        progress=progress,
    )


def text_strategy_names() -> list[str]:
    """Selectable text strategies ("frugalprompt:<method>" and "bottom_k:<method>" per attribution method)."""
    return _text.TEXT_STRATEGIES.selectable_names()


def image_strategy_names() -> list[str]:
    """Registered image-patch strategies."""
    return list(_image_engine().IMAGE_STRATEGIES)


def deviations() -> dict[str, dict[str, str]]:
    """Where each strategy departs from its paper: {"text": {...}, "image": {...}}."""
    return {
        "text": _text.TEXT_STRATEGIES.deviations(),
        "image": _image_engine().IMAGE_STRATEGIES.deviations(),
    }


__all__ = [
    "SWEEP_RATIOS",
    "TextPruningResult",
    "deviations",
    "image_strategy_names",
    "prune",
    "run_prune_image",
    "run_prune_text",
    "text_strategy_names",
]
