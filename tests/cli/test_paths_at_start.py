"""Files fwemu writes later are checked when it starts: one line, exit status 2, nothing started
(the console script, as users run it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FWEMU = str(Path(sys.executable).with_name("fwemu"))
SCENARIO = Path(__file__).parents[1] / "scenarios" / "aws-nlb-idle-pool.toml"


def fwemu(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FWEMU, *argv], capture_output=True, text=True, check=False, timeout=60)


@pytest.mark.parametrize(
    ("argv", "what"),
    [
        (["run", "--preset", "linux", "--no-rules", "--state-file"], "the state file"),
        (["test", str(SCENARIO), "--junit"], "the JUnit report"),
    ],
    ids=["run --state-file", "test --junit"],
)
def test_an_unwritable_output_file_is_refused_at_start(
    tmp_path: Path, argv: list[str], what: str
) -> None:
    path = tmp_path / "missing" / "out"
    done = fwemu(*argv, str(path))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"fwemu: cannot write {what} {path}: no directory {path.parent}\n"
    assert not path.parent.exists()
