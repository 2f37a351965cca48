"""`explorer attention`: per-layer, per-head attention, sink shares, entropy and rollout."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "attention",
        help="attention of every layer and head, attention-sink shares, entropy, rollout (and flow)",
        description="One forward pass with attentions. Prints {run_id, model, n_layers, n_heads, tokens, "
        "layers: [{layer, heads: [{head, attention (seq x seq, query x key), sink_share (to the first "
        "token), delimiter_share, entropy (bits)}]}], rollout (seq x seq, after the last layer), sink_tokens"
        "[, flow]}.",
    )
    p.add_argument("--prompt", required=True, help="text to analyse")
    p.add_argument("--model", default=None, help="embedded name (smollm2-135m), hub id or local dir")
    p.add_argument(
        "--flow",
        action="store_true",
        help="also compute attention flow (exact max-flow; prompts of at most 64 tokens)",
    )
    p.add_argument(
        "--flow-position",
        type=int,
        action="append",
        default=None,
        metavar="POS",
        help="output position for the flow (repeatable; negative counts from the end; default -1)",
    )
    p.add_argument("--no-cache", action="store_true", help="recompute even if the run is stored")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.attention_api import attention
    from explorer.errors import InputError

    if args.flow_position and not args.flow:
        raise InputError("--flow-position needs --flow")
    result = attention(
        args.model or settings.default_model,
        args.prompt,
        flow=args.flow,
        flow_positions=tuple(args.flow_position or (-1,)),
        use_cache=not args.no_cache,
        settings=settings,
    )
    return result.to_dict()
