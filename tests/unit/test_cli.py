"""CLI: JSON shape, exit codes, local-directory models, runs and export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 saved as a local model directory (loads via the normal path)."""
    from conftest import make_tiny_lm

    lm = make_tiny_lm("gpt2")
    d = tmp_path_factory.mktemp("tiny-gpt2")
    lm.hf_model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, object, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_lens_json_shape(tiny_dir, tmp_path, capsys) -> None:
    db = str(tmp_path / "cli.duckdb")
    code, out, _ = run_cli(
        ["lens", "--prompt", "the cat sat", "--model", str(tiny_dir), "--target", "dog", "--top-k", "3",
         "--db", db, "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0
    assert set(out) >= {"run_id", "model", "n_layers", "tokens", "lens", "tracked"}
    assert out["n_layers"] == 3
    n_pos = len(out["tokens"])
    assert len(out["lens"]) == (out["n_layers"] + 1) * n_pos
    cell = out["lens"][0]
    assert set(cell) == {"layer", "position", "top"} and len(cell["top"]) == 3
    assert set(cell["top"][0]) == {"token", "id", "prob"}
    row = out["tracked"][0]
    assert {"token", "id", "position", "layer", "rank", "prob"} <= set(row)
    assert "generated" not in out


def test_lens_generate_and_runs_and_export(tiny_dir, tmp_path, capsys) -> None:
    db = str(tmp_path / "cli.duckdb")
    code, out, _ = run_cli(
        ["--db", db, "lens", "--prompt", "hello", "--model", str(tiny_dir), "--generate", "3"], capsys
    )
    assert code == 0 and 1 <= len(out["generated"]) <= 3
    steps = {r["position"] for r in out["tracked"] if r["role"] == "next_input"}
    assert len(out["tokens"]) - 2 in steps
    code, runs, _ = run_cli(["runs", "--db", db, "--json"], capsys)
    assert code == 0 and runs[0]["run_id"] == out["run_id"]
    code, exported, _ = run_cli(
        ["export", out["run_id"], "--format", "csv", "--out", str(tmp_path), "--db", db], capsys
    )
    assert code == 0 and Path(exported["path"]).read_text().startswith('"role",')
    code, exported, _ = run_cli(
        [
            "export",
            out["run_id"],
            "--format",
            "parquet",
            "--figure",
            "generation",
            "--out",
            str(tmp_path),
            "--db",
            db,
        ],
        capsys,
    )
    import pyarrow.parquet as pq

    assert code == 0 and pq.read_table(exported["path"]).num_rows > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["lens", "--prompt", ""], "empty"),
        (["lens", "--prompt", "hi", "--top-k", "0"], "top_k"),
        (["lens", "--prompt", "hi", "--model", "/nonexistent/model/dir"], "does not exist"),
        (["lens", "--prompt", "hi", "--model", "no-such-org/no-such-model"], "not available"),
        (["export", "nope", "--format", "png"], "no run"),
    ],
)
def test_bad_input_exit_2(args, message, tiny_dir, tmp_path, capsys) -> None:
    if "--model" not in args and args[0] == "lens":
        args = args + ["--model", str(tiny_dir)]
    code, out, err = run_cli(args + ["--db", str(tmp_path / "x.duckdb")], capsys)
    assert code == 2 and out is None
    assert message in err and err.count("\n") == 1
    code, runs, _ = run_cli(["runs", "--db", str(tmp_path / "x.duckdb")], capsys)
    assert runs == []


def test_unknown_flag_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "explorer.cli", "lens", "--prompt", "x", "--bogus"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


def test_progress_bar_on_stderr_only_when_asked(tiny_dir, tmp_path, capsys) -> None:
    """Off a terminal (a pipe, a nohup log), `--progress` draws one line per 10% on stderr; without
    it stderr stays empty, so bad input keeps its one-line message. stdout is the JSON either way."""
    db = str(tmp_path / "p.duckdb")
    base = ["lens", "--prompt", "the cat sat", "--model", str(tiny_dir), "--db", db, "--no-cache"]
    code, out, err = run_cli(base, capsys)
    assert code == 0 and isinstance(out, dict) and err == ""
    code, out2, err = run_cli([*base, "--progress"], capsys)
    assert code == 0 and isinstance(out2, dict) and out2["tokens"] == out["tokens"]
    lines = err.splitlines()
    assert lines and all(line.startswith("lens [") and "%" in line for line in lines), err
    tenths = [int(float(line.split("]")[1].split("%")[0]) // 10) for line in lines]
    assert all(a != b for a, b in zip(tenths, tenths[1:], strict=False))  # one line per tenth of a stage


def test_stderr_bar_prints_each_tenth_of_each_stage_once(capsys) -> None:
    from explorer.progress import StderrBar

    bar = StderrBar("vlm-eval")
    for fraction in (0.7, 0.75, 0.8, 0.0, 0.05, 0.12, 0.5, 0.55, 1.0):  # loading, then answering
        bar(fraction, "step")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split("]")[1].split("%")[0].strip() for line in lines] == [
        "70.0",
        "80.0",
        "0.0",
        "12.0",
        "50.0",
        "100.0",
    ]
    assert all(line.startswith("vlm-eval [") for line in lines)
