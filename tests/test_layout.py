"""The layering holds: audio <- assistant <- server, clients on the pure protocol, bench on top of
them all and shipped with none, no import cycle; and the repository is whole: no file of it reads a
folder beside the checkout.

Every `import` in the packages is read from the source (module level and inside functions alike), so
a lazy import cannot hide a dependency. The one crossing on purpose is assistant/cli.py, which starts
each command's module by name (`importlib.import_module("server.app")`), never by an import.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("audio", "assistant", "server", "client")
PACKAGES = (*SHIPPED, "bench")
# What a pure protocol module (all of server/protocols/ but the adapters) may not import.
IO_MODULES = {"asyncio", "socket", "ssl", "threading", "subprocess", "http", "websockets", "aiohttp"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_nodes(path: Path):
    """Every absolute import of a file: (module, names) for `from module import names`, (name, ()) for `import name`."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, ()) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, tuple(a.name for a in node.names)


def project_files() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def pure_protocol_modules() -> set[str]:
    """What clients may use of the server: server/protocols/ but the adapters, which hold the sockets
    (and the packages above them, which hold docstrings only)."""
    modules = {m for m in project_files() if m.startswith("server.protocols") and not m.endswith(".adapter")}
    return modules | {".".join(m.split(".")[:i]) for m in modules for i in (1, 2, 3)}


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (`from a.b import c` counts as a.b, or a.b.c if a module)."""
    files = project_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for module, names in import_nodes(path):
            deps.add(module)
            deps |= {f"{module}.{n}" for n in names}
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def test_no_module_imports_a_layer_above_its_own():
    rank = {"audio": 0, "assistant": 1, "server": 2}
    client_may_import = pure_protocol_modules()
    wrong = []
    for module, deps in project_imports().items():
        top = module.split(".")[0]
        for dep in deps:
            dep_top = dep.split(".")[0]
            if top == "bench":
                continue  # bench sits on everything: see test_bench_uses_public_names_only
            if dep_top == "bench":
                wrong.append((module, dep))
            elif top == "client":
                if dep_top == "server" and dep not in client_may_import:
                    wrong.append((module, dep))
            elif dep_top == "client" or rank[dep_top] > rank[top]:
                wrong.append((module, dep))
    assert not wrong, (
        "imports against the layering (audio <- assistant <- server; clients use audio, assistant for"
        f" in-process runs and of server/ only its pure protocol modules; nothing imports bench): {wrong}"
    )


def test_the_pure_protocol_modules_touch_no_socket():
    """What clients may import of the server holds no I/O: no socket, event loop, thread or adapter."""
    pure = pure_protocol_modules()
    files = project_files()
    wrong = []
    for name in sorted(pure & files.keys()):
        for module, names in import_nodes(files[name]):
            if module.split(".")[0] in IO_MODULES:
                wrong.append((name, module))
            deps = {module, *(f"{module}.{n}" for n in names)} & files.keys()
            wrong += [(name, dep) for dep in deps if dep.startswith("server") and dep not in pure]
    assert not wrong, f"a pure protocol module imports I/O or a server module with I/O: {wrong}"


def test_only_the_http_layer_knows_the_http_library():
    """The connection base and the protocol adapters see a websocket through server/websocket.py's
    small interface: swapping the HTTP library touches the three files of its layer only."""
    http_layer = {"server.app", "server.http", "server.websocket"}
    wrong = sorted(
        (name, module)
        for name, path in project_files().items()
        if name.startswith("server") and name not in http_layer
        for module, _ in import_nodes(path)
        if module.split(".")[0] in ("aiohttp", "websockets")
    )
    assert not wrong, f"server modules outside the HTTP layer import the HTTP library: {wrong}"


def test_bench_uses_public_names_only():
    """bench/ may import audio, assistant, server and client, but only what they offer (no `_private`
    name), and never the tests: a benchmark must run from any checkout, without pytest's fixtures."""
    wrong = []
    for name, path in project_files().items():
        if not name.startswith("bench"):
            continue
        for module, names in import_nodes(path):
            top = module.split(".")[0]
            if top == "tests":
                wrong.append((name, module))
            elif top in SHIPPED:
                wrong += [(name, f"{module}.{n}") for n in names if n.startswith("_")]
                wrong += [(name, module) for part in module.split(".") if part.startswith("_")]
    assert not wrong, f"bench/ imports the tests or a private name: {wrong}"


