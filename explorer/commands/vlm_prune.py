"""`explorer vlm-prune`: visual-token pruning strategies x keep ratios, judged by a VLM's answers."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from explorer.analysis.pruning.common import DEFAULT_KEEP_RATIOS

    p: argparse.ArgumentParser = sub.add_parser(
        "vlm-prune",
        help="prune the visual tokens a VLM's LM receives (FastV, VTC-CLS, TransPrune, ToDRE, IDPruner, "
        "random, uniform) at several keep ratios and judge it by the answers",
        description="For each strategy x keep ratio, answer every question of an evaluation set greedily "
        "(batched) with the pruned visual tokens and report accuracy per question type, POPE, CHAIR and the "
        "agreement with the unpruned answers (seeded 95%% bootstrap intervals), plus the prefill FLOPs and "
        "measured time relative to the unpruned model with each strategy's scoring charged. Keep 1.0 is the "
        "unpruned model. Prints {run_id, retention, agreement, metrics, costs, strategies, ...}.",
    )
    p.add_argument(
        "--set",
        "--dataset",
        dest="dataset",
        default="pope",
        help="all | caption | pope | qa (synthetic scenes) or a .jsonl/.csv/.parquet file of image,question,answer",
    )
    p.add_argument("--n", "--scenes", dest="scenes", type=int, default=20, help="synthetic scenes (20)")
    p.add_argument(
        "--strategy",
        action="append",
        default=None,
        help="a strategy, a comma-separated list, or 'all' (default); repeatable",
    )
    p.add_argument(
        "--keep",
        default=None,
        help="keep ratios, comma-separated, e.g. 1,0.5,0.25,0.1,0.05 (default: "
        + " ".join(str(r) for r in DEFAULT_KEEP_RATIOS)
        + ")",
    )
    p.add_argument(
        "--model", default=None, help="vision-language model (default tiny-vlm; projector VLMs only)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of POPE's random split, random pruning, bootstrap (0)"
    )
    p.add_argument("--batch-size", type=int, default=16, help="prompts answered together (16)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.analysis.pruning.common import parse_keep_ratios
    from explorer.api.vlm import vlm_prune

    result = vlm_prune(
        args.model,
        args.dataset,
        n_scenes=args.scenes,
        strategies=args.strategy or ["all"],
        keep_ratios=None if args.keep is None else parse_keep_ratios(args.keep, "--keep"),
        seed=args.seed,
        batch_size=args.batch_size,
        n_boot=args.bootstrap,
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    out: dict[str, Any] = result.to_dict()
    return out
