"""The layering holds: audio <- assistant <- server, clients on the pure protocol, no import cycle.

Every `import` in the packages is read from the source (module level and inside functions alike), so
a lazy import cannot hide a dependency. The one crossing on purpose is assistant/cli.py, which starts
each command's module by name (`importlib.import_module("server.app")`), never by an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("audio", "assistant", "server", "client")
# What clients may use of the server: its pure protocol definitions, nothing with sockets or state.
CLIENT_MAY_IMPORT_FROM_SERVER = {"server.protocol"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a.b import c` counts as a.b, or a.b.c if a module)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def test_no_module_imports_a_layer_above_its_own():
    rank = {"audio": 0, "assistant": 1, "server": 2}
    wrong = []
    for module, deps in project_imports().items():
        top = module.split(".")[0]
        for dep in deps:
            dep_top = dep.split(".")[0]
            if top == "client":
                if dep_top == "server" and dep not in CLIENT_MAY_IMPORT_FROM_SERVER:
                    wrong.append((module, dep))
            elif dep_top == "client" or rank[dep_top] > rank[top]:
                wrong.append((module, dep))
    assert not wrong, f"imports against the layering (audio <- assistant <- server; clients): {wrong}"


def test_there_is_no_import_cycle():
    graph = project_imports()
    # A package's __init__ re-exporting its own modules is not a cycle between concerns.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
