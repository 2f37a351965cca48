"""`explorer train-demo-vlm`: reproduce the embedded demo VLM's projector from a seed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from explorer.config import Settings
from explorer.errors import InputError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from explorer.vlm.train import TrainConfig

    defaults = TrainConfig()
    p: argparse.ArgumentParser = sub.add_parser(
        "train-demo-vlm",
        help="train the demo VLM's projector (DINOv2-S -> MLP -> frozen SmolLM2) on synthetic scenes",
        description="Draws seeded synthetic scenes, extracts DINOv2 features once (cached under the cache "
        "dir), trains the projector with SmolLM2 frozen, then scores it on 300 held-out scenes. "
        "Prints the training summary and held-out accuracy as JSON. About 45 min on 2 CPU cores.",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help=f"seed (default {defaults.seed})")
    p.add_argument(
        "--steps", type=int, default=defaults.steps, help=f"optimiser steps (default {defaults.steps})"
    )
    p.add_argument(
        "--scenes", type=int, default=defaults.n_train_scenes, help="training scenes (default %(default)s)"
    )
    p.add_argument("--out", type=Path, required=True, help="directory for projector.safetensors and the card")
    p.add_argument("--eval-scenes", type=int, default=300, help="held-out scenes to score (default 300)")
    p.add_argument(
        "--no-colour",
        action="store_true",
        help="DINOv2 features only: no per-cell colour statistics as a second projector input",
    )
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.backends.vlm import load_vlm
    from explorer.vlm.evaluate import evaluate
    from explorer.vlm.train import TrainConfig, train

    if args.steps < 1 or args.scenes < 8:
        raise InputError("steps must be >= 1 and scenes >= 8")
    config = TrainConfig(
        seed=args.seed, steps=args.steps, n_train_scenes=args.scenes, colour=not args.no_colour
    )
    info = train(config, args.out, settings.cache_dir / "tiny-vlm")
    model = load_vlm("tiny-vlm", settings=settings, weights=args.out)
    info["heldout"] = evaluate(model, args.eval_scenes) if args.eval_scenes > 0 else None
    return info
