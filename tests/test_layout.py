"""The layering holds: audio <- assistant <- server, clients on the pure protocol, no import cycle;
and the repository is whole: no file of it reads a folder beside the checkout.

Every `import` in the packages is read from the source (module level and inside functions alike), so
a lazy import cannot hide a dependency. The one crossing on purpose is assistant/cli.py, which starts
each command's module by name (`importlib.import_module("server.app")`), never by an import.
"""

from __future__ import annotations

import ast
import subprocess
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


# -- the checkout is self-contained ---------------------------------------------------------------


BESIDE = "../" + "shared"  # the folder a development checkout happened to have beside it (spelt so
# that this file does not name it)


def tracked_files() -> list[Path]:
    """The repository's files: git's list in a checkout, else every file outside build folders."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}
        return [p for p in REPO.rglob("*") if p.is_file() and not skip & set(p.relative_to(REPO).parts)]
    return [REPO / name for name in listed.decode().split("\0") if name]


def _levels_above(node: ast.AST) -> int | None:
    """How many folders up from its own file `node` points, for `Path(__file__)` followed by
    `.resolve()`, `.parent` and `.parents[N]` (0: the file itself); None for anything else."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Path":
        args = node.args
        return 0 if len(args) == 1 and isinstance(args[0], ast.Name) and args[0].id == "__file__" else None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if node.func.attr in ("resolve", "absolute") and not node.args:
            return _levels_above(node.func.value)
        return None
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        base = _levels_above(node.value)
        return None if base is None else base + 1
    if (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "parents"
        and isinstance(node.slice, ast.Constant)
        and isinstance(node.slice.value, int)
    ):
        base = _levels_above(node.value.value)
        return None if base is None else base + node.slice.value + 1
    return None


def paths_outside_the_checkout(path: Path, source: str) -> list[str]:
    """`Path(__file__)...` expressions of a Python file that climb above the repository root."""
    depth = len(path.relative_to(REPO).parts)  # folders up from the file to the root, the root included
    found = []
    for node in ast.walk(ast.parse(source, str(path))):
        levels = _levels_above(node)
        if levels is not None and levels > depth:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_file_reads_a_folder_beside_the_checkout():
    """A fresh clone has nothing beside it: tests, benchmarks and docs use what the repository holds."""
    wrong = []
    for path in tracked_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary data (WAVs, weights)
        if BESIDE in text:
            wrong.append(f"{path.relative_to(REPO)}: names {BESIDE}")
        if path.suffix == ".py":
            wrong += paths_outside_the_checkout(path, text)
    assert not wrong, "files that read outside the repository:\n" + "\n".join(wrong)


def test_the_outside_check_sees_a_path_that_climbs_out(tmp_path):
    inside = REPO / "server" / "bench.py"
    climbs = 'X = Path(__file__).resolve().parents[2] / "shared" / "audio"\nY = Path(__file__).parent.parent.parent\n'
    stays = 'X = Path(__file__).resolve().parents[1] / "tests"\nY = Path(__file__).parent.parent\n'
    assert len(paths_outside_the_checkout(inside, climbs)) == 2
    assert paths_outside_the_checkout(inside, stays) == []
