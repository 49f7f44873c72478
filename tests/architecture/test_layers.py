"""The package's layers, checked: every import goes down a layer, and no import closes a cycle.

The picture (docs/architecture.md draws it) from the bottom up; a module may import only from its
own layer or the layers below it. Imports under ``if TYPE_CHECKING:`` count for the layer rule
(a type from above is still a dependency on above) but not for cycles (they never run).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ckptkit"

LAYERS: list[tuple[str, ...]] = [
    ("core",),
    ("storage",),
    ("views",),
    ("formats",),
    ("families",),
    ("validation",),
    ("runs",),
    ("inspection", "validating", "diffing", "repair", "conversion", "salvage", "plotting", "demo"),
    ("training",),
    ("integrations",),
    ("cli", "__main__"),
]
LAYER_OF = {name: index for index, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "ckptkit":
        return None
    if len(parts) == 1:
        return len(LAYERS)  # the package's own __init__: the public API, above everything
    return LAYER_OF.get(parts[1])


def is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").exists() or (PACKAGE / relative / "__init__.py").exists()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, runs at import time or call time) for every ckptkit import."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, int, bool]] = []
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        runs = id(node) not in typing_only
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "ckptkit" or node.module.startswith("ckptkit."):
                for alias in node.names:  # `from pkg import mod` depends on pkg.mod, not on pkg's __init__
                    submodule = f"{node.module}.{alias.name}"
                    found.append((submodule if is_module(submodule) else node.module, node.lineno, runs))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno, runs) for a in node.names if a.name.startswith("ckptkit.")]
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_top_level_module_has_a_layer() -> None:
    unplaced = sorted({m.split(".")[1] for m in MODULES if m != "ckptkit" and layer(m) is None})
    assert unplaced == [], f"add these to LAYERS (and docs/architecture.md): {unplaced}"


def test_no_import_goes_up_a_layer() -> None:
    upward = []
    for module, path in MODULES.items():
        own = layer(module)
        for target, line, _ in imports(path):
            theirs = layer(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert upward == []


def runtime_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for target, _, runs in imports(path):
            while target not in MODULES and "." in target:
                target = target.rsplit(".", 1)[0]  # `from pkg.mod import name` where name is a module-less attribute
            if runs and target in MODULES and target != module:
                graph[module].add(target)
    return graph


def test_no_import_closes_a_cycle() -> None:
    graph = runtime_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert [" -> ".join(cycle) for cycle in cycles] == []


@pytest.mark.parametrize("target, expected",
                         [("ckptkit.storage.crc", 1), ("ckptkit.formats.dcp", 3), ("ckptkit.cli.render", 10)])
def test_the_layer_rule_itself_places_modules(target: str, expected: int) -> None:
    assert layer(target) == expected


TRAINERS = PACKAGE.parent / "trainers"


def test_no_bundled_trainer_imports_another_and_the_library_imports_none() -> None:
    """Each trainer is one module a reader holds in their head; the library finds trainers
    through its registry (entry points), never by importing them."""
    offenders = []
    for path in sorted(TRAINERS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"trainers/{path.name} imports {n}" for n in names if n.split(".")[0] == "trainers"]
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{module} imports {n}" for n in names if n.split(".")[0] in ("trainers", "ckptkit_trainers")]
    assert offenders == []
