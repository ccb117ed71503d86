"""Differential test against the real nf_conntrack: the same packet bytes go through the kernel's
conntrack (in a lab's fw namespace) and through fwemu's engine, and after every packet both must
name the same state.

Packets are crafted and sent with raw sockets from the client and server namespaces, whose own
stacks drop them (INPUT DROP) so that only our packets cross the fw namespace.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fwemu.lab import LabPlan, lab, run_in, socket_in
from fwemu.policy.model import OutOfStateAction
from tests.core.trace import Trace, make_policy
from tests.e2e.conftest import require_root

pytestmark = pytest.mark.e2e

# Linux-like: pick up mid-stream flows (tcp_loose=1); conntrack itself accepts INVALID packets.
LINUX = make_policy(oos=OutOfStateAction.ACCEPT, pickup=True)


ETH_P_ALL = 0x0003
ARRIVAL_TIMEOUT = 2.0  # seconds; a forwarded packet arrives within microseconds when idle


@dataclass
class Kernel:
    plan: LabPlan
    raw: dict[tuple[str, int], socket.socket]  # (side, ip version) -> raw socket
    sniffers: dict[str, socket.socket]  # side -> what arrives on its eth0

    def send(self, side: str, packet: bytes) -> None:
        """Send `packet` from `side` and return once it came out of the fw namespace at the
        other side: by then the kernel's conntrack has seen it (readiness, not a sleep)."""
        version = packet[0] >> 4
        dst = self.plan.server if side == "client" else self.plan.client
        addr = dst.ipv4 if version == 4 else dst.ipv6
        sniffer = self.sniffers["server" if side == "client" else "client"]
        _drain(sniffer)
        self.raw[(side, version)].sendto(packet, (addr, 0))
        segment = packet[(packet[0] & 0x0F) * 4 if version == 4 else 40 :]
        end = time.monotonic() + ARRIVAL_TIMEOUT
        while (left := end - time.monotonic()) > 0:
            sniffer.settimeout(left)
            try:
                if sniffer.recv(65535).endswith(segment):  # forwarding changes the IP header only
                    return
            except TimeoutError:
                break
        raise AssertionError(f"a packet from the {side} did not cross the fw namespace")

    def states(self) -> list[str]:
        out = run_in(
            self.plan.name, "fw", ["conntrack", "-L", "-p", "tcp"], capture_output=True, text=True
        )
        out6 = run_in(
            self.plan.name,
            "fw",
            ["conntrack", "-L", "-p", "tcp", "-f", "ipv6"],
            capture_output=True,
            text=True,
        )
        names = [
            line.split()[3]
            for line in (out.stdout + out6.stdout).splitlines()
            if line.startswith("tcp")
        ]
        return ["SYN_SENT2" if n == "LISTEN" else n for n in names]

    def flush(self) -> None:
        for family in ("ipv4", "ipv6"):
            run_in(self.plan.name, "fw", ["conntrack", "-F", "-f", family], capture_output=True)


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    require_root()
    with lab(f"fwemu-kp{os.getpid()}", 77) as plan:

        def sh(side: str, *argv: str) -> None:
            subprocess.run(["ip", "netns", "exec", f"{plan.name}-{side}", *argv], check=True)

        for tool in ("iptables", "ip6tables"):
            # Any rule that uses conntrack registers its hooks in the fw namespace.
            sh(
                "fw",
                tool,
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "INVALID",
                "-j",
                "ACCEPT",
            )
            for side in ("client", "server"):
                sh(side, tool, "-A", "INPUT", "-p", "tcp", "-j", "DROP")
        raw = {
            (side, v): socket_in(f"{plan.name}-{side}", fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
            for side in ("client", "server")
            for v, fam in ((4, socket.AF_INET), (6, socket.AF_INET6))
        }
        sniffers = {
            side: socket_in(
                f"{plan.name}-{side}", socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)
            )
            for side in ("client", "server")
        }
        for side, sniffer in sniffers.items():
            sniffer.bind((getattr(plan, side).ifname, 0))
        try:
            yield Kernel(plan, raw, sniffers)
        finally:
            for s in [*raw.values(), *sniffers.values()]:
                s.close()


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while sock.recv(65535):
            pass
    except BlockingIOError:
        pass


def run_both(
    kernel: Kernel, steps: Callable[[Trace], None], *, v6: bool = False
) -> list[tuple[str, str | None, str | None]]:
    """Play `steps` through kernel and engine: (step, kernel state, engine state) per packet."""
    kernel.flush()
    log: list[tuple[str, str | None, str | None]] = []
    plan = kernel.plan
    client = plan.client.ipv6 if v6 else plan.client.ipv4
    server = plan.server.ipv6 if v6 else plan.server.ipv4

    def tap(side: str, packet: bytes) -> None:
        kernel.send(side, packet)

    t = Trace(LINUX, v6=v6, client_addr=client, server_addr=server, tap=tap, count_invalid=False)
    original_send = t._send

    def send_and_compare(src, dst, flags, length, at, seq, ack):  # type: ignore[no-untyped-def]
        decision = original_send(src, dst, flags, length, at, seq, ack)
        states = kernel.states()
        k = states[0] if states else None
        e = t.state()
        log.append((f"{'client' if src is t.c else 'server'} {flags or '-'}", k, e))
        return decision

    t._send = send_and_compare  # type: ignore[method-assign]
    steps(t)
    return log


