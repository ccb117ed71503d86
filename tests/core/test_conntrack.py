"""Traces through the engine: packets in -> decisions; time advanced -> expiries and exact RSTs.

Client ISN 1000, server ISN 5000 (tests/core/trace.py), so after a handshake the client's next
sequence is 1001 and the server's 5001.
"""

from __future__ import annotations

import pytest

from fwemu.core.decision import Verdict
from fwemu.core.events import FlowDeleted, FlowExpired, FlowNew, OutOfState, ResetSent, StateChanged
from fwemu.policy.model import ExpireAction, OutOfStateAction

from .trace import Trace, make_policy

RESET_BOTH = ExpireAction.RESET_BOTH
RESET_CLIENT = ExpireAction.RESET_CLIENT
RESET_SERVER = ExpireAction.RESET_SERVER


def kinds(events: tuple[object, ...]) -> list[str]:
    return [type(e).__name__ for e in events]


class TestLifecycle:
    def test_handshake_walks_syn_sent_syn_recv_established(self) -> None:
        t = Trace(make_policy())
        d = t.client("S", at=0.0)
        assert d.verdict == Verdict.ACCEPT
        assert d.events == (FlowNew(0.0, d.events[0].flow, "SYN_SENT", "default"),)
        assert str(d.events[0].flow) == "10.0.1.2:40000 > 10.0.2.2:80"
        d = t.server("SA", at=0.1)
        assert [(e.old_state, e.state) for e in d.events if isinstance(e, StateChanged)] == [
            ("SYN_SENT", "SYN_RECV")
        ]
        d = t.client("A", at=0.2)
        assert [(e.old_state, e.state) for e in d.events if isinstance(e, StateChanged)] == [
            ("SYN_RECV", "ESTABLISHED")
        ]
        d = t.client("PA", 100, at=0.3)
        assert d.events == () and d.reason == "in-state"
        (info,) = t.engine.flows(now=0.3)
        assert info.packets == (3, 1) and info.bytes == (100, 0)
        assert info.next_seq == (1101, 5001)

    def test_orderly_close_client_first(self) -> None:
        t = Trace(make_policy())
        t.handshake()
        steps = [
            (t.client, "FA", "FIN_WAIT"),
            (t.server, "A", "CLOSE_WAIT"),
            (t.server, "FA", "LAST_ACK"),
            (t.client, "A", "TIME_WAIT"),
        ]
        for send, flags, state in steps:
            send(flags, at=1.0)
            assert t.state() == state

    def test_rst_closes_and_arms_the_close_timer(self) -> None:
        t = Trace(make_policy(close=10.0))
        t.handshake()
        t.client("R", at=5.0)
        assert t.state() == "CLOSE"
        assert t.deadline() == 15.0

    def test_every_accepted_packet_rearms_its_state_timer(self) -> None:
        t = Trace(make_policy(established=10.0))
        t.handshake(at=0.0)
        t.client("PA", 10, at=4.0)
        t.server("A", at=7.0)
        assert t.advance(16.999).events == ()
        (info,) = t.engine.flows(now=16.999)
        assert info.expires_in == pytest.approx(0.001)
        fx = t.advance(17.0)
        assert kinds(fx.events) == ["FlowExpired"]
        assert fx.events[0].ts == 17.0  # exact: last packet at 7 + 10 s, not the next sweep
        assert t.engine.flows(now=17.0) == []

    def test_shorter_timer_after_state_change_is_exact(self) -> None:
        t = Trace(make_policy(established=1000.0, fin_wait=5.0))
        t.handshake(at=0.0)
        t.client("FA", at=2.0)
        assert t.deadline() == 7.0

    def test_ipv6_flow(self) -> None:
        t = Trace(make_policy(established=3.0, on_established=RESET_CLIENT), v6=True)
        t.handshake(at=0.0)
        fx = t.advance(3.0)
        assert fx.inject == (t.rst_to_client(seq=5001, ack=1001),)
        assert fx.events[0].flow.src == "fd00:1::2"


