"""Export folders do not pile up: each new one deletes those past their time-to-live."""

from __future__ import annotations

import os
import time
from pathlib import Path

from explorer.temp_files import fresh_temp_dir, prune_temp_dirs, temp_root


def test_old_export_folders_are_deleted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    old = fresh_temp_dir()
    (old / "figure.png").write_bytes(b"x")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    new = fresh_temp_dir(max_age_s=3600)
    assert not old.exists() and new.exists()
    assert new.parent == temp_root() == tmp_path / "explorer-exports"
    assert prune_temp_dirs(max_age_s=0) == 1 and not new.exists()


def test_ui_exports_go_to_the_pruned_folder(tiny_llama, tmp_path: Path, monkeypatch) -> None:
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    from explorer import api
    from explorer.ui.common import export_file

    result = api.logit_lens(tiny_llama, "export me", db=False)
    path = Path(export_file(result, "heatmap", "csv"))
    assert path.exists() and path.parent.parent == tmp_path / "explorer-exports"
