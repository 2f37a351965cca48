"""Temporary folders for exported files, deleted after a time-to-live.

A download must outlive the handler that wrote it (Gradio copies the file after the handler
returns), so folders are not deleted at once: each new folder first deletes those older than
`max_age_s` (EXPLORER_TEMP_FILE_TTL_S, default one hour), and the app clears them all at start.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

ROOT_NAME = "explorer-exports"


def temp_root() -> Path:
    """The one folder under the system temp dir that holds every export folder."""
    root = Path(tempfile.gettempdir()) / ROOT_NAME
    root.mkdir(parents=True, exist_ok=True)
    return root


def prune_temp_dirs(max_age_s: float, root: Path | None = None) -> int:
    """Delete export folders older than `max_age_s` seconds; return how many were deleted."""
    root = root or temp_root()
    now = time.time()
    deleted = 0
    for child in root.iterdir() if root.exists() else []:
        try:
            if now - child.stat().st_mtime >= max_age_s:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
                deleted += 1
        except FileNotFoundError:
            continue  # another request deleted it first
    return deleted


def fresh_temp_dir(prefix: str = "export-", max_age_s: float = 3600.0) -> Path:
    """A new folder for one export, after deleting folders older than `max_age_s`."""
    root = temp_root()
    prune_temp_dirs(max_age_s, root)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=root))
