"""The core is sans-IO: it must not import anything that reaches sockets, clocks, the kernel or
threads. Everything of that kind belongs in fwemu/adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fwemu.core

FORBIDDEN = {
    "asyncio",
    "datetime",
    "netfilterqueue",
    "os",
    "pyroute2",
    "select",
    "selectors",
    "signal",
    "socket",
    "subprocess",
    "threading",
    "time",
}
CORE = sorted(Path(fwemu.core.__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_module_imports_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN, f"{path.name} imports {sorted(imported & FORBIDDEN)}"
