"""Inner layers never import outer ones (DESIGN.md): every import, at any depth, checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "caliban_flows"

# What each layer may import of caliban_flows; `cli/` is outermost and may import anything.
ALLOWED = {
    "spec": ("spec",),
    # A platform finds its credentials in its own Prefect block (blocks/), when one is named.
    "platforms": ("spec", "platforms", "blocks"),
    # A push target named by a Prefect block loads it once the backend is ready (server.ready).
    # Planning reads a platform's own facts (a kubeconfig's contexts, the local engine's GPU
    # runtime and earlier attempts) through its package; platforms never import plan.
    "plan": ("spec", "plan", "server", "platforms"),
    # The embedded Prefect server and its readiness; lean_httpx is the top-level module.
    "server": ("spec", "server", "lean_httpx"),
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


# ---------------------------------------------------------------------------------------------
# no import cycles


def _module_name(path: Path, root: Path) -> str:
    parts = (root.name, *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _target(name: str, modules: set[str]) -> str | None:
    """The module `name` names: itself, else its nearest enclosing package or module."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (inside functions too).

    `from P.x import y` is P.x.y when that is a module, else P.x. Edges to a package that
    contains the importing module (importing it runs that __init__ anyway) are left out.
    """
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importing module's package up
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, *([base] if base else [])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    names.append(full if full in modules else base)
            for imported in names:
                target = _target(imported, modules) if imported.split(".")[0] == root.name else None
                if target and target != name and not name.startswith(target + "."):
                    found.add(target)
        graph[name] = found
    return graph


def import_cycles(graph: dict[str, set[str]], limit: int = 100) -> list[list[str]]:
    """Every elementary cycle (up to `limit`), each from its smallest module, closed."""
    cycles: list[list[str]] = []
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack and len(cycles) < limit:
            node, path = stack.pop()
            for nxt in sorted(graph.get(node, ()), reverse=True):
                if nxt == start:
                    cycles.append([*path, start])
                elif nxt > start and nxt not in path:
                    stack.append((nxt, [*path, nxt]))
    return sorted(cycles)


def _cycle_text(cycle: list[str], package: str) -> str:
    return " -> ".join(m.removeprefix(package + ".") for m in cycle)


def test_no_import_cycles():
    cycles = import_cycles(import_graph(PACKAGE))
    assert not cycles, "import cycles:\n" + "\n".join(_cycle_text(c, PACKAGE.name) for c in cycles)


def test_the_cycle_check_finds_a_cycle_and_passes_an_acyclic_package(tmp_path):
    pkg = tmp_path / "fakepkg"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "spec").mkdir()
    for init in (pkg / "__init__.py", pkg / "cli" / "__init__.py", pkg / "spec" / "__init__.py"):
        init.write_text("")
    (pkg / "spec" / "errors.py").write_text("class SpecError(Exception): ...\n")
    (pkg / "cli" / "execute.py").write_text(
        "from fakepkg.spec.errors import SpecError\nfrom fakepkg.cli import registry\n"
    )
    (pkg / "cli" / "registry.py").write_text(
        "import fakepkg.cli\nfrom fakepkg.spec import errors\n"
    )
    graph = import_graph(pkg)
    assert graph["fakepkg.cli.execute"] == {"fakepkg.spec.errors", "fakepkg.cli.registry"}
    assert graph["fakepkg.cli.registry"] == {"fakepkg.spec.errors"}  # its own package: no edge
    assert import_cycles(graph) == []

    (pkg / "cli" / "deploy.py").write_text(
        "def f():\n    from fakepkg.cli.execute import SpecError\n"
    )
    (pkg / "cli" / "registry.py").write_text("from fakepkg.cli import deploy\n")
    cycles = import_cycles(import_graph(pkg))
    assert [_cycle_text(c, "fakepkg") for c in cycles] == [
        "cli.deploy -> cli.execute -> cli.registry -> cli.deploy"
    ]
