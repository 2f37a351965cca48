"""The README's retention-curve sweep: every visual-token pruning strategy x keep ratio on the demo VLM.

    python -m bench.vlm_prune_sweep --n 200 --keep 1,0.5,0.25,0.1,0.05 --db cache/vlm_prune.duckdb --out docs/figures

runs `explorer.vlm_prune` (stored, so a rerun or `explorer vlm-prune` with the same arguments reopens
it), prints progress to stderr, the result's JSON summary to stdout, and exports the retention figure
(`explorer export RUN_ID --figure retention --format png` does the same from the store).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="pope")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--strategy", default="all")
    p.add_argument("--keep", default="1,0.5,0.25,0.1,0.05")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--db", default="cache/vlm_prune.duckdb")
    p.add_argument("--out", default=None, help="directory for the retention figure (PNG) and its data (CSV)")
    args = p.parse_args(argv)

    from explorer.api.vlm import vlm_prune
    from explorer.config import Settings

    t0 = time.perf_counter()

    def progress(fraction: float, message: str) -> None:
        print(
            f"[{time.perf_counter() - t0:8.1f} s] {100 * fraction:5.1f}% {message}",
            file=sys.stderr,
            flush=True,
        )

    settings = Settings.from_env(db_path=Path(args.db))
    result = vlm_prune(
        None,
        args.set,
        n_scenes=args.n,
        strategies=args.strategy.split(","),
        keep_ratios=[float(v) for v in args.keep.split(",")],
        batch_size=args.batch_size,
        settings=settings,
        progress=progress,
    )
    summary = {k: v for k, v in result.to_dict().items() if k not in ("metrics", "examples")}
    print(json.dumps(summary, indent=1, default=str))
    if args.out:
        from explorer.plots import export

        out = Path(args.out)
        export(result, "png", out, figure="retention", stem="vlm_prune_retention")
        export(result, "csv", out, figure="retention", stem="vlm_prune_retention")
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
