"""The package's floors (DESIGN.md §2): cli → platform → serving → workers → algorithms → models → robots,
imports only downward; `algorithms` and `models` know torch, not Ray; `robots` installs on a robot PC, so it
imports neither Ray nor torch. Read from the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fleetrl"
FLOORS = ["cli", "platform", "serving", "workers", "algorithms", "models", "robots"]
FORBIDDEN = {"algorithms": {"ray"}, "models": {"ray"}, "robots": {"ray", "torch"}}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative imports resolved within fleetrl."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
    return found


def floor_of(path: Path) -> str | None:
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return top if top in FLOORS else None


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if floor_of(p) is not None)


def test_the_floors_cover_the_package():
    assert len(modules()) > 50 and {floor_of(p) for p in modules()} == set(FLOORS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_downward(path: Path):
    floor = floor_of(path)
    problems = []
    for line, module in imports(path):
        parts = module.split(".")
        ours = parts[0] == "fleetrl" and len(parts) > 1 and parts[1] in FLOORS
        if ours and FLOORS.index(parts[1]) < FLOORS.index(floor):
            problems.append(f"line {line}: {floor} imports {module} (a floor above it)")
        if parts[0] in FORBIDDEN.get(floor, ()):
            problems.append(f"line {line}: {floor} imports {module}")
    assert not problems, problems