class TestExpiryResets:
    """One case per phase: the RST each endpoint accepts (shared/reference §2.5)."""

    def test_syn_sent_client_gets_rst_ack_isn_plus_one(self) -> None:
        t = Trace(make_policy(syn_sent=5.0, on_embryonic=RESET_BOTH))
        t.client("S", at=0.0)
        fx = t.advance(5.0)
        # Client in SYN_SENT: RST|ACK, ack = ISN+1 exactly, seq 0. The server may hold a SYN_RECV
        # request whose ISN we never saw: a bare RST on the client's ISN+1.
        assert fx.inject == (t.rst_to_client(seq=0, ack=1001), t.rst_to_server(seq=1001, ack=None))

    def test_syn_recv_server_gets_client_isn_plus_one(self) -> None:
        t = Trace(make_policy(syn_recv=5.0, on_embryonic=RESET_BOTH))
        t.client("S", at=0.0)
        t.server("SA", at=1.0)
        fx = t.advance(6.0)
        assert fx.inject == (
            t.rst_to_client(seq=5001, ack=1001),  # valid whether it sits in SYN_SENT or ESTABLISHED
            t.rst_to_server(seq=1001, ack=5001),  # seq = client ISN+1, ack = server ISN+1
        )

    def test_established_both_sides_at_their_rcv_nxt(self) -> None:
        t = Trace(make_policy(established=60.0, on_established=RESET_BOTH))
        t.handshake(at=0.0)
        t.client("PA", 10, at=1.0)
        t.server("PA", 20, at=2.0)
        t.client("A", at=3.0)
        fx = t.advance(63.0)
        assert fx.inject == (
            t.rst_to_client(seq=5021, ack=1011),
            t.rst_to_server(seq=1011, ack=5021),
        )
        assert [e.to for e in fx.events if isinstance(e, ResetSent)] == ["client", "server"]

    @pytest.mark.parametrize(
        ("action", "expected"),
        [(RESET_CLIENT, ["client"]), (RESET_SERVER, ["server"]), (ExpireAction.SILENT, [])],
    )
    def test_action_picks_the_targets(self, action: ExpireAction, expected: list[str]) -> None:
        t = Trace(make_policy(established=1.0, on_established=action))
        t.handshake()
        fx = t.advance(1.0)
        assert [e.to for e in fx.events if isinstance(e, ResetSent)] == expected
        assert len(fx.inject) == len(expected)
        (expired,) = [e for e in fx.events if isinstance(e, FlowExpired)]
        assert (expired.phase, expired.action, expired.timeout) == (
            "established",
            action.value,
            1.0,
        )

    def test_half_closed_fin_wait_counts_the_fin(self) -> None:
        t = Trace(make_policy(fin_wait=5.0, on_half_closed=RESET_BOTH))
        t.handshake()
        t.client("FA", at=1.0)  # FIN consumes seq 1001
        fx = t.advance(6.0)
        assert fx.events[0].state == "FIN_WAIT"
        assert fx.inject == (
            t.rst_to_client(seq=5001, ack=1002),
            t.rst_to_server(seq=1002, ack=5001),
        )

    def test_half_closed_close_wait(self) -> None:
        t = Trace(make_policy(close_wait=5.0, on_half_closed=RESET_SERVER))
        t.handshake()
        t.client("FA", at=1.0)
        t.server("A", at=1.0)
        t.server("PA", 7, at=2.0)  # the server keeps writing into the half-closed connection
        fx = t.advance(7.0)
        assert fx.events[0].state == "CLOSE_WAIT"
        assert fx.inject == (t.rst_to_server(seq=1002, ack=5008),)

    def test_closing_last_ack(self) -> None:
        t = Trace(make_policy(last_ack=3.0, on_closing=RESET_BOTH))
        t.handshake()
        t.client("FA", at=1.0)
        t.server("FA", at=1.0)
        fx = t.advance(4.0)
        assert fx.events[0].state == "LAST_ACK"
        assert fx.inject == (
            t.rst_to_client(seq=5002, ack=1002),
            t.rst_to_server(seq=1002, ack=5002),
        )

    def test_time_wait_endpoint_gets_exact_seq_after_peer_fin(self) -> None:
        t = Trace(make_policy(time_wait=2.0, on_time_wait=RESET_CLIENT))
        t.handshake()
        t.client("FA", at=1.0)
        t.server("FA", at=1.0)
        t.client("A", at=1.0)
        fx = t.advance(3.0)
        assert fx.events[0].state == "TIME_WAIT"
        assert fx.inject == (t.rst_to_client(seq=5002, ack=1002),)  # tw_rcv_nxt = server FIN + 1

    def test_close_state_sends_nothing(self) -> None:
        t = Trace(make_policy(close=2.0, on_close=RESET_BOTH))
        t.handshake()
        t.client("R", at=1.0)
        fx = t.advance(3.0)
        assert kinds(fx.events) == ["FlowExpired"] and fx.inject == ()


