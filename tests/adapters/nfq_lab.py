"""Helpers for the adapters' real tests: namespaces, rulesets, traffic, fwemu as a process.

Everything is created in namespaces whose names contain "fwemu" and the test run's pid, and is
removed even when a test fails. Without root these tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

import pytest

from fwemu.lab import LabPlan, socket_in

PYTHON = sys.executable
# Long enough for a busy 2-CPU VM; the tests wait on events, not on these.
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def require_root() -> None:
    if os.geteuid() == 0:
        return
    reason = "needs root: real namespaces, iptables and NFQUEUE"
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this does not skip)")
    pytest.skip(reason)


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


def tcp_exchange(plan: LabPlan, payload: bytes = b"ping", *, ipv6: bool = False) -> bytes:
    """Connect client -> server through the fw namespace; what the server echoed back."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    address = plan.server.ipv6 if ipv6 else plan.server.ipv4
    with socket_in(plan.server.namespace, family) as server:
        server.settimeout(5)
        server.bind((address, 0))
        server.listen()
        port = server.getsockname()[1]

        def echo() -> None:
            # A failure shows on the client side; the thread just ends.
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                with conn:
                    conn.sendall(conn.recv(1024))

        thread = threading.Thread(target=echo)
        thread.start()
        try:
            with socket_in(plan.client.namespace, family) as client:
                client.settimeout(5)
                client.connect((address, port))
                client.sendall(payload)
                return client.recv(1024)
        finally:
            thread.join(5)


@dataclass
class Fwemu:
    """A `fwemu run` child process, its stderr read line by line as it comes."""

    process: subprocess.Popen[str]
    lines: list[str]
    _reader: threading.Thread
    stdout: str = ""

    def wait_for(self, text: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """The first stderr line containing `text`; fails if the process ends first."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            ended = not self._reader.is_alive()
            for line in list(self.lines):
                if text in line:
                    return line
            if ended:
                break
            time.sleep(0.05)
        pytest.fail(f"fwemu never logged {text!r}; stderr was:\n{self.stderr}")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.finish()

    def finish(self) -> int:
        """Wait for the exit; then `stdout` holds what it wrote there (if piped)."""
        code = self.process.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        self.close()
        return code

    def close(self) -> None:
        out, err = self.process.stdout, self.process.stderr
        if out is not None and not out.closed:
            self.stdout += out.read()
            out.close()
        if err is not None:
            err.close()

    def records(self) -> list[dict[str, Any]]:
        """The JSON-lines events it wrote on stdout (`--events -`)."""
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


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
) -> Fwemu:
    """`fwemu run ARGS` as a child process; `broken` names an Engine method made to raise."""
    prefix = ["-m", "fwemu"] if broken is None else ["-c", _BROKEN_ENGINE, broken]
    process = subprocess.Popen(
        [PYTHON, *prefix, "run", *args], stdout=stdout, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return Fwemu(process, lines, reader)


def run_fwemu(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """`fwemu run ARGS` expected to end by itself (a refusal)."""
    return subprocess.run(
        [PYTHON, "-m", "fwemu", "run", *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
