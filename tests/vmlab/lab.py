"""The VM lab's machines as systemd-nspawn containers, each booting a real systemd from the
cached Debian root (root.py), shaped by the Vagrantfile itself (tests/vagrant/vagrantfile_dump.rb
evaluates it): its machines and hostnames; its private networks, each a veth pair between its two
machines made straight in their network namespaces, so nothing appears in this machine's own;
the repository synced to /vagrant as Vagrant's rsync does it (a copy per machine, with the
Vagrantfile's excludes: the host's .venv stays out, the guest's writes stay in); and its shell
provisioners, run in order as root with their environment, as `vagrant up` runs them.

Every step has a time-out; leaving the context terminates the machines (their network
namespaces, veths and mounts go with them) and removes the copies, on every way out. A run that
was killed is cleaned up by the next (reap).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
_DUMP = REPO / "tests" / "vagrant" / "vagrantfile_dump.rb"
# Machine names are PREFIX<pid of the test run>-<name>; the synced copies live in
# /tmp/PREFIX<pid>-*.
PREFIX = "fwemu-vmlab-"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Vagrant's own rsync options (its rsync__args default), but compression, pointless here.
_RSYNC = ("--archive", "--delete", "--copy-links")
BOOT_TIMEOUT = 60
PROVISION_TIMEOUT = 300
_STOP_TIMEOUT = 30
# nspawn leaves this directory behind when /run is not a tmpfs (as here).
_PROPAGATE = Path("/run/systemd/nspawn/propagate")


class LabError(Exception):
    """A machine did not boot, a command in it failed, or the Vagrantfile asks for something
    this lab cannot do; the message says which and how."""


def declare(env: Mapping[str, str]) -> dict[str, Any]:
    """What the Vagrantfile declares with these FWEMU_* settings (and no others)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FWEMU_")}
    done = subprocess.run(
        ["ruby", str(_DUMP), str(REPO / "vagrant" / "Vagrantfile")],
        capture_output=True,
        text=True,
        env=base | dict(env),
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"the Vagrantfile refused {dict(env)}: {done.stderr.strip()}")
    lab: dict[str, Any] = json.loads(done.stdout)
    return lab


