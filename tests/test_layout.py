"""The package layering holds: store/ knows no model or CLI code, trainer/ no analysis or CLI code,
the library no CLI code, and no package has an import cycle among its modules (module-level imports)."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from tests._paths import ROOT

PACKAGES = ("store", "trainer", "scalars", "cli")
# package -> packages of this project it must never import (at any level: function-local imports too)
FORBIDDEN = {"store": {"trainer", "scalars", "cli"}, "trainer": {"scalars", "cli"}, "scalars": {"cli"}}


def _modules(pkg: str) -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / pkg).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(mod: str, path: Path, *, top_level_only: bool) -> set[str]:
    """Absolute names of everything `mod` imports (module level only, or anywhere)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module:  # `from . import x` depends on x, not on the package it sits in
                names.add(target)
            names.update(f"{target}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_lower_layers_never_import_higher_ones(pkg):
    bad = []
    for mod, path in _modules(pkg).items():
        for name in _imports(mod, path, top_level_only=False):
            if name.split(".")[0] in FORBIDDEN[pkg]:
                bad.append(f"{mod} imports {name}")
    assert not bad, bad


@pytest.mark.parametrize("pkg", PACKAGES)
def test_no_import_cycle_among_a_packages_modules(pkg):
    mods = _modules(pkg)
    graph = defaultdict(set)
    for mod, path in mods.items():
        graph[mod] = {n for n in _imports(mod, path, top_level_only=True) if n in mods and n != mod}
    # iterative depth-first search for a back edge
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    for start in mods:
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        state[start], path = 1, [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                pytest.fail(f"import cycle in {pkg}: {' -> '.join(cycle)}")
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
