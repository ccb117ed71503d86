"""fwemu's layers, as docs/ARCHITECTURE.md states them: which of its packages (and top-level
modules) may import which. Every import counts, at module level or inside a function, and under
TYPE_CHECKING too: a cycle for the type checker is a cycle for the reader.

The table is acyclic, so the packages are; a new edge is a decision to make here, on purpose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import fwemu

ROOT = Path(fwemu.__file__).parent

# Each unit (a package, or a module at the top) and the units it may import besides itself.
# `core` may see only `policy.model` of the policy package: the frozen model it enforces; `lab`
# only `core.packet` of the core.
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "clock": frozenset(),
    "signals": frozenset(),
    "presets": frozenset(),
    "policy": frozenset({"errors"}),
    "core": frozenset({"policy.model"}),
    # The flood generator (lab/flood.py, lab/sender.py) builds its SYNs with the core's packet
    # builder and reads the fwemu in the lab through its control socket.
    "lab": frozenset({"errors", "core.packet", "ops"}),
    "ops": frozenset({"core", "policy", "errors", "clock"}),
    "adapters": frozenset({"core", "policy", "ops", "errors", "clock", "signals"}),
    "testing": frozenset({"lab", "ops", "policy", "errors"}),
    "scenario": frozenset({"testing", "lab", "policy", "errors"}),
    "demo": frozenset({"scenario", "testing", "lab", "policy", "errors"}),
    "pytest_plugin": frozenset({"testing", "scenario"}),
    # The command line may use anything; nothing but `python -m fwemu` uses it.
    "cli": frozenset(
        {"adapters", "ops", "core", "policy", "lab", "scenario", "demo", "testing", "errors"}
        | {"clock", "signals", "__init__"}
    ),
    "__main__": frozenset({"cli"}),
    "__init__": frozenset(),
}


def unit_of(module: str) -> str:
    """fwemu.core.packet -> core; fwemu.errors -> errors; fwemu -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every absolute import of fwemu in the file."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        yield from ((node.lineno, n) for n in names if n == "fwemu" or n.startswith("fwemu."))


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_each_import_crosses_an_allowed_boundary(path: Path) -> None:
    own = unit_of(module_of(path))
    assert own in ALLOWED, f"{own} is not in the layering table: add it, with its imports"
    wrong = []
    for line, target in imports(path):
        to = unit_of(target)
        if to == own:
            continue
        allowed = ALLOWED[own]
        fine = to in allowed or any(target == f"fwemu.{a}" or target.startswith(f"fwemu.{a}.")
                                    for a in allowed if "." in a)  # fmt: skip
        if not fine:
            wrong.append(f"line {line}: {target} ({own} -> {to})")
    assert not wrong, f"{path.relative_to(ROOT)} imports across a layer: {'; '.join(wrong)}"


def test_the_table_has_no_cycle() -> None:
    def visit(unit: str, trail: tuple[str, ...]) -> None:
        assert unit not in trail, f"cycle: {' -> '.join((*trail, unit))}"
        for nxt in ALLOWED[unit]:
            visit(nxt.split(".")[0], (*trail, unit))

    for unit in ALLOWED:
        visit(unit, ())
