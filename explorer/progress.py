"""Progress reporting: one callable type for every long-running analysis.

A `ProgressFn` receives a fraction in [0, 1] and a short message. The UI passes Gradio's
progress bar, the CLI nothing; analyses call `report(fraction, message)` freely.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The progress function that ignores every report."""
    return None


def or_silent(progress: ProgressFn | None) -> ProgressFn:
    """`progress`, or `no_progress` when None."""
    return progress if progress is not None else no_progress
