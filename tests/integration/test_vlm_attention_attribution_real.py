"""`explorer attention --image --prompt` and `explorer attribute --image` on the embedded demo VLM
(real weights: DINOv2-S -> trained projector -> SmolLM2 + LoRA), kept short: 2 answer tokens,
occlusion only over the 64 patches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from explorer.store import Store

pytestmark = pytest.mark.real

QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from explorer.vlm.scenes import compose_scene

    path = tmp_path_factory.mktemp("vlm") / "red-circle-blue-square.png"
    compose_scene([("red", "circle", "left"), ("blue", "square", "right")]).image.save(path)
    return path


def _cli(argv: list[str], capsys: Any) -> tuple[int, Any, str]:
    from explorer.cli import main

    code = main(argv)
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def test_cli_attention_on_the_demo_vlm(scene: Path, tmp_path: Path, capsys: Any) -> None:
    db = str(tmp_path / "runs.duckdb")
    argv = ["attention", "--image", str(scene), "--prompt", QUESTION, "--generate", "2", "--db", db]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    assert out["kind"] == "vlm_attention" and out["model"] == "tiny-vlm" and out["grid"] == [8, 8]
    assert out["n_layers"] == 30 and len(out["layers"]) == 30 and len(out["answer"]) == 2
    for layer in out["layers"]:
        assert sum(layer["shares"].values()) == pytest.approx(1.0, abs=1e-5)
        assert np.asarray(layer["heads"][0]["attention"]).shape == (8, 8)
    assert out["query"]["generated"]
    code, again, _ = _cli(argv, capsys)  # the same request is served from the store
    assert code == 0 and again["run_id"] == out["run_id"]


@pytest.mark.parametrize("command", ["attention", "attribute"])
def test_a_prompt_over_the_limit_with_its_visual_tokens_exits_2(
    command: str, scene: Path, tmp_path: Path, capsys: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("EXPLORER_MAX_PROMPT_TOKENS", "40")  # the question fits, its 64 visual tokens do not
    db = tmp_path / "runs.duckdb"
    code, out, err = _cli([command, "--image", str(scene), "--prompt", QUESTION, "--db", str(db)], capsys)
    assert code == 2 and out is None
    assert "64 visual tokens" in err and "\n" not in err.strip()
    store = Store.open(db)
    assert store.list_runs() == []
    store.close()


def test_cli_attribute_on_the_demo_vlm(scene: Path, tmp_path: Path, capsys: Any) -> None:
    db = str(tmp_path / "runs.duckdb")
    argv = ["attribute", "--image", str(scene), "--prompt", QUESTION, "--target", " red", "--db", db]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    assert out["kind"] == "vlm_attribution" and out["method"] == "occlusion" and out["target_given"]
    assert np.asarray(out["scores"]).shape == (8, 8)
    rows = out["faithfulness"]["deletion"]
    assert [r["fraction"] for r in rows] == [0.1, 0.2, 0.3, 0.5]
