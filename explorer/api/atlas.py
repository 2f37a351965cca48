"""Public API of the Token atlas (re-exported lazily by `explorer`).

- `token_map(model, prompts, layer=None, method="umap")`: UMAP (cosine) or PCA map of token states,
  one layer or all layers in one aligned fit; stored, never refitted for the same inputs.
- `map_scores(result)`: per-point values of other stored runs on the same model and prompt
  (logit-lens rank, attribution, pruning signals), for colouring a map.
- `vocab_health(model)`: under-trained / glitch tokens of the whole vocabulary (Magikarp indicators
  and tokenizer analysis, verification by prompting, GlitchHunter-style clustering, agreement).
- `microscope(model, prompt)`: LLM-Microscope measures per layer and token.
- `inspect_tokenizers(text, tokenizers)`: how a text splits under each tokenizer, side by side.

Each call validates its input before a model loads, serves a stored run when the same request was
made before, and returns a result whose `.to_dict()` is exactly the CLI's JSON.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from explorer.analysis.atlas import microscope as _micro
from explorer.analysis.atlas import token_map as _map
from explorer.analysis.atlas import tokenizers as _tok
from explorer.analysis.atlas import vocab as _vocab
from explorer.analysis.atlas.projection import PCA_DIMS, ProjectionParams
from explorer.api.runner import DbArg, ProgressFn, cache_params, get_model, open_store, run_cached
from explorer.config import Settings
from explorer.errors import InputError
from explorer.models.loading import LanguageModel
from explorer.store import Store


def prompt_key(prompts: list[str]) -> str:
    """The run store's prompt column: the prompt itself, or a JSON list for several prompts."""
    return prompts[0] if len(prompts) == 1 else json.dumps(prompts, ensure_ascii=False)


