"""tcp_in_window() through the engine: what a spoofer knowing only the four-tuple can and cannot
change, the timer caps, and `window_check = false`. The same behaviours are checked against the
real kernel in tests/e2e/test_kernel_parity.py; these pin them over explicit time.

Client ISN 1000, server ISN 5000 (tests/core/trace.py).
"""

from __future__ import annotations

import dataclasses
import random

from fwemu.core.decision import Reason, Verdict
from fwemu.core.events import FlowExpired, OutOfState, ResetSent
from fwemu.core.packet import encode_options
from fwemu.policy.model import ExpireAction, Policy

from .trace import Trace, make_policy

HOUR = 3600.0
UNMOVED = {Reason.OUT_OF_STATE, Reason.IGNORED}  # what a segment that changes nothing gets


def idle_flow(policy: Policy | None = None) -> Trace:
    """An ESTABLISHED flow that exchanged data both ways and is idle at t=1."""
    t = Trace(policy or make_policy(established=HOUR, on_established=ExpireAction.RESET_BOTH))
    t.handshake(at=0.0)
    t.client("PA", 100, at=0.5)
    t.server("PA", 50, at=0.6)
    t.client("A", at=1.0)
    return t


def liberal(policy: Policy) -> Policy:
    oos = dataclasses.replace(policy.default.out_of_state, window_check=False)
    return dataclasses.replace(
        policy, default=dataclasses.replace(policy.default, out_of_state=oos)
    )


def spoof(t: Trace, flags: str, count: int, *, at: float, length: int = 0) -> list[Reason]:
    """`count` segments from the client's address with random sequence and ACK numbers."""
    rnd = random.Random(12)
    return [
        t.client(flags, length, at=at, seq=rnd.getrandbits(32), ack=rnd.getrandbits(32)).reason
        for _ in range(count)
    ]


def resets(t: Trace, now: float) -> list[tuple[str, int, int | None]]:
    return [(e.to, e.seq, e.ack) for e in t.advance(now).events if isinstance(e, ResetSent)]


class TestSpoofedSegments:
    def test_out_of_window_fins_do_not_close_the_flow(self) -> None:
        t = idle_flow()
        # Each is INVALID (beyond the window) or ignored (below it): none moves the flow.
        assert set(spoof(t, "FA", 16, at=2.0)) <= UNMOVED
        assert t.state() == "ESTABLISHED"
        assert t.deadline(now=2.0) == 1.0 + HOUR

    def test_out_of_window_data_does_not_move_the_numbers_of_the_rsts(self) -> None:
        t = idle_flow()
        spoof(t, "PA", 64, at=2.0, length=100)
        (info,) = t.engine.flows(now=2.0)
        assert info.next_seq == (1101, 5051)
        assert resets(t, 1.0 + HOUR) == [("client", 5051, 1101), ("server", 1101, 5051)]

    def test_guessed_rsts_do_not_close_the_flow(self) -> None:
        t = idle_flow()
        assert set(spoof(t, "R", 32, at=2.0)) <= UNMOVED
        assert t.state() == "ESTABLISHED"
        assert t.deadline(now=2.0) == 1.0 + HOUR

    def test_a_fin_far_beyond_the_window_is_invalid(self) -> None:
        t = idle_flow()
        d = t.client("FA", at=2.0, seq=1101 + 1_100_000_000)
        assert d.verdict == Verdict.DROP
        (event,) = d.events
        assert isinstance(event, OutOfState) and "over upper bound" in event.reason
        assert t.state() == "ESTABLISHED"

    def test_an_ack_far_below_is_ignored_not_invalid(self) -> None:
        t = idle_flow()
        d = t.client("A", at=2.0, ack=5051 - 200_000)
        assert (d.verdict, d.reason) == (Verdict.ACCEPT, Reason.IGNORED)
        assert "lower bound" in d.detail
        assert t.deadline(now=2.0) == 1.0 + HOUR  # ignored: the timer did not move

    def test_without_window_checks_the_spoofed_fin_is_taken(self) -> None:
        t = idle_flow(liberal(make_policy(established=HOUR)))
        d = t.client("FA", at=2.0, seq=1101 + 1_100_000_000)
        assert d.reason == Reason.IN_STATE
        assert t.state() == "FIN_WAIT"
        (info,) = t.engine.flows(now=2.0)
        assert info.next_seq == (1101, 5051)  # accepted, but the window state did not move


class TestWindowScaling:
    def test_the_window_is_scaled_only_when_both_sides_offered_it(self) -> None:
        for server_scales, verdict in ((True, Verdict.ACCEPT), (False, Verdict.DROP)):
            t = Trace(make_policy())
            t.client("S", at=0.0, options=encode_options(wscale=7))
            server = encode_options(wscale=7) if server_scales else b""
            t.server("SA", at=0.0, window=1000, options=server)
            t.client("A", at=0.0, window=1000)
            t.server("A", at=0.0, window=1000)  # 128,000 bytes scaled, 1,000 not
            # Data 100,000 bytes ahead: within a scaled window only.
            d = t.client("PA", 10, at=0.0, seq=1001 + 100_000)
            assert d.verdict == verdict, server_scales


class TestTimerCaps:
    def test_unacknowledged_data_caps_the_timer(self) -> None:
        t = Trace(make_policy(established=HOUR, unacknowledged=30.0))
        t.handshake(at=0.0)
        t.client("PA", 100, at=1.0)  # not yet acknowledged
        assert t.deadline(now=1.0) == 31.0
        t.server("A", at=2.0)
        assert t.deadline(now=2.0) == 2.0 + HOUR
        t.client("PA", 100, at=3.0)
        (expired,) = (e for e in t.advance(33.0).events if isinstance(e, FlowExpired))
        assert (expired.timeout, expired.capped_by) == (30.0, "unacknowledged")
        assert "established (unacknowledged) timer 30s" in expired.describe()

    def test_retransmissions_cap_the_timer(self) -> None:
        t = Trace(make_policy(established=HOUR, unacknowledged=None, max_retrans=20.0))
        t.handshake(at=0.0)
        t.client("PA", 10, at=0.0)
        t.server("A", at=0.0)
        for n in range(4):
            t.client("PA", 10, at=1.0 + n, seq=1001)
        assert t.deadline(now=4.0) == 24.0

    def test_a_zero_window_caps_the_timer(self) -> None:
        t = Trace(make_policy(established=HOUR, max_retrans=20.0))
        t.handshake(at=0.0)
        t.server("A", at=1.0, window=0)
        assert t.deadline(now=1.0) == 21.0

    def test_no_cap_when_the_product_has_none(self) -> None:
        t = Trace(make_policy(established=HOUR, unacknowledged=None, max_retrans=None))
        t.handshake(at=0.0)
        t.client("PA", 100, at=1.0)
        t.server("A", at=1.0, window=0)
        assert t.deadline(now=1.0) == 1.0 + HOUR
