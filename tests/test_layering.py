"""The package's layering (docs/architecture.md): no import cycle, imports point down, modules stay small.

Every import counts, also those inside functions: a lazy import hides a cycle, it does
not remove it.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medcam"

# the layers, lowest first; a module may import its own layer and the layers below
LAYERS = [
    ["errors", "version"],
    ["core"],
    ["methods"],
    ["models"],
    ["api"],
    ["metrics"],
    ["data"],
    ["volumes"],
    ["review"],
    ["pipeline"],
    ["train", "evaluate"],
    ["cli", "__main__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
LONG = 450  # lines; a longer module says why at its top


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The medcam modules ``name`` imports anywhere in its body."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("medcam"):
                out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "medcam"


def test_no_module_imports_itself_back() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert cycles(graph) == []


def test_imports_point_down_the_layers() -> None:
    known = modules()
    upward = []
    for name, path in known.items():
        here = layer_of(name)
        if here == "medcam":
            continue  # the package root re-exports the public API
        for target in imports(name, path, known):
            there = layer_of(target)
            if (there == "medcam" and here != "cli") or (there != "medcam" and RANK[there] > RANK[here]):
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_every_layer_is_known() -> None:
    names = {layer_of(name) for name in modules()} - {"medcam"}
    assert names <= set(RANK), sorted(names - set(RANK))


def test_long_modules_say_why() -> None:
    silent = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > LONG and "Why one module of this size" not in text.split('"""')[1]:
            silent.append(name)
    assert silent == []


def test_the_checker_finds_a_cycle() -> None:
    graph: dict[str, set[str]] = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles(graph) == [["a", "b", "c"]]