SCENARIOS: dict[str, Callable[[Trace], None]] = {
    "handshake, data, client closes": lambda t: [
        t.handshake(at=0),
        t.client("PA", 10, at=0),
        t.server("A", at=0),
        t.client("FA", at=0),
        t.server("A", at=0),
        t.server("FA", at=0),
        t.client("A", at=0),
    ],
    "server closes first, simultaneous FINs": lambda t: [
        t.handshake(at=0),
        t.server("FA", at=0),
        t.client("FA", at=0),
        t.server("A", at=0),
        t.client("A", at=0),
    ],
    "client resets an established flow": lambda t: [
        t.handshake(at=0),
        t.server("PA", 5, at=0),
        t.client("A", at=0),
        t.client("RA", at=0),
        t.client("A", at=0),
    ],
    "refused: RST|ACK answers the SYN": lambda t: [
        t.client("S", at=0),
        t.server("RA", at=0, seq=0),
    ],
    "simultaneous open": lambda t: [
        t.client("S", at=0),
        t.server("S", at=0),
        t.client("SA", at=0, ack=5001),
        t.server("SA", at=0, seq=5000, ack=1001),
        t.server("A", at=0),
        t.client("A", at=0),
    ],
    "SYN in ESTABLISHED is ignored": lambda t: [
        t.handshake(at=0),
        t.client("S", at=0, seq=77777),
        t.client("PA", 3, at=0),
    ],
    "mid-stream pickup": lambda t: [
        t.client("PA", 10, at=0),
        t.server("A", at=0),
        t.server("PA", 4, at=0),
        t.client("FA", at=0),
    ],
    "invalid flags and orphan SYN/ACK": lambda t: [
        t.server("SA", at=0),
        t.client("F", at=0),
        t.client("S", at=0),
        t.client("F", at=0),
        t.server("SA", at=0),
        t.client("A", at=0),
    ],
    "SYN reopens TIME_WAIT": lambda t: [
        t.handshake(at=0),
        t.client("FA", at=0),
        t.server("FA", at=0),
        t.client("A", at=0),
        t.client("S", at=0, seq=900000),  # a new connection on the same ports
        t.server("SA", at=0, ack=900001),
    ],
}


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_states_as_the_kernel(kernel: Kernel, name: str, v6: bool) -> None:
    log = run_both(kernel, SCENARIOS[name], v6=v6)
    assert [(k, e) for _, k, e in log] == [(k, k) for _, k, _ in log], "\n".join(
        f"{step:12} kernel={k} fwemu={e}" for step, k, e in log
    )


FLAGS = ["S", "SA", "A", "PA", "FA", "RA", "R"]


def plausible(steps: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The steps a TCP stack could take: a SYN/ACK only answers a SYN, and data or a FIN only
    follow the sender's completed handshake. (The kernel judges other packets by window checks
    fwemu does not emulate; see fwemu/core/conntrack.py.)"""
    got_syn: set[str] = set()
    sent_syn: set[str] = set()
    open_: set[str] = set()  # sides whose handshake completed
    fin: set[str] = set()
    kept = []
    for side, flags, wanted in steps:
        peer = "server" if side == "client" else "client"
        if flags == "S" and (side in got_syn or (peer in sent_syn and side not in sent_syn)):
            continue
        if flags == "SA" and side not in got_syn:
            continue
        if flags in ("PA", "FA") and (side not in open_ or side in fin):
            continue
        # No data before the handshake completes or after the FIN.
        length = 0 if side not in open_ or side in fin else wanted
        kept.append((side, flags, length))
        if "S" in flags:
            sent_syn.add(side)
            got_syn.add(peer)
            if flags == "SA":
                open_.add(peer)
        elif flags == "A" and side in open_ and peer in sent_syn and peer in got_syn:
            open_.add(peer)
        if flags == "FA":
            fin.add(side)
    return kept


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from(["client", "server"]), st.sampled_from(FLAGS), st.integers(0, 3)),
        min_size=1,
        max_size=10,
    ).map(plausible)
)
def test_random_conversations_match_the_kernel(
    kernel: Kernel, steps: list[tuple[str, str, int]]
) -> None:
    def play(t: Trace) -> None:
        for side, flags, length in steps:
            send = t.client if side == "client" else t.server
            send(flags, 0 if "S" in flags else length, at=0)

    log = run_both(kernel, play)
    assert [k for _, k, _ in log] == [e for _, _, e in log], "\n".join(
        f"{step:12} kernel={k} fwemu={e}" for step, k, e in log
    )