class TestOutOfState:
    def test_late_packet_after_silent_expiry_names_the_expired_flow(self) -> None:
        t = Trace(make_policy(established=10.0))
        t.handshake(at=0.0)
        t.advance(10.0)
        d = t.client("PA", 5, at=30.0)
        assert d.verdict == Verdict.DROP and d.inject == ()
        (oos,) = d.events
        assert isinstance(oos, OutOfState)
        assert (oos.side, oos.action, oos.expired_at, oos.expired_phase) == (
            "client",
            "drop",
            10.0,
            "established",
        )

    def test_nat_gateway_resets_the_client_side_and_drops_the_server_side(self) -> None:
        t = Trace(
            make_policy(
                established=350.0,
                from_client=OutOfStateAction.RESET,
                from_server=OutOfStateAction.DROP,
            )
        )
        t.handshake(at=0.0)
        t.advance(350.0)
        late_server = t.server("PA", 3, at=400.0)
        assert late_server.verdict == Verdict.DROP and late_server.inject == ()
        late_client = t.client("PA", 5, at=401.0)
        assert late_client.verdict == Verdict.DROP
        # The RST a TCP stack would send: seq = the late packet's ack, no ACK flag.
        assert late_client.inject == (t.rst_to_client(seq=5001, ack=None),)
        assert [e.to for e in late_client.events if isinstance(e, ResetSent)] == ["client"]

    def test_mid_stream_ack_without_flow(self) -> None:
        t = Trace(make_policy(oos=OutOfStateAction.RESET))
        d = t.client("A", at=0.0, ack=5000)
        assert d.verdict == Verdict.DROP
        assert d.inject == (t.rst_to_client(seq=5000, ack=None),)
        assert d.events[0].side is None  # no tombstone: side unknown

    def test_syn_ack_for_no_syn_is_answered_like_a_stack(self) -> None:
        t = Trace(make_policy(oos=OutOfStateAction.RESET))
        d = t.server("SA", at=0.0, ack=1000)
        assert d.verdict == Verdict.DROP
        assert d.inject == (t.rst_to_server(seq=1000, ack=None),)

    def test_a_rst_is_never_answered_with_a_rst(self) -> None:
        t = Trace(make_policy(oos=OutOfStateAction.RESET))
        d = t.client("R", at=0.0)
        assert d.verdict == Verdict.DROP and d.inject == ()

    def test_accept_passes_without_tracking(self) -> None:
        t = Trace(make_policy(oos=OutOfStateAction.ACCEPT))
        assert t.client("PA", 5, at=0.0).verdict == Verdict.ACCEPT
        assert t.engine.flows(now=0.0) == []

    def test_pickup_creates_an_established_flow_like_tcp_loose(self) -> None:
        t = Trace(make_policy(pickup=True, established=100.0, on_established=RESET_BOTH))
        d = t.client("PA", 5, at=0.0)
        assert d.verdict == Verdict.ACCEPT and t.state() == "ESTABLISHED"
        fx = t.advance(100.0)
        # The server was never seen: its rcv_nxt is the client's next seq, its own seq unknown.
        assert t.rst_to_server(seq=1005, ack=None) in fx.inject

    def test_invalid_flags_on_a_live_flow_are_dropped_and_change_nothing(self) -> None:
        t = Trace(make_policy(oos=OutOfStateAction.RESET))
        t.handshake()
        d = t.client("F", at=1.0)  # FIN without ACK: tcp_error() rejects it
        assert d.verdict == Verdict.DROP and d.inject == ()
        assert t.state() == "ESTABLISHED"

    def test_tombstone_is_forgotten_after_remember(self) -> None:
        t = Trace(make_policy(established=1.0))
        t.handshake()
        t.advance(1.0)
        d = t.client("PA", 1, at=700.0)  # remember = 600 s in make_policy
        assert d.events[0].side is None


