"""Reading a user's table file (JSONL, CSV or Parquet) into Arrow, with one clear error message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from explorer.errors import InputError


def read_table(path: Path, fmt: str) -> pa.Table:
    """`fmt`: "jsonl", "csv" (empty cells are empty strings, not nulls) or "parquet"."""
    try:
        if fmt == "jsonl":
            import pyarrow.json as pj

            return pj.read_json(path)
        if fmt == "csv":
            import pyarrow.csv as pc

            return pc.read_csv(path, convert_options=pc.ConvertOptions(strings_can_be_null=False))
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path} as {fmt.upper()}: {str(exc).splitlines()[0]}") from exc


def file_digest(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256: how a run's cache key names a user file."""
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]
