"""scripts/setup.sh run again only checks: fwemu already installed from here with what
pyproject.toml asks for (scripts/installed.py), pip is not run and .venv/bin/fwemu stays as it
was. The first run (a fresh clone) is what CI and the README's two commands do."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALLED = REPO / "scripts" / "installed.py"


def installed(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(INSTALLED), str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_this_virtualenv_is_up_to_date() -> None:
    done = installed(REPO)
    assert (done.returncode, done.stderr) == (0, "")


def test_a_requirement_pyproject_toml_names_that_is_not_installed_is_reported(
    tmp_path: Path,
) -> None:
    text = (REPO / "pyproject.toml").read_text()
    extra = text.replace('"rich>=13",', '"rich>=13",\n    "fwemu-no-such-package>=1",', 1)
    assert extra != text
    (tmp_path / "pyproject.toml").write_text(extra.replace('version = "', 'version = "9', 1))
    done = installed(tmp_path)
    assert done.returncode == 1
    now = version("fwemu")
    assert done.stderr.splitlines() == [
        f"setup: fwemu is not installed editable from {tmp_path.resolve()}",
        f"setup: fwemu {now} is installed, pyproject.toml says 9{now}",
        "setup: fwemu-no-such-package>=1 is missing",
    ]


def test_a_second_run_installs_nothing_and_leaves_the_console_script_alone() -> None:
    script = Path(sys.executable).with_name("fwemu")
    before = os.stat(script)
    done = subprocess.run(
        [str(REPO / "scripts" / "setup.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[-1] == "setup: ready (.venv/bin/fwemu): nothing to install"
    after = os.stat(script)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
