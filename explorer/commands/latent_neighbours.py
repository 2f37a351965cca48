"""`explorer latent-neighbours`: LatentLens-style nearest text neighbours of a VLM's visual tokens."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "latent-neighbours",
        help="LatentLens: the k nearest contextual text tokens of every visual token, per layer (VLMs)",
        description="Compare each visual token's hidden state at a layer with the contextual hidden states "
        "of the tokens of a shipped text corpus (scene captions + general sentences) by cosine similarity, "
        "and report the k nearest with their contexts. The text bank is built once per model (under 2 min "
        "on 2 cores) and cached. Prints {run_id, layers, bank, deviations, most_common_top1, neighbours}.",
    )
    p.add_argument("--image", required=True, metavar="PATH", help="the image")
    p.add_argument("--prompt", required=True, help="a question about the image")
    p.add_argument("--model", default=None, help="vision-language model (default tiny-vlm)")
    p.add_argument("--k", type=int, default=5, help="neighbours per visual token (5)")
    p.add_argument(
        "--match",
        choices=("same", "all"),
        default="same",
        help="text layers searched: 'same' as the visual token's layer (default), or 'all' stored layers "
        "ranked together (the paper's cross-layer search; also searches visual layer 0)",
    )
    p.add_argument("--layer", type=int, default=None, help="print only this visual layer")
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.vlm import resolve_vlm, run_latent_neighbours
    from explorer.errors import InputError
    from explorer.vlm.latent import LatentParams, searched_layers

    params = LatentParams(k=args.k, match=args.match)
    params.validate()
    model = args.model
    if args.layer is not None:  # check the layer before anything is computed or stored
        vlm = resolve_vlm(args.model, settings, None)
        layers = searched_layers(vlm.n_layers, args.match)
        if args.layer not in layers:
            raise InputError(
                f"--layer {args.layer} is not searched with --match {args.match}; choose from {layers}"
            )
        model = vlm
    result = run_latent_neighbours(
        model,
        args.prompt,
        args.image,
        params=params,
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    out: dict[str, Any] = result.to_dict()
    if args.layer is not None:
        index = result.layer_index(args.layer)
        out["neighbours"] = [out["neighbours"][index]]
        out["most_common_top1"] = [out["most_common_top1"][index]]
    return out
