"""Inner layers never import outer ones (DESIGN.md): every import, at any depth, checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "caliban_flows"

# What each layer may import of caliban_flows; `cli/` is outermost and may import anything.
ALLOWED = {
    "spec": ("spec",),
    "platforms": ("spec", "platforms"),
}
NOT_CLI = "everything but cli"


def _layer(path: Path) -> str:
    first = path.relative_to(PACKAGE).parts[0]
    return first if first in ALLOWED or first == "cli" else NOT_CLI


def _imported(path: Path) -> set[str]:
    """The caliban_flows subpackage or module each import names (`spec`, `cli`, `backend` ...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "caliban_flows":
                names = [f"caliban_flows.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "caliban_flows" and len(parts) > 1:
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if _layer(p) != "cli")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_reaches_an_outer_layer(path):
    layer = _layer(path)
    imported = _imported(path)
    if layer == NOT_CLI:
        assert "cli" not in imported
    else:
        assert imported <= set(ALLOWED[layer]), imported - set(ALLOWED[layer])


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from caliban_flows.cli import execute\n")
    assert _imported(module) == {"cli"}
