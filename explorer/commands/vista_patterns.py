"""`explorer vista-patterns`: VISTA's three token-ranking patterns measured over captioned scenes."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "vista-patterns",
        help="VISTA's three patterns (information loss, early excitation, hidden genuine) over captioned scenes",
        description="Caption synthetic scenes greedily, read the logit lens at every layer and generation step, "
        "and measure the three patterns of 'The Hidden Life of Tokens' (Li et al. 2025): (1) the final-layer rank "
        "of decoded genuine, hidden genuine, hallucinated and absent words in the early/mid/late thirds of the "
        "caption; (2) the layer (>= 1) where each emitted token's lens probability peaks, by token type; (3) the "
        "share of hidden genuine words that stay in the top k. Each with a 95%% bootstrap interval over scenes "
        "and a verdict. Prints {run_id, patterns, seconds, deviations, ...}; figures via `explorer export RUN_ID`.",
    )
    p.add_argument("--scenes", type=int, default=50, help="caption scenes (50; the README's run uses 200)")
    p.add_argument("--model", default=None, help="vision-language model (default tiny-vlm)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="caption length limit (32)")
    p.add_argument("--top-k", type=int, default=100, help="k of pattern 3 (100)")
    p.add_argument("--batch-size", type=int, default=8, help="captions generated together (8)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.vlm import vista_patterns

    result = vista_patterns(
        args.model,
        n_scenes=args.scenes,
        max_new_tokens=args.max_new_tokens,
        top_k=args.top_k,
        batch_size=args.batch_size,
        n_boot=args.bootstrap,
        seed=args.seed,
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    out: dict[str, Any] = result.to_dict()
    return out
