"""Differential test against the real nf_conntrack: the same packet bytes go through the kernel's
conntrack (in a lab's fw namespace) and through fwemu's engine, and after every packet both must
name the same state and agree on whether it was INVALID (tests/e2e/kernel.py).

Scripted cases first (issue 12's divergence classes and spoofs by name), then generated
conversations (tests/e2e/conversations.py): TCP-plausible ones, and hostile ones aimed at the
kernel's window checks. Each runs over IPv4 and IPv6.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterator

import pytest
from hypothesis import Phase, given, settings

from fwemu.core.packet import encode_options
from tests.core.trace import Trace
from tests.e2e.conftest import require_root
from tests.e2e.conversations import (
    HANDSHAKE,
    PLAUSIBLE,
    Conversation,
    Move,
    Num,
    Script,
    conversations,
    play,
    script,
)
from tests.e2e.kernel import LINUX, Kernel, assert_same, kernel_lab, run_both

pytestmark = pytest.mark.e2e

# fwemu's side of the kernel's nf_conntrack_tcp_be_liberal=1: only RSTs are checked.
LIBERAL = dataclasses.replace(
    LINUX,
    default=dataclasses.replace(
        LINUX.default,
        out_of_state=dataclasses.replace(LINUX.default.out_of_state, window_check=False),
    ),
)
IPS = pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
# Every example costs real packets (~1 ms each): no explain phase, whose re-runs double the time a
# failure takes to report (shrinking alone stays well under the test's time-out).
GENERATED = settings(deadline=None, phases=[p for p in Phase if p != Phase.explain])


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    require_root()
    with kernel_lab(f"fwemu-kp{os.getpid()}", 77) as k:
        yield k


@pytest.fixture
def liberal(kernel: Kernel) -> Iterator[Kernel]:
    """The lab's kernel with be_liberal on for one test, and off again whatever happens."""
    kernel.liberal(True)
    try:
        yield kernel
    finally:
        kernel.liberal(False)


# -- issue 12's divergence classes


def fin_far_beyond_the_window(t: Trace) -> None:
    """A FIN ~1.1 GB past what the client acknowledged (a capture with a gap): the kernel calls it
    INVALID ("SEQ is over upper bound") and stays ESTABLISHED; the connection goes on."""
    t.handshake(at=0)
    t.client("PA", 100, at=0)
    t.server("PA", 300, at=0)
    t.client("A", at=0)
    t.server("FA", at=0, seq=t.c.rcv_nxt + 1_100_000_000)
    t.client("PA", 10, at=0)
    t.server("A", at=0)


def spoofed_syns_ahead_of_the_real_one(t: Trace) -> None:
    """Spoofed SYNs on the port pair before the real one: a SYN re-initialises the tracked one
    only if its sequence is after it, so the kernel keeps the first spoof's ISN; the real
    SYN/ACK, acknowledging the real ISN, is under the ACK's lower bound and ignored (SYN_SENT
    stays), and the client's ACK is INVALID in SYN_SENT."""
    t.client("S", at=0, seq=0x4000_0000)
    t.client("S", at=0, seq=0x3000_0000)  # before the first: no re-initialisation
    t.handshake(at=0)  # ISN 1000, before both
    t.server("SA", at=0)  # its retransmission
    t.client("PA", 10, at=0)


def spoofed_syn_behind_the_real_one(t: Trace) -> None:
    """A spoofed SYN whose ISN is before the real one's: the real SYN re-initialises the
    direction, and the handshake completes."""
    t.client("S", at=0, seq=500)
    t.handshake(at=0)
    t.client("PA", 10, at=0)


def fast_open_server_sends_first(t: Trace) -> None:
    """A TCP Fast Open server answers the SYN's data at once with data and a FIN, before the
    client's first ACK: its window edge is still the one the client's SYN gave, so all but the
    first segment start beyond it, and Linux 6.1+ ignores them ("bytes more than expected")
    instead of calling them INVALID; SYN_RECV stays until the client's ACK."""
    options = encode_options(mss=1460, sack_perm=True, wscale=7)
    t.client("S", 20, at=0, options=options)
    t.server("SA", at=0, options=options)
    t.server("PA", 1400, at=0)
    t.server("PA", 600, at=0)
    t.server("FA", at=0)
    t.client("A", at=0)
    t.client("FA", at=0)
    t.server("A", at=0)


# -- spoofs into an idle flow


def spoofed(*, fins: int = 0, data: int = 0, rsts: int = 0, syns: int = 0) -> Script:
    """A third party in the client's namespace that knows only the four-tuple injects FIN|ACKs,
    data, RSTs and SYNs with guessed numbers into an idle ESTABLISHED flow; then the real
    endpoints talk and close, as they do when the firewall kept the flow ESTABLISHED."""

    def steps(t: Trace) -> None:
        guess = random.Random(12).getrandbits  # the same guesses on every run
        t.handshake(at=0)
        t.client("PA", 100, at=0)
        t.server("PA", 300, at=0)
        t.client("A", at=0)
        acked = t.s.rcv_nxt
        for _ in range(fins):
            t.client("FA", at=0, seq=guess(32), ack=guess(32))
        for _ in range(data):
            t.client("PA", 100, at=0, seq=guess(32), ack=guess(32))
        for _ in range(rsts):
            t.client("R", at=0, seq=guess(32))
        for _ in range(syns):
            t.client("S", at=0, seq=guess(32))
        t.s.rcv_nxt = acked  # the server's stack dropped them all: none was in its window
        t.client("PA", 10, at=0)
        t.server("A", at=0)
        t.server("PA", 10, at=0)
        t.client("A", at=0)
        t.client("FA", at=0)
        t.server("FA", at=0)
        t.client("A", at=0)

    return steps


