"""`seer` has no import cycles: module A importing B (at module level, or inside a function)
while B imports A back. Imports under `if TYPE_CHECKING:` are type hints only and do not count.
Read from the source with `ast`, so a lazy import that hides a cycle is found too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(p): p for p in (ROOT / "seer").rglob("*.py")}
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        # importing a package module runs its package __init__ too, but that is not a dependency
        # of the package on the module, so edges only go to the named modules
        graph[name] = _imports(path, modules) - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_seer_has_no_import_cycles() -> None:
    graph = _graph()
    assert "seer.eval.setup" in graph and "seer.checkpoints.load" in graph
    # packages re-export their modules: `seer.checkpoints` → `seer.checkpoints.vissl` is an edge,
    # the reverse (a module importing its own package's __init__) would close a cycle
    cycle = _cycle(graph)
    assert cycle is None, " → ".join(cycle)
