"""`explorer atlas map|...`: the Token atlas from the command line (prints JSON).

- `atlas map --prompt TEXT [--prompt TEXT ...] [--prompts-file F | --dataset F] [--layer N|all] [--method umap|pca]`:
  UMAP (cosine) or PCA coordinates of token states, one layer or all layers in one aligned fit.
- `atlas vocab [--model M] [--n-verify 300]`: under-trained and glitch tokens of the whole vocabulary.
- `atlas microscope --prompt TEXT`: LLM-Microscope measures per layer and token.
- `atlas tokenize --text TEXT [--tokenizer NAME ...]`: the tokenizer inspector.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Importing the result module registers the kind, so `runs` and `export` reopen atlas runs.
import explorer.analysis.atlas.microscope  # noqa: F401
import explorer.analysis.atlas.token_map  # noqa: F401
import explorer.analysis.atlas.tokenizers
import explorer.analysis.atlas.vocab  # noqa: F401
from explorer.config import Settings


def _layer(value: str) -> int | None:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer takes an integer or 'all', got {value!r}") from None


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "atlas",
        help="Token atlas: maps of token states, vocabulary health, LLM-Microscope, tokenizers",
        description="Token atlas subcommands; each prints JSON and stores its run.",
    )
    inner = p.add_subparsers(dest="atlas_command", required=True, metavar="ATLAS_COMMAND")
    m = inner.add_parser(
        "map",
        help="UMAP (cosine) or PCA map of token states",
        description="Prints {run_id, model, method, layer, n_layers, prompts, image, tokens, n_points, fit, seconds, "
        "notes, points: [{point, prompt_index, position, layer, token_id, token, token_type, modality, context, "
        "norm, x, y}]}. A repeated request is served from the store (the map is never refitted).",
    )
    m.add_argument("--prompt", action="append", default=None, help="text to map (repeatable)")
    m.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    m.add_argument(
        "--dataset",
        default=None,
        help="a sweep's dataset (.jsonl/.csv/.parquet with a 'prompt' or 'question' column and an optional "
        "'image' column, at most 200 rows): map the token states of all rows in one fit",
    )
    m.add_argument(
        "--model", default=None, help="embedded name (smollm2-135m, tiny-vlm), hub id or local dir"
    )
    m.add_argument(
        "--image",
        default=None,
        help="an image file: map the image's visual tokens with the prompt's on a vision-language model "
        "(default model then tiny-vlm)",
    )
    m.add_argument(
        "--layer", type=_layer, default=None, help="residual layer (0 = embeddings) or 'all' (default)"
    )
    m.add_argument("--method", choices=("umap", "pca"), default="umap")
    m.add_argument("--n-neighbors", type=int, default=15)
    m.add_argument("--min-dist", type=float, default=0.1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--pca-dims",
        type=int,
        default=50,
        help="UMAP: PCA pre-reduction of the unit-normalised vectors (default 50; 0 = exact cosine on raw vectors)",
    )
    m.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    v = inner.add_parser(
        "vocab",
        help="under-trained and glitch tokens of the whole vocabulary (Magikarp + GlitchHunter-style)",
        description="Prints {run_id, model, n_tokens, summary: {tokenizer: {ok, special, partial_utf8, "
        "not_round_trip, no_string, unreachable}, reference, magikarp: {candidates, verified, strong_verified, "
        "weak_verified, precision}, glitchhunter: {flagged, checked, verified, precision, rounds, params}, agreement: "
        "{both, magikarp_only, glitchhunter_only, jaccard, overlap, flagged_both, jaccard_flagged}, timings}, notes, suspects: [{token_id, token, indicator, embed_norm, "
        "max_prob, status, output, gh_flag}]}. Every token's row: `explorer export RUN --format parquet`.",
    )
    v.add_argument("--model", default=None, help="embedded name (smollm2-135m), hub id or local dir")
    v.add_argument(
        "--n-verify", type=int, default=300, help="top suspects to verify by prompting (default 300)"
    )
    v.add_argument("--map-points", type=int, default=4000, help="points in the vocabulary UMAP (0 = none)")
    v.add_argument(
        "--gh-neighbors",
        type=int,
        default=10,
        help="GlitchHunter: neighbours per token in the embedding graph",
    )
    v.add_argument(
        "--gh-resolution",
        type=float,
        default=20.0,
        help="GlitchHunter: Leiden resolution (higher = smaller communities)",
    )
    v.add_argument("--gh-sample", type=int, default=3, help="GlitchHunter: tokens verified per community")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    mi = inner.add_parser(
        "microscope",
        help="LLM-Microscope measures per layer and token",
        description="Prints {run_id, model, tokens, n_layers, layers: [{layer, linearity, id_prompt, "
        "id_reference, probe_r2}], cells: [{layer, position, token, nonlinearity, context, paper_lens_token, "
        "paper_lens_nll, our_lens_token, our_lens_prob}], ranking: [{position, token, class, context_memory, "
        "nonlinearity}], class_ranking: [{class, tokens, mean_context_memory}], notes}.",
    )
    mi.add_argument("--prompt", required=True, help="text to analyse")
    mi.add_argument("--model", default=None, help="embedded name (smollm2-135m), hub id or local dir")
    mi.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    tk = inner.add_parser(
        "tokenize",
        help="how a text splits under each tokenizer, side by side",
        description="Prints {run_id, text, counts: [{tokenizer, kind, tokens, premium, chars_per_token, "
        "byte_fallback, partial_utf8, special, chat_template_tokens}], tokenizers: [{tokenizer, kind, tokens: "
        "[{id, piece, decoded, start, end, byte_fallback, partial_utf8, special}], chat_template, "
        "chat_template_tokens}], notes}. The premium is relative to the first tokenizer.",
    )
    tk.add_argument("--text", required=True, help="text to tokenize")
    tk.add_argument(
        "--tokenizer",
        action="append",
        default=None,
        help="embedded name (smollm2-135m, all-minilm-l6-v2), hub id or local dir (repeatable; default: both embedded)",
    )
    tk.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def _prompts(args: argparse.Namespace) -> list[str]:
    from explorer.errors import InputError

    prompts = list(args.prompt or [])
    if args.prompts_file:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise InputError(f"--prompts-file {path} does not exist")
        prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise InputError("give --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def run(args: argparse.Namespace, settings: Settings) -> Any:
    from explorer.api import atlas as atlas_api

    model = getattr(args, "model", None) or settings.default_model
    if args.atlas_command == "map":
        if args.dataset is not None:
            if args.prompt or args.prompts_file or args.image is not None:
                from explorer.errors import InputError

                raise InputError("give --dataset FILE or --prompt/--prompts-file/--image, not both")
        return atlas_api.run_token_map(
            args.model if (args.image is not None or args.dataset is not None) else model,
            None if args.dataset is not None else _prompts(args),
            image=args.image,
            dataset=args.dataset,
            layer=args.layer,
            method=args.method,
            n_neighbors=args.n_neighbors,
            min_dist=args.min_dist,
            seed=args.seed,
            pca_dims=args.pca_dims,
            use_cache=not args.no_cache,
            settings=settings,
            progress=args.progress_fn,
        ).to_dict()
    if args.atlas_command == "vocab":
        return atlas_api.run_vocab_health(
            model,
            n_verify=args.n_verify,
            map_points=args.map_points,
            gh_neighbors=args.gh_neighbors,
            gh_resolution=args.gh_resolution,
            gh_sample=args.gh_sample,
            seed=args.seed,
            use_cache=not args.no_cache,
            settings=settings,
            progress=args.progress_fn,
        ).to_dict()
    if args.atlas_command == "microscope":
        return atlas_api.run_microscope(
            model,
            args.prompt,
            use_cache=not args.no_cache,
            settings=settings,
            progress=args.progress_fn,
        ).to_dict()
    if args.atlas_command == "tokenize":
        return atlas_api.inspect_tokenizers(
            args.text,
            tuple(args.tokenizer or explorer.analysis.atlas.tokenizers.EMBEDDED_TOKENIZERS),
            use_cache=not args.no_cache,
            settings=settings,
        ).to_dict()
    raise AssertionError(args.atlas_command)