SPOOF_SET = spoofed(fins=16, data=64, rsts=16, syns=4)  # issue 12's attacks, one after another


# -- the window's edges


def zero_window(t: Trace) -> None:
    """A SYN/ACK with a zero window leaves the client one byte: it probes (Linux: an empty
    segment one below its next byte, here three times), sends one byte, then 100 bytes starting
    at the edge and a FIN beyond it; the window opens and the FIN goes again."""
    t.client("S", at=0)
    t.server("SA", at=0, window=0)
    t.client("A", at=0)
    probe = t.c.nxt - 1
    for _ in range(3):
        t.client("A", at=0, seq=probe)
    t.client("PA", 1, at=0)
    t.server("A", at=0, window=0)
    t.client("PA", 100, at=0)
    fin = t.c.nxt
    t.client("FA", at=0)
    t.server("A", at=0, ack=fin, window=0xFFFF)
    t.client("FA", at=0, seq=fin)


def window_scaling(client: int | None, server: int | None, *, simultaneous: bool = False) -> Script:
    """The server advertises 100 bytes (12,800 with a scale of 7); the client sends 1,000 and a
    FIN, which lies in the scaled window only. Scaling counts only if both SYNs offer it: then
    the FIN moves the flow on; else the kernel ignores it as beyond the window."""

    def steps(t: Trace) -> None:
        t.client("S", at=0, options=encode_options(mss=1460, wscale=client))
        if simultaneous:
            t.server("S", at=0, window=100, options=encode_options(mss=1460, wscale=server))
            t.client("SA", at=0, options=encode_options(mss=1460, wscale=client))
        t.server("SA", at=0, window=100, options=encode_options(mss=1460, wscale=server))
        t.client("A", at=0)
        t.server("A", at=0, window=100)
        t.client("PA", 1000, at=0)
        t.client("FA", at=0)
        t.server("FA", at=0)
        t.client("A", at=0)

    return steps


def sack_blocks(*, permitted: bool, right: int) -> Script:
    """The client sends 4 x 100 bytes into a 300-byte window; the server acknowledges the first,
    SACKs a block ending `right` bytes on and advertises 100. Only if the client's SYN permitted
    SACK does the kernel read the block: its right edge, not the ACK, then sets the client's
    window edge (the FIN at the client's next byte is in it), and a block past what the client
    sent is "ACK is over upper bound" (INVALID). Without, the FIN is beyond the window."""

    def steps(t: Trace) -> None:
        options = encode_options(mss=1460, sack_perm=permitted)
        t.client("S", at=0, options=options)
        t.server("SA", at=0, window=300, options=options)
        t.client("A", at=0)
        first = t.c.nxt
        for _ in range(4):
            t.client("PA", 100, at=0)
        block = ((first + right - 100, first + right),)
        t.server("A", at=0, ack=first + 100, window=100, options=encode_options(sack=block))
        t.client("FA", at=0)
        t.server("FA", at=0)
        t.client("A", at=0)

    return steps


def acks_out_of_bounds(t: Trace) -> None:
    """The ACK's bounds: a FIN acknowledging one byte more than the client sent is INVALID ("ACK
    is over upper bound"); one acknowledging more than MAXACKWINDOW (66,000) below is ignored;
    neither moves the flow, and the real FIN then does."""
    t.handshake(at=0)
    t.client("PA", 100, at=0)
    fin = t.s.nxt
    t.server("FA", at=0, seq=fin, ack=t.c.nxt + 1)
    t.server("FA", at=0, seq=fin, ack=t.c.nxt - 70_000)
    t.server("FA", at=0, seq=fin)
    t.client("A", at=0)


def rst_ack_with_ack_zero(t: Trace) -> None:
    """RST|ACK with ack 0 (stacks that set ACK on every RST): the kernel takes the ACK as in
    window. One off the exact sequence keeps ESTABLISHED (a challenge ACK may come); the exact
    one closes."""
    t.handshake(at=0)
    t.client("PA", 10, at=0)
    t.server("A", at=0)
    t.client("RA", at=0, seq=t.c.nxt + 5000, ack=0)
    t.client("RA", at=0, ack=0)


def retransmissions(t: Trace) -> None:
    """Every segment of a connection sent 3 or 4 times, as a stack does under loss."""
    play(
        t,
        Move("client", "S", times=3),
        Move("server", "SA", times=3),
        Move("client", "A"),
        Move("client", "PA", 100, times=4),
        Move("server", "A", times=3),
        Move("client", "FA", times=3),
        Move("server", "FA", times=3),
        Move("client", "A", times=3),
    )


