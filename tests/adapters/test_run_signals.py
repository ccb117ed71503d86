"""Signals sent to `fwemu run` while it is still starting (issue 15 item 9): caught before its
slow imports, and acted on once the loop turns, so `kill -USR1` right after start writes the
state file instead of killing the firewall."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from fwemu.lab import LabPlan
from fwemu.testing import STARTUP_TIMEOUT, FwemuProcess

from .nfq_lab import start_fwemu

pytestmark = pytest.mark.e2e

_SLOW_IMPORT = "netfilterqueue"  # a C extension of `run`'s adapters: in /proc/PID/maps once loaded


def caught(pid: int, signum: int) -> bool:
    """Whether the process has a handler for `signum` (its bit in /proc/PID/status SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_sigusr1_at_start_writes_the_state_file_once_running(
    lab_plan: LabPlan, fwemus: list[FwemuProcess], tmp_path: Path
) -> None:
    state = tmp_path / "flows.json"
    args = ["--netns", lab_plan.fw_client_side.namespace, "--preset", "linux"]
    fw = start_fwemu([*args, "--state-file", str(state)])
    fwemus.append(fw)
    pid = fw.process.pid
    end = time.monotonic() + STARTUP_TIMEOUT
    while not caught(pid, signal.SIGUSR1):  # readiness: the handler exists from here on
        assert fw.process.poll() is None, fw.stderr
        assert time.monotonic() < end, "SIGUSR1 never caught"
    # Caught before the adapters' imports, which take most of the start-up.
    assert _SLOW_IMPORT not in Path(f"/proc/{pid}/maps").read_text()
    fw.process.send_signal(signal.SIGUSR1)
    fw.wait_for("fwemu started")
    fw.wait_for(f"wrote 0 flows to {state}")
    assert json.loads(state.read_text())["flows"] == []
    assert fw.stop() == 0
