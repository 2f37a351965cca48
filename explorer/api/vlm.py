"""Public API for vision-language models: the same verbs as for text, with an image.

`explorer.logit_lens(model, prompt, image=...)` lands here. A VLM is the embedded demo
("tiny-vlm", the default whenever an image is given) or a hub VLM id / local dir. The cache
key includes a hash of the image as the model sees it, so the same picture and prompt never
recompute.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, TypeVar

from PIL import Image

from explorer.analysis.logit_lens import LensParams
from explorer.api.runner import cache_params, open_store, run_cached
from explorer.backends.embedded import EMBEDDED_LMS
from explorer.backends.images import ImageInput, image_to_png, load_image
from explorer.backends.vlm import EMBEDDED_VLMS, TINY_VLM, VisionLanguageModel, load_vlm
from explorer.config import Settings
from explorer.errors import InputError
from explorer.progress import ProgressFn
from explorer.results import StoredResult
from explorer.vlm.lens import VLMLensResult, vlm_logit_lens

R = TypeVar("R", bound=StoredResult)


def is_vlm(model: str | Any | None) -> bool:
    """Is `model` (a name or a loaded backend) a vision-language model?"""
    if isinstance(model, VisionLanguageModel):
        return True
    if not isinstance(model, str):
        return False
    if model in EMBEDDED_VLMS:
        return True
    if model in EMBEDDED_LMS:
        return False
    return _config_has_vision(model)


def _config_has_vision(name: str) -> bool:
    """A hub id or local dir whose config has a `vision_config` (every transformers VLM does)."""
    from explorer.backends.loading import load_config
    from explorer.model_policy import admit_model

    name = admit_model(name)  # the host's allow-list, before any file or hub access
    try:
        config = load_config(name)
    except (OSError, ValueError):
        return False
    return getattr(config, "vision_config", None) is not None


def resolve_vlm(
    model: str | VisionLanguageModel | None,
    settings: Settings,
    progress: ProgressFn | None,
    dtype: str | None = None,
) -> VisionLanguageModel:
    if isinstance(model, VisionLanguageModel):
        return model
    name = (model or TINY_VLM).strip()
    if name in EMBEDDED_LMS:
        raise InputError(
            f"{name!r} is a text-only language model and cannot take an image; "
            f"use a vision-language model ({', '.join(EMBEDDED_VLMS)} or a hub VLM)"
        )
    return load_vlm(name, settings=settings, progress=progress, dtype=dtype)


def open_image(image: ImageInput | None, settings: Settings) -> Image.Image | None:
    return None if image is None else load_image(image, settings)


def image_digest(image: Image.Image | None) -> str | None:
    return None if image is None else hashlib.sha256(image_to_png(image)).hexdigest()[:16]


def run_vlm(
    kind: str,
    compute: Callable[..., R],
    model: str | VisionLanguageModel | None,
    prompt: str,
    picture: Image.Image | None,
    params: Any,
    *,
    db: Any,
    use_cache: bool,
    settings: Settings,
    dtype: str | None,
    progress: ProgressFn | None,
    **context: Any,
) -> R:
    """Load the VLM, then serve (kind, model, prompt, image, params) from the store or run
    `compute(vlm, prompt, picture, params, max_tokens=..., progress=..., **context)` and store
    it; `context` (settings that change the result) is part of the cache key."""
    vlm = resolve_vlm(model, settings, progress, dtype)
    return run_cached(
        kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt=prompt,
        params=cache_params(
            params, image=image_digest(picture), max_tokens=settings.max_prompt_tokens, **context
        ),
        compute=lambda: compute(
            vlm, prompt, picture, params, max_tokens=settings.max_prompt_tokens, progress=progress, **context
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def vlm_lens(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: LensParams,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> VLMLensResult:
    """Logit lens of a VLM over (image, prompt) [+ generated tokens]; stored as kind "vlm_lens"."""
    settings = settings or Settings.from_env()
    params.validate()
    picture = open_image(image, settings)
    return run_vlm(
        VLMLensResult.kind,
        lambda vlm, p, pic, prm, **kw: vlm_logit_lens(vlm, p, pic, params=prm, **kw),
        model, prompt, picture, params,
        db=db, use_cache=use_cache, settings=settings, dtype=dtype, progress=progress,
    )  # fmt: skip


def run_visual_tokens(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: Any = None,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """EmbedLens-style sink / dead / alive visual tokens and text->image attention; stored as
    kind "vlm_tokens". `params` is an `explorer.vlm.tokens.TokenParams` (default thresholds)."""
    from explorer.vlm.tokens import TokenParams, VisualTokensResult
    from explorer.vlm.tokens import visual_tokens as compute_tokens

    settings = settings or Settings.from_env()
    params = params or TokenParams()
    params.validate()
    picture = open_image(image, settings)
    if picture is None:
        raise InputError("visual-token analysis needs an image")
    return run_vlm(
        VisualTokensResult.kind,
        lambda vlm, p, pic, prm, **kw: compute_tokens(vlm, p, pic, params=prm, **kw),
        model, prompt, picture, params,
        db=db, use_cache=use_cache, settings=settings, dtype=dtype, progress=progress,
        full_tokens=settings.attention_full_tokens,
    )  # fmt: skip


def vlm_attribute(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: Any,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """Attribution of the VLM's answer to the image patches; stored as kind "vlm_attribution"."""
    from explorer.analysis.vlm_attribution import VLMAttributionResult, vlm_attribution

    settings = settings or Settings.from_env()
    params.validate()
    if image is None:
        raise InputError("image attribution needs an image (image)")
    picture = open_image(image, settings)
    return run_vlm(
        VLMAttributionResult.kind, vlm_attribution, model, prompt, picture, params,
        db=db, use_cache=use_cache, settings=settings, dtype=dtype, progress=progress,
    )  # fmt: skip