def new_syn_after_rst(t: Trace) -> None:
    """After the client's RST, its new SYN with another ISN re-opens the entry (the kernel's
    re-open rule: the last packet in window was a RST in the SYN's direction)."""
    t.handshake(at=0)
    t.client("PA", 10, at=0)
    t.client("RA", at=0)
    play(t, Move("client", "S", seq=Num("abs", 777_777), restart=True))
    t.server("SA", at=0)
    t.client("A", at=0)


SCENARIOS: dict[str, Script] = {
    "handshake, data, client closes": script(
        *HANDSHAKE, "client PA 10", "server A", "client FA", "server A", "server FA", "client A"
    ),
    "server closes first, simultaneous FINs": script(
        *HANDSHAKE, "server FA", "client FA", "server A", "client A"
    ),
    "client resets an established flow": script(
        *HANDSHAKE, "server PA 5", "client A", "client RA", "client A"
    ),
    "refused: RST|ACK answers the SYN": script("client S", Move("server", "RA", seq=Num("abs"))),
    "simultaneous open": script(
        "client S",
        "server S",
        Move("client", "SA", ack=Num("abs", 5001)),
        Move("server", "SA", seq=Num("abs", 5000), ack=Num("abs", 1001)),
        "server A",
        "client A",
    ),
    "SYN in ESTABLISHED is ignored": script(
        *HANDSHAKE, Move("client", "S", seq=Num("abs", 77777)), "client PA 3"
    ),
    "mid-stream pickup": script("client PA 10", "server A", "server PA 4", "client FA"),
    "invalid flags and orphan SYN/ACK": script(
        "server SA", "client F", "client S", "client F", "server SA", "client A"
    ),
    "SYN reopens TIME_WAIT": script(
        *HANDSHAKE,
        "client FA",
        "server FA",
        "client A",
        Move("client", "S", seq=Num("abs", 900000)),  # a new connection on the same ports
        Move("server", "SA", ack=Num("abs", 900001)),
    ),
    # issue 12's divergence classes
    "FIN far beyond the receiver's window": fin_far_beyond_the_window,
    "spoofed SYNs ahead of the real one": spoofed_syns_ahead_of_the_real_one,
    "spoofed SYN behind the real one": spoofed_syn_behind_the_real_one,
    "TCP Fast Open server sends before the client's ACK": fast_open_server_sends_first,
    # spoofs into an idle ESTABLISHED flow
    "spoofed FIN|ACKs": spoofed(fins=16),
    "spoofed data": spoofed(data=64),
    "spoofed RSTs": spoofed(rsts=16),
    "spoofed SYNs": spoofed(syns=4),
    "issue 12's spoof set": SPOOF_SET,
    # the window's edges
    "zero window and its probes": zero_window,
    "window scaling on": window_scaling(7, 7),
    "window scaling off: only the client offers it": window_scaling(7, None),
    "window scaling off: only the server offers it": window_scaling(None, 7),
    "simultaneous open with window scaling": window_scaling(7, 7, simultaneous=True),
    # found by the hostile generator: the reply's SYN leaves its sender no window yet, so its RST
    # one past its SYN overshoots (ignored), and 70,000 past it is INVALID; neither closes
    "simultaneous open, the server's RST just beyond its SYN": script(
        "client S", "server S", Move("server", "R", seq=Num("next", 1)), "server R"
    ),
    "simultaneous open, the server's RST far beyond its SYN": script(
        "client S", "server S", Move("server", "R", seq=Num("next", 70_000)), "server R"
    ),
    "SACK block raises the window edge": sack_blocks(permitted=True, right=400),
    "SACK block without SACK permitted": sack_blocks(permitted=False, right=400),
    "SACK block past what was sent": sack_blocks(permitted=True, right=500),
    "ACKs above what was sent and far below": acks_out_of_bounds,
    "RST|ACK with ack 0": rst_ack_with_ack_zero,
    "retransmissions": retransmissions,
    "new SYN after a RST": new_syn_after_rst,
}


@IPS
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_states_as_the_kernel(kernel: Kernel, name: str, v6: bool) -> None:
    assert_same(run_both(kernel, SCENARIOS[name], v6=v6))


@IPS
def test_spoofs_with_window_checks_off_as_the_kernel_with_be_liberal(
    liberal: Kernel, v6: bool
) -> None:
    assert_same(run_both(liberal, SPOOF_SET, v6=v6, policy=LIBERAL))


@IPS
@settings(GENERATED, max_examples=50)
@given(PLAUSIBLE)
def test_plausible_conversations_match_the_kernel(
    kernel: Kernel, v6: bool, moves: list[Move]
) -> None:
    assert_same(run_both(kernel, lambda t: play(t, *moves), v6=v6))


@IPS
@settings(GENERATED, max_examples=200)
@given(conversations())
def test_hostile_conversations_match_the_kernel(
    kernel: Kernel, v6: bool, conversation: Conversation
) -> None:
    assert_same(run_both(kernel, conversation.play, v6=v6))
