"""`explorer compare RUN_A RUN_B`: two stored runs of the same kind side by side, with differences."""

from __future__ import annotations

import argparse
from typing import Any

from explorer.config import Settings


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "compare",
        help="compare two stored runs of the same kind (differences are B minus A)",
        description="Prints {kind, run_a, run_b, tokens_a, tokens_b, aligned_positions, summary, param_changes, "
        "differences: {name: matrix}, notes}. Lens: top1_agree, next_log_rank_delta, final_prob_delta "
        "(layers x positions); attention: attention_delta (positions x positions), head_delta and "
        "entropy_delta (layers x heads). No model is loaded.",
    )
    p.add_argument("run_a", help="run id (see `explorer runs`)")
    p.add_argument("run_b", help="run id of the same kind")
    return p


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from explorer.compare import compare

    return compare(args.run_a, args.run_b, settings=settings).to_dict()