def test_the_wheel_ships_no_benchmark():
    shipped = read_configuration(REPO / "pyproject.toml")["tool"]["setuptools"][
        "packages"
    ]  # as pip builds it
    assert {p.split(".")[0] for p in shipped} == set(SHIPPED)


def test_assistant_bench_runs_from_a_checkout_and_says_why_not_elsewhere(tmp_path):
    """An installed package that maps only the shipped packages finds bench/ beside itself in a
    checkout (an editable install); a wheel, which has no bench/, says where benchmarks run."""
    code = "import sys; from assistant.cli import main; sys.exit(main(['bench', 'vad', '--help']))"
    linked, copied = tmp_path / "linked", tmp_path / "copied"
    linked.mkdir()
    (linked / "assistant").symlink_to(REPO / "assistant")
    shutil.copytree(REPO / "assistant", copied / "assistant")

    def run(site: Path) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": str(site)}
        return subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )

    from_checkout = run(linked)
    assert from_checkout.returncode == 0 and "--wav" in from_checkout.stdout, from_checkout.stderr
    from_wheel = run(copied)
    assert from_wheel.returncode == 1 and "Traceback" not in from_wheel.stderr
    assert "run from a checkout of the repository" in from_wheel.stderr


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


# Which distributions each part may import: the server's needs are the core set; `talk` and `eval`
# bring their own extras, and the tests everything (Kyutai's moshi and einops, which the reference
# tests compare against, are installed beside it by `make install`, without dependencies).
def declared() -> dict[str, set[str]]:
    project = read_configuration(REPO / "pyproject.toml")["project"]
    names = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {extra: {_dist(Requirement(r).name) for r in reqs} for extra, reqs in names.items()}


def _dist(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def allowed_extras(path: Path) -> tuple[str, ...]:
    rel = path.relative_to(REPO).as_posix()
    if rel.startswith("tests/"):
        return ("core", "talk", "eval", "captions", "dev", "reference")
    if rel == "bench/kyutai_server.py":  # Kyutai's own server, the reference of `bench latency`
        return ("core", "reference")
    if rel.startswith(("client/", "bench/")):
        return ("core", "talk", "eval")
    if rel.startswith("assistant/eval/"):
        return ("core", "eval")
    if rel == "audio/echo.py":  # the echo canceller of `assistant talk`
        return ("core", "talk")
    if rel == "assistant/captions.py":  # an offline caption model when the captions extra is there
        return ("core", "captions")
    return ("core",)


# The scripts that record reference outputs run the reference code from a path given on their
# command line (never by the suite), so what they import is that code's, not ours to declare; so do
# the framework drivers, each in its framework's own virtualenv (tests/frameworks/README.md).
REFERENCE_SCRIPTS = REPO / "tests" / "reference"
FRAMEWORK_DRIVERS = REPO / "tests" / "frameworks"


def test_every_imported_package_is_declared_in_the_set_its_part_installs():
    extras = {**declared(), "reference": {"moshi", "einops"}}
    by_module = {top: {_dist(d) for d in dists} for top, dists in packages_distributions().items()}
    first_party = set(PACKAGES) | {p.stem for p in (REPO / "tests").glob("*.py")} | {FRAMEWORK_DRIVERS.name}
    wrong = []
    for path in sorted(p for pkg in (*PACKAGES, "tests") for p in (REPO / pkg).rglob("*.py")):
        if path.is_relative_to(REFERENCE_SCRIPTS) or path.is_relative_to(FRAMEWORK_DRIVERS):
            continue
        allowed = set().union(*(extras[e] for e in allowed_extras(path)))
        for module, _ in import_nodes(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in first_party or top == "__future__":
                continue
            dists = by_module.get(top, {top})
            if not dists & allowed:
                wrong.append(f"{path.relative_to(REPO)}: {module} ({', '.join(sorted(dists))})")
    assert not wrong, "imported but not declared where this part installs it:\n" + "\n".join(wrong)


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
