"""`explorer vista`: one image and question answered without and with VISTA steering, side by side."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.commands.vlm_eval import add_vista_arguments, vista_params
from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "vista",
        help="a VLM's answer without and with VISTA steering (VSV and/or SLA), side by side",
        description="Generate greedily twice, plainly and with VISTA (visual steering vector and/or self-logits "
        "augmentation), and print {plain: {text, tokens, seconds}, vista: {...}, latency_ratio}.",
    )
    p.add_argument("--image", required=True, metavar="PATH", help="the image")
    p.add_argument("--prompt", required=True, help="a question about the image")
    p.add_argument("--model", default=None, help="vision-language model (default tiny-vlm)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens to generate (32)")
    add_vista_arguments(p)
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.api.vlm import vista_compare
    from explorer.errors import InputError

    params = vista_params(args)
    if not params.enabled:
        raise InputError("switch VISTA on: --vsv and/or --sla")
    return vista_compare(
        args.model,
        args.prompt,
        args.image,
        vista=params,
        max_new_tokens=args.max_new_tokens,
        settings=settings,
        progress=args.progress_fn,
    )
