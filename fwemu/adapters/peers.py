"""Who else serves NFQUEUEs in this network namespace, and whether a new run may start beside it.

Two fwemus share a namespace safely only when no flow is captured by both (one queueing TCP and
one UDP share none): each run puts its jumps first in FORWARD, so a newer run whose rules
overlap an older one's would take all of the shared traffic, silently. `check_overlap` refuses
that before anything changes, and `ensure_free` names whoever holds a queue this run wants;
`running` lists them all (`fwemu lab list`).

A queue's holder is found as `ss -p` finds a socket's owner: /proc/net/netfilter/nfnetlink_queue
gives the netlink portid bound to each queue, /proc/net/netlink that socket's inode, /proc/PID/fd
the process holding it. A holder that listens on a Unix socket (/proc/net/unix) answering a
`status` request is a fwemu, wherever its --control put the socket; its reply names its policy
and the run its workers belong to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from fwemu.adapters import iptables, nfqueue
from fwemu.errors import FwemuError
from fwemu.ops.client import request
from fwemu.ops.protocol import Request

NETLINK_NETFILTER = 12  # <linux/netlink.h>: /proc/net/netlink's Eth column for NFQUEUE sockets
# /proc/net/unix's Flags for a listening socket: __SO_ACCEPTCON (net/unix/af_unix.c, unix_seq_show).
_ACCEPTING = 0x10000
# This thread's namespace's tables, as nfqueue.PROC_QUEUES (a thread may have entered another).
_PROC_NET = "/proc/thread-self/net"


@dataclass(frozen=True, slots=True)
class Peer:
    """What holds some of this namespace's queues: one fwemu run (all of its workers), or another
    program. `policy` is set only for a fwemu that answered on its control socket."""

    queues: tuple[int, ...]
    pid: int | None  # a fwemu's run: its supervisor (a lone fwemu's own); None: holder not found
    command: str  # /proc/PID/comm, "" if unknown
    policy: str | None = None
    control: tuple[str, ...] = ()
    portid: int = 0  # the netlink port bound to its first queue

    @property
    def identity(self) -> str:
        """ "pid 1234, policy linux"; "pid 99 (suricata)"; or the netlink port, if no process
        could be seen holding it (one in another PID namespace)."""
        if self.pid is None:
            return f"netlink portid {self.portid}"
        if self.policy is None:
            return f"pid {self.pid} ({self.command})"
        return f"pid {self.pid}, policy {self.policy}"

    def describe(self) -> str:
        """ "queue 0, pid 1234, policy linux"; "queues 2-3, ..." for a run with workers."""
        first, last = self.queues[0], self.queues[-1]
        queues = f"queue {first}" if first == last else f"queues {first}-{last}"
        return f"{queues}, {self.identity}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "queues": list(self.queues),
            "pid": self.pid,
            "command": self.command,
            "policy": self.policy,
            "control": list(self.control),
        }


class _Held(NamedTuple):
    """One bound queue, and who holds it: a process, and its status if it is a fwemu."""

    queue: int
    portid: int
    pid: int | None
    status: dict[str, Any] | None


def running() -> list[Peer]:
    """One Peer per fwemu run or other program holding NFQUEUEs in this thread's network
    namespace, by first queue."""
    bound = nfqueue.bound_queues()
    if not bound:
        return []
    sockets = _netfilter_sockets()
    owners = _owners({sockets[portid] for portid in bound.values() if portid in sockets})
    listening = _listening_paths()
    statuses: dict[int, dict[str, Any] | None] = {}
    runs: dict[object, list[_Held]] = {}
    for queue, portid in sorted(bound.items()):
        pid = owners.get(sockets.get(portid, -1))
        if pid is not None and pid not in statuses:
            statuses[pid] = _status(pid, listening)
        status = statuses.get(pid) if pid is not None else None
        # A fwemu's workers are one run; a fwemu from before --workers is a run of its own.
        run = ("queue", queue) if status is None else status.get("run", pid)
        runs.setdefault(run, []).append(_Held(queue, portid, pid, status))
    return [_peer(held) for held in runs.values()]


def _peer(held: list[_Held]) -> Peer:
    first = held[0]
    if first.status is None:
        return Peer((first.queue,), first.pid, _command(first.pid), portid=first.portid)
    return Peer(
        tuple(h.queue for h in held),
        int(first.status.get("supervisor", first.status["pid"])),
        _command(first.pid),
        str(first.status.get("policy")),
        tuple(str(h.status.get("control")) for h in held if h.status is not None),
        first.portid,
    )


def ensure_free(queue: int) -> None:
    """Refuse a queue another process holds (binding it would fail, but only after setup),
    naming it: a fwemu by its pid and policy."""
    if queue not in nfqueue.bound_queues():
        return
    holder = next((peer for peer in running() if queue in peer.queues), None)
    who = "another program"
    if holder is not None:
        kind = "another fwemu" if holder.policy is not None else "another program"
        who = f"{kind} ({holder.identity})"
    raise nfqueue.QueueError(
        f"NFQUEUE {queue} is already bound by {who}; stop it or pick another queue with --queue"
    )


def check_overlap(queue: int, count: int, capture: iptables.Capture, where: str) -> None:
    """Refuse rules for queues `queue`.. that would go above a live fwemu's in this namespace
    and capture some of its flows (FwemuError naming it and the protocols both queue). Rules
    whose queues nobody holds are a killed run's: with --queue-bypass they let everything
    through, and take nothing."""
    ours = set(range(queue, queue + count))
    bound = nfqueue.bound_queues().keys()
    for found in iptables.found_rules():
        live = found.queues & bound
        # Sharing a queue is ensure_free's to refuse; a chain on ours is replaced by install.
        if not live or found.queues & ours or found.queue in ours:
            continue
        if shared := found.shared(capture):
            peer = next((p for p in running() if min(live) in p.queues), None)
            named = peer.describe() if peer is not None else f"queue {min(live)}"
            raise FwemuError(
                f"another fwemu captures the same {iptables.protocol_names(shared)} flows in "
                f"{where} ({named}): this run's rules would go above its own and take them all; "
                "stop it first, or capture other flows (--proto, --in-interface, "
                "--out-interface, --src, --dst)"
            )


def _table(name: str) -> Iterator[list[str]]:
    """The rows of /proc/net/NAME (this thread's namespace), split, without the heading."""
    try:
        with open(f"{_PROC_NET}/{name}", encoding="utf-8", errors="replace") as f:
            next(f, None)
            yield from (line.split() for line in f)
    except FileNotFoundError:
        return


def _netfilter_sockets() -> dict[int, int]:
    """Netlink portid -> socket inode of the NETLINK_NETFILTER sockets (columns: sk Eth Pid
    Groups Rmem Wmem Dump Locks Drops Inode)."""
    return {
        int(cols[2]): int(cols[9])
        for cols in _table("netlink")
        if len(cols) >= 10 and cols[1] == str(NETLINK_NETFILTER)
    }


def _listening_paths() -> dict[int, str]:
    """Socket inode -> path of the listening Unix sockets bound to a path (columns: Num
    RefCount Protocol Flags Type St Inode Path; an abstract name starts with '@')."""
    return {
        int(cols[6]): " ".join(cols[7:])
        for cols in _table("unix")
        if len(cols) >= 8 and int(cols[3], 16) & _ACCEPTING and cols[7].startswith("/")
    }


def _socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` has open (its fds read "socket:[INODE]")."""
    fds = f"/proc/{pid}/fd"
    inodes = set()
    try:
        names = os.listdir(fds)
    except OSError:  # gone, or a kernel thread
        return set()
    for fd in names:
        try:
            target = os.readlink(f"{fds}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _owners(inodes: set[int]) -> dict[int, int]:
    """Socket inode -> the pid of a process holding it, for those of `inodes` found."""
    owners: dict[int, int] = {}
    if not inodes:
        return owners
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            for inode in _socket_inodes(int(entry)) & inodes:
                owners.setdefault(inode, int(entry))
            if len(owners) == len(inodes):
                break
    return owners


def _status(pid: int, listening: dict[int, str]) -> dict[str, Any] | None:
    """The `status` reply of the control socket process `pid` listens on, if it is a fwemu and
    answers. Another program's socket is never asked: it may wait for more than our request,
    and the request would wait for its reply."""
    if "fwemu" not in _command_line(pid):
        return None
    for inode in sorted(_socket_inodes(pid) & listening.keys()):
        try:
            *_, status = request(Path(listening[inode]), Request("status"))
        except (FwemuError, OSError, ValueError):
            continue  # not a fwemu's socket, or it cannot answer now
        return status
    return None


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _command(pid: int | None) -> str:
    if pid is None:
        return ""
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""
