"""`explorer atlas map|...`: the Token atlas from the command line (prints JSON).

- `atlas map --prompt TEXT [--prompt TEXT ...] [--prompts-file F] [--layer N|all] [--method umap|pca]`:
  UMAP (cosine) or PCA coordinates of token states, one layer or all layers in one aligned fit.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Importing the result module registers the kind, so `runs` and `export` reopen atlas runs.
import explorer.analysis.atlas.token_map  # noqa: F401
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
        help="Token atlas: maps of token states (UMAP/PCA)",
        description="Token atlas subcommands; each prints JSON and stores its run.",
    )
    inner = p.add_subparsers(dest="atlas_command", required=True, metavar="ATLAS_COMMAND")
    m = inner.add_parser(
        "map",
        help="UMAP (cosine) or PCA map of token states",
        description="Prints {run_id, model, method, layer, n_layers, prompts, tokens, n_points, fit, seconds, "
        "notes, points: [{point, prompt_index, position, layer, token_id, token, token_type, modality, context, "
        "norm, x, y}]}. A repeated request is served from the store (the map is never refitted).",
    )
    m.add_argument("--prompt", action="append", default=None, help="text to map (repeatable)")
    m.add_argument("--prompts-file", default=None, help="a text file with one prompt per line")
    m.add_argument("--model", default=None, help="embedded name (smollm2-135m), hub id or local dir")
    m.add_argument(
        "--layer", type=_layer, default=None, help="residual layer (0 = embeddings) or 'all' (default)"
    )
    m.add_argument("--method", choices=("umap", "pca"), default="umap")
    m.add_argument("--n-neighbors", type=int, default=15)
    m.add_argument("--min-dist", type=float, default=0.1)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
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
    from explorer import atlas_api

    model = args.model or settings.default_model
    if args.atlas_command == "map":
        return atlas_api.token_map(
            model,
            _prompts(args),
            layer=args.layer,
            method=args.method,
            n_neighbors=args.n_neighbors,
            min_dist=args.min_dist,
            seed=args.seed,
            use_cache=not args.no_cache,
            settings=settings,
        ).to_dict()
    raise AssertionError(args.atlas_command)
