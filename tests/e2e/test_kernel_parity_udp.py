"""Differential test of UDP against the real nf_conntrack: the same datagrams, at the same times,
go through the kernel's conntrack (in a lab's fw namespace, tests/e2e/kernel.py) and through
fwemu's engine with the default policy (Linux's timers: udp 30 s, udp_stream 120 s, the 2 s
grace). After every step both must track the same flows: the same state, opened by the same side,
on the same timer.

The kernel's flags name fwemu's states: [UNREPLIED] is UNREPLIED, neither flag is REPLIED (seen
both ways, still the udp timer), [ASSURED] is STREAM (udp_stream). The grace is the kernel's own
(nf_conntrack_udp_packet()'s stream_ts, 2 s after the first datagram; no sysctl), so the cases
run on the wall clock, a few seconds each, and the engine is given the times the datagrams were
sent at.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import pytest

from fwemu.core.engine import Engine
from fwemu.policy.loader import loads_policy
from fwemu.policy.model import Policy
from tests.e2e.conftest import require_root
from tests.e2e.kernel import Kernel, assert_same, kernel_lab

logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.layers.inet import IP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(30)]

Step = Literal["client", "server", "delete"]  # a datagram from that side, or the flow deleted
Script = tuple[tuple[float, Step], ...]  # (seconds after the first step, step)

DEFAULT = loads_policy("")
# The kernel tracks a datagram of a flow it no longer has as NEW, its sender the client; fwemu's
# default drops a late one from the server (udp_from_server = "drop").
AS_THE_KERNEL = loads_policy('[out_of_state]\nudp_from_server = "new"')
# Linux's defaults, which a new namespace starts with: set in case this kernel's differ.
SYSCTLS = {
    "net.netfilter.nf_conntrack_udp_timeout": 30,
    "net.netfilter.nf_conntrack_udp_timeout_stream": 120,
}
# Seconds: the kernel shows whole seconds left (rounded down), and reading takes a moment.
SLACK = 2.0
PORTS = (40000, 53)  # the client's, the server's
_FLAGS = {"[UNREPLIED]": "UNREPLIED", "[ASSURED]": "STREAM"}  # neither: REPLIED


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    require_root()
    with kernel_lab(f"fwemu-ku{os.getpid()}", 78) as k:
        for key, value in SYSCTLS.items():
            k.sysctl(key, value)
        yield k


@dataclass(frozen=True)
class Flow:
    """A UDP flow as one side tracks it, just after a step."""

    state: str  # UNREPLIED, REPLIED or STREAM
    opener: str  # whose datagram opened it: client or server
    timer: str  # the timer the step left it on ("30s", "120s"), else the countdown

    def __str__(self) -> str:
        return f"{self.state} {self.timer} by the {self.opener}"


@dataclass(frozen=True)
class Seen:
    """Every UDP flow one side tracks (one at most, if both agree)."""

    flows: tuple[Flow, ...]

    def __str__(self) -> str:
        return ", ".join(map(str, self.flows)) or "no flow"


def timer(left: float | None) -> str:
    """The timer a countdown read just after a datagram is on: the full one it is within SLACK
    of, else the countdown itself (a timer the datagram did not re-arm)."""
    if left is None:
        return "no timer"
    full = next((s for s in sorted(set(SYSCTLS.values())) if s - SLACK <= left <= s), None)
    return f"{full}s" if full is not None else f"{left:.1f}s left"


def opener(src: str, client: str) -> str:
    return "client" if ipaddress.ip_address(src) == ipaddress.ip_address(client) else "server"


def kernel_flows(kernel: Kernel, client: str) -> Seen:
    """The fw namespace's UDP entries, from its /proc/net/nf_conntrack: "ipv4 2 udp 17 <seconds
    left> src=<opener> ... [UNREPLIED] src=... ... [ASSURED] ..." (IPv6 too)."""
    flows = []
    for line in (kernel.proc / "nf_conntrack").read_text().splitlines():
        fields = line.split()
        if fields[2] == "udp":
            src = next(f for f in fields if f.startswith("src="))[4:]
            state = next((_FLAGS[f] for f in fields if f in _FLAGS), "REPLIED")
            flows.append(Flow(state, opener(src, client), timer(int(fields[4]))))
    return Seen(tuple(flows))


def fwemu_flows(engine: Engine, now: float, client: str) -> Seen:
    return Seen(
        tuple(
            Flow(info.state, opener(info.flow.src, client), timer(info.expires_in))
            for info in engine.flows(now=now)
        )
    )


