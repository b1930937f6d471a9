"""The house has four layers and its arrows point down only: `tidings/` (the command) ->
`api/`, `worker/`, `bounces/` (the processes) -> `shared/` (the library). Read from the imports of every
module, lazy imports inside functions included, so that a shortcut cannot hide in a function."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("tidings", "api", "worker", "bounces", "shared")
# What each package may import of the others.
ALLOWED = {
    "tidings": {"tidings", "api", "worker", "bounces", "shared"},
    "api": {"api", "shared"},
    "worker": {"worker", "shared"},
    "bounces": {"bounces", "shared"},
    "shared": {"shared"},
}


def imports_of(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_imports_point_down_only() -> None:
    wrong: list[str] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imports_of(path):
                top = module.split(".")[0]
                if top in PACKAGES and top not in ALLOWED[package]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_the_layers_exist_and_the_command_is_imported_by_nothing() -> None:
    for package in PACKAGES:
        assert (ROOT / package / "__init__.py").is_file()
    importers = {
        str(path.relative_to(ROOT))
        for package in ("api", "worker", "bounces", "shared")
        for path in (ROOT / package).rglob("*.py")
        if any(m.split(".")[0] == "tidings" for m in imports_of(path))
    }
    assert importers == set()
