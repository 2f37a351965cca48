"""`explorer attribute`: which prompt tokens made the model produce the target (ReAGent, Captum
baselines, attention), with faithfulness metrics; or, with --generate N, a steps x sources matrix."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from explorer.analysis.attribution import method_names
    from explorer.analysis.attribution.replacement import REPLACEMENTS

    p: argparse.ArgumentParser = sub.add_parser(
        "attribute",
        help="feature attribution of a target token to the prompt tokens, with faithfulness metrics",
        description="Prints {run_id, model, method, tokens, target {token, id}, scores (one per token, larger = "
        "more important), seconds, faithfulness {soft_nc, soft_ns, comprehensiveness, sufficiency}}; "
        "with --method all, a list of such objects; with --generate N, {generated, sources, matrix}.",
    )
    p.add_argument("--prompt", required=True, help="context text")
    p.add_argument(
        "--target", default=None, help="text the model should produce next, e.g. ' Paris' (mind the space)"
    )
    p.add_argument(
        "--method",
        default=None,
        help=f"one of {', '.join(method_names())}, or all (default reagent); with --image: occlusion "
        "(default) or reagent",
    )
    p.add_argument(
        "--contrast", default=None, metavar="FOIL", help="contrastive: attribute log p(target) - log p(FOIL)"
    )
    p.add_argument("--model", default=None, help="embedded name (smollm2-135m), hub id or local dir")
    p.add_argument("--seed", type=int, default=0, help="random seed (ReAGent probes, faithfulness masks)")
    p.add_argument(
        "--generate", type=int, default=0, metavar="N", help="generate N tokens and attribute each step"
    )
    p.add_argument(
        "--replacement", choices=REPLACEMENTS, default=None, help="ReAGent replacement model (default auto)"
    )
    p.add_argument(
        "--mlm-model",
        default=None,
        help="masked LM for --replacement mlm/auto (default FacebookAI/roberta-base)",
    )
    p.add_argument("--num-probes", type=int, default=None, help="ReAGent parallel probes (default 8)")
    p.add_argument("--max-steps", type=int, default=None, help="ReAGent max update steps (default 30)")
    p.add_argument(
        "--replacing-ratio", type=float, default=None, help="ReAGent replacing ratio r (default 0.3)"
    )
    p.add_argument("--stop-top-k", type=int, default=None, help="ReAGent stopping top-k (default 3)")
    p.add_argument("--keep-top-n", type=int, default=None, help="ReAGent rational size n (default 5)")
    p.add_argument(
        "--max-keep-ratio",
        type=float,
        default=None,
        help="ReAGent: cap n at this share of the prompt (default 0.5; 1.0 = the paper)",
    )
    p.add_argument("--n-steps", type=int, default=None, help="integrated gradients steps (default 32)")
    p.add_argument(
        "--window",
        type=int,
        default=None,
        help="occlusion: zero spans of this many tokens (default 1: one token at a time); each token gets the "
        "mean drop of the spans that cover it",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="occlusion: start a span every this many tokens (1..window; default 1)",
    )
    p.add_argument(
        "--image",
        default=None,
        metavar="PATH",
        help="attribute a VLM's answer to the image patches (default model tiny-vlm; method occlusion or reagent)",
    )
    p.add_argument(
        "--baseline", choices=("mean", "blur"), default=None, help="with --image: patch replacement"
    )
    p.add_argument(
        "--answer-tokens", type=int, default=None, help="with --image and no --target: greedy answer length"
    )
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


PARAM_FLAGS = (
    "replacement",
    "mlm_model",
    "num_probes",
    "max_steps",
    "replacing_ratio",
    "stop_top_k",
    "keep_top_n",
    "max_keep_ratio",
    "n_steps",
    "window",
    "stride",
)
OCCLUSION_FLAGS = ("window", "stride")


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any] | list[dict[str, Any]]:
    from explorer.analysis.attribution import ATTRIBUTION_METHODS
    from explorer.api.attribution import attribute
    from explorer.errors import InputError

    for flag in OCCLUSION_FLAGS:
        if getattr(args, flag) is not None and (
            args.image is not None or args.method not in ("occlusion", "all")
        ):
            raise InputError(f"--{flag} applies to text occlusion (--method occlusion, without --image)")
    if args.image is not None:
        from explorer.api.attribution import attribute_image

        extra = {
            k: getattr(args, k)
            for k in ("baseline", "answer_tokens", *PARAM_FLAGS[2:8])
            if getattr(args, k) is not None
        }
        return attribute_image(
            args.model,
            args.prompt,
            args.image,
            target=args.target,
            method=args.method or "occlusion",
            seed=args.seed,
            settings=settings,
            progress=args.progress_fn,
            use_cache=not args.no_cache,
            contrast=args.contrast,
            generate=args.generate,
            **extra,
        ).to_dict()
    for flag in ("baseline", "answer_tokens"):
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag.replace('_', '-')} applies to --image (a vision-language model)")
    args.method = args.method or "reagent"
    params = {k: getattr(args, k) for k in PARAM_FLAGS if getattr(args, k) is not None}
    if args.method != "all" and args.method in ATTRIBUTION_METHODS:
        accepted = ATTRIBUTION_METHODS[args.method].param_names()
        params = {k: v for k, v in params.items() if k in accepted}
    result = attribute(
        args.model or settings.default_model,
        args.prompt,
        args.target,
        method=args.method,
        contrast=args.contrast,
        generate=args.generate,
        seed=args.seed,
        settings=settings,
        progress=args.progress_fn,
        use_cache=not args.no_cache,
        **params,
    )
    return result.to_dict()
