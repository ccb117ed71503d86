"""Fixtures for the adapters' real tests (see nfq_lab.py): root, a namespace, a lab, fwemus."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from fwemu.lab import LabPlan, lab
from fwemu.testing import FwemuProcess
from tests.e2e.conftest import require_root


@pytest.fixture
def root() -> None:
    require_root()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace."""
    require_root()
    name = f"fwemu-t{os.getpid()}-ns"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def lab_plan() -> Iterator[LabPlan]:
    require_root()
    with lab(f"fwemu-t{os.getpid()}", 213) as plan:
        yield plan


@pytest.fixture
def fwemus() -> Iterator[list[FwemuProcess]]:
    """Started fwemu processes to kill if a test leaves them running."""
    started: list[FwemuProcess] = []
    yield started
    for fw in started:
        fw.stop(signal.SIGKILL)
