"""The API package: one module per analysis plus the runner; no API function shares a name with an
engine function (the API layer's are `run_<name>` there), and the public names stay in `explorer`."""

from __future__ import annotations

import ast
from pathlib import Path

import explorer

PACKAGE = Path(explorer.__file__).resolve().parent
ENGINE = ["analysis", "vlm", "backends"]


def top_level_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}


def engine_functions() -> dict[str, str]:
    """Public top-level function name -> the engine module defining it."""
    found: dict[str, str] = {}
    for folder in ENGINE:
        for path in sorted((PACKAGE / folder).rglob("*.py")):
            for name in top_level_functions(path):
                found.setdefault(name, str(path.relative_to(PACKAGE)))
    return found


def test_api_functions_do_not_shadow_engine_functions() -> None:
    engine = engine_functions()
    assert "logit_lens" in engine and "prune_text" in engine  # the scanner sees the engine
    clashes = [
        f"api/{path.name}: {name} (also {engine[name]})"
        for path in sorted((PACKAGE / "api").glob("*.py"))
        for name in sorted(top_level_functions(path))
        if name in engine
    ]
    assert clashes == []


def test_public_names_stay_in_explorer() -> None:
    documented = ["logit_lens", "attention", "attention_image", "attribute", "attribute_generation", "prune",
                  "prune_text", "prune_image", "visual_tokens", "latent_neighbours", "token_map",
                  "vocab_health", "microscope", "inspect_tokenizers", "export_figure", "list_runs", "load_run"]  # fmt: skip
    for name in documented:
        function = getattr(explorer, name)
        assert callable(function)
        assert function.__module__.startswith("explorer.api."), (name, function.__module__)
    assert explorer.prune_text.__name__ == "run_prune_text"
