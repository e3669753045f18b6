"""The package's shape (ARCHITECTURE.md): layers depend downward only, no import cycle, small modules."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "foresight"

# bottom to top; a module may import its own layer's modules and the layers below
LAYERS = [
    {"foresight.errors"},
    {"foresight.recipes", "foresight.pixels"},
    {"foresight", "foresight.envs", "foresight.datasets", "foresight.viz"},  # the package registers the envs
    {"foresight.models", "foresight.evaluation", "foresight.checkpoints"},
    {"foresight.learners"},
    {"foresight.training", "foresight.planning"},
    {"foresight.collect", "foresight.ui"},
    {"foresight.cli", "foresight.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Every foresight module ``path`` imports, at the top level and inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "foresight"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "foresight":
            for a in node.names:  # `from foresight.planning import mpc` imports the module foresight.planning.mpc
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return found


def layer(name: str) -> int:
    for i, group in enumerate(LAYERS):
        if any(name == g or name.startswith(g + ".") for g in group if g != "foresight") or name in group:
            return i
    raise AssertionError(f"{name}: not placed in a layer of tests/test_layout.py")


def test_no_import_cycle():
    known = modules()
    graph = {name: imports(path, set(known)) & set(known) for name, path in known.items()}
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if nxt == node:
                continue
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_layers_depend_downward():
    known = modules()
    wrong = []
    for name, path in known.items():
        for target in imports(path, set(known)):
            if target in known and layer(target) > layer(name):
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_argparse_below_the_cli():
    users = [name for name, path in modules().items() if "argparse" in path.read_text() and name != "foresight.cli"]
    assert not users, users


def test_modules_stay_small():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > 500}
    assert not long, long
