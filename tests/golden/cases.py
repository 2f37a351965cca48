"""Golden CLI outputs on the embedded models: one JSON per subcommand, recorded before the
foundations refactor (issue 7) so the same inputs can be shown to give the same outputs after it.

`python -m tests.golden.cases record` (from the repo root, PYTHONPATH=.) rewrites the files;
tests/integration/test_golden.py compares a fresh run with them to float tolerance. Fields that
are wall times, run ids or timestamps are not compared (they change on every run).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

GOLDEN_DIR = Path(__file__).resolve().parent

# Keys whose values are wall times, ids or timestamps: never compared.
VOLATILE_KEYS = frozenset(
    {
        "run_id",
        "seconds",
        "timings",
        "prefill_seconds",
        "prefill_time_saved",
        "created",
        "duration_s",
        "scoring_seconds",
        "unpruned_seconds",
        "time_ratio",
    }
)


def _image() -> str:
    from explorer.backends.images import sample_images

    return str(sample_images()["grace_hopper"])


# name -> CLI arguments (after the global --db). Small inputs so the whole set runs in about a minute.
CASES: dict[str, list[str]] = {
    "lens": ["lens", "--prompt", "The capital of France is", "--target", " Paris", "--top-k", "5"],
    "lens_generate": ["lens", "--prompt", "ha ha ha ha ha ha ha ha", "--generate", "3", "--top-k", "3"],
    "attention": ["attention", "--prompt", "The cat sat on the mat.", "--flow"],
    "attention_image": ["attention", "--image", "<image>"],
    "attribute": [
        "attribute", "--prompt", "The capital of France is", "--target", " Paris", "--method", "all",
        "--max-steps", "4", "--num-probes", "4", "--n-steps", "8",
    ],
    "prune_text": [
        "prune", "--prompt", "The capital of France is Paris. The capital of Italy is",
        "--keep", "1.0", "0.5", "--continuation", "3",
        "--strategy", "self_information", "--strategy", "random", "--strategy", "fastv",
        "--strategy", "frugalprompt:input_x_gradient",
    ],
    "prune_image": [
        "prune", "--image", "<image>", "--keep", "0.5",
        "--strategy", "cls_attention", "--strategy", "kcenter", "--strategy", "random",
        "--strategy", "uniform",
    ],
}  # fmt: skip


def run_case(name: str, db: Path) -> Any:
    """Run one case through the CLI in this process and return its parsed JSON."""
    import contextlib
    import io

    from explorer.cli import main

    args = [a if a != "<image>" else _image() for a in CASES[name]]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["--db", str(db), *args, "--no-cache"])
    if code != 0:
        raise RuntimeError(f"golden case {name} exited with {code}")
    return json.loads(buf.getvalue())


def strip_volatile(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def differences(
    expected: Any, actual: Any, path: str = "$", rtol: float = 1e-3, atol: float = 1e-4
) -> list[str]:
    """Where `actual` differs from `expected` (floats to tolerance); [] when they agree."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[str] = []
        for key in sorted(set(expected) | set(actual)):
            if key in VOLATILE_KEYS:
                continue
            if key not in expected or key not in actual:
                out.append(f"{path}.{key}: only in {'actual' if key in actual else 'expected'}")
                continue
            out += differences(expected[key], actual[key], f"{path}.{key}", rtol, atol)
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        if len(expected) != len(actual):
            return [f"{path}: length {len(expected)} != {len(actual)}"]
        out = []
        # a vector of numbers is compared at the scale of the vector: an attribution vector whose
        # entries reach 100 is not held to 1e-3 relative on its entries near 0 (kernel changes,
        # e.g. SDPA vs eager attention in a backward pass, move every entry by a little)
        numbers = [x for x in expected if isinstance(x, (int, float)) and not isinstance(x, bool)]
        scale = max((abs(float(x)) for x in numbers if not math.isnan(float(x))), default=0.0)
        vector_atol = max(atol, rtol * scale) if len(numbers) == len(expected) else atol
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            out += differences(e, a, f"{path}[{i}]", rtol, vector_atol)
        return out
    if isinstance(expected, bool) or isinstance(actual, bool):
        return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        e, a = float(expected), float(actual)
        if math.isnan(e) and math.isnan(a):
            return []
        return (
            [] if math.isclose(e, a, rel_tol=rtol, abs_tol=atol) else [f"{path}: {expected!r} != {actual!r}"]
        )
    return [] if expected == actual else [f"{path}: {expected!r} != {actual!r}"]


def record(names: list[str]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out = strip_volatile(run_case(name, Path(tmp) / "golden.duckdb"))
            (GOLDEN_DIR / f"{name}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
            print("recorded", name)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "record":
        raise SystemExit("usage: python -m tests.golden.cases record [NAME ...]")
    record(sys.argv[2:] or list(CASES))
