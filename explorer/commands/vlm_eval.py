"""`explorer vlm-eval`: a VLM's accuracy, POPE and CHAIR over an evaluation set, optionally with VISTA."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_vista_arguments(p: argparse.ArgumentParser) -> None:
    """VISTA's switches and parameters (shared by `vlm-eval` and `vista`)."""
    g = p.add_argument_group("VISTA steering (Li et al. 2025)")
    g.add_argument("--vsv", action="store_true", help="add the visual steering vector")
    g.add_argument(
        "--vsv-lambda",
        type=float,
        default=0.1,
        help="steering strength lambda (0.1; paper: 0.01 POPE, 0.17 CHAIR)",
    )
    g.add_argument(
        "--vsv-form",
        choices=("norm", "add"),
        default="norm",
        help="norm: the released code's norm-preserving push (default); add: residual + lambda * VSV",
    )
    g.add_argument(
        "--vsv-layers", default="all", help="residual layers that get the VSV: all, '10-20' or '3,5,7'"
    )
    g.add_argument("--sla", action="store_true", help="self-logits augmentation")
    g.add_argument("--sla-alpha", type=float, default=0.3, help="weight of the early-layer logits (0.3)")
    g.add_argument(
        "--sla-window",
        default=None,
        metavar="FIRST-LAST",
        help="residual layers of SLA (default: the paper's depth)",
    )


def vista_params(args: argparse.Namespace) -> Any:
    from explorer.errors import InputError
    from explorer.vlm.vista import VistaParams, parse_layers

    window = None
    if args.sla_window:
        layers = parse_layers(args.sla_window)
        if layers is None or len(layers) < 1:
            raise InputError("--sla-window: give FIRST-LAST, e.g. 20-28")
        window = (min(layers), max(layers))
    params = VistaParams(
        vsv=args.vsv,
        lam=args.vsv_lambda,
        vsv_form=args.vsv_form,
        vsv_layers=parse_layers(args.vsv_layers),
        sla=args.sla,
        sla_alpha=args.sla_alpha,
        sla_window=window,
    )
    params.validate()
    return params


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "vlm-eval",
        help="accuracy per question type, POPE and CHAIR of a VLM over an evaluation set (optionally with VISTA)",
        description="Answer every question of an evaluation set greedily (batched) and score it: accuracy per "
        "question type, POPE accuracy/precision/recall/F1/yes-ratio per split, CHAIR_s/CHAIR_i of captions, each "
        "with a seeded 95%% bootstrap interval. With --vsv and/or --sla every prompt is answered plainly and with "
        "VISTA, and the latency ratio is reported. Prints {run_id, metrics, seconds, latency_ratio, ...}.",
    )
    p.add_argument(
        "--dataset",
        default="pope",
        help="all | caption | pope | qa (synthetic scenes) or a .jsonl/.csv/.parquet file of image,question,answer",
    )
    p.add_argument("--scenes", type=int, default=20, help="synthetic scenes of a built-in set (20)")
    p.add_argument("--model", default=None, help="vision-language model (default tiny-vlm)")
    p.add_argument("--seed", type=int, default=0, help="seed of POPE's random split and of the bootstrap (0)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts answered together (8)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (1000)")
    add_vista_arguments(p)
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.vlm import vlm_eval

    result = vlm_eval(
        args.model,
        args.dataset,
        n_scenes=args.scenes,
        seed=args.seed,
        batch_size=args.batch_size,
        n_boot=args.bootstrap,
        vista=vista_params(args),
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    out: dict[str, Any] = result.to_dict()
    return out
