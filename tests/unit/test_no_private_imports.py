"""Tests use the public surface only: no test imports a private name (`_x`) from explorer.

A test that reaches for `_helper` pins an implementation detail; if the behaviour matters, the
name should be public (and documented), otherwise the test should go through the public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def private_imports(source: str) -> list[str]:
    """`from explorer... import _x` and `import explorer..._x` in `source`, as 'line: statement'."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "explorer":
            module = node.module or ""
            names = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            if any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                names.append(module)
            found += [f"{node.lineno}: from {module} import {name}" for name in names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "explorer" and any(
                    p.startswith("_") and not p.startswith("__") for p in parts
                ):
                    found.append(f"{node.lineno}: import {alias.name}")
    return found


def test_the_scanner_finds_private_imports() -> None:
    source = "from explorer.a import b, _c\nimport explorer._d\nfrom explorer import __version__\n"
    assert private_imports(source) == ["1: from explorer.a import _c", "2: import explorer._d"]


def test_tests_import_no_private_names() -> None:
    offenders = [
        f"{path.relative_to(TESTS)}:{hit}"
        for path in sorted(TESTS.rglob("*.py"))
        for hit in private_imports(path.read_text())
    ]
    assert not offenders, offenders
