"""`explorer` command line: subcommands print JSON; bad input exits 2 with a one-line message.

Each subcommand lives in `explorer/commands/<name>.py` and exposes
`add_parser(subparsers) -> argparse.ArgumentParser` plus `run(args, settings) -> dict | list`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from typing import Any

# The names of explorer.backends.loading.DTYPES (not imported: `explorer -h` must not import torch).
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
COMMAND_MODULES = (
    "lens",
    "runs",
    "export",
    "sql",
    "attention",
    "attribute",
    "prune",
    "train_demo_vlm",
    "atlas",
    "compare",
    "visual_tokens",
    "vlm_eval",
    "vlm_prune",
    "vista",
    "latent_neighbours",
    "vista_patterns",
    "sweep",
)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, set):
        return sorted(obj)
    return str(obj)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="explorer",
        description="Token Explorer: logit lens, attention, attribution and pruning for transformer models. "
        "Every subcommand prints JSON.",
    )
    parser.add_argument("--db", help="DuckDB run store (default: $EXPLORER_DB or cache/explorer.duckdb)")
    parser.add_argument("--cache-dir", help="cache directory (default: $EXPLORER_CACHE_DIR or ./cache)")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=None,
        help="weights' dtype (default: $EXPLORER_DTYPE or auto = float16 on CUDA, float32 on CPU)",
    )
    parser.add_argument(
        "--device-map",
        choices=("none", "auto"),
        default=None,
        help="auto: hub models load with accelerate's device_map='auto' when CUDA GPUs are present, split "
        "across them (default: $EXPLORER_DEVICE_MAP or none)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Any] = {}
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"explorer.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"explorer.commands.{name}":
                continue
            raise
        p = module.add_parser(sub)
        p.add_argument("--db", dest="sub_db", help=argparse.SUPPRESS)
        p.add_argument(
            "--dtype",
            dest="sub_dtype",
            choices=DTYPE_CHOICES,
            default=None,
            help="weights' dtype (see explorer -h)",
        )
        p.add_argument("--json", action="store_true", help="print JSON (the default; kept for explicitness)")
        p.add_argument(
            "--progress",
            action="store_true",
            help="a progress bar on stderr even when stderr is not a terminal (e.g. under nohup); "
            "on a terminal it is always shown",
        )
        handlers[p.prog.split()[-1]] = module.run
    return parser, handlers


def _check_arguments(args: argparse.Namespace) -> None:
    """Every text argument must be valid Unicode (undecodable bytes arrive as lone surrogates)."""
    from explorer.text_input import check_text

    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str):
                check_text(item, "--" + name.replace("_", "-"))


def progress_bar(args: argparse.Namespace) -> Any:
    """The `ProgressFn` a subcommand passes to the API: a bar on stderr when stderr is a terminal
    or `--progress` is given; else None (stderr keeps exactly the one-line error of bad input)."""
    if not (getattr(args, "progress", False) or sys.stderr.isatty()):
        return None
    from explorer.progress import StderrBar

    label = " ".join(str(v) for v in (args.command, getattr(args, "atlas_command", None)) if v)
    return StderrBar(label)


def _quiet_loading_bars() -> None:
    """No "Loading weights" bars from transformers / huggingface_hub on stderr: the CLI prints
    JSON on stdout and, on bad input, exactly one line on stderr."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported (the CLI called in-process)
        from explorer.backends.loading import hide_loading_bars

        hide_loading_bars()


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand: 0 on success, 2 on bad input (one line on stderr), 130 on Ctrl-C."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    _quiet_loading_bars()
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    from explorer.config import Settings
    from explorer.errors import InputError

    try:
        _check_arguments(args)
        db = getattr(args, "sub_db", None) or args.db
        dtype = getattr(args, "sub_dtype", None) or args.dtype
        try:
            settings = Settings.from_env(
                db_path=db, cache_dir=args.cache_dir, dtype=dtype, device_map=args.device_map
            )
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        args.progress_fn = progress_bar(args)
        out = handlers[args.command](args, settings)
    except InputError as exc:
        # one line: a multi-line message (e.g. DuckDB's parser pointing at a column) is joined
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        # the engine names the parameter (top_k); the CLI adds the flag it came from (--top-k)
        named = re.match(r"([a-z][a-z0-9_]*)\b", message)
        if named and named.group(1) in vars(args) and named.group(1) not in ("command", "db", "dtype"):
            message = f"--{named.group(1).replace('_', '-')}: {message}"
        print(f"explorer {args.command}: error: {message}", file=sys.stderr)
        return 2
    if out is not None:
        text = json.dumps(out, default=_json_default, ensure_ascii=False)
        try:
            sys.stdout.write(text + "\n")
        except UnicodeEncodeError:  # a stored string the terminal's encoding cannot show
            sys.stdout.write(json.dumps(out, default=_json_default) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