def run_vlm_attention(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: Any = None,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """Text -> image attention (per block, head, rolled out) and attention shares on image /
    text / sink tokens; stored as kind "vlm_attention". `params` is an
    `explorer.vlm.attention.VLMAttentionParams` (default: 8 answer tokens)."""
    from explorer.vlm.attention import VLMAttentionParams, VLMAttentionResult
    from explorer.vlm.attention import vlm_attention as compute_attention

    settings = settings or Settings.from_env()
    params = params or VLMAttentionParams()
    params.validate()
    if image is None:
        raise InputError("attention to image patches needs an image (image)")
    picture = open_image(image, settings)
    return run_vlm(
        VLMAttentionResult.kind,
        lambda vlm, p, pic, prm, **kw: compute_attention(vlm, p, pic, params=prm, **kw),
        model, prompt, picture, params,
        db=db, use_cache=use_cache, settings=settings, dtype=dtype, progress=progress,
        full_tokens=settings.attention_full_tokens,
    )  # fmt: skip


def run_on_eval_set(
    kind: str,
    compute: Callable[..., R],
    model: str | VisionLanguageModel | None,
    params: Any,
    key: dict[str, Any],
    *,
    db: Any,
    use_cache: bool,
    settings: Settings,
    dtype: str | None,
    progress: ProgressFn | None,
) -> R:
    """The shared path of dataset-level VLM runs (`vlm_eval`, `vlm_prune`): load the evaluation
    set `params.dataset` (bad input fails before the model loads), key a user file by its
    content (SHA-256) instead of the scene count, then serve (kind, model, set, key) from the
    store or run `compute(vlm, samples, params, max_tokens=..., progress=...)` and store it."""
    from pathlib import Path

    from explorer.table_files import file_digest
    from explorer.vlm.eval_sets import BUILTIN_SETS, load_eval_set

    samples = load_eval_set(params.dataset, params.n_scenes, params.seed)
    prompt = params.dataset
    if params.dataset not in BUILTIN_SETS:
        path = Path(params.dataset).expanduser().resolve()
        prompt = str(path)
        key["file_sha256"] = file_digest(path)
        key.pop("n_scenes")
    vlm = resolve_vlm(model, settings, progress, dtype)
    key["max_tokens"] = settings.max_prompt_tokens
    return run_cached(
        kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt=prompt,
        params=key,
        compute=lambda: compute(
            vlm, samples, params, max_tokens=settings.max_prompt_tokens, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def vlm_eval(
    model: str | VisionLanguageModel | None = None,
    dataset: str = "pope",
    *,
    n_scenes: int = 20,
    seed: int = 0,
    batch_size: int = 8,
    n_boot: int = 1000,
    vista: Any = None,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """Evaluate a VLM over a built-in set ("all", "caption", "pope", "qa"; `n_scenes` synthetic
    scenes) or a JSONL / CSV / Parquet file of {image, question, answer} rows: accuracy per
    question type, POPE accuracy / precision / recall / F1 / yes-ratio, CHAIR_s / CHAIR_i, each
    with a seeded 95% bootstrap interval. `vista` (an `explorer.vlm.vista.VistaParams` or its
    JSON dict) with VSV and/or SLA switched on answers every prompt plainly and steered and
    reports both plus the latency ratio. Stored as kind "vlm_eval"."""
    from explorer.text_input import check_text
    from explorer.vlm.vista import VistaParams
    from explorer.vlm.vlm_eval import EvalParams, VLMEvalResult, evaluate_vlm

    settings = settings or Settings.from_env()
    check_text(str(dataset), "the evaluation set")
    steering = vista if isinstance(vista, VistaParams) else VistaParams.from_json(vista)
    params = EvalParams(
        dataset=str(dataset),
        n_scenes=int(n_scenes),
        seed=int(seed),
        batch_size=int(batch_size),
        n_boot=int(n_boot),
        vista=steering,
    )
    return run_on_eval_set(
        VLMEvalResult.kind, evaluate_vlm, model, params, cache_params(params),
        db=db, use_cache=use_cache, settings=settings, dtype=dtype, progress=progress,
    )  # fmt: skip


def vlm_prune(
    model: str | VisionLanguageModel | None = None,
    dataset: str = "pope",
    *,
    n_scenes: int = 20,
    strategies: Any = "all",
    keep_ratios: Any = None,
    seed: int = 0,
    batch_size: int = 16,
    n_boot: int = 1000,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """Prune the visual tokens a VLM's LM receives with each strategy ("all" or names of
    `explorer.analysis.pruning.visual.VISUAL_STRATEGIES`: fastv, vtc_cls, transprune, todre,
    idpruner, uniform, random) at each keep ratio (default 1.0 down to 0.05), over a built-in
    evaluation set or a file, and judge it by the answers: accuracy per question type, POPE,
    CHAIR, agreement with the unpruned answers (95% bootstrap intervals), prefill FLOPs and
    measured time with the scoring charged. Stored as kind "vlm_prune"."""
    from explorer.text_input import check_text
    from explorer.vlm.prune_eval import DEFAULT_RATIOS, PruneEvalParams, VLMPruneResult, prune_eval

    settings = settings or Settings.from_env()
    check_text(str(dataset), "the evaluation set")
    names = [strategies] if isinstance(strategies, str) else list(strategies or [])
    ratios = DEFAULT_RATIOS if keep_ratios is None else keep_ratios
    ratio_list = [ratios] if isinstance(ratios, (int, float)) else list(ratios)
    params = PruneEvalParams(
        dataset=str(dataset),
        n_scenes=int(n_scenes),
        strategies=tuple(str(n) for n in names),
        keep_ratios=tuple(ratio_list),
        seed=int(seed),
        batch_size=int(batch_size),
        n_boot=int(n_boot),
    ).validate()
    return run_on_eval_set(
        VLMPruneResult.kind, prune_eval, model, params, params.to_json(),
        db=db, use_cache=use_cache, settings=settings, dtype=dtype, progress=progress,
    )  # fmt: skip


def vista_compare(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    vista: Any,
    max_new_tokens: int = 32,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """The greedy answer to (image, prompt) without and with VISTA, side by side, with wall times.
    Not stored (two generations; `vlm_eval` stores dataset-level comparisons)."""
    import time

    from explorer.text_input import check_prompt
    from explorer.vlm.vista import DEVIATIONS, VistaParams, vista_generate_batch

    settings = settings or Settings.from_env()
    check_prompt(prompt, settings.max_prompt_tokens)
    steering = vista if isinstance(vista, VistaParams) else VistaParams.from_json(vista)
    if not 1 <= int(max_new_tokens) <= 256:
        raise InputError(f"max_new_tokens must be in 1..256 (got {max_new_tokens})")
    picture = open_image(image, settings)
    if picture is None:
        raise InputError("VISTA steers towards the image: give an image")
    vlm = resolve_vlm(model, settings, progress, dtype)
    steering.validate(vlm.n_layers)
    inputs = vlm.prepare(prompt, picture, settings.max_prompt_tokens)
    out: dict[str, Any] = {"model": vlm.model_id, "prompt": prompt, "vista": steering.to_json()}
    for name, params in (("plain", VistaParams()), ("vista", steering)):
        t0 = time.perf_counter()
        ids = vista_generate_batch(
            vlm, [inputs], [prompt], int(max_new_tokens), params, settings.max_prompt_tokens
        )[0]
        out[name] = {
            "text": str(vlm.tokenizer.decode(ids, skip_special_tokens=True)).strip(),
            "tokens": vlm.lm.tokens_str(ids),
            "seconds": time.perf_counter() - t0,
        }
    out["latency_ratio"] = out["vista"]["seconds"] / max(out["plain"]["seconds"], 1e-9)
    out["deviations"] = list(DEVIATIONS)
    return out


def text_bank(
    model: str | VisionLanguageModel | None,
    *,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    corpus: Any = None,
    progress: ProgressFn | None = None,
) -> Any:
    """The LatentLens text bank of a VLM's language model (an `explorer.vlm.latent.TextBank`).

    Built once per (model, weight fingerprint, corpus hash, layers) from the shipped corpus
    (`explorer.vlm.latent_corpus.default_corpus()` unless `corpus` is given), saved under
    `<cache>/latent_banks/` and indexed in the store as a run of kind "latent_bank"; later
    calls reuse the file (and, within a process, the loaded vectors)."""
    from explorer.backends.loading import MODEL_CACHE
    from explorer.vlm.latent import (
        BANK_FORMAT,
        MAX_CONTEXTS,
        TextBank,
        bank_file,
        bank_layers,
        build_text_bank,
        load_bank,
        save_bank,
    )
    from explorer.vlm.latent_corpus import default_corpus

    settings = settings or Settings.from_env()
    vlm = resolve_vlm(model, settings, progress, dtype)
    lm = vlm.lm
    corpus = corpus or default_corpus()
    layers = bank_layers(lm.n_layers)
    path = bank_file(settings.cache_dir, lm.model_id, lm.weight_hash, corpus.digest, layers, MAX_CONTEXTS)
    store = open_store(db, settings)
    params = {"corpus": corpus.digest, "layers": layers, "max_contexts": MAX_CONTEXTS, "format": BANK_FORMAT}

    def compute() -> TextBank:
        if use_cache and path.exists():
            try:
                return load_bank(path)
            except (OSError, ValueError, KeyError):
                pass  # unreadable or from another format: rebuild it
        bank = build_text_bank(lm, corpus, layers=layers, max_contexts=MAX_CONTEXTS, progress=progress)
        bank.path = str(path)
        save_bank(bank, path)
        return bank

    def load() -> TextBank:
        def cached(reuse: bool) -> TextBank:
            return run_cached(
                TextBank.kind,
                model_id=lm.model_id,
                weight_hash=lm.weight_hash,
                prompt="",
                params=params,
                compute=compute,
                store=store,
                use_cache=reuse,
            )

        bank = cached(use_cache)
        try:
            bank.matrix()
        except FileNotFoundError:  # the store knows the bank but its file was deleted
            bank = cached(False)
        return bank

    if not use_cache:
        return load()
    key = ("latent_bank", str(path), str(store.path if store is not None else ""))
    return MODEL_CACHE.get(key, load)


def run_latent_neighbours(
    model: str | VisionLanguageModel | None,
    prompt: str,
    image: ImageInput | None,
    *,
    params: Any = None,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    corpus: Any = None,
    progress: ProgressFn | None = None,
) -> Any:
    """LatentLens-style nearest text neighbours of every visual token; stored as kind
    "vlm_latent". `params` is an `explorer.vlm.latent.LatentParams` (default: k=5, same layer).
    The first call for a model builds its text bank (see `text_bank`; `corpus` is an
    `explorer.vlm.latent_corpus.Corpus`, default the shipped one)."""
    from explorer.vlm.latent import LatentNeighboursResult, LatentParams
    from explorer.vlm.latent import latent_neighbours as compute_neighbours

    settings = settings or Settings.from_env()
    params = params or LatentParams()
    params.validate()
    picture = open_image(image, settings)
    if picture is None:
        raise InputError("nearest text neighbours of visual tokens need an image (image)")
    vlm = resolve_vlm(model, settings, progress, dtype)
    vlm.prepare(prompt, picture, settings.max_prompt_tokens)  # bad input fails before any bank is built
    bank = text_bank(vlm, db=db, settings=settings, corpus=corpus, progress=progress)
    return run_cached(
        LatentNeighboursResult.kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt=prompt,
        params=cache_params(
            params,
            image=image_digest(picture),
            bank=[bank.corpus_digest, bank.layers, bank.max_contexts],
            max_tokens=settings.max_prompt_tokens,
        ),
        compute=lambda: compute_neighbours(
            vlm,
            prompt,
            picture,
            bank,
            params=params,
            max_tokens=settings.max_prompt_tokens,
            progress=progress,
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


def vista_patterns(
    model: str | VisionLanguageModel | None = None,
    *,
    n_scenes: int = 50,
    max_new_tokens: int = 32,
    top_k: int = 100,
    batch_size: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
    db: Any = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """VISTA's three token-ranking patterns ("The Hidden Life of Tokens") over `n_scenes` captioned
    synthetic scenes: (1) gradual visual information loss (final-layer lens rank of decoded genuine,
    hidden genuine, hallucinated and absent words in the early / mid / late thirds of the caption),
    (2) early excitation (the layer >= 1 where each emitted token's lens probability peaks, by token
    type), (3) hidden genuine information (words of the scene never named that stay in the top
    `top_k`). Each with a 95% bootstrap interval over scenes and a verdict. Stored as kind
    "vista_patterns"."""
    from explorer.vlm.vista_patterns import PatternParams, VistaPatternsResult, measure_patterns

    settings = settings or Settings.from_env()
    params = PatternParams(
        n_scenes=int(n_scenes),
        max_new_tokens=int(max_new_tokens),
        top_k=int(top_k),
        batch_size=int(batch_size),
        n_boot=int(n_boot),
        seed=int(seed),
    )
    key = cache_params(params, max_tokens=settings.max_prompt_tokens)  # validates before the model loads
    vlm = resolve_vlm(model, settings, progress, dtype)
    return run_cached(
        VistaPatternsResult.kind,
        model_id=vlm.model_id,
        weight_hash=vlm.weight_hash,
        prompt="caption scenes",
        params=key,
        compute=lambda: measure_patterns(
            vlm, params, max_tokens=settings.max_prompt_tokens, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )
