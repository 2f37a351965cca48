"""A corpus of bad input across the CLI and the Python API: every case is exit code 2 with one clear
line (or an InputError), nothing is stored, and no traceback is printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from explorer.cli import main
from explorer.errors import InputError

SURROGATE = "\udcff\udcfe"  # what `$'\xff\xfe'` becomes in sys.argv
HUGE = "word " * 200_000  # 1 MB: refused by characters before tokenising


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_tiny_lm

    lm = make_tiny_lm("gpt2")
    d = tmp_path_factory.mktemp("tiny-corpus")
    lm.hf_model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


M = "{model}"  # replaced by the tiny model's folder
CLI_CASES = [
    (["lens", "--prompt", "", "--model", M], "empty"),
    (["lens", "--prompt", "   \n ", "--model", M], "empty"),
    (["lens", "--prompt", SURROGATE, "--model", M], "surrogate"),
    (["lens", "--prompt", "ok", "--target", SURROGATE, "--model", M], "surrogate"),
    (["lens", "--prompt", "ok", "--model", SURROGATE], "surrogate"),
    (["lens", "--prompt", HUGE, "--model", M], "characters long"),
    (
        ["lens", "--prompt", "hi " * 5000, "--model", M],
        "tokens long",
    ),  # > 4,096 tokens, < the character limit
    (["lens", "--prompt", "hi", "--top-k", "0", "--model", M], "top-k"),
    (["lens", "--prompt", "hi", "--top-k", "-5", "--model", M], "top-k"),
    (["lens", "--prompt", "hi", "--generate", "-1", "--model", M], "generate"),
    (["lens", "--prompt", "hi", "--generate", "100000", "--model", M], "generate"),
    (["lens", "--prompt", "hi", "--sample", "--temperature", "0", "--model", M], "temperature"),
    (["lens", "--prompt", "hi", "--model", "/nonexistent/model/dir"], "does not exist"),
    (["lens", "--prompt", "hi", "--model", "no-such-org/no-such-model"], "not available"),
    (["lens", "--prompt", "hi", "--model", "dinov2-small-focus"], "vision model"),
    (["attention", "--prompt", "", "--model", M], "empty"),
    (["attention", "--prompt", SURROGATE, "--model", M], "surrogate"),
    (["attention", "--prompt", HUGE, "--model", M], "characters long"),
    (["attention", "--image", "/no/such/image.png"], "does not exist"),
    (["attention", "--image", SURROGATE], "surrogate"),
    (["attribute", "--prompt", "the cat", "--target", "", "--model", M], "target"),
    (["attribute", "--prompt", SURROGATE, "--target", " sat", "--model", M], "surrogate"),
    (["attribute", "--prompt", "the cat", "--target", SURROGATE, "--model", M], "surrogate"),
    (["attribute", "--prompt", HUGE, "--target", " x", "--model", M], "characters long"),
    (["attribute", "--prompt", "the cat", "--target", " sat", "--method", "nope", "--model", M], "method"),
    (["prune", "--prompt", "", "--model", M], "empty"),
    (["prune", "--prompt", SURROGATE, "--model", M], "surrogate"),
    (["prune", "--image", "/no/such/image.png"], "does not exist"),
    (["runs", "--limit", "0"], "limit"),
    (["runs", "--show", "nope"], "no run"),
    (["runs", "--show", SURROGATE], "surrogate"),
    (["export", "nope", "--format", "png"], "no run"),
    (["sql", ""], "empty"),
    (["sql", SURROGATE], "surrogate"),
    (["sql", "DROP TABLE runs"], "read-only"),
    (["sql", "SELECT 1; DROP TABLE runs"], "read-only"),
    (["sql", "SELECT path FROM duckdb_databases()"], "not available in this console"),
    (["sql", "SELECT * FROM read_csv('/etc/passwd')"], "failed"),
    (["sql", "ATTACH '/tmp/x.duckdb' AS x"], "read-only"),
    (["sql", "INSTALL httpfs"], "read-only"),
    (["sql", "SELEC 1"], "parse"),
    (["sql", "SELECT 1", "--limit", "0"], "limit"),
]


@pytest.mark.parametrize(
    "args, message", CLI_CASES, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(CLI_CASES)]
)
def test_cli_bad_input(args, message, tiny_dir, tmp_path, capsys) -> None:
    db = tmp_path / "corpus.duckdb"
    args = [str(tiny_dir) if a == M else a for a in args]
    code = main([*args, "--db", str(db)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(tmp_path) not in err
    code = main(["runs", "--db", str(db)])
    assert json.loads(capsys.readouterr().out) == []  # nothing stored


def test_corpus_is_large_enough() -> None:
    assert len(CLI_CASES) + len(API_CASES) >= 40


API_CASES = [
    ("logit_lens", dict(prompt=SURROGATE), "surrogate"),
    ("logit_lens", dict(prompt=HUGE), "characters long"),
    ("logit_lens", dict(prompt="ok", targets=[SURROGATE]), "surrogate"),
    ("attention", dict(prompt=SURROGATE), "surrogate"),
    ("attribute", dict(prompt="the cat", target=SURROGATE), "surrogate"),
    ("prune_text", dict(prompt=SURROGATE), "surrogate"),
]


@pytest.mark.parametrize("fn, kwargs, message", API_CASES)
def test_python_api_bad_input(fn, kwargs, message, tiny_llama, tmp_store) -> None:
    import explorer

    with pytest.raises(InputError, match=message):
        getattr(explorer, fn)(tiny_llama, db=tmp_store, **kwargs)
    assert tmp_store.list_runs() == []
