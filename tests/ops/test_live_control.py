"""A real fwemu inline in a lab, its control socket under what a stress run threw at it (issue 19):
requests that used to stop it, then a flood of idle connections. It refuses the first, answers
`fwemu flows` during the second, and goes on forwarding."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fwemu.testing import inline_firewall, tcp_exchange
from tests.e2e.conftest import require_root

pytestmark = pytest.mark.e2e

STOPPED_IT = (b"[" * 60_000 + b"\n", b'{"cmd":"events","history":' + b"9" * 5000 + b"}\n")


def refusal(control: Path, data: bytes) -> str:
    """The error the daemon replies to `data`."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(control))
        sock.sendall(data)
        [line] = sock.makefile("rb").readlines()
    reply = json.loads(line)
    assert reply["ok"] is False
    return str(reply["error"])


def test_a_real_fwemu_refuses_what_stopped_it_and_answers_during_a_flood(tmp_path: Path) -> None:
    require_root()
    control = tmp_path / "fw.sock"
    with inline_firewall("linux", extra_args=["--control", str(control)]) as fw:
        assert [refusal(control, data).split(":")[0] for data in STOPPED_IT] == [
            "request too long",
            "request has a number of 5000 digits",
        ]
        idle = [socket.socket(socket.AF_UNIX) for _ in range(300)]
        try:
            for sock in idle:
                sock.connect(str(control))  # blocking: waits while the listen queue is full
            flows = subprocess.run(
                [sys.executable, "-m", "fwemu", "flows", "--control", str(control)],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            for sock in idle:
                sock.close()
        assert flows.returncode == 0, flows.stderr
        assert tcp_exchange(fw.plan) == b"ping"
        fw.fwemu.check_running()
