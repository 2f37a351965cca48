"""Progress reporting: one callable type for every long-running analysis.

A `ProgressFn` receives a fraction in [0, 1] and a short message. The UI passes Gradio's
progress bar, the CLI a `StderrBar` (on a terminal, or with `--progress`); analyses call
`report(fraction, message)` freely.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The progress function that ignores every report."""
    return None


def or_silent(progress: ProgressFn | None) -> ProgressFn:
    """`progress`, or `no_progress` when None."""
    return progress if progress is not None else no_progress


class StderrBar:
    """A one-line progress bar on stderr: redrawn in place on a terminal, else one line per 10% of each
    stage (so a `nohup` log shows how far a long run got)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.last_decile = -1
        self.t0 = time.perf_counter()

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(float(fraction), 0.0), 1.0)
        filled = int(30 * fraction)
        elapsed = time.perf_counter() - self.t0
        line = f"{self.label} [{'#' * filled}{'.' * (30 - filled)}] {100 * fraction:5.1f}% {message} ({elapsed:.0f} s)"
        if self.tty:
            sys.stderr.write("\r" + line[:160].ljust(100) + ("\n" if fraction >= 1.0 else ""))
        elif int(10 * fraction) != self.last_decile:  # a new tenth, or a new stage starting again lower
            self.last_decile = int(10 * fraction)
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
