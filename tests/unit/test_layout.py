"""The layout keeps its promises: the pure core imports no I/O, the store no rules, nothing loops.

Every import statement of every module under `monitor/` is read with `ast` (imports under
`if TYPE_CHECKING:` are for annotations only and do not count), resolved to the module it names,
and checked against the rules below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "monitor"
MAX_LINES = 450  # "about 400": a module past this is two modules

# (importer prefix, forbidden prefix, why)
FORBIDDEN = [
    ("monitor.aggregates", "monitor.store", "the pure core does no I/O"),
    ("monitor.aggregates", "monitor.rules", "aggregation takes values, not rules (see IngestRules)"),
    ("monitor.aggregates", "redis", "the pure core does no I/O"),
    ("monitor.rules", "monitor.store", "the pure core does no I/O"),
    ("monitor.rules", "redis", "the pure core does no I/O"),
    ("monitor.store", "monitor.rules", "the store takes values from the rules, it does not read them"),
    ("monitor.clients", "monitor.app", "clients are importable without the daemon"),
    ("monitor.clients", "monitor.store", "clients are importable without the daemon"),
    ("monitor.clients", "monitor.evaluator", "clients are importable without the daemon"),
    ("monitor.clients", "faust", "clients are importable without the daemon"),
    ("monitor.incidents.decide", "monitor.store", "the tick's decisions are pure"),
    ("monitor.incidents.decide", "redis", "the tick's decisions are pure"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """The modules `path` imports at run time (function-local imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from monitor.x import y` may import the module monitor.x.y
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {
    name: {target for target in _imports(path) if target in MODULES and target != name}
    for name, path in MODULES.items()
}
ALL_IMPORTS = {name: _imports(path) for name, path in MODULES.items()}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize(
    ("importer", "forbidden", "why"), FORBIDDEN, ids=[f"{a}-/->{b}" for a, b, _ in FORBIDDEN]
)
def test_no_forbidden_edge(importer: str, forbidden: str, why: str) -> None:
    edges = sorted(
        f"{name} -> {target}"
        for name, targets in ALL_IMPORTS.items()
        if _under(name, importer)
        for target in targets
        if _under(target, forbidden)
    )
    assert edges == [], f"{why}: {edges}"


def test_no_import_loops() -> None:
    # Package __init__ modules that only re-export (or register commands) are walked like others; a
    # package importing its own submodules is not a loop unless a submodule imports it back.
    state: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if _under(node, target):  # a submodule importing its package's __init__
                continue
            if state.get(target) == 1:
                loops.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)
    assert loops == []


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_walk_sees_imports() -> None:
    """The check can fail: it finds the imports it is meant to police."""
    assert "monitor.store.keys" in GRAPH["monitor.store.redis"]
    assert "monitor.aggregates.window" in GRAPH["monitor.rules.evaluate"]
