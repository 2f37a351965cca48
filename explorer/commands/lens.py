"""`explorer lens`: logit lens across layers (and generation steps)."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "lens",
        help="logit lens: top-k tokens and tracked ranks at every layer and position",
        description="Decode every layer's residual stream with the final norm and unembedding. "
        "Prints {run_id, model, n_layers, tokens, lens, tracked, summary, deviations[, generated, never_emitted_candidates]}.",
    )
    p.add_argument("--prompt", required=True, help="text to analyse")
    p.add_argument(
        "--model",
        default=None,
        help="embedded name (smollm2-135m; tiny-vlm, the default with --image), hub id or local dir",
    )
    p.add_argument(
        "--image",
        default=None,
        metavar="PATH",
        help="an image for a vision-language model: its patches enter the LM as visual tokens",
    )
    p.add_argument("--target", action="append", default=[], help="token string to track (repeatable)")
    p.add_argument("--top-k", type=int, default=10, help="tokens kept per layer and position (default 10)")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="generate N tokens first (default 0)")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.lens import run_logit_lens

    result = run_logit_lens(
        args.model or (None if args.image else settings.default_model),
        args.prompt,
        image=args.image,
        top_k=args.top_k,
        targets=args.target,
        generate=args.generate,
        sample=args.sample,
        temperature=args.temperature,
        seed=args.seed,
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    return result.to_dict()