def run_token_map(
    model: str | LanguageModel | Any | None,
    prompts: str | Sequence[str] | None = None,
    *,
    image: Any = None,
    dataset: str | Path | None = None,
    layer: int | None = None,
    method: str = "umap",
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    seed: int = 0,
    pca_dims: int = PCA_DIMS,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> _map.TokenMapResult:
    """Map the token states of `prompts` (one string or several) to 2-D.

    `layer`: residual layer (0 = embeddings, n_layers = last block's output; negative counts from
    the end) or None for all layers in one aligned fit. `method`: "umap" (cosine metric; `pca_dims`:
    PCA pre-reduction of the unit vectors, 0 = none) or "pca". With `image` (a path, bytes or PIL
    image) or a vision-language `model` ("tiny-vlm", a hub VLM), each prompt is fed with the image and
    its visual tokens are mapped too. `dataset`: instead of `prompts`, a sweep's dataset file (JSONL /
    CSV / Parquet with a `prompt` or `question` column and an optional `image` column, at most
    `MAX_PROMPTS` rows): the token states of all its rows in one fit, each row with its own image.
    `dtype`: the weights' dtype ("auto", "float32", "float16", "bfloat16"; default `settings.dtype`).
    Returns a `TokenMapResult`; `.to_dict()` is the CLI's JSON.
    """
    from explorer.api import vlm as vlm_api

    settings = settings or Settings.from_env()
    rows: _map.MapDataset | None = None
    if dataset is not None:
        if prompts is not None or image is not None:
            raise InputError("give either a dataset file or prompts (and an image), not both")
        rows = _map.read_map_dataset(dataset)
        prompts = rows.prompts
    if prompts is None:
        raise InputError("the prompt is empty: type some text to map, or give a dataset file")
    items = _map.clean_prompts(prompts if isinstance(prompts, str) else list(prompts))
    params = _map.TokenMapParams(
        layer=None if layer is None else int(layer),
        projection=ProjectionParams(
            method=str(method),
            n_neighbors=int(n_neighbors),
            min_dist=float(min_dist),
            seed=int(seed),
            pca_dims=int(pca_dims),
        ),
    )
    params.validate()
    picture: Any = vlm_api.open_image(image, settings)
    digest = vlm_api.image_digest(picture)
    if rows is not None and rows.images[0] is not None:
        picture = [vlm_api.open_image(str(p), settings) for p in rows.images]
        joined = "".join(str(vlm_api.image_digest(p)) for p in picture)
        digest = "rows:" + hashlib.sha256(joined.encode()).hexdigest()[:16]
    backend: Any
    from explorer.backends.sentence import SENTENCE_MODEL, sentence_encoder

    if isinstance(model, str) and model == SENTENCE_MODEL:
        if picture is not None:
            raise InputError(f"{SENTENCE_MODEL!r} is a text encoder and cannot take an image")
        backend = sentence_encoder()
    elif picture is not None or vlm_api.is_vlm(model):
        if isinstance(model, LanguageModel):
            raise InputError(f"{model.model_id!r} is a text-only language model and cannot take an image")
        backend = vlm_api.resolve_vlm(model, settings, progress, dtype)
    else:
        backend = get_model(model, settings, progress, dtype)
    _map.resolve_layer(params.layer, backend.n_layers)
    return run_cached(
        _map.TokenMapResult.kind,
        model=backend.model_id,
        weight_hash=backend.weight_hash,
        prompt=prompt_key(items),
        params=cache_params(
            params, max_tokens=settings.max_prompt_tokens, **({"image": digest} if digest else {})
        ),
        compute=lambda: _map.token_map(
            backend,
            items,
            params=params,
            max_tokens=settings.max_prompt_tokens,
            image=picture,
            image_digest=digest,
            cache_dir=settings.cache_dir,
            progress=progress,
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


# ---- scores of other stored runs on the same input --------------------------------------------
_LENS_FINAL = "final_top1"
SCORE_KINDS = ("lens", "attribution", "prune_text", "vlm_lens", "vlm_attribution")


def map_scores(
    result: _map.TokenMapResult, db: DbArg = None, settings: Settings | None = None
) -> dict[str, np.ndarray]:
    """Values of other stored runs on the same model and input (prompt, and image for a VLM map), one
    per map point (NaN where a run has no value), keyed by a readable label:

    - "lens rank of final prediction (<run>)" per (layer, position), from logit-lens runs (text or VLM);
    - "attribution <method> (<run>)" per position (all layers alike);
    - "pruning <signal> (<run>)": the score a pruning strategy ranked tokens by, per position;
    - "pruning kept <strategy> @<ratio> (<run>)": 1 where that pruning row kept the token, 0 where it
      dropped it;
    - "image attribution <method> (<run>)": a VLM answer's attribution to each visual token.
    """
    store = open_store(db, settings)
    if store is None:
        return {}
    out: dict[str, np.ndarray] = {}
    for pi, prompt in enumerate(result.prompts):
        mask = result.prompt_index == pi
        for run_id, kind, params in _runs_for(store, result.model, prompt, result.image):
            for label, values in _run_values(store, run_id, kind, params, result, mask):
                arr = out.setdefault(label, np.full(result.n_points, np.nan, dtype=np.float64))
                ok = ~np.isnan(values)
                arr[ok] = values[ok]
    return out


def _runs_for(
    store: Store, model_id: str, prompt: str, image: str | None
) -> list[tuple[str, str, dict[str, Any]]]:
    """Complete runs of a score kind on this model and prompt, with the same image (or none)."""
    marks = ", ".join("?" for _ in SCORE_KINDS)
    rows = (
        store.cursor()
        .execute(
            "SELECT run_id, kind, params FROM runs WHERE model_id = ? AND prompt = ? AND status = 'complete' "
            f"AND kind IN ({marks}) ORDER BY created DESC",
            [model_id, prompt, *SCORE_KINDS],
        )
        .fetchall()
    )
    runs = [(r[0], r[1], json.loads(r[2])) for r in rows]
    return [r for r in runs if r[2].get("image") == image]


def _per_position(result: _map.TokenMapResult, idx: np.ndarray, by_pos: dict[int, float]) -> np.ndarray:
    values = np.full(result.n_points, np.nan)
    for i in idx:
        values[i] = by_pos.get(int(result.position[i]), np.nan)
    return values


def _run_values(
    store: Store,
    run_id: str,
    kind: str,
    params: dict[str, Any],
    result: _map.TokenMapResult,
    mask: np.ndarray,
) -> list[tuple[str, np.ndarray]]:
    cur = store.cursor()
    idx = np.flatnonzero(mask)
    out: list[tuple[str, np.ndarray]] = []
    if kind in ("lens", "vlm_lens"):
        rows = cur.execute(
            f"SELECT layer, position, rank FROM {kind}_tracked WHERE run_id = ? AND role = ?",
            [run_id, _LENS_FINAL],
        ).fetchall()
        table = {(int(layer), int(pos)): float(rank) for layer, pos, rank in rows}
        values = np.full(result.n_points, np.nan)
        for i in idx:
            values[i] = table.get((int(result.layer[i]), int(result.position[i])), np.nan)
        out.append((f"lens rank of final prediction ({run_id})", values))
    elif kind == "attribution":
        rows = cur.execute(
            "SELECT position, score FROM attribution_scores WHERE run_id = ?", [run_id]
        ).fetchall()
        by_pos = {int(p): float(s) for p, s in rows}
        out.append((f"attribution {params.get('method', '')} ({run_id})", _per_position(result, idx, by_pos)))
    elif kind == "vlm_attribution":
        rows = cur.execute(
            'SELECT "index", score FROM vlm_attribution_patches WHERE run_id = ?', [run_id]
        ).fetchall()
        by_patch = {int(p): float(s) for p, s in rows}
        # the k-th image position of the prompt is patch k (row-major), as the VLM's prepare lays them out
        first = idx[result.layer[idx] == result.layer[idx].min()] if idx.size else idx
        image_positions = [int(result.position[i]) for i in first if result.modality[i] == "image"]
        by_pos = {pos: by_patch.get(k, np.nan) for k, pos in enumerate(sorted(image_positions))}
        label = f"image attribution {params.get('method', '')} ({run_id})"
        out.append((label, _per_position(result, idx, by_pos)))
    elif kind == "prune_text":
        rows = cur.execute(
            "SELECT signal, position, score FROM prune_text_scores WHERE run_id = ?", [run_id]
        ).fetchall()
        signals: dict[str, dict[int, float]] = {}
        for signal, pos, score in rows:
            signals.setdefault(str(signal), {})[int(pos)] = float(score)
        for signal, by_pos in signals.items():
            out.append((f"pruning {signal} ({run_id})", _per_position(result, idx, by_pos)))
        n_prompt = int(result.position[idx].max()) + 1 if idx.size else 0
        kept_rows = cur.execute(
            "SELECT strategy, keep_ratio, kept FROM prune_text_rows WHERE run_id = ? AND keep_ratio < 1 "
            "ORDER BY strategy, keep_ratio",
            [run_id],
        ).fetchall()
        for strategy, ratio, kept in kept_rows:
            keep = {int(p) for p in kept}
            by_pos = {p: float(p in keep) for p in range(n_prompt)}
            label = f"pruning kept {strategy} @{float(ratio):g} ({run_id})"
            out.append((label, _per_position(result, idx, by_pos)))
    return out


TokenMapResult = _map.TokenMapResult


def run_vocab_health(
    model: str | LanguageModel | None = None,
    *,
    n_verify: int = 300,
    map_points: int = 4000,
    gh_neighbors: int = 10,
    gh_resolution: float = 20.0,
    gh_sample: int = 3,
    steps: int = 3,
    seed: int = 0,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> _vocab.VocabHealthResult:
    """Under-trained and glitch tokens over the whole vocabulary of `model`: the Magikarp tokenizer
    analysis and indicators, verification of the `n_verify` top suspects by prompting, a
    GlitchHunter detector (Leiden communities of a k-NN token embedding graph), their precision and agreement, and a UMAP of the unembedding.
    `dtype`: the weights' dtype (default `settings.dtype`).
    Returns a `VocabHealthResult`; `.to_dict()` is the CLI's JSON (summary + verified suspects)."""
    settings = settings or Settings.from_env()
    params = _vocab.VocabParams(
        n_verify=int(n_verify),
        map_points=int(map_points),
        gh_neighbors=int(gh_neighbors),
        gh_resolution=float(gh_resolution),
        gh_sample=int(gh_sample),
        steps=int(steps),
        seed=int(seed),
    )
    params.validate()
    lm = get_model(model, settings, progress, dtype)
    return run_cached(
        _vocab.VocabHealthResult.kind,
        model=lm.model_id,
        weight_hash=lm.weight_hash,
        prompt="",
        params=cache_params(params),
        compute=lambda: _vocab.vocab_health(
            lm, params=params, cache_dir=settings.cache_dir, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


VocabHealthResult = _vocab.VocabHealthResult


def run_microscope(
    model: str | LanguageModel | None,
    prompt: str,
    *,
    params: _micro.MicroscopeParams | None = None,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
    dtype: str | None = None,
    progress: ProgressFn | None = None,
) -> _micro.MicroscopeResult:
    """LLM-Microscope measures of `prompt` per layer and token: token-level non-linearity, a
    contextualisation proxy, intrinsic dimension per layer, and the paper's logit lens next to ours.
    `params`: a `MicroscopeParams` (reference tokens, prefix window; validated before the model
    loads). `dtype`: the weights' dtype (default `settings.dtype`). Returns a `MicroscopeResult`;
    `.to_dict()` is the CLI's JSON."""
    settings = settings or Settings.from_env()
    params = params or _micro.MicroscopeParams()
    if prompt is None or not prompt.strip():
        raise InputError("the prompt is empty: type some text to analyse")
    key = cache_params(params, max_tokens=settings.max_prompt_tokens)  # validates
    lm = get_model(model, settings, progress, dtype)
    return run_cached(
        _micro.MicroscopeResult.kind,
        model=lm.model_id,
        weight_hash=lm.weight_hash,
        prompt=prompt,
        params=key,
        compute=lambda: _micro.microscope(
            lm, prompt, max_tokens=settings.max_prompt_tokens, params=params, progress=progress
        ),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


MicroscopeResult = _micro.MicroscopeResult


def inspect_tokenizers(
    text: str,
    tokenizers: Sequence[str] | _tok.TokenizerParams = _tok.EMBEDDED_TOKENIZERS,
    *,
    db: DbArg = None,
    use_cache: bool = True,
    settings: Settings | None = None,
) -> _tok.TokenizerResult:
    """How `text` splits under each of `tokenizers` (embedded names, hub ids or local dirs), side by
    side: ids, pieces, character spans, byte fallback, partial UTF-8 and special tokens, the chat
    template applied, token counts and the token premium relative to the first tokenizer."""
    settings = settings or Settings.from_env()
    params = (
        tokenizers if isinstance(tokenizers, _tok.TokenizerParams) else _tok.TokenizerParams.of(tokenizers)
    )
    _tok.validate_text(text)
    key = cache_params(params)  # validates; the names are the run's "model", so the key part is {}
    names = list(params.tokenizers)
    named = [(n, _tok.load_tokenizer(n, settings)) for n in names]
    return run_cached(
        _tok.TokenizerResult.kind,
        model=",".join(names),
        weight_hash=",".join(_tok.tokenizer_fingerprint(t) for _, t in named),
        prompt=text,
        params=key,
        compute=lambda: _tok.inspect(text, named),
        store=open_store(db, settings),
        use_cache=use_cache,
    )


TokenizerResult = _tok.TokenizerResult

__all__ = [
    "MicroscopeResult",
    "TokenizerResult",
    "inspect_tokenizers",
    "TokenMapResult",
    "VocabHealthResult",
    "map_scores",
    "run_microscope",
    "run_token_map",
    "run_vocab_health",
]
