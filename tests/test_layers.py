"""The package's layers (docs/design.md): each imports only those below it; transformers and peft only in
``models/``, bitsandbytes only there too; no import cycle; no import of the package inside a function (the
usual way to hide a cycle). Read from the source, so a new file is checked without being listed."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlhf_lightning"
LAYERS = {"ops": 0, "models": 1, "data": 2, "tasks": 3, "evaluation": 3, "callbacks": 4, "modules": 5, "commands": 6,
          "cli": 7}  # fmt: skip
"""Layer of each top-level module or subpackage; ``__init__`` and ``__main__`` of the package may import all.
Callbacks sit beside the LightningModules, one step below: a module registers its callbacks, and a callback
reads a module's state without importing its class."""
ONLY_IN_MODELS = ("transformers", "peft", "bitsandbytes")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(imported name, at top level, line)`` for every import in the file: a module, or ``module.symbol``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]  # a module, or a name in one
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names = [node.args[0].value]  # a computed name is a user's module:function, not the package
        for name in names:
            found.append((name, id(node) in top, node.lineno))
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_every_file_belongs_to_a_layer():
    stray = [module_name(p) for p in SOURCES if layer_of(module_name(p)) is None and p.parent != PACKAGE]
    stray += [module_name(p) for p in SOURCES if p.parent == PACKAGE and p.stem not in ("__init__", "__main__", "cli")]
    assert not stray, f"add these to LAYERS and docs/design.md: {stray}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_go_down_the_layers(path):
    here = module_name(path)
    mine = layer_of(here)
    problems = []
    for name, top_level, line in imports(path):
        root = name.split(".")[0]
        if root in ONLY_IN_MODELS and mine != "models":
            problems.append(f"line {line}: {name} outside models/")
        if root != "rlhf_lightning":
            continue
        if not top_level:
            problems.append(f"line {line}: {name} imported inside a function")
        theirs = layer_of(name)
        if mine is None or theirs is None or theirs == mine:
            continue
        if LAYERS[theirs] >= LAYERS[mine]:
            problems.append(f"line {line}: {here} ({mine}) imports {name} ({theirs}), not a lower layer")
    assert not problems, "\n".join(problems)


def test_callbacks_never_import_a_lightning_module():
    for path in (PACKAGE / "callbacks").glob("*.py"):
        assert not [n for n, _, _ in imports(path) if layer_of(n) == "modules"], path


def test_no_import_cycle_between_files():
    graph: dict[str, set[str]] = {}
    known = {module_name(p) for p in SOURCES}
    for path in SOURCES:
        here = module_name(path)
        targets = set()
        for name, _, _ in imports(path):
            while name and name not in known:  # ``from pkg.mod import x`` names pkg.mod; a symbol's path its module
                name = name.rpartition(".")[0]
            if name and name != here:
                targets.add(name)
        graph[here] = targets
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_design_notes_name_every_file_and_only_files_that_exist():
    import re

    notes = (PACKAGE.parent / "docs" / "design.md").read_text()
    named = set()
    for line in notes.splitlines():
        cell = line.split("|")[1] if line.startswith("| `") else ""
        folder = ""
        for name in re.findall(r"`([^`]+\.py)`", cell):
            folder = name.rpartition("/")[0] if "/" in name else folder
            named.add(f"{folder}/{name.rpartition('/')[2]}" if folder else name)
    files = {str(p.relative_to(PACKAGE)) for p in SOURCES if p.stem not in ("__init__", "__main__")}
    assert not files - named, f"add to the table in docs/design.md: {sorted(files - named)}"
    assert not named - files, f"named in docs/design.md but not in the package: {sorted(named - files)}"
