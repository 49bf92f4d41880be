"""The project's packages stack one way, none has an import cycle among its modules, and product files stay short
(issue 31).

Imports are read from the source (`ast`), those inside functions included: a cycle hidden behind a function-local
import is still a cycle, and a layer skipped inside a function still skips it.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The packages, lowest first: a module may import its own package and the ones before it, never one after it.
# bench/ and tests/ stand on top of all of them.
LAYERS = ("clharness", "space", "evaluation", "search", "cli")
ROOTS = {name: REPO / name for name in LAYERS} | {"clharness": REPO / "continual-learning" / "clharness"}
# `python -m PACKAGE` entry points: scripts that nothing imports, so they may reach up (search's is the CLI's).
ENTRY_POINTS = {"__main__"}
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """Every module of the packages by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for package, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


def imported(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The project modules that module `name` at `path` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package, one level up per dot beyond the first
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from search import storage` imports the module search.storage; `from search.x import f`, search.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            # `import search.storage as s` and `from search.storage.x import y` name the module they reach
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target:
                yield target


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    every = modules()
    return {name: set(imported(path, name, set(every))) - {name} for name, path in every.items()}


def package_of(module: str) -> str:
    return module.split(".")[0]


def test_the_walk_sees_imports_inside_functions() -> None:
    edges = graph()
    assert "clharness.runner" in edges["search.objective"]  # imported where a trial runs (torch)
    assert "space" in edges["evaluation.fidelity"]
    assert "evaluation.cache" in edges["evaluation.final_eval"]


def test_no_package_has_an_import_cycle() -> None:
    """Within each package the modules import one another one way (a topological order exists)."""
    edges = graph()
    for package in LAYERS:
        inner = {
            m: {t for t in targets if package_of(t) == package}
            for m, targets in edges.items()
            if package_of(m) == package and m.rpartition(".")[2] not in ENTRY_POINTS
        }
        try:
            graphlib.TopologicalSorter(inner).prepare()
        except graphlib.CycleError as exc:
            raise AssertionError(f"{package}: import cycle {' -> '.join(exc.args[1])}") from None


def test_the_packages_stack_one_way() -> None:
    """clharness <- space <- evaluation <- search <- cli: no module imports a package above its own."""
    rank = {p: i for i, p in enumerate(LAYERS)}
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph().items()
        if module.rpartition(".")[2] not in ENTRY_POINTS
        for target in targets
        if rank[package_of(target)] > rank[package_of(module)]
    )
    assert not upward, upward


def test_bench_scripts_use_the_library_only() -> None:
    """A bench script imports the library (not the CLI's modules nor the tests' helpers) and leaves sys.path
    alone; the logic its results rest on lives in the library, where the tests import it."""
    tests = {p.stem for p in (REPO / "tests").glob("*.py")}
    found = []
    for path in sorted((REPO / "bench").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [f"{path.name} imports {n}" for n in names if n.split(".")[0] in {"cli", *tests}]
            if isinstance(node, ast.Attribute) and node.attr == "path" and ast.unparse(node.value) == "sys":
                found.append(f"{path.name} touches sys.path")
    assert not found, found
    loaded = [
        p.name
        for p in sorted((REPO / "tests").glob("*.py"))
        if p.name != Path(__file__).name and '/ "bench"' in p.read_text(encoding="utf-8")
    ]
    assert not loaded, f"tests that load a bench script by its path: {loaded}"


def test_no_product_file_is_longer_than_600_lines() -> None:
    long = {
        path.relative_to(REPO).as_posix().removeprefix("continual-learning/"): n
        for path in modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long