class TestKernelSpecialCases:
    def test_syn_retransmit_does_not_renew_the_timer(self) -> None:
        t = Trace(make_policy(syn_sent=10.0))
        t.client("S", at=0.0)
        t.client("S", at=3.0, seq=1000)
        assert t.deadline() == 10.0

    def test_rst_as_the_only_reply_deletes_the_flow(self) -> None:
        t = Trace(make_policy())
        t.client("S", at=0.0)
        d = t.server("RA", at=0.1, seq=0)
        assert kinds(d.events)[-1] == "FlowDeleted"
        assert t.engine.flows(now=0.1) == []
        late = t.client("A", at=0.2)
        assert late.verdict == Verdict.DROP and late.events[0].side is None  # no tombstone

    def test_syn_in_time_wait_reopens(self) -> None:
        t = Trace(make_policy())
        t.handshake()
        t.client("FA", at=1.0)
        t.server("FA", at=1.0)
        t.client("A", at=1.0)
        t.c.nxt = 90000
        d = t.client("S", at=2.0)
        assert kinds(d.events) == ["FlowDeleted", "FlowNew"]
        assert t.state() == "SYN_SENT"

    def test_syn_in_established_is_ignored(self) -> None:
        t = Trace(make_policy(established=100.0))
        t.handshake(at=0.0)
        d = t.client("S", at=5.0, seq=777)
        assert d.verdict == Verdict.ACCEPT and d.reason.startswith("ignored")
        assert t.state() == "ESTABLISHED" and t.deadline() == 100.0

    def test_challenge_ack_in_last_ack_is_not_the_last_ack(self) -> None:
        t = Trace(make_policy())
        t.handshake()
        t.client("FA", at=1.0)
        t.server("FA", at=1.0)
        t.client("S", at=2.0, seq=50000)  # a new SYN on the old tuple
        d = t.server("A", at=2.0)  # the server's RFC 5961 challenge ACK
        assert d.reason == "challenge ACK ignored" and t.state() == "LAST_ACK"

    def test_simultaneous_open(self) -> None:
        t = Trace(make_policy())
        t.client("S", at=0.0)
        t.server("S", at=0.0)
        assert t.state() == "SYN_SENT2"
        t.client("SA", at=0.1, ack=5001)
        assert t.state() == "SYN_RECV"
        t.server("A", at=0.2)
        assert t.state() == "ESTABLISHED"

    def test_inexact_rst_keeps_an_assured_flow_but_shortens_its_timer(self) -> None:
        t = Trace(make_policy(established=1000.0, close=10.0))
        t.handshake(at=0.0)
        t.client("PA", 10, at=1.0)
        t.server("A", at=1.0)
        d = t.client("R", at=2.0, seq=1011 + 5000)  # in window, not the server's rcv_nxt
        assert d.verdict == Verdict.ACCEPT and t.state() == "ESTABLISHED"
        assert t.deadline() == 12.0

    def test_rst_below_the_receivers_ack_is_invalid(self) -> None:
        t = Trace(make_policy())
        t.handshake()
        t.client("PA", 10, at=1.0)
        t.server("A", at=1.0)
        d = t.client("R", at=2.0, seq=1005)
        assert d.verdict == Verdict.DROP and t.state() == "ESTABLISHED"


