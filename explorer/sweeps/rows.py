"""The rows of a sweep's dataset, read and checked before anything runs.

A JSONL, CSV or Parquet file, one row per input:

* lens / attention / attribute / prune: `prompt` (required), optional `image` (a path relative
  to the file, or absolute: the row then goes to a vision-language model, or for prune to the
  vision model's patch pruning when `prompt` is empty) and optional `target` (the token tracked
  by the lens, the text attributed by attribute);
* vlm-eval: `image`, `question`, `answer`, optional `type` (explorer.vlm.eval_sets.user_set), or
  the name of a built-in evaluation set (all, caption, pope, qa) over `n_scenes` scenes.

Every row is validated first, so bad input fails with one message and nothing is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from explorer.errors import InputError
from explorer.table_files import file_digest

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MAX_ROWS = 100_000


@dataclass(frozen=True)
class SweepRow:
    """One input. `row` is its 0-based index in the dataset (the key that resume uses); for
    vlm-eval `sample` is the `explorer.vlm.eval_sets.EvalSample` (its image is not loaded yet)."""

    row: int
    prompt: str = ""
    image: str | None = None
    target: str | None = None
    sample: Any = None


@dataclass(frozen=True)
class Dataset:
    """What was read: the rows and a digest of the source (resume refuses a changed dataset)."""

    name: str
    digest: str
    rows: list[SweepRow]


def _user_file(dataset: str) -> Path:
    file = Path(dataset).expanduser()
    if not file.is_file():
        raise InputError(f"dataset {dataset!r} does not exist (give a .jsonl, .csv or .parquet file)")
    if file.suffix.lower() not in FORMATS:
        raise InputError(f"dataset {file}: unknown format {file.suffix!r}; use .jsonl, .csv or .parquet")
    return file.resolve()


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def read_rows(dataset: str, analysis: str, *, n_scenes: int = 20, seed: int = 0) -> Dataset:
    """The rows of `dataset` for `analysis` ("lens", "attention", "attribute", "prune", "vlm-eval")."""
    from explorer.text_input import check_text

    check_text(str(dataset), "the dataset")
    if analysis == "vlm-eval":
        return _eval_rows(dataset, n_scenes, seed)
    from explorer.table_files import read_table

    file = _user_file(dataset)
    table = read_table(file, FORMATS[file.suffix.lower()])
    if table.num_rows == 0:
        raise InputError(f"{file} has no rows")
    if table.num_rows > MAX_ROWS:
        raise InputError(f"{file} has {table.num_rows} rows; at most {MAX_ROWS} are allowed")
    columns = set(table.column_names)
    if "prompt" not in columns and not (analysis == "prune" and "image" in columns):
        raise InputError(
            f"{file} lacks the column 'prompt' (found: {', '.join(table.column_names) or 'none'})"
        )
    rows = []
    for i, record in enumerate(table.to_pylist()):
        prompt = _text(record.get("prompt"))
        image = _text(record.get("image")).strip() or None
        target = _text(record.get("target")) or None
        check_text(prompt, f"row {i + 1}'s prompt")
        if not prompt.strip() and not (analysis == "prune" and image):
            raise InputError(f"{file} row {i + 1}: the prompt is empty")
        if image is not None:
            path = Path(image).expanduser()
            path = path if path.is_absolute() else file.parent / path
            if not path.is_file():
                raise InputError(f"{file} row {i + 1}: image {image!r} not found (looked at {path})")
            image = str(path.resolve())
        rows.append(SweepRow(i, prompt, image, target))
    return Dataset(str(file), file_digest(file), rows)


def _eval_rows(dataset: str, n_scenes: int, seed: int) -> Dataset:
    from explorer.vlm.eval_sets import BUILTIN_SETS, load_eval_set

    samples = load_eval_set(dataset, int(n_scenes), int(seed))
    # built-in scenes are drawn again from their seed where the row runs: rows stay small to send
    samples = [dataclasses.replace(s, _image=None) for s in samples]
    rows = [SweepRow(i, s.question, s.image_ref, s.answer, s) for i, s in enumerate(samples)]
    if dataset in BUILTIN_SETS:
        return Dataset(dataset, f"{dataset}:{int(n_scenes)}:{int(seed)}", rows)
    file = Path(dataset).expanduser().resolve()
    return Dataset(str(file), file_digest(file), rows)
