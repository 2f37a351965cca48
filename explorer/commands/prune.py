"""`explorer prune`: prune a text prompt or an image's patches and measure the effect."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS
    from explorer.analysis.pruning.image import IMAGE_STRATEGIES
    from explorer.analysis.pruning.params import PruneImageParams, PruneTextParams
    from explorer.analysis.pruning.text import MAX_CONTINUATION, TEXT_STRATEGIES

    text_names = ", ".join(f"{s.name}[:METHOD]" if s.options else s.name for s in TEXT_STRATEGIES.values())
    p: argparse.ArgumentParser = sub.add_parser(
        "prune",
        help="pruning lab: drop prompt tokens or image patches by a strategy, re-run, measure fidelity",
        description="Every pruned input is re-run through the model and compared with the unpruned run. "
        "Prints {kind, run_id, model, ..., rows: [{strategy, keep_ratio, keep_count, layer, kept, fidelity "
        "{measure: value}, seconds, flops_ratio, ...}], deviations}. Text fidelity: kl, target_prob_before/after, "
        "target_rank_before/after, continuation_agreement, semantic_similarity, prefill_time_saved. Image "
        "fidelity: cls_cosine, patch_cosine, saliency_corr, saliency_iou. Keep count = max(1, round(ratio * n)); "
        "for text the last prompt token is always kept.",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text prompt to prune")
    what.add_argument("--image", metavar="PATH", help="image file to prune (patches inside the ViT)")
    p.add_argument(
        "--model", default=None, help="LM (text) or vision model (image); default: the embedded one"
    )
    p.add_argument(
        "--strategy",
        action="append",
        default=None,
        metavar="NAME",
        help=f"strategy (repeatable) or 'all' (default). Text: {text_names}. Image: {', '.join(IMAGE_STRATEGIES)}",
    )
    p.add_argument(
        "--keep",
        type=float,
        nargs="+",
        default=None,
        metavar="RATIO",
        help=f"keep ratios in (0, 1] (default {' '.join(str(r) for r in DEFAULT_KEEP_RATIOS)})",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help=f"FastV's K for text (default {PruneTextParams().layer}); image: prune before block L "
        f"(default {PruneImageParams().layer})",
    )
    p.add_argument(
        "--target", default=None, help="text: token whose probability/rank is tracked (default: top-1)"
    )
    p.add_argument(
        "--continuation",
        type=int,
        default=PruneTextParams().continuation_tokens,
        metavar="N",
        help=f"text: greedy tokens compared (0..{MAX_CONTINUATION}; default {PruneTextParams().continuation_tokens})",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy and sampled attributions")
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS
    from explorer.api.pruning import prune
    from explorer.errors import InputError

    if args.image is not None and args.target:
        raise InputError("--target applies to --prompt only")
    strategies = args.strategy or "all"
    result = prune(
        prompt=args.prompt,
        image=args.image,
        model=args.model,
        strategies=strategies,
        keep_ratios=tuple(args.keep) if args.keep else DEFAULT_KEEP_RATIOS,
        layer=args.layer,
        target=args.target,
        continuation_tokens=args.continuation,
        seed=args.seed,
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    out: dict[str, Any] = result.to_dict()
    return out