def datagram(side: str, client: str, server: str, v6: bool) -> bytes:
    ip = IPv6 if v6 else IP
    src, dst = (client, server) if side == "client" else (server, client)
    sport, dport = PORTS if side == "client" else PORTS[::-1]
    return bytes(ip(src=src, dst=dst) / UDP(sport=sport, dport=dport) / f"{side} says".encode())


def run_both(
    kernel: Kernel, script: Script, *, v6: bool, policy: Policy = DEFAULT
) -> list[tuple[str, Seen, Seen]]:
    """Play `script` through kernel and engine on the wall clock: what each tracks after every
    step. A deletion is `conntrack -F` in the fw namespace and `engine.expire` in fwemu."""
    kernel.flush()
    plan = kernel.plan
    client, server = (
        (plan.client.ipv6, plan.server.ipv6) if v6 else (plan.client.ipv4, plan.server.ipv4)
    )
    engine = Engine(policy)
    log = []
    start = time.monotonic()
    for at, step in script:
        # The case's own clock, not a readiness wait: the kernel's grace runs on jiffies. (A
        # datagram's readiness is kernel.send's: it returns once the datagram crossed.)
        if (wait := start + at - time.monotonic()) > 0:
            time.sleep(wait)
        now = time.monotonic() - start
        if step == "delete":
            kernel.flush()
            engine.expire(engine.keys(), now=now)
        else:
            data = datagram(step, client, server, v6)
            kernel.send(step, data)
            engine.handle_packet(data, now=now)
        theirs = kernel_flows(kernel, client)
        ours = fwemu_flows(engine, time.monotonic() - start, client)
        log.append((f"{now:5.2f}s {step}", theirs, ours))
    return log


CASES: dict[str, Script] = {
    # Seen one way only, past the grace too: never a stream.
    "one way only": ((0.0, "client"), (0.5, "client"), (2.5, "client")),
    # The reply makes it REPLIED (IPS_SEEN_REPLY, set after the reply's own timer: 30 s).
    "query and reply (DNS)": ((0.0, "client"), (0.05, "server")),
    # A resolver's A and AAAA queries and answers, then another lookup, all within the grace:
    # still the udp timer (a lookup's flow goes 30 s later, not 120 s).
    "A and AAAA within the grace": (
        (0.0, "client"),
        (0.01, "client"),
        (0.05, "server"),
        (0.06, "server"),
        (1.5, "client"),
        (1.55, "server"),
    ),
    "a reply, then a datagram after the grace": ((0.0, "client"), (0.1, "server"), (2.5, "client")),
    # The first reply comes after the grace: it still gets 30 s; the next datagram assures.
    "the first reply after the grace": ((0.0, "client"), (2.5, "server"), (2.6, "client")),
    "a stream's later datagrams": (
        (0.0, "client"),
        (0.1, "server"),
        (2.5, "server"),
        (2.6, "client"),
        (3.0, "server"),
        (3.1, "client"),
    ),
}

LATE: dict[str, Script] = {
    # The reply to a deleted flow opens a new one, the server its client; the client's datagram
    # is then its reply.
    "a late reply after the flow was deleted": (
        (0.0, "client"),
        (0.1, "server"),
        (0.2, "delete"),
        (0.3, "server"),
        (0.4, "client"),
    ),
    "the client's next query after the flow was deleted": (
        (0.0, "client"),
        (0.1, "server"),
        (0.2, "delete"),
        (0.3, "client"),
        (0.4, "server"),
    ),
    # The new flow's grace starts at its own first datagram: not a stream yet.
    "a stream's late reply after it was deleted": (
        (0.0, "client"),
        (0.1, "server"),
        (2.5, "client"),
        (2.6, "delete"),
        (2.7, "server"),
        (2.8, "client"),
    ),
}

IPS = pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])


@IPS
@pytest.mark.parametrize("name", list(CASES))
def test_udp_states_and_timers_as_the_kernel(kernel: Kernel, name: str, v6: bool) -> None:
    assert_same(run_both(kernel, CASES[name], v6=v6))


@IPS
@pytest.mark.parametrize("name", list(LATE))
def test_late_datagrams_open_a_flow_as_in_the_kernel(kernel: Kernel, name: str, v6: bool) -> None:
    assert_same(run_both(kernel, LATE[name], v6=v6, policy=AS_THE_KERNEL))
