"""Suite-wide set-up: a run that was killed (SIGKILL, a CI time-out) left its labs and whatever
ran in them; this run removes them before it starts, so they cannot collide with its own."""

from __future__ import annotations

import os

import pytest

from fwemu.lab import reap_orphans


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        for name in reap_orphans():
            print(f"removed lab {name}: the test run that made it is gone")
