"""The Debian root the nspawn lab boots (tests/vmlab/lab.py): mmdebstrap of the Vagrant box's
Debian from Debian's packages, cached under /var/cache/fwemu/nspawn/ and rebuilt when missing or
when its recipe changes (what it installs, or this file).

What the lab's provisioning installs is baked in, so that a run downloads nothing: the packages
the provisioning scripts and `scripts/setup.sh --runtime` ask apt for, and a wheelhouse of what
`setup.sh --runtime` asks pip for (wheels, built in the root), which the root's pip.conf makes
pip's only index. The
containers have no route out: one would need NAT in this machine's own firewall, which the tests
never touch. Something missing from the root fails the provisioning, with apt's or pip's message.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path("/var/cache/fwemu/nspawn")
SUITE = "bookworm"  # the Vagrantfile's default box, debian/bookworm64
MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# Debian's "important" packages, as on a Debian box: procps (fwemu.service reloads with
# /bin/kill), iproute2 (lab-net.sh), ifupdown...; and a systemd to boot.
VARIANT = "important"
BOOT = ("systemd-sysv", "dbus")
WHEELHOUSE = "/var/cache/fwemu/wheels"
HOST_CAS = "/etc/ssl/certs/ca-certificates.crt"
PIP_CONF = f"[global]\nno-index = true\nfind-links = {WHEELHOUSE}\n"
# A first build takes about a minute and a half here.
BUILD_TIMEOUT = 420
# How long to wait for another test run that builds the root or boots a different one.
LOCK_TIMEOUT = 480


class RootError(Exception):
    """The root could not be built or locked; the message says what and where."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """What the root holds: Debian packages and, in its wheelhouse, Python requirements."""

    packages: tuple[str, ...]
    requirements: tuple[str, ...]

    def digest(self) -> str:
        text = json.dumps(
            {
                "suite": SUITE,
                "mirrors": MIRRORS,
                "variant": VARIANT,
                "packages": self.packages,
                "requirements": self.requirements,
                "pip.conf": PIP_CONF,
                "builder": Path(__file__).read_text(encoding="utf-8"),
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Root:
    """A built root: its directory, its size, and how long its build took (None: cached)."""

    path: Path
    size: int
    built_in: float | None


def recipe() -> Recipe:
    """The packages the provisioning asks for (the apt_install lines of vagrant/provision-*.sh,
    the runtime list of scripts/setup.sh) and the Python requirements of `setup.sh --runtime`."""
    setup = REPO / "scripts" / "setup.sh"
    runtime = re.search(r"^pkgs=\(([^)]*)\)$", setup.read_text(encoding="utf-8"), re.M)
    if runtime is None:
        raise RootError(f"{setup}: no 'pkgs=(...)' line, which holds the runtime packages")
    apt = [*BOOT, *runtime[1].split()]
    for script in sorted((REPO / "vagrant").glob("provision-*.sh")):
        for line in re.findall(r"^apt_install (.+)$", script.read_text(encoding="utf-8"), re.M):
            apt += line.split()
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    # pip too: setup.sh upgrades it before installing fwemu.
    python = [*project["build-system"]["requires"], *project["project"]["dependencies"], "pip"]
    return Recipe(tuple(sorted(set(apt))), tuple(python))


@contextmanager
def cached_root() -> Iterator[Root]:
    """The root for the current recipe, built first if missing; shared-locked while in use, so
    that no other run replaces it meanwhile (runs with the same recipe share it)."""
    wanted = recipe()
    digest = wanted.digest()
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / "lock").open("w") as lock:
        _flock(lock.fileno(), fcntl.LOCK_SH)
        built_in = None
        if not (CACHE / digest / "build.json").exists():
            _flock(lock.fileno(), fcntl.LOCK_EX)
            if not (CACHE / digest / "build.json").exists():
                started = time.monotonic()
                _build(wanted, CACHE / digest)
                built_in = time.monotonic() - started
            for stale in CACHE.iterdir():
                if stale.is_dir() and stale.name != digest:
                    shutil.rmtree(stale)
            _flock(lock.fileno(), fcntl.LOCK_SH)
        build = json.loads((CACHE / digest / "build.json").read_text())
        yield Root(CACHE / digest / "root", build["bytes"], built_in)


def _flock(fd: int, how: int) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RootError(
                    f"{CACHE / 'lock'}: held by another test run for {LOCK_TIMEOUT} s"
                ) from None
            time.sleep(0.5)


def _build(wanted: Recipe, dest: Path) -> None:
    """mmdebstrap into a scratch directory beside `dest`, then rename: a build cut short leaves
    no root that looks finished."""
    scratch = dest.with_name(dest.name + ".building")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    root = scratch / "root"
    command = [
        "mmdebstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(wanted.packages)}",
        f"--customize-hook={_wheelhouse(wanted.requirements)}",
        # The container's hostname is nspawn's --hostname (Vagrant's config.vm.hostname), which
        # a /etc/hostname would override at boot; it has no DNS: both are this machine's here.
        '--customize-hook=rm -f "$1/etc/hostname" "$1/etc/resolv.conf"',
        f'--customize-hook=printf %s {shlex.quote(PIP_CONF)} >"$1/etc/pip.conf"',
        # Every machine boots this root, but only the server's provisioning starts redis.
        '--customize-hook=systemctl --root="$1" --quiet disable redis-server.service',
        SUITE,
        str(root),
        *MIRRORS,
    ]
    _run(command, scratch / "mmdebstrap.log", "mmdebstrap")
    size = sum(p.lstat().st_size for p in root.rglob("*"))
    (scratch / "recipe.json").write_text(json.dumps(asdict(wanted), indent=1) + "\n")
    (scratch / "build.json").write_text(json.dumps({"bytes": size}) + "\n")
    scratch.rename(dest)


def _wheelhouse(requirements: tuple[str, ...]) -> str:
    """A customize hook: wheels of `requirements` and all they need, built in the root by its
    own Python from what PyPI serves (NetfilterQueue, which PyPI has as source only, compiled by
    the root's gcc: the runtime packages must be enough to build it). pip trusts this machine's
    certificate authorities, which may hold a proxy's that the root's lack."""
    venv, cert = "/tmp/fwemu-wheels", "/tmp/fwemu-wheels.crt"
    build = (
        f"python3 -m venv {venv} && PIP_CERT={cert} {venv}/bin/pip wheel --quiet"
        f" --wheel-dir {WHEELHOUSE} {' '.join(map(shlex.quote, requirements))}"
        f" && rm -rf {venv} {cert} /root/.cache"
    )
    clean = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root"
    return f'cp {HOST_CAS} "$1{cert}" && chroot "$1" {clean} sh -c {shlex.quote(build)}'


def _run(command: list[str], log: Path, what: str) -> None:
    with log.open("a") as out:
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
                check=False,
                env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"},
            )
        except subprocess.TimeoutExpired:
            raise RootError(f"{what} took over {BUILD_TIMEOUT} s (log: {log})") from None
    if done.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise RootError(
            f"{what} failed with status {done.returncode} (log: {log}): " + " | ".join(tail)
        )
