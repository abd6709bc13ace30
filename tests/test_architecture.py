"""The layout holds: no import cycles, each layer imports only those below it, and no probing of learners.

Layers, from the bottom: errors/options; tasks, datasets, text, nets; engine; rl (beside datasets and tasks, above
the engine); algorithms; config, checkpoint, evaluate, train, pretrain, distributed; cli (docs/architecture.md). An
import inside a function counts like one at the top.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fastadapt

SOURCE = Path(fastadapt.__file__).parent

#: What each part of the package must not import (its layer is below those).
FORBIDDEN = {
    "tasks": ("engine", "algorithms", "config", "train", "evaluate", "checkpoint", "cli"),
    "datasets": ("engine", "algorithms", "config", "train", "evaluate", "checkpoint", "cli"),
    "text": ("engine", "algorithms", "config", "train", "evaluate", "checkpoint", "cli", "continual"),
    "nets": ("engine", "algorithms", "config", "train", "evaluate", "checkpoint", "cli", "datasets", "text"),
    "engine": ("algorithms", "config", "train", "evaluate", "checkpoint", "cli", "datasets", "text"),
    "rl": ("algorithms", "config", "train", "evaluate", "checkpoint", "cli", "datasets", "text"),
    "algorithms": ("config", "train", "evaluate", "checkpoint", "cli", "continual"),
    "continual": ("cli",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports anywhere in its text (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in SOURCE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def test_no_import_cycles():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_each_layer_imports_only_those_below_it():
    for module, targets in import_graph().items():
        part = module.split(".")[1] if "." in module else ""
        for target in targets:
            target_part = target.split(".")[1] if "." in target else ""
            assert target_part not in FORBIDDEN.get(part, ()), f"{module} imports {target}"


def test_learners_are_not_probed_for_attributes_outside_their_base_class():
    probe = re.compile(r"\b(hasattr|getattr)\(\s*(learner|replica|probe|self\.learner)\b")
    offenders = [
        f"{path.relative_to(SOURCE)}:{number}"
        for path in SOURCE.rglob("*.py")
        if path != SOURCE / "algorithms" / "base.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if probe.search(line)
    ]
    assert not offenders, offenders
