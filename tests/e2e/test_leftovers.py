"""Nothing this test session created outlives it: no lab namespace, no `fwemu run` process, no
NFQUEUE or FWEMU rule in the root namespace.

The test checks what the tests before it left; a session-scoped fixture checks again once the
whole session is over (its failure shows as an error in the teardown of the session's last test).
Only this process's namespaces count (their names carry its pid): other people's labs may exist.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from .conftest import require_root

pytestmark = pytest.mark.e2e


def leftovers() -> list[str]:
    """What this session left behind, one readable item each."""
    pid = os.getpid()
    own = re.compile(rf"(?<![0-9]){pid}(?![0-9])")
    found = [
        f"network namespace {name}"
        for name in netns.listnetns()
        if "fwemu-" in name and own.search(name)
    ]
    found += [
        f"process {child}: {command}"
        for child, command in _descendants(pid).items()
        if "fwemu" in command and " run" in command
    ]
    for tool in ("iptables-save", "ip6tables-save"):
        rules = subprocess.run([tool], capture_output=True, text=True, check=True).stdout
        found += [
            f"root namespace {tool}: {line}"
            for line in rules.splitlines()
            if "NFQUEUE" in line or "FWEMU" in line
        ]
    return found


def _descendants(pid: int) -> dict[int, str]:
    """Live descendants of `pid` and their command lines."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited meanwhile
            continue
        # /proc/PID/stat: "pid (comm) state ppid ...", where comm may hold spaces (proc(5)).
        state, ppid = stat.rpartition(")")[2].split()[:2]
        if state != "Z":
            parents[int(entry.name)] = int(ppid)
            commands[int(entry.name)] = command.strip()
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands[child]
                frontier.append(child)
    return found


@pytest.fixture(scope="session")
def checked_again_at_session_end() -> Iterator[None]:
    require_root()
    yield
    left = leftovers()
    assert not left, "the test session left behind: " + "; ".join(left)


def test_the_session_so_far_left_nothing_behind(checked_again_at_session_end: None) -> None:
    assert leftovers() == []
