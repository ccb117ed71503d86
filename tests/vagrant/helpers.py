"""Helpers for the VM lab's checks: the tools CI installs, and a scratch root to run the
provisioning scripts in for real without a VM and without changing this machine."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT = REPO / "vagrant"
SHELL_SCRIPTS = (*sorted(VAGRANT.glob("*.sh")), Path(__file__).with_name("scratch_root.sh"))

# Stand-ins for the commands that would act on the running system; each records its arguments.
_FAKED = ("systemctl", "sysctl", "apt-get")
_FAKE = '#!/bin/sh\necho "${0##*/} $*" >>/fwemu-test/calls\n'
# dpkg as on a machine without any package, so that the scripts ask apt-get for all they need.
_NO_PACKAGES = "#!/bin/sh\nexit 1\n"
_TIMEOUT = 120
# Changed files larger than this are reported by size (the server's sparse 64M file).
_MAX_TEXT = 65536
# scripts/setup.sh as the VM would run it, minus apt and pip: records the call and links the
# virtualenv these tests run in, so that the provisioned `fwemu` is the real one.
_FAKE_SETUP = '#!/bin/sh\necho "setup.sh $*" >>/fwemu-test/calls\nln -sfn {venv} /vagrant/.venv\n'


def tool(name: str) -> str:
    """The path of a tool the checks need; missing is a failure (scripts/setup.sh installs it)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run ./scripts/setup.sh (as root)")
    return path


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion (a hung one fails the test after _TIMEOUT seconds)."""
    return subprocess.run(
        args, capture_output=True, text=True, env=env, check=False, timeout=_TIMEOUT
    )


@dataclass(frozen=True, slots=True)
class Step:
    """What one command did in the scratch root."""

    rc: int
    stdout: str
    stderr: str
    calls: tuple[str, ...]  # each stand-in's invocation, as "name args"
    files: dict[str, str]  # every file created or changed so far: path -> content (see below)


def in_scratch_root(tmp: Path, *commands: str) -> list[Step]:
    """Run `commands` one after the other (as root, each with a clean environment) in a scratch
    copy of this machine where the repository is synced at /vagrant, as in the lab's VMs."""
    synced, fakes, out = tmp / "synced", tmp / "fakes", tmp / "out"
    shutil.copytree(VAGRANT, synced / "vagrant", ignore=shutil.ignore_patterns(".vagrant"))
    shutil.copytree(REPO / "policies", synced / "policies")
    _write_executable(synced / "scripts" / "setup.sh", _FAKE_SETUP.format(venv=sys.prefix))
    for name in _FAKED:
        _write_executable(fakes / "bin" / name, _FAKE)
    _write_executable(fakes / "bin" / "dpkg", _NO_PACKAGES)
    out.mkdir()
    harness = Path(__file__).with_name("scratch_root.sh")
    done = run(tool("bash"), str(harness), str(out), str(fakes), str(synced), str(REPO), *commands)
    assert done.returncode == 0, f"scratch root set-up failed: {done.stderr}"
    return [_read_step(out / str(n)) for n in range(1, len(commands) + 1)]


def _read_step(result: Path) -> Step:
    return Step(
        rc=int((result / "rc").read_text()),
        stdout=(result / "stdout").read_text(),
        stderr=(result / "stderr").read_text(),
        calls=tuple((result / "calls").read_text().splitlines()),
        files=_changed_files(result / "upper"),
    )


def _changed_files(upper: Path) -> dict[str, str]:
    """The regular files and symlinks of an overlay's upper layer, minus the harness's own mount
    points (deleted files, whiteouts, are character devices: skipped). A symlink reads as
    "-> TARGET", a file larger than _MAX_TEXT as "<SIZE bytes>", any other file as its text."""
    ignored = ("/vagrant/", "/fwemu-test/", f"{REPO}/")
    files: dict[str, str] = {}
    for dirpath, _, names in os.walk(upper):
        for name in names:
            path = Path(dirpath, name)
            key = "/" + str(path.relative_to(upper))
            mode = path.lstat().st_mode
            if key.startswith(ignored) or not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                continue
            if stat.S_ISLNK(mode):
                files[key] = f"-> {os.readlink(path)}"
            elif (size := path.stat().st_size) > _MAX_TEXT:
                files[key] = f"<{size} bytes>"
            else:
                files[key] = path.read_text()
    return files


def _write_executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
