"""The tree is the architecture: each room imports only the rooms below it (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Rooms in order: a module may import its own room and those listed before it, never one after.
LAYERS = {
    "tasks": [("tasks.clip", "tasks.progress"), ("tasks.decode",), ("tasks.datasets", "tasks.sampling"),
              ("tasks.loader", "tasks")],
    "probe": [("probe.files", "probe.distributed", "probe.record"), ("probe.store",), ("probe.training",),
              ("probe.report",), ("probe.run", "probe")],
}


def room(module: str, package: str) -> int:
    """The layer of `module` (the longest room name it starts with)."""
    best = None
    for level, rooms in enumerate(LAYERS[package]):
        for name in rooms:
            if (module == name or module.startswith(name + ".")) and (best is None or len(name) > best[1]):
                best = (level, len(name))
    assert best is not None, f"{module} belongs to no room of {package}"
    return best[0]


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return found


def modules(package: str):
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        yield name, path


@pytest.mark.parametrize("package", ["tasks", "probe"])
def test_rooms_import_only_downward(package):
    upward = []
    for name, path in modules(package):
        if name.endswith("__main__") or name == package:
            continue
        mine = room(name, package)
        for target in imports(path):
            if not target.startswith(package + "."):
                continue
            try:
                theirs = room(target, package)
            except AssertionError:  # `from probe.report import figures` names a module of that room
                theirs = room(target.rsplit(".", 1)[0], package)
            if theirs > mine:
                upward.append(f"{name} (room {mine}) imports {target} (room {theirs})")
    assert not upward, "\n".join(upward)


def test_backbones_and_tasks_never_import_the_probe():
    for package in ("backbones", "tasks"):
        for name, path in modules(package):
            bad = [t for t in imports(path) if t.split(".")[0] == "probe"
                   or (package == "tasks" and t.split(".")[0] == "backbones")
                   or (package == "backbones" and t.split(".")[0] == "tasks")]
            assert not bad, f"{name} imports {bad}"
