"""The process's own situation: privileges and network namespace."""

from __future__ import annotations

import ctypes
import os

from fwemu.errors import FwemuError

NETNS_DIR = "/run/netns"  # where `ip netns add` and pyroute2 keep named namespaces
CLONE_NEWNET = 0x40000000  # <linux/sched.h>; os.setns only exists from Python 3.12


class HostError(FwemuError):
    """fwemu cannot run here: missing privileges or namespace."""


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