@dataclass
class Machine:
    """One booted container: its nspawn process and the pid of its systemd."""

    name: str  # the Vagrantfile's
    unit: str  # nspawn's machine name: unique on this host
    process: subprocess.Popen[bytes]
    leader: int
    log: Path
    synced: Path  # the host directory it sees at /vagrant

    def sh(
        self,
        command: str,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a bash command line in the machine as root, as `vagrant ssh -c` would."""
        try:
            done = subprocess.run(
                self._enter(command, env),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.name}: {_short(command)} took over {timeout} s") from None
        if check and done.returncode != 0:
            raise LabError(
                f"{self.name}: {_short(command)} exited {done.returncode}: "
                f"{done.stderr.strip()[-2000:] or done.stdout.strip()[-2000:]}"
            )
        return done

    def spawn(self, command: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Start a bash command line in the machine; its stdout is a pipe of lines."""
        return subprocess.Popen(
            self._enter(command, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def net(self, *argv: str) -> None:
        """Run one of this machine's programs in the container's network namespace only (the
        hypervisor's side of a VM's network configuration)."""
        done = subprocess.run(
            ["nsenter", f"--target={self.leader}", "--net", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise LabError(f"{self.name}: {' '.join(argv)}: {done.stderr.strip()}")

    def _enter(self, command: str, env: Mapping[str, str] | None) -> list[str]:
        variables = {"PATH": _PATH, "HOME": "/root", "LANG": "C.UTF-8"} | dict(env or {})
        return [
            "nsenter",
            f"--target={self.leader}",
            "--all",
            "--root",
            "--wd",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in variables.items()),
            "bash",
            "-c",
            command,
        ]

    def stop(self) -> None:
        """Halt the container (SIGTERM to nspawn: systemd powers off), killed if it takes over
        _STOP_TIMEOUT seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(_STOP_TIMEOUT)
        shutil.rmtree(_PROPAGATE / self.unit, ignore_errors=True)


@dataclass
class Lab:
    """The booted, joined and provisioned machines."""

    machines: dict[str, Machine]
    declaration: dict[str, Any]
    # Each machine's provisioners as they ran: (name, seconds, their output).
    provisioned: dict[str, list[tuple[str, float, str]]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Machine:
        return self.machines[name]

    def provision(self, name: str) -> list[tuple[str, float, str]]:
        """Run the machine's shell provisioners, in the Vagrantfile's order (global first)."""
        declared = self.declaration["global"]["provisioners"]
        declared = [*declared, *self.declaration["machines"][name]["provisioners"]]
        ran = []
        for provisioner in declared:
            if provisioner.get("type") != "shell" or "inline" not in provisioner:
                raise LabError(f"{name}: provisioner {provisioner['name']!r} is not inline shell")
            started = time.monotonic()
            done = self[name].sh(
                provisioner["inline"],
                env=provisioner.get("env", {}),
                timeout=PROVISION_TIMEOUT,
            )
            ran.append((provisioner["name"], time.monotonic() - started, done.stderr))
        return ran


@contextmanager
def nspawn_lab(root: Path, env: Mapping[str, str]) -> Iterator[Lab]:
    """The Vagrantfile's lab with these FWEMU_* settings, booted from `root` and provisioned."""
    declaration = declare(env)
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=run_prefix())))
        machines: dict[str, Machine] = {}
        for name, declared in declaration["machines"].items():
            synced = scratch / name / "synced"
            _sync(declaration["global"]["synced_folders"] + declared["synced_folders"], synced)
            machine = _boot(name, declared["hostname"] or name, root, synced, scratch / name)
            stack.callback(machine.stop)
            machines[name] = machine
        for machine in machines.values():
            _wait_running(machine)
        _join(declaration, machines)
        lab = Lab(machines, declaration)
        for name in machines:
            lab.provisioned[name] = lab.provision(name)
        yield lab


def run_prefix() -> str:
    return f"{PREFIX}{os.getpid()}-"


def _sync(folders: list[dict[str, Any]], dest: Path) -> None:
    """The repository as Vagrant's rsync puts it at /vagrant (the only folder the lab syncs)."""
    enabled = [f for f in folders if not f.get("disabled")]
    if [f["destination"] for f in enabled] != ["/vagrant"] or enabled[0].get("type") != "rsync":
        raise LabError(
            f"synced folders {enabled}: this lab syncs exactly one, by rsync, at /vagrant"
        )
    (folder,) = enabled
    excludes = [f"--exclude={pattern}" for pattern in folder.get("rsync__exclude", [])]
    dest.mkdir(parents=True)
    done = subprocess.run(
        ["rsync", *_RSYNC, *excludes, f"{folder['source']}/", f"{dest}/"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"rsync of {folder['source']} failed: {done.stderr.strip()}")


def _boot(name: str, hostname: str, root: Path, synced: Path, workdir: Path) -> Machine:
    """Start the container; return once its systemd runs (not yet booted: _wait_running)."""
    log = workdir / "console.log"
    unit = run_prefix() + name
    with log.open("wb") as console:
        process = subprocess.Popen(
            [
                "systemd-nspawn",
                "--quiet",
                "--boot",
                f"--directory={root}",
                # The root stays as built: each machine writes to its own tmpfs over it.
                "--volatile=overlay",
                f"--machine={unit}",
                f"--hostname={hostname}",
                "--register=no",  # no systemd-machined here: this machine's PID 1 is not systemd
                "--keep-unit",
                "--private-network",  # and so CAP_NET_ADMIN and a writable /proc/sys/net
                f"--bind={synced}:/vagrant",
                "--console=passive",
                "--link-journal=no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches the test, which halts the machines
        )
    machine = Machine(name, unit, process, 0, log, synced)
    deadline = time.monotonic() + BOOT_TIMEOUT
    while not machine.leader:
        if process.poll() is not None or time.monotonic() > deadline:
            machine.stop()
            raise LabError(f"{name}: systemd-nspawn ran no systemd: {_tail(log)}")
        machine.leader = _init_of(process.pid)
        time.sleep(0.05)
    return machine


def _init_of(pid: int) -> int:
    """The container's PID 1 as this machine sees it: nspawn's child, once it runs systemd."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
    except OSError:
        pass
    return 0


def _wait_running(machine: Machine) -> None:
    """Until systemd has booted: its bus may not be up yet right after its exec (then systemctl
    says offline, or nothing)."""
    script = f"""
        for _ in $(seq {BOOT_TIMEOUT * 10}); do
            state=$(timeout {BOOT_TIMEOUT} systemctl is-system-running --wait 2>/dev/null)
            case "$state" in "" | offline) sleep 0.1 ;; *) break ;; esac
        done
        echo "$state"
    """
    state = machine.sh(script, timeout=2 * BOOT_TIMEOUT + 10, check=False).stdout.strip()
    if state != "running":
        failed = machine.sh("systemctl --failed --no-legend", check=False).stdout.strip()
        raise LabError(f"{machine.name}: booted {state or 'nowhere'}; failed units: {failed}")


def _join(declaration: dict[str, Any], machines: dict[str, Machine]) -> None:
    """Each private network a veth pair between its two machines, eth1, eth2... in the order of
    each machine's networks (eth0 is Vagrant's NAT interface on a VM), addressed as declared."""
    members: dict[str, list[tuple[Machine, str, str]]] = {}
    for name, declared in declaration["machines"].items():
        private = [n for n in declared["networks"] if n["type"] == "private_network"]
        for number, network in enumerate(private, start=1):
            mask = ipaddress.IPv4Network(f"0.0.0.0/{network['netmask']}").prefixlen
            members.setdefault(network["libvirt__network_name"], []).append(
                (machines[name], f"eth{number}", f"{network['ip']}/{mask}")
            )
    for network, ends in members.items():
        if len(ends) != 2:
            raise LabError(f"network {network} has {len(ends)} machines: this lab joins pairs")
        (a, a_if, _), (b, b_if, _) = ends
        done = subprocess.run(
            [
                *("ip", "link", "add", a_if, "netns", str(a.leader), "type", "veth"),
                *("peer", "name", b_if, "netns", str(b.leader)),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if done.returncode != 0:
            raise LabError(f"network {network}: {done.stderr.strip()}")
        for machine, ifname, address in ends:
            machine.net("ip", "address", "add", address, "dev", ifname)
            machine.net("ip", "link", "set", ifname, "up")


def reap() -> list[str]:
    """Halt the machines and remove the copies of test runs that are gone (killed before their
    clean-up); returns the names of the machines."""
    reaped = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        for arg in argv[1:] if argv and argv[0].endswith(b"systemd-nspawn") else []:
            name = arg.decode(errors="replace").removeprefix("--machine=")
            if name != arg.decode(errors="replace") and _gone(name):
                os.kill(int(proc.name), signal.SIGTERM)  # halts the container
                reaped.append(name)
    leftovers = [*Path(tempfile.gettempdir()).glob(f"{PREFIX}*")]
    leftovers += _PROPAGATE.glob(f"{PREFIX}*") if _PROPAGATE.exists() else []
    for leftover in leftovers:
        if _gone(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)
    return reaped


def _gone(name: str) -> bool:
    """Whether `name` is of the lab (PREFIX<pid>-...) of a test run that has ended."""
    owner = re.match(rf"{PREFIX}(\d+)-", name)
    if owner is None:
        return False
    try:
        os.kill(int(owner[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _short(command: str) -> str:
    """A command line for a message: a script by its first line."""
    lines = command.strip().splitlines()
    return repr(lines[0] + (" ..." if len(lines) > 1 else ""))


def _tail(log: Path) -> str:
    return " | ".join(log.read_text(errors="replace").splitlines()[-5:])
