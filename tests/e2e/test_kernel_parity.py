"""Differential test against the real nf_conntrack: the same packet bytes go through the kernel's
conntrack (in a lab's fw namespace) and through fwemu's engine, and after every packet both must
name the same state and agree on whether it was INVALID (tests/e2e/kernel.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.core.trace import Trace
from tests.e2e.conftest import require_root
from tests.e2e.kernel import Kernel, kernel_lab, report, run_both

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    require_root()
    with kernel_lab(f"fwemu-kp{os.getpid()}", 77) as k:
        yield k


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
    assert [e for _, _, e in log] == [k for _, k, _ in log], report(log)


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
    assert [e for _, _, e in log] == [k for _, k, _ in log], report(log)
