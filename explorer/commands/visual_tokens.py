"""`explorer visual-tokens`: sink / dead / alive visual tokens and text->image attention of a VLM."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "visual-tokens",
        help="EmbedLens-style sink / dead / alive visual tokens and text->image attention (VLMs)",
        description="Classify every visual token at every LM block as sink (norm outlier that attracts "
        "attention), dead (dropping it changes nothing downstream) or alive, and report the attention from "
        "text tokens to the image patches (per layer, head and rolled out). Prints {run_id, counts, "
        "categories, ablation, shares, thresholds, ...}.",
    )
    p.add_argument("--image", required=True, metavar="PATH", help="the image")
    p.add_argument("--prompt", required=True, help="a question about the image")
    p.add_argument("--model", default=None, help="vision-language model (default tiny-vlm)")
    p.add_argument("--sink-norm-k", type=float, default=4.0, help="sink: norm > K x median visual norm (4)")
    p.add_argument(
        "--sink-share-k", type=float, default=2.0, help="sink: received attention > K x uniform share (2)"
    )
    p.add_argument(
        "--dead-logprob-eps", type=float, default=0.05, help="dead: |Δ log p(answer)| below (0.05)"
    )
    p.add_argument(
        "--dead-output-eps", type=float, default=0.02, help="dead: relative logit change below (0.02)"
    )
    p.add_argument("--answer-tokens", type=int, default=3, help="greedy answer tokens scored (3)")
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.vlm import run_visual_tokens
    from explorer.vlm.tokens import TokenParams

    params = TokenParams(
        sink_norm_k=args.sink_norm_k,
        sink_share_k=args.sink_share_k,
        dead_logprob_eps=args.dead_logprob_eps,
        dead_hidden_eps=args.dead_output_eps,
        answer_tokens=args.answer_tokens,
    )
    params.validate()
    result = run_visual_tokens(
        args.model,
        args.prompt,
        args.image,
        params=params,
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    out: dict[str, Any] = result.to_dict()
    return out
