"""Running a bench script as a user does, for the smoke tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """`python bench/<script> ARGS...`, run to completion; the test fails, showing its stderr,
    unless it exits 0."""
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done
