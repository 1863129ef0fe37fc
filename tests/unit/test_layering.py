"""The package's floors (docs/architecture.md): cli → platform → serving → workers → algorithms | scoring →
models → robots, imports only downward (algorithms and scoring are one floor and do not import each other);
a role package under workers/ (gateway, inference, data, learning) imports no other role package; no import
circles; `algorithms`, `scoring` and `models` know torch, not Ray; `robots` installs on a robot PC, so it
imports neither Ray nor torch. Read from the source (ast), so a lazy import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "fleetrl"
FLOORS = {
    "cli": 0,
    "platform": 1,
    "serving": 2,
    "workers": 3,
    "algorithms": 4,
    "scoring": 4,
    "models": 5,
    "robots": 6,
}
FORBIDDEN = {"algorithms": {"ray"}, "scoring": {"ray"}, "models": {"ray"}, "robots": {"ray", "torch"}}
ROLES = {"gateway", "inference", "data", "learning"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, relative imports resolved within fleetrl."""
    found = []
    package = ".".join(("fleetrl", *path.relative_to(PACKAGE).parent.parts))
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found.append((node.lineno, base))
            # ``from fleetrl.workers import gateway``: the names may be modules themselves
            found += [
                (node.lineno, f"{base}.{alias.name}") for alias in node.names if base.startswith("fleetrl")
            ]
    return found


def floor_of(path: Path) -> str | None:
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    return top if top in FLOORS else None


def role_of(module_parts: tuple[str, ...] | list[str]) -> str | None:
    """The role package of ``fleetrl.workers.<role>...`` (None for a shared module at workers/ level)."""
    parts = list(module_parts)
    return parts[2] if len(parts) > 3 and parts[:2] == ["fleetrl", "workers"] and parts[2] in ROLES else None


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if floor_of(p) is not None)


def test_the_floors_cover_the_package():
    assert len(modules()) > 50 and {floor_of(p) for p in modules()} == set(FLOORS)
    assert {role_of(module_name(p).split(".")) for p in modules()} >= ROLES


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_only_downward(path: Path):
    floor = floor_of(path)
    own_role = role_of(module_name(path).split("."))
    problems = []
    for line, module in imports(path):
        parts = module.split(".")
        ours = parts[0] == "fleetrl" and len(parts) > 1 and parts[1] in FLOORS
        if ours and FLOORS[parts[1]] < FLOORS[floor]:
            problems.append(f"line {line}: {floor} imports {module} (a floor above it)")
        if ours and parts[1] != floor and FLOORS[parts[1]] == FLOORS[floor]:
            problems.append(f"line {line}: {floor} imports {module} (a floor beside it)")
        other_role = role_of(parts)
        if own_role and other_role and other_role != own_role:
            problems.append(f"line {line}: workers/{own_role} imports {module} (another role package)")
        if parts[0] in FORBIDDEN.get(floor, ()):
            problems.append(f"line {line}: {floor} imports {module}")
    assert not problems, problems


def module_level_imports(path: Path) -> set[str]:
    """Modules of ours this file imports at its top level, type-checking imports included (a name a module
    needs only for its annotations still ties the two modules together); imports inside functions are left out."""
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in tree.body:
        for sub in (
            ast.walk(node)
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            else ()
        ):
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names}
            elif isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                found.add(sub.module)
                found |= {f"{sub.module}.{a.name}" for a in sub.names}
    return {m for m in found if m.startswith("fleetrl.")}


def test_no_import_circles():
    """A module that needs another to finish importing first, and is needed by it, is one module in two files
    (or two modules with a piece on the wrong side): the graph of module-level imports has no cycle."""
    names = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {
        name: {m for m in module_level_imports(p) if m in names and m != name} for name, p in names.items()
    }
    # a package's __init__ importing its own submodules is not a circle of design
    for name in graph:
        graph[name] = {
            m for m in graph[name] if not name.startswith(m + ".") or names[m].name != "__init__.py"
        }
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(
                    " -> ".join(stack[stack.index(nxt) :] + [node, nxt])
                    if nxt in stack
                    else f"{node} -> {nxt}"
                )
            elif nxt not in state:
                visit(nxt, [*stack, node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert not cycles, cycles
