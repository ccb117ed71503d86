"""Helpers for the adapters' real tests: rulesets, queues, and fwemu with a sabotaged engine.

The process wrapper and traffic helpers are fwemu.testing's; the root check is the e2e one.
Everything is created in namespaces whose names contain "fwemu" and the test run's pid, and is
removed even when a test fails.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import IO

from fwemu.testing import FWEMU_COMMAND, STARTUP_TIMEOUT, FwemuProcess


def in_netns(namespace: str, *argv: str) -> str:
    """The stdout of `argv` run inside `namespace`; fails the test on a non-zero exit."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def ruleset(namespace: str) -> tuple[str, str]:
    """`iptables -S` and `ip6tables -S` of `namespace`'s filter table."""
    return (in_netns(namespace, "iptables", "-S"), in_netns(namespace, "ip6tables", "-S"))


def bound_queues(namespace: str) -> str:
    return in_netns(namespace, "cat", "/proc/net/netfilter/nfnetlink_queue")


# Runs `fwemu` with one Engine method replaced by one that raises: the crash paths, without
# test hooks in fwemu itself. argv: METHOD fwemu-arguments...
_BROKEN_ENGINE = """
import sys
from fwemu.cli import main
from fwemu.core.engine import Engine

def broken(self, *args, **kwargs):
    raise RuntimeError("test-injected failure")

setattr(Engine, sys.argv[1], broken)
if sys.argv[1] == "handle_timer":
    Engine.next_deadline = lambda self: 0.0
sys.exit(main(sys.argv[2:]))
"""


def start_fwemu(
    args: Sequence[str], *, stdout: int | IO[str] | None = None, broken: str | None = None
) -> FwemuProcess:
    """`fwemu run ARGS` as a child process; `broken` names an Engine method made to raise."""
    command = FWEMU_COMMAND if broken is None else (sys.executable, "-c", _BROKEN_ENGINE, broken)
    return FwemuProcess.start(["run", *args], stdout=stdout, command=command)


def run_fwemu(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`fwemu run ARGS` expected to end by itself (a refusal)."""
    return subprocess.run(
        [*FWEMU_COMMAND, "run", *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
