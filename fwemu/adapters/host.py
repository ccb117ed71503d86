"""The process's own situation: privileges, network namespace, and the files it will write."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from fwemu.errors import FwemuError

NETNS_DIR = "/run/netns"  # where `ip netns add` and pyroute2 keep named namespaces
CLONE_NEWNET = 0x40000000  # <linux/sched.h>; os.setns only exists from Python 3.12


class HostError(FwemuError):
    """fwemu cannot run here: missing privileges or namespace, or a file it cannot write."""


def check_writable(path: Path, what: str) -> None:
    """Refuse, at start and creating nothing, a file that could not be written when its time
    comes (`what` names it): its directory must be writable (a state file is replaced by a
    renamed one) and, if it exists, the file too."""
    directory = path.parent
    problem = None
    if path.is_dir():
        problem = "it is a directory"
    elif not directory.is_dir():
        problem = f"no directory {directory}"
    elif not os.access(directory, os.W_OK | os.X_OK):
        problem = f"directory {directory} is not writable"
    elif path.exists() and not os.access(path, os.W_OK):
        problem = "it is not writable"
    if problem is not None:
        raise HostError(f"cannot write {what} {path}: {problem}")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise HostError(
            f"{what} needs root (NFQUEUE, iptables and raw sockets need CAP_NET_ADMIN and "
            "CAP_NET_RAW); run it with sudo"
        )


def enter_netns(name: str) -> None:
    """Move this process (its only thread, so far) into the named network namespace.

    Everything opened afterwards (netlink and raw sockets, iptables child processes and
    /proc/net, which follows the calling thread's namespace) then belongs to that namespace.
    """
    path = os.path.join(NETNS_DIR, name)
    if "/" in name or not os.path.exists(path):
        raise HostError(
            f"network namespace {name!r} does not exist (no {path}); see 'ip netns list'"
        )
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise HostError(f"cannot enter network namespace {name!r}: {os.strerror(err)}")
    finally:
        os.close(fd)
