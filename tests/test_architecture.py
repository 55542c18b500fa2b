"""The shape of the package, checked so it stays the one the README's Architecture section describes.

Packages by job with the dependencies pointing one way, only `store/` speaking SQL, no import cycles, no private
name taken from another module, no function outside the command line longer than about a screen.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "audiofind"
README = Path(__file__).parent.parent / "README.md"
TOP = {"__init__", "__main__", "errors", "paths", "device"}  # what everything uses
PACKAGES = {"audio", "model", "library", "store", "search", "serve", "train", "eval", "bench", "cli"}
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|CREATE (TABLE|INDEX)|PRAGMA)\b|\.conn\b")
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}


def _imports(name: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) for every audiofind import in a module, at any depth (lazy ones too)."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "audiofind":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names if a.name.split(".")[0] == "audiofind"]
    return out


def _depends_on(name: str) -> set[str]:
    deps = set()
    for module, item in _imports(name):
        target = f"{module}.{item}" if f"{module}.{item}" in MODULES else module
        if target in MODULES and target != name:
            deps.add(target)
    return deps


def test_the_top_holds_only_what_everything_uses() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top == TOP and folders == PACKAGES


def test_only_the_store_speaks_sql() -> None:
    offenders = [
        f"{name}:{i}: {line.strip()}"
        for name, path in MODULES.items()
        if not name.startswith("audiofind.store")
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if SQL.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles() -> None:
    graph = {name: _depends_on(name) for name in MODULES}
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    # A package's __init__ that re-exports its own modules is not a cycle of code.
    real = [c for c in cycles if not all(m.startswith(min(c, key=len)) for m in c)]
    assert not real, real


def test_no_private_name_crosses_a_module() -> None:
    offenders = []
    for name, tree in TREES.items():
        aliases = {}
        for module, item in _imports(name):
            if item and item.startswith("_") and not item.startswith("__"):
                offenders.append(f"{name} imports {module}.{item}")
            if item and f"{module}.{item}" in MODULES:
                aliases[item] = f"{module}.{item}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for a in node.names:
                    if a.asname and f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname] = f"{node.module}.{a.name}"
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and aliases.get(node.value.id, name) != name
            ):
                offenders.append(f"{name} uses {aliases[node.value.id]}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_dependencies_point_one_way() -> None:
    rules = {
        "audiofind.store": ("audiofind.model", "audiofind.library", "audiofind.search", "audiofind.serve",
                            "audiofind.train", "audiofind.eval", "audiofind.bench", "audiofind.cli"),
        "audiofind.model": ("audiofind.store", "audiofind.library", "audiofind.search", "audiofind.serve",
                            "audiofind.train", "audiofind.bench", "audiofind.cli"),
        "audiofind.audio": ("audiofind.store", "audiofind.model", "audiofind.library", "audiofind.search",
                            "audiofind.serve", "audiofind.train", "audiofind.bench", "audiofind.cli"),
    }  # fmt: skip
    runtime = ("audiofind.audio", "audiofind.model", "audiofind.library", "audiofind.store", "audiofind.search",
               "audiofind.serve", "audiofind.train", "audiofind.eval")  # fmt: skip
    offenders = []
    for name in MODULES:
        deps = _depends_on(name)
        for package, forbidden in rules.items():
            if name.startswith(package):
                offenders += [f"{name} -> {d}" for d in deps if d.startswith(forbidden)]
        if name.startswith(runtime):
            offenders += [
                f"{name} -> {d} (runtime code never imports bench)" for d in deps if d.startswith("audiofind.bench")
            ]
        if name.startswith("audiofind.store"):
            torch = [n for n in ast.walk(TREES[name]) if isinstance(n, ast.Import | ast.ImportFrom)
                     and any(a.name.split(".")[0] == "torch" for a in n.names) or getattr(n, "module", None) == "torch"]  # fmt: skip
            offenders += [f"{name} imports torch"] if torch else []
    assert not offenders, "\n".join(offenders)


def test_functions_outside_the_command_line_fit_on_a_screen() -> None:
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, tree in TREES.items()
        if not name.startswith("audiofind.cli")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_the_readme_architecture_names_every_package(package: str) -> None:
    text = README.read_text()
    section = text[text.index("## Architecture") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    assert f"`{package}/`" in section