def test_expired_and_deleted_flows_report_distinct_events() -> None:
    t = Trace(make_policy(established=1.0))
    t.handshake()
    fx = t.advance(1.0)
    assert isinstance(fx.events[0], FlowExpired)
    assert FlowDeleted.kind == "delete" and FlowExpired.kind == "expire"


class TestReload:
    def test_flows_survive_and_retime_from_their_last_packet(self) -> None:
        t = Trace(make_policy(established=100.0))
        t.handshake(at=0.0)
        t.client("PA", 5, at=4.0)
        assert t.engine.reload(make_policy(established=20.0)) == 1
        assert t.state() == "ESTABLISHED"
        assert t.deadline() == 24.0  # last packet at 4 + the new 20 s

    def test_a_timer_already_run_out_expires_at_the_next_tick(self) -> None:
        t = Trace(make_policy(established=100.0, on_established=RESET_BOTH))
        t.handshake(at=0.0)
        t.engine.reload(make_policy(established=5.0, on_established=RESET_CLIENT))
        fx = t.engine.handle_timer(now=30.0)
        assert kinds(fx.events) == ["FlowExpired", "ResetSent"]
        assert fx.events[0].action == "reset-client"

    def test_tombstones_keep_telling_the_side(self) -> None:
        t = Trace(make_policy(established=1.0))
        t.handshake()
        t.advance(1.0)
        t.engine.reload(make_policy(established=1.0, from_client=OutOfStateAction.RESET))
        d = t.client("PA", 1, at=2.0)
        assert d.events[0].side == "client" and d.inject


def test_adopt_tracks_a_mid_stream_flow_with_the_given_client() -> None:
    t = Trace(make_policy(established=10.0, on_established=RESET_BOTH))  # pickup off
    data = t.server("PA", 5, at=0.0)  # plain handling: no flow, no pickup
    assert data.verdict == Verdict.DROP
    packet = t._packet(t.s, t.c, "PA", 5, None, None)
    d = t.engine.adopt(packet, now=1.0, sender_is_client=False)
    assert d.verdict == Verdict.ACCEPT
    (new,) = d.events
    assert isinstance(new, FlowNew) and str(new.flow) == "10.0.1.2:40000 > 10.0.2.2:80"
    fx = t.advance(11.0)
    # The server sent up to 5010; nothing is known of the client's own sequence.
    assert fx.inject == (t.rst_to_client(seq=5010, ack=None), t.rst_to_server(seq=0, ack=5010))


def test_retime_sets_a_flow_s_timer_until_its_next_packet() -> None:
    t = Trace(make_policy(established=3600.0, on_established=RESET_BOTH))
    t.handshake(at=0.0)
    t.client("PA", 10, at=1.0)
    t.server("A", at=1.0)
    (key,) = t.engine.keys()
    assert t.engine.retime([key, b"gone"], now=2.0, seconds=5.0) == [key]
    assert t.deadline(now=2.0) == 7.0
    (expired, *resets) = t.advance(7.0).events
    assert isinstance(expired, FlowExpired)
    assert (expired.timeout, expired.capped_by, expired.forced) == (5.0, "fwemu expire --in", False)
    assert [type(r) for r in resets] == [ResetSent, ResetSent]  # the policy's on_expire


def test_a_packet_after_retime_arms_the_policy_timer_again() -> None:
    t = Trace(make_policy(established=3600.0))
    t.handshake(at=0.0)
    (key,) = t.engine.keys()
    t.engine.retime([key], now=1.0, seconds=5.0)
    t.client("A", at=2.0)
    assert t.deadline(now=2.0) == 2.0 + 3600.0
