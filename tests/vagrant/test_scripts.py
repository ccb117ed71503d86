"""The lab's shell scripts: shellcheck-clean; the client's idle scenario telling apart what an
application sees (a reply, a reset, silence), played against a stand-in redis on loopback; and
check.sh undoing what its own libvirtd leaves in the host's namespace, in a namespace of its own."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.e2e.conftest import require_root

from .helpers import SHELL_SCRIPTS, VAGRANT, run, tool

_SCENARIO = VAGRANT / "scenario-idle.sh"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script: Path) -> None:
    done = run(tool("shellcheck"), "--external-sources", str(script))
    assert done.returncode == 0, done.stdout


@contextmanager
def redis_standin(then: str) -> Iterator[int]:
    """A one-connection server on loopback (its port is yielded) that answers the first PING and
    then, to the next one: "answer", "reset" (a RST, right after the first reply) or "ignore"."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        stop = threading.Event()

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"+PONG\r\n")
                if then == "reset":  # SO_LINGER with a zero timeout: close() sends a RST
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.recv(64)
                if then == "answer":
                    conn.sendall(b"+PONG\r\n")
                stop.wait(10)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            thread.join()


def scenario(*args: str) -> tuple[int, str]:
    done = run(tool("bash"), str(_SCENARIO), *args, env=os.environ | {"WAIT": "1"})
    return done.returncode, done.stdout.strip()


@pytest.mark.parametrize(
    ("then", "status", "verdict"),
    [("answer", 0, "alive"), ("reset", 1, "reset"), ("ignore", 3, "hang")],
)
def test_idle_scenario_reports_what_the_application_saw(
    then: str, status: int, verdict: str
) -> None:
    with redis_standin(then) as port:
        assert scenario("0", "127.0.0.1", str(port)) == (status, verdict)


def test_idle_scenario_without_a_server_or_with_bad_arguments_is_an_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    assert scenario("0", "127.0.0.1", str(port))[0] == 2
    assert scenario("soon")[0] == 2


# What libvirtd does to a host's namespace (the chains and jumps of libvirt 9, abridged), between
# record_host_net and undo_libvirt_host_net, in a new network namespace with a rule of its own.
_LIBVIRTD = """
iptables -N LIBVIRT_INP && iptables -A INPUT -j LIBVIRT_INP
iptables -A LIBVIRT_INP -i virbr0 -p udp --dport 53 -j ACCEPT
iptables -N LIBVIRT_FWX && iptables -A FORWARD -j LIBVIRT_FWX
iptables -t nat -N LIBVIRT_PRT && iptables -t nat -A POSTROUTING -j LIBVIRT_PRT
iptables -t nat -A LIBVIRT_PRT -s 192.168.121.0/24 ! -d 192.168.121.0/24 -j MASQUERADE
ip6tables -N LIBVIRT_OUT && ip6tables -A OUTPUT -j LIBVIRT_OUT
sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
"""


def _host_after_libvirtd(before: str) -> str:
    """The namespace's rules and forwarding after `before`, record, libvirtd and undo."""
    steps = (
        f"source {VAGRANT}/lib.sh; source {VAGRANT}/libvirt-leftovers.sh",
        "sysctl -q -w net.ipv4.ip_forward=0 net.ipv6.conf.all.forwarding=0",
        "iptables -A INPUT -s 192.0.2.1 -j DROP",
        before,
        "record_host_net",
        _LIBVIRTD,
        "undo_libvirt_host_net",
        "iptables-save; ip6tables-save; sysctl net.ipv4.ip_forward net.ipv6.conf.all.forwarding",
    )
    done = run(tool("unshare"), "--net", tool("bash"), "-euc", "\n".join(steps))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_check_undoes_the_chains_and_forwarding_its_libvirtd_left() -> None:
    require_root()
    host = _host_after_libvirtd(before="")
    assert "LIBVIRT" not in host
    assert "-A INPUT -s 192.0.2.1/32 -j DROP" in host
    assert "net.ipv4.ip_forward = 0" in host
    assert "net.ipv6.conf.all.forwarding = 0" in host


def test_check_leaves_alone_the_chains_of_a_libvirtd_that_was_there_before() -> None:
    require_root()
    host = _host_after_libvirtd(before="iptables -N LIBVIRT_FWO")
    assert "-A INPUT -j LIBVIRT_INP" in host
    assert "-A POSTROUTING -j LIBVIRT_PRT" in host
    assert "net.ipv4.ip_forward = 1" in host
