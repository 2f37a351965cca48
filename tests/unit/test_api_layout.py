"""The API package: one module per analysis plus the runner; no API function shares a name with an
engine function (the API layer's are `run_<name>` there), and the public names stay in `explorer`."""

from __future__ import annotations

import ast
import json
from dataclasses import fields
from pathlib import Path

import pytest

import explorer
from explorer.api.registry import ANALYSES, NOT_ANALYSES, resolve
from explorer.api.runner import cache_params
from explorer.errors import InputError
from explorer.params import params_json

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


def test_every_stored_kind_is_a_registered_analysis() -> None:
    from explorer.results import RESULT_KINDS

    assert sorted(set(RESULT_KINDS.all_kinds()) - NOT_ANALYSES) == sorted(ANALYSES)


@pytest.mark.parametrize("kind", sorted(ANALYSES))
def test_registry_entries_resolve(kind: str) -> None:
    """Each analysis' parts exist: the Result class of its kind, a callable compute function and
    entry point, and Params whose defaults validate and give a JSON cache key."""
    entry = ANALYSES[kind]
    assert entry.result_type().kind == kind
    assert callable(resolve(entry.compute)) and callable(resolve(entry.entry))
    params_type = entry.params_type()
    if params_type is not None:
        params = params_type()
        key = cache_params(params, max_tokens=512)
        assert key["max_tokens"] == 512
        assert json.loads(json.dumps(key)) == key


def test_cache_params_is_the_generic_key_and_validates() -> None:
    """The same request gives the same key; a field that only matters when another is on (attention
    flow positions without flow) changes nothing; a bad value fails naming the parameter."""
    from explorer.analysis.attention import AttentionParams
    from explorer.vlm.tokens import TokenParams

    assert cache_params(AttentionParams(flow=False, flow_positions=(1, 2))) == {"flow": False}
    assert cache_params(AttentionParams(flow=True, flow_positions=(1, 2))) == {
        "flow": True,
        "flow_positions": [1, 2],
    }
    assert params_json(TokenParams()) == {f.name: getattr(TokenParams(), f.name) for f in fields(TokenParams)}
    with pytest.raises(InputError, match="answer_tokens"):
        cache_params(TokenParams(answer_tokens=0))


def test_only_attribution_lacks_one_params_type() -> None:
    """Every analysis but attribution (whose Params are chosen per method) names its Params."""
    assert sorted(k for k, entry in ANALYSES.items() if entry.params is None) == [
        "attribution",
        "attribution_generation",
    ]
