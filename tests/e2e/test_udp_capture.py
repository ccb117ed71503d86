"""`fwemu run --proto`: UDP is queued like TCP (its own jump into fwemu's chain, IPv4 and IPv6),
a protocol left out passes unqueued, stopping leaves no rule, and runs queueing different
protocols share a namespace (`fwemu ps --json` names each one's).

What is asserted is what the adapters see (fwemu's received packets, the rules' counters), not
UDP flow states: those are the core's (tests/core)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess

import pytest

from fwemu.adapters import iptables
from fwemu.lab import call_in_netns, namespace_name
from fwemu.ops.client import request
from fwemu.ops.control import default_path
from fwemu.ops.protocol import Request
from fwemu.testing import (
    STARTED,
    STARTUP_TIMEOUT,
    Firewall,
    FwemuProcess,
    inline_firewall,
    tcp_exchange,
)
from tests.adapters.nfq_lab import in_netns
from tests.e2e.conftest import require_root
from tests.lab.helpers import FWEMU

pytestmark = pytest.mark.e2e

DATAGRAMS = 5  # per family, each echoed: twice as many packets cross fwemu
# iptables-save -c: "[packets:bytes] -A FORWARD -p udp -m comment --comment ... -j FWEMU-Q0"
_JUMP = re.compile(r"^\[(?P<packets>[0-9]+):[0-9]+\] -A FORWARD -p (?P<proto>\w+) .*-j FWEMU-Q0$")


def udp_echo(fw: Firewall, count: int, *, v6: bool = False) -> list[bytes]:
    """`count` datagrams from the lab's client to a server that echoes each; what came back."""
    family = socket.AF_INET6 if v6 else socket.AF_INET
    with (
        fw.server_socket(family, socket.SOCK_DGRAM) as server,
        fw.client_socket(family, socket.SOCK_DGRAM) as client,
    ):
        for sock in (server, client):
            sock.settimeout(5)
        server.bind((fw.server_address(v6), 0))
        echoed = []
        for i in range(count):
            client.sendto(b"datagram %d" % i, server.getsockname()[:2])
            data, sender = server.recvfrom(64)
            server.sendto(data, sender)
            echoed.append(client.recv(64))
        return echoed


def fwemu(*argv: str) -> subprocess.CompletedProcess[str]:
    """`fwemu ARGV`, expected to end by itself (a listing, a refusal)."""
    return subprocess.run(
        [FWEMU, *argv], capture_output=True, text=True, timeout=STARTUP_TIMEOUT, check=False
    )


def sent(count: int) -> list[bytes]:
    return [b"datagram %d" % i for i in range(count)]


def jump_counters(namespace: str) -> dict[tuple[str, str], int]:
    """(tool, protocol) -> packets counted by fwemu's FORWARD jump for that protocol."""
    return {
        (tool, jump["proto"]): int(jump["packets"])
        for tool in ("iptables-save", "ip6tables-save")
        for line in in_netns(namespace, tool, "-c").splitlines()
        if (jump := _JUMP.match(line))
    }


def fwemu_rules(namespace: str) -> list[str]:
    """What of fwemu is left in `namespace`'s rulesets, both families."""
    return [
        line
        for tool in ("iptables-save", "ip6tables-save")
        for line in in_netns(namespace, tool).splitlines()
        if "FWEMU" in line or "NFQUEUE" in line
    ]


def test_proto_udp_queues_udp_both_families_and_tcp_passes_unqueued() -> None:
    require_root()
    with inline_firewall(extra_args=["--proto", "udp"]) as fw:
        namespace = fw.plan.fw_client_side.namespace
        assert "(all forwarded UDP)" in fw.fwemu.wait_for(STARTED)
        assert fw.status()["protocols"] == ["udp"]
        assert jump_counters(namespace) == {
            ("iptables-save", "udp"): 0,
            ("ip6tables-save", "udp"): 0,
        }

        assert udp_echo(fw, DATAGRAMS) == sent(DATAGRAMS)
        assert udp_echo(fw, DATAGRAMS, v6=True) == sent(DATAGRAMS)
        status = fw.status()
        assert (status["packets"], status["accepted"]) == (4 * DATAGRAMS, 4 * DATAGRAMS)
        assert jump_counters(namespace) == {
            ("iptables-save", "udp"): 2 * DATAGRAMS,
            ("ip6tables-save", "udp"): 2 * DATAGRAMS,
        }

        assert tcp_exchange(fw.plan, b"not queued") == b"not queued"
        assert tcp_exchange(fw.plan, b"nor over v6", ipv6=True) == b"nor over v6"
        assert fw.status()["packets"] == 4 * DATAGRAMS
        # What the bypass watch compares with what fwemu received: nothing went past it.
        assert call_in_netns(namespace, lambda: iptables.queued_packets(0)) == 4 * DATAGRAMS

        assert fw.stop() == 0
        assert fwemu_rules(namespace) == []
        assert f"{4 * DATAGRAMS} packets, {4 * DATAGRAMS} accepted" in fw.fwemu.lines[-1]


def test_by_default_udp_and_tcp_are_both_queued() -> None:
    require_root()
    with inline_firewall() as fw:
        assert "(all forwarded TCP and UDP)" in fw.fwemu.wait_for(STARTED)
        assert udp_echo(fw, DATAGRAMS, v6=True) == sent(DATAGRAMS)
        assert fw.status()["packets"] == 2 * DATAGRAMS
        assert tcp_exchange(fw.plan) == b"ping"
        assert fw.status()["packets"] >= 2 * DATAGRAMS + 5  # the handshake, data, echo, ...
        counted = jump_counters(fw.plan.fw_client_side.namespace)
        assert counted[("ip6tables-save", "udp")] == 2 * DATAGRAMS
        assert counted[("iptables-save", "tcp")] >= 5


def test_runs_queueing_different_protocols_share_a_namespace() -> None:
    """UDP on queue 0 and TCP on queue 1 take each their own; a third run queueing both would
    take the first one's UDP, and is refused saying so. Both serve their default control
    sockets, where `fwemu ps` looks."""
    require_root()
    name = f"fwemu-{os.getpid()}-proto"
    namespace = namespace_name(name, "fw")
    first = ["--proto", "udp", "--control", str(default_path(0, namespace))]
    with inline_firewall(name=name, extra_args=first) as udp:
        tcp = FwemuProcess.start(
            ["run", "--netns", namespace, "--preset", "aws-nlb", "--proto", "tcp", "--queue", "1"],
            command=(FWEMU,),
        )
        try:
            tcp.wait_for(STARTED)
            assert tcp_exchange(udp.plan) == b"ping"
            assert udp_echo(udp, DATAGRAMS) == sent(DATAGRAMS)
            assert udp.status()["packets"] == 2 * DATAGRAMS
            *_, tcp_status = request(default_path(1, namespace), Request("status"))
            assert tcp_status["packets"] >= 5  # the handshake, data, echo, ...
            listed = fwemu("ps", "--json", "--netns", namespace)
            assert listed.returncode == 0, listed.stderr
            runs = {run["queues"][0]: run["protocols"] for run in json.loads(listed.stdout)}
            assert runs == {0: ["udp"], 1: ["tcp"]}

            both = fwemu("run", "--netns", namespace, "--preset", "linux", "--queue", "2")
            assert (both.returncode, both.stdout) == (2, "")
            assert both.stderr.startswith(
                f"fwemu: another fwemu captures the same UDP flows in network namespace "
                f"{namespace} (queue 0, pid {udp.process.pid}, policy linux): "
            )
        finally:
            assert tcp.stop() == 0
