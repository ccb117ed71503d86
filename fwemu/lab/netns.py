"""Apply, inspect and remove a LabPlan in the kernel, with pyroute2; run things inside a lab.

Everything is created inside the lab's namespaces (the veth pairs are made in the fw namespace
with their peer placed straight into the client or server namespace), so nothing ever appears
in the root namespace and parallel labs cannot collide on interface names.

All netlink and sysctl work runs in short-lived threads that setns(2) into one namespace
(`call_in_netns`), not in pyroute2's `IPRoute(netns=...)`: that forks a child and stops it with
SIGTERM, and a child inherits the parent's Python signal handlers, so a program with its own
SIGTERM handler (like `fwemu demo`) would run that handler, cleanup and all, in the child.
(`netns.create` forks too, but stops its child with SIGKILL, which runs no handler.)
`socket_in` uses the same threads to let a test open sockets inside a lab without a subprocess.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, NoReturn, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from fwemu.lab.plan import (
    DEFAULT_INDEX,
    DEFAULT_NAME,
    MAX_INDEX,
    MIN_INDEX,
    SIDES,
    LabError,
    LabPlan,
    Side,
    namespace_name,
    validate_name,
)

T = TypeVar("T")

# <linux/if.h>: IFF_UP is the administrative "up" flag `ip link set ... up` sets.
_IFF_UP = 0x1
# rtnetlink route table ids (<linux/rtnetlink.h>): RT_TABLE_MAIN.
_RT_TABLE_MAIN = 254
_FAMILIES: Mapping[int, Literal[4, 6]] = {socket.AF_INET: 4, socket.AF_INET6: 6}
_NETLINK_ERRORS = (OSError, NetlinkError)
# Linkwatch needs about 1 s (measured on 6.18); far more means something is wrong.
_RUNNING_TIMEOUT = 5
# Seconds what runs in a lab has after SIGTERM before `down` kills it: fwemu removes its rules
# and stops within a fraction of one, a server closes its connections; a program still there
# after this ignores SIGTERM or hangs.
STOP_GRACE = 3.0
# Seconds to wait for SIGKILLed processes to be gone: only one stuck in the kernel (state D)
# takes longer, and that one no signal can end.
_KILL_WAIT = 5.0


def require_root() -> None:
    """Raise LabError unless we can create namespaces: that takes CAP_SYS_ADMIN, i.e. root."""
    if os.geteuid() != 0:
        raise LabError(
            "managing network namespaces needs root (CAP_SYS_ADMIN); run fwemu with sudo"
        )


# --- running code inside a namespace -------------------------------------------------------


def call_in_netns(namespace: str, fn: Callable[[], T]) -> T:
    """Return `fn()` called in a short-lived thread that has joined network namespace `namespace`.

    setns(2) with CLONE_NEWNET moves only the calling thread, so the rest of the process stays
    where it was, and the thread exits right after `fn` returns. What `fn` creates keeps the
    namespace it was created in: a socket belongs to its creator's netns for life (socket(7)),
    and a /proc/sys/net file opened there reads and writes that namespace's sysctls.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{namespace}") as pool:
        return pool.submit(_enter_then_call, namespace, fn).result()


def _enter_then_call(namespace: str, fn: Callable[[], T]) -> T:
    try:
        netns.setns(namespace, flags=0)
    except FileNotFoundError:
        raise LabError(f"network namespace {namespace} does not exist") from None
    return fn()


