"""`explorer attention`: per-layer, per-head attention, sink shares, entropy and rollout of a
causal LM over a prompt (`--prompt`); [CLS] -> patch attention, rollout and entropy of a
vision transformer over an image (`--image PATH`); or, with both, text -> image attention and
attention shares inside a vision-language model (default tiny-vlm)."""

from __future__ import annotations

import argparse
from typing import Any

# Importing the result modules registers the "attention" and "vision_attention" kinds, so other
# subcommands (export, runs) can reopen those runs in a fresh process.
import explorer.analysis.attention  # noqa: F401
import explorer.analysis.vision_attention_result  # noqa: F401
import explorer.vlm.attention  # noqa: F401
from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "attention",
        help="attention of every layer and head of a language model (--prompt), a vision model (--image) "
        "or a vision-language model (--image and --prompt)",
        description="One forward pass with attentions. With --prompt (causal LM) prints {run_id, model, "
        "n_layers, n_heads, tokens, layers: [{layer, heads: [{head, attention (seq x seq, query x key), "
        "sink_share (to the first token), delimiter_share, entropy (bits)}]}], rollout (seq x seq, after the "
        "last layer), sink_tokens[, flow]}. With --image (vision transformer) prints {run_id, model, "
        "n_layers, n_heads, grid: [gh, gw], image_sha256, layers: [{layer, heads: [{head, cls_attention "
        "(gh x gw), entropy (bits, [CLS] row)}]}], rollout (gh x gw, sums to 1)}. With --image and --prompt "
        "(vision-language model) prints {run_id, kind: vlm_attention, model, n_layers, n_heads, grid, tokens, "
        "modality, answer, query_positions, query {position, token, generated}, layers: [{layer (LM block, "
        "1-based), shares {image, text, sink}, sink_patches, mean (grid), rollout (grid), heads: [{head, "
        "image_share, attention (grid)}]}], rollout (grid, after the last block)}: grids are the attention of "
        "one text query (--query; default the last) to the image patches. Past EXPLORER_ATTENTION_FULL_TOKENS "
        "positions with more than 128 text queries, earlier queries are kept as block means: query then also has "
        "last_position, n_tokens and block_mean, and query_blocks lists every row's [first, last].",
    )
    p.add_argument("--prompt", help="text to analyse with a causal language model (with --image: a question)")
    p.add_argument(
        "--image",
        metavar="PATH",
        help="image file: alone, a vision transformer's [CLS] attention (default model dinov2-small-focus); "
        "with --prompt, a vision-language model's text -> image attention (default model tiny-vlm)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="embedded name (smollm2-135m; with --image: dinov2-small-focus; with --image and --prompt: "
        "tiny-vlm), hub id or local dir",
    )
    p.add_argument(
        "--generate",
        type=int,
        default=None,
        metavar="N",
        help="with --image and --prompt: greedy answer tokens appended as further queries (default 8)",
    )
    p.add_argument(
        "--query",
        type=int,
        default=None,
        metavar="POS",
        help="with --image and --prompt: the text position whose attention the JSON grids show (default last)",
    )
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
    from explorer.api.attention import attention, attention_image
    from explorer.errors import InputError

    if args.prompt is None and args.image is None:
        raise InputError(
            "give --prompt (a language model), --image (a vision model) or both (a vision-language model)"
        )
    if args.image is None or args.prompt is None:
        for flag in ("generate", "query"):
            if getattr(args, flag) is not None:
                raise InputError(f"--{flag} applies to --image with --prompt (a vision-language model)")
    if args.image is not None and args.prompt is not None:
        from explorer.vlm.attention import VLMAttentionResult

        result = attention(
            args.model,
            args.prompt,
            image=args.image,
            generate=args.generate,
            flow=args.flow or bool(args.flow_position),
            use_cache=not args.no_cache,
            settings=settings,
            progress=args.progress_fn,
        )
        assert isinstance(result, VLMAttentionResult)
        return result.to_dict_at(args.query)
    if args.image is not None:
        from explorer.backends.vlm import EMBEDDED_VLMS

        if args.model in EMBEDDED_VLMS:
            raise InputError(f"{args.model!r} is a vision-language model: give a question with --prompt")
        if args.flow or args.flow_position:
            raise InputError("--flow and --flow-position apply to --prompt (language models) only")
        image = attention_image(
            args.image,
            model=args.model or settings.default_vision_model,
            use_cache=not args.no_cache,
            settings=settings,
            progress=args.progress_fn,
        )
        return image.to_dict()
    if args.flow_position and not args.flow:
        raise InputError("--flow-position needs --flow")
    result = attention(
        args.model or settings.default_model,
        args.prompt,
        flow=args.flow,
        flow_positions=tuple(args.flow_position or (-1,)),
        use_cache=not args.no_cache,
        settings=settings,
        progress=args.progress_fn,
    )
    return result.to_dict()