def socket_in(
    namespace: str,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A socket created inside network namespace `namespace` (e.g. "fwemu-server"), for tests.

    Use it like any socket from the current process and thread: bind, connect and send all
    happen in `namespace`. Example, a server in the lab's server and a client in its client::

        srv = socket_in("fwemu-server"); srv.bind(("10.201.2.2", 8080)); srv.listen()
        cli = socket_in("fwemu-client"); cli.connect(("10.201.2.2", 8080))
    """
    require_root()
    return call_in_netns(namespace, lambda: socket.socket(family, type, proto))


def _side_namespace(name: str, side: Side) -> str:
    """The namespace of `side` of lab `name`, or LabError if that lab does not have it."""
    require_root()
    namespace = namespace_name(validate_name(name), side)
    if namespace not in netns.listnetns():
        raise LabError(f"lab {name} has no namespace {namespace}; run 'fwemu lab up {name}'")
    return namespace


def _in_lab_argv(name: str, side: Side, argv: Sequence[str]) -> list[str]:
    if not argv:
        raise LabError("no command given to run in the lab")
    return ["ip", "netns", "exec", _side_namespace(name, side), *argv]


def exec_in(
    name: str, side: Side, argv: Sequence[str], **popen_kwargs: Any
) -> subprocess.Popen[Any]:
    """Start `argv` inside namespace NAME-side (`ip netns exec`); Popen keywords pass through."""
    return subprocess.Popen(_in_lab_argv(name, side, argv), **popen_kwargs)


def run_in(
    name: str, side: Side, argv: Sequence[str], **run_kwargs: Any
) -> subprocess.CompletedProcess[Any]:
    """Run `argv` to completion inside namespace NAME-side; subprocess.run keywords pass through."""
    return subprocess.run(_in_lab_argv(name, side, argv), check=False, **run_kwargs)


def replace_with(name: str, side: Side, argv: Sequence[str]) -> NoReturn:
    """Become `argv` run inside namespace NAME-side (`fwemu lab exec`): `ip netns exec` enters
    it and execs the command in turn, so the command keeps this process's pid. Whatever signals
    this process gets (a job's `kill %1`, a script's `kill $!`) reach the command itself, with
    nothing left behind, and its exit status is this process's.

    Python ignores SIGPIPE and SIGXFSZ for itself, and ignored signals stay ignored across
    exec: they are given back their default first, as subprocess does (restore_signals)."""
    command = _in_lab_argv(name, side, argv)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(command[0], command)
    except OSError as err:
        raise LabError(f"cannot run {command[0]}: {err.strerror}") from None


# --- observing what exists ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Observed:
    """What one namespace holds, in the terms a LabPlan uses."""

    links: frozenset[str]
    up_links: frozenset[str]
    addresses: frozenset[tuple[str, str]]  # (ifname, "address/prefixlen")
    gateways: frozenset[tuple[str, int, str]]  # default routes: (ifname, 4 or 6, gateway)
    sysctls: Mapping[str, str | None] = field(default_factory=dict)  # None: no such key


_EMPTY = _Observed(frozenset(), frozenset(), frozenset(), frozenset())


def _observe(namespace: str, sysctl_keys: Sequence[str]) -> _Observed:
    return call_in_netns(namespace, lambda: _observe_here(sysctl_keys))


def _observe_here(sysctl_keys: Sequence[str]) -> _Observed:
    with IPRoute() as ipr:
        links = ipr.get_links()
        names = {link["index"]: link.get("IFLA_IFNAME") for link in links}
        up = {names[link["index"]] for link in links if link["flags"] & _IFF_UP}
        addresses = {
            (names[a["index"]], f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
            for a in ipr.get_addr()
            if a["index"] in names
        }
        gateways = {
            (names.get(r.get("RTA_OIF"), "?"), _FAMILIES[family], r.get("RTA_GATEWAY"))
            for family in _FAMILIES
            for r in ipr.get_routes(family=family, table=_RT_TABLE_MAIN)
            if r["dst_len"] == 0 and r.get("RTA_GATEWAY")
        }
    return _Observed(
        frozenset(names.values()),
        frozenset(up),
        frozenset(addresses),
        frozenset(gateways),
        {key: _read_sysctl(key) for key in sysctl_keys},
    )


def _read_sysctl(key: str) -> str | None:
    try:
        with open(f"/proc/sys/{key}", encoding="ascii") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _observe_lab(name: str) -> dict[str, _Observed]:
    """Observed state of each of lab `name`'s namespaces that exists, by namespace name."""
    # The sysctl keys (forwarding, accept_dad per interface) do not depend on the index.
    keys = LabPlan.create(name).sysctls
    present = set(netns.listnetns())
    return {
        namespace: _observe(namespace, [s.key for s in keys if s.namespace == namespace])
        for namespace in (namespace_name(name, side) for side in SIDES)
        if namespace in present
    }


def _problems(plan: LabPlan, observed: Mapping[str, _Observed]) -> list[str]:
    """What in `observed` differs from `plan`, one readable item each; empty if the lab is up."""
    problems = [f"namespace {ns} is missing" for ns in plan.namespaces if ns not in observed]
    for ns, seen in observed.items():
        if "lo" not in seen.up_links:
            problems.append(f"{ns}: lo is down")
    for end in plan.endpoints:
        if end.namespace not in observed:
            continue
        seen = observed[end.namespace]
        if end.ifname not in seen.up_links:
            problems.append(f"{end.namespace}: {end.ifname} is missing or down")
        problems += [
            f"{end.namespace}: {end.ifname} lacks {address}"
            for address in end.addresses
            if (end.ifname, address) not in seen.addresses
        ]
    problems += [
        f"{r.namespace}: no IPv{r.family} default route via {r.gateway}"
        for r in plan.routes
        if r.namespace in observed
        and (r.ifname, r.family, r.gateway) not in observed[r.namespace].gateways
    ]
    problems += [
        f"{s.namespace}: {s.key} is {observed[s.namespace].sysctls.get(s.key)}, not {s.value}"
        for s in plan.sysctls
        if s.namespace in observed and observed[s.namespace].sysctls.get(s.key) != s.value
    ]
    return problems


def _index_of(name: str, observed: Mapping[str, _Observed]) -> int | None:
    """The index a lab was built with, read back from its client address 10.N.1.2/24.

    None when there is no such address, e.g. a foreign namespace that merely shares the name.
    """
    client = observed.get(namespace_name(name, "client"), _EMPTY)
    for index in range(MIN_INDEX, MAX_INDEX + 1):
        planned = LabPlan.create(name, index).client
        if (planned.ifname, planned.addresses[0]) in client.addresses:
            return index
    return None


@dataclass(frozen=True, slots=True)
class LabInfo:
    """A lab as found on the host: which namespaces exist and, if readable, its addresses."""

    name: str
    namespaces: tuple[Side, ...]  # the sides whose namespace exists
    index: int | None  # None when the client address cannot be read back
    up: bool  # everything the plan for `index` asks for is in place
    addresses: tuple[tuple[Side, str, str], ...]  # (side, ifname, "address/prefixlen")

    def to_dict(self) -> dict[str, Any]:
        """The `fwemu lab list --json` form."""
        return {
            "name": self.name,
            "index": self.index,
            "state": "up" if self.up else "partial",
            "namespaces": [namespace_name(self.name, side) for side in self.namespaces],
            "addresses": {
                side: [address for s, _, address in self.addresses if s == side]
                for side in self.namespaces
            },
        }


def list_labs() -> list[LabInfo]:
    """Every lab with at least one of its NAME-client/fw/server namespaces present, by name."""
    return [_lab_info(name) for name in _lab_names()]


def _lab_names() -> list[str]:
    """The names of the labs that have at least one namespace present."""
    require_root()
    names = {_lab_of(ns) for ns in netns.listnetns()}
    return sorted(name for name in names if name is not None and _is_lab_name(name))


def _lab_of(namespace: str) -> str | None:
    for side in SIDES:
        if namespace.endswith(f"-{side}"):
            return namespace.removesuffix(f"-{side}")
    return None


def _is_lab_name(name: str) -> bool:
    try:
        validate_name(name)
    except LabError:
        return False
    return True


def _lab_info(name: str) -> LabInfo:
    observed = _observe_lab(name)
    index = _index_of(name, observed)
    up = index is not None and not _problems(LabPlan.create(name, index), observed)
    addresses = tuple(
        (side, ifname, address)
        for side in SIDES
        for ifname, address in sorted(observed.get(namespace_name(name, side), _EMPTY).addresses)
        if ifname != "lo" and not address.startswith("fe80:")
    )
    sides = tuple(side for side in SIDES if namespace_name(name, side) in observed)
    return LabInfo(name, sides, index, up, addresses)


# --- creating and removing ------------------------------------------------------------------


def up(plan: LabPlan) -> bool:
    """Make lab `plan.name` exist exactly as planned; False if it already did (nothing changed).

    A complete lab is left alone; a partial one (e.g. after a crash) is removed and rebuilt,
    unless processes run in it (removing their namespaces would leave them running, detached).
    A complete lab with another index is an error rather than torn down under its users.
    If building fails or is interrupted, whatever was created is removed again.
    """
    require_root()
    observed = _observe_lab(plan.name)
    problems = _problems(plan, observed)
    if not problems:
        return False
    index = _index_of(plan.name, observed)
    if index not in (None, plan.index) and not _problems(
        LabPlan.create(plan.name, index), observed
    ):
        raise LabError(
            f"lab {plan.name} is already up with index {index}; "
            f"run 'fwemu lab down {plan.name}' first or use --index {index}"
        )
    if running := processes_in(plan.name):
        others = f" and {len(running) - 1} more" if len(running) > 1 else ""
        raise LabError(
            f"lab {plan.name} is incomplete ({problems[0]}) and processes run in it "
            f"({running[0].describe()}{others}); 'fwemu lab down {plan.name}' stops them "
            "and removes the lab"
        )
    _remove(plan.name)
    try:
        _build(plan)
    except BaseException:
        _remove(plan.name)
        raise
    return True


def up_index(name: str) -> int | None:
    """The index lab `name` is up with; None if it is not (absent, or incomplete)."""
    require_root()
    info = _lab_info(validate_name(name))
    return info.index if info.up else None


def down(name: str) -> bool:
    """Remove lab `name`: stop what runs in it (`stop_processes`), then remove its namespaces,
    and with them its veths; False if it had none.

    A process left running would keep its namespace alive, detached from its name: out of
    reach of `fwemu lab exec` and `ip netns`, and a fwemu in it would go on holding its control
    socket (/run/fwemu/NAME-fw.q0.sock), so the next `fwemu run` in a lab of that name would be
    refused.
    """
    require_root()
    validate_name(name)
    stop_processes(name)
    return _remove(name)


def _remove(name: str) -> bool:
    """Remove lab `name`'s namespaces (and with them its veths); False if there were none."""
    present = set(netns.listnetns())
    removed = False
    for namespace in (namespace_name(name, side) for side in SIDES):
        if namespace in present:
            with _step(name, f"removing namespace {namespace}"):
                netns.remove(namespace)
            removed = True
    return removed


# --- what runs in a lab ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Process:
    """A process whose network namespace is one of a lab's (as `ip netns pids` finds them)."""

    pid: int
    namespace: str
    command: str  # its command line, as ps(1) shows it

    def describe(self) -> str:
        return f"pid {self.pid} in {self.namespace}: {self.command}"


@dataclass(frozen=True, slots=True)
class Stopped:
    """A process `stop_processes` ended, and the signal that ended it."""

    process: Process
    signal: signal.Signals


def processes_in(name: str) -> list[Process]:
    """The processes running in lab `name`'s namespaces, by pid (this process excepted)."""
    require_root()
    namespaces = _lab_namespaces(validate_name(name))
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            namespace = namespaces.get(_netns_of(int(entry)))
            if namespace is not None:
                found.append(Process(int(entry), namespace, _command_line(int(entry))))
    return sorted(found, key=lambda process: process.pid)


def stop_processes(name: str, grace: float = STOP_GRACE) -> list[Stopped]:
    """End what runs in lab `name`: SIGTERM, then SIGKILL for whatever is there `grace` seconds
    later (still, or started meanwhile); each process with the signal that ended it, by pid.

    SIGTERM goes to the outermost processes only, those whose parent is outside the lab, and
    to the next ones as their parents exit: a parent stops its own children (fwemu's supervisor
    its workers, which would otherwise stop first and look to it like a crash). Signals go
    through pidfds opened while the process was in the lab, so a pid reused meanwhile is never
    signalled, and exits are awaited, not polled for.
    """
    seen = {process.pid: process for process in processes_in(name)}
    namespaces = _lab_namespaces(name)
    opened: list[int] = []
    try:
        _terminate(name, namespaces, seen, opened, time.monotonic() + grace)
        killed = _kill(name, namespaces, seen, opened)
    finally:
        for fd in opened:
            os.close(fd)
    return [
        Stopped(seen[pid], signal.SIGKILL if pid in killed else signal.SIGTERM)
        for pid in sorted(seen)
    ]


def _terminate(
    name: str,
    namespaces: Mapping[tuple[int, int] | None, str],
    seen: dict[int, Process],
    opened: list[int],
    deadline: float,
) -> None:
    """SIGTERM the lab's outermost processes, then those each exit makes outermost, until
    nothing runs in the lab or `deadline` passes; `seen` gains those signalled (what starts and
    ends meanwhile, as fwemu's iptables calls, is not worth naming), `opened` their pidfds."""
    poller = select.poll()
    termed: set[int] = set()
    waiting = 0
    while running := processes_in(name):
        pids, before = {process.pid for process in running}, len(termed)
        for process in running:
            if process.pid in termed or _parent(process.pid) in pids:
                continue
            fd = _signal(process, signal.SIGTERM, namespaces)
            termed.add(process.pid)
            seen.setdefault(process.pid, process)
            if fd is not None:
                opened.append(fd)
                poller.register(fd, select.POLLIN)
                waiting += 1
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if not waiting:
            if len(termed) == before:
                return  # nothing left to wait for that a SIGTERM could end
            continue  # what was signalled exited before its pidfd opened: look again
        exits = poller.poll(left * 1000)
        if not exits:
            return
        for fd, _ in exits:
            poller.unregister(fd)
            waiting -= 1


def _kill(
    name: str,
    namespaces: Mapping[tuple[int, int] | None, str],
    seen: dict[int, Process],
    opened: list[int],
) -> set[int]:
    """SIGKILL whatever runs in lab `name`; the pids killed, returned once they are gone (or
    after _KILL_WAIT)."""
    poller = select.poll()
    killed = set()
    for process in processes_in(name):
        fd = _signal(process, signal.SIGKILL, namespaces)
        if fd is not None:
            opened.append(fd)
            poller.register(fd, select.POLLIN)
            killed.add(process.pid)
            seen.setdefault(process.pid, process)
    waiting, deadline = len(killed), time.monotonic() + _KILL_WAIT
    while waiting and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            poller.unregister(fd)
            waiting -= 1
    return killed


def _signal(
    process: Process, signum: signal.Signals, namespaces: Mapping[tuple[int, int] | None, str]
) -> int | None:
    """`signum` sent to `process`; its pidfd (the caller closes it), None if it is gone."""
    try:
        fd = os.pidfd_open(process.pid)
    except OSError:
        return None
    # Still in the lab once the pidfd is open: the fd is that process, not a reuse of its pid.
    if _netns_of(process.pid) not in namespaces:
        os.close(fd)
        return None
    with suppress(ProcessLookupError):  # it exited meanwhile
        signal.pidfd_send_signal(fd, signum)
    return fd


def _lab_namespaces(name: str) -> dict[tuple[int, int] | None, str]:
    """(device, inode) -> name of each of lab `name`'s namespaces that exists."""
    found: dict[tuple[int, int] | None, str] = {}
    for namespace in (namespace_name(name, side) for side in SIDES):
        try:
            st = os.stat(f"{netns.NETNS_RUN_DIR}/{namespace}")
        except OSError:
            continue
        found[(st.st_dev, st.st_ino)] = namespace
    return found


def _netns_of(pid: int) -> tuple[int, int] | None:
    """(device, inode) of process `pid`'s network namespace; None once it has exited."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _parent(pid: int) -> int:
    """Process `pid`'s parent (0 if it is gone): /proc/PID/stat's 4th field, after the name in
    parentheses, which may itself hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().rstrip(b"\0").split(b"\0")
        with open(f"/proc/{pid}/comm", "rb") as f:
            comm = f.read().strip()
    except OSError:
        return "?"
    return b" ".join(argv).decode(errors="replace") or f"[{comm.decode(errors='replace')}]"


# The harness's and the test suite's lab names carry their creator's pid: "fwemu-<pid>-<n>",
# "fwemu-t<pid>-<n>", "fwemu-kp<pid>".
_OWNED_LAB_RE = re.compile(r"fwemu-(?:t|kp)?(?P<pid>[0-9]+)(?:-[A-Za-z0-9_]+)?")


def reap_orphans() -> list[str]:
    """Remove the labs whose creator (the pid in their name) is gone, with whatever still runs
    in them: a SIGKILLed test run cannot clean up after itself, so the next one does.

    A pid that was reused keeps its labs (the safe side). Returns the names of the labs removed.
    """
    reaped = []
    for name in _lab_names():
        match = _OWNED_LAB_RE.fullmatch(name)
        if match and not _alive(int(match["pid"])):
            down(name)
            reaped.append(name)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def lab(
    name: str = DEFAULT_NAME, index: int = DEFAULT_INDEX, clients: int = 1
) -> Iterator[LabPlan]:
    """Lab `name` (with `clients` client addresses) for the duration of a `with` block; it is
    removed on exit, even on error."""
    plan = LabPlan.create(name, index, clients)
    up(plan)
    try:
        yield plan
    finally:
        down(name)


@contextmanager
def _step(name: str, what: str) -> Iterator[None]:
    """Turn a kernel error during `what` into one LabError line naming the lab and the step."""
    try:
        yield
    except _NETLINK_ERRORS as err:
        raise LabError(f"lab {name}: {what} failed: {err}") from err


def _build(plan: LabPlan) -> None:
    for namespace in plan.namespaces:
        with _step(plan.name, f"creating namespace {namespace}"):
            netns.create(namespace)
    # fw first: it creates the veth pairs whose other ends client and server then configure.
    fw = plan.fw_client_side.namespace
    for namespace in (fw, *(ns for ns in plan.namespaces if ns != fw)):
        call_in_netns(namespace, partial(_configure_here, plan, namespace))
    # Only now can links come up: a veth is running once both of its ends are up.
    for namespace in plan.namespaces:
        call_in_netns(namespace, partial(_wait_until_running_here, plan, namespace))


def _configure_here(plan: LabPlan, namespace: str) -> None:
    """Set up this thread's namespace, `namespace`, as `plan` says."""
    with IPRoute() as ipr:
        with _step(plan.name, f"bringing up lo in {namespace}"):
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for pair in plan.links:
            fw, peer = pair.fw_end, pair.peer
            if fw.namespace != namespace:
                continue
            with _step(plan.name, f"creating veth {fw.ifname} <-> {peer.namespace}:{peer.ifname}"):
                # The peer goes straight into its namespace: the pair never exists in the
                # root namespace, where names of parallel labs could collide.
                ipr.link(
                    "add",
                    ifname=fw.ifname,
                    kind="veth",
                    peer={"ifname": peer.ifname, "net_ns_fd": peer.namespace},
                )
        for sysctl in plan.sysctls:
            if sysctl.namespace == namespace:
                with (
                    _step(plan.name, f"setting {sysctl.key} in {namespace}"),
                    open(f"/proc/sys/{sysctl.key}", "w", encoding="ascii") as f,
                ):
                    f.write(sysctl.value)
        for end in plan.endpoints:
            if end.namespace == namespace:
                with _step(plan.name, f"configuring {namespace}:{end.ifname}"):
                    index = ipr.link_lookup(ifname=end.ifname)[0]
                    ipr.addr("add", index=index, address=end.ipv4, prefixlen=end.prefixlen4)
                    ipr.addr("add", index=index, address=end.ipv6, prefixlen=end.prefixlen6)
                    for ipv4, ipv6 in end.aliases:
                        # A later IPv4 address of the subnet is secondary and the kernel
                        # never picks it as a source; a later IPv6 one it would, unless it is
                        # deprecated (RFC 6724 rule 3): so only a socket bound to one uses it.
                        ipr.addr("add", index=index, address=ipv4, prefixlen=end.prefixlen4)
                        ipr.addr(
                            "add", index=index, address=ipv6, prefixlen=end.prefixlen6, preferred=0
                        )
                    ipr.link("set", index=index, state="up")
        for route in plan.routes:
            if route.namespace == namespace:
                with _step(plan.name, f"adding IPv{route.family} default route in {namespace}"):
                    ipr.route(
                        "add",
                        dst="default",
                        gateway=route.gateway,
                        oif=ipr.link_lookup(ifname=route.ifname)[0],
                        family=socket.AF_INET if route.family == 4 else socket.AF_INET6,
                    )


def _wait_until_running_here(plan: LabPlan, namespace: str) -> None:
    """Return once this thread's namespace's lab interfaces are operationally up.

    Until the kernel's linkwatch work sees the carrier, which it batches at most once a second
    (net/core/link_watch.c), a device's qdisc is noop and drops what is sent: the first ARP or
    neighbour solicitation would be lost and a ping right after `up` would take seconds.
    """
    with IPRoute() as ipr:
        for end in plan.endpoints:
            if end.namespace != namespace:
                continue
            try:
                ipr.poll(
                    ipr.link, "dump", ifname=end.ifname, operstate="UP", timeout=_RUNNING_TIMEOUT
                )
            except TimeoutError:
                raise LabError(
                    f"lab {plan.name}: {namespace}:{end.ifname} did not come up "
                    f"within {_RUNNING_TIMEOUT} s"
                ) from None
