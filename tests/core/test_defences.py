"""SYN-flood defences as traces: the cookie proxy's handshake and its translation of every
later packet, random early drop, block and periodical, sequence randomisation, the normaliser.

Client ISN 1000, server ISN 5000 (tests/core/trace.py); sequence numbers are given explicitly
wherever the middlebox translates them."""

from __future__ import annotations

import itertools

import pytest
from scapy.layers.inet import IP, TCP

from fwemu.core import packet as pk
from fwemu.core.decision import Decision, Reason, Verdict
from fwemu.core.engine import Engine
from fwemu.core.events import FlowNew, SynFloodAlarm
from fwemu.policy import loads_policy

from .trace import Trace

COOKIES = '[syn_flood]\nactivate = 0\naction = "syn-cookies"\n'
OFFER = pk.encode_options(mss=1460, wscale=7, sack_perm=True)
_ports = itertools.count(20000)


def parsed(data: bytes) -> pk.Segment:
    seg = pk.parse(data)
    assert isinstance(seg, pk.Segment)
    return seg


def proxied(text: str = COOKIES) -> tuple[Trace, int]:
    """A connection the proxy opened: the client's handshake with the middlebox and the
    middlebox's with the server done; the cookie the client took for the server's ISN."""
    t = Trace(loads_policy(text))
    d = t.client("S", at=0.0, options=OFFER)
    assert (d.verdict, d.reason) == (Verdict.DROP, Reason.SYN_COOKIE)
    (synack,) = d.inject
    cookie = parsed(synack).seq
    d = t.client("A", at=0.1, seq=1001, ack=cookie + 1)
    assert d.verdict == Verdict.DROP and [type(e) for e in d.events] == [FlowNew]
    (syn,) = d.inject
    assert (parsed(syn).seq, parsed(syn).wscale, parsed(syn).sack_perm) == (1000, 7, True)
    d = t.server("SA", at=0.2, seq=5000, ack=1001, options=pk.encode_options(mss=1400, wscale=3))
    assert d.verdict == Verdict.DROP
    ack, update = d.inject
    assert (parsed(ack).seq, parsed(ack).ack, parsed(ack).flags) == (1001, 5001, pk.TCP_ACK)
    # The client's window opens now, with the server's window in the scale it was told (7).
    assert (parsed(update).seq, parsed(update).ack) == ((cookie + 1) & 0xFFFFFFFF, 1001)
    assert parsed(update).window == 0xFFFF >> 7
    assert t.state() == "ESTABLISHED"
    return t, cookie


class TestCookieProxy:
    def test_the_syn_is_answered_with_the_middleboxs_options_and_nothing_is_kept(self) -> None:
        t = Trace(loads_policy(COOKIES + "[syn_proxy]\nmss = 1380\nwscale = 9\nsack_perm = false"))
        d = t.client("S", at=0.0, options=OFFER)
        seg = parsed(d.inject[0])
        assert seg.flags == pk.TCP_SYN | pk.TCP_ACK and seg.ack == 1001
        assert seg.window == 0  # as Linux's SYNPROXY: no data before the server has answered
        assert (pk.syn_mss(d.inject[0]), seg.wscale, seg.sack_perm) == (1380, 9, False)
        assert len(t.engine) == 0 and d.events == ()

    def test_handshake_then_both_ways_translated(self) -> None:
        t, cookie = proxied()
        d = t.client("PA", 10, at=0.3, seq=1001, ack=cookie + 1)
        assert d.verdict == Verdict.ACCEPT and d.rewrite is not None
        assert (parsed(d.rewrite).seq, parsed(d.rewrite).ack) == (1001, 5001)
        d = t.server("PA", 20, at=0.4, seq=5001, ack=1011, window=100)
        assert d.rewrite is not None
        out = parsed(d.rewrite)
        assert (out.seq, out.ack) == ((cookie + 1) & 0xFFFFFFFF, 1011)
        assert out.window == 100 << 3 >> 7  # the server's scale 3, the client told 7
        d = t.client("A", at=0.5, seq=1011, ack=cookie + 21)
        assert d.rewrite is not None and parsed(d.rewrite).ack == 5021
        assert d.reason is Reason.IN_STATE

    def test_a_forged_ack_opens_nothing(self) -> None:
        t = Trace(loads_policy(COOKIES))
        t.client("S", at=0.0, options=OFFER)
        d = t.client("A", at=0.1, seq=1001, ack=12345)
        assert d.reason is Reason.OUT_OF_STATE and len(t.engine) == 0

    def test_the_clients_packets_wait_until_the_server_answers(self) -> None:
        t = Trace(loads_policy(COOKIES))
        cookie = parsed(t.client("S", at=0.0, options=OFFER).inject[0]).seq
        t.client("A", at=0.1, seq=1001, ack=cookie + 1)
        d = t.client("PA", 10, at=0.15, seq=1001, ack=cookie + 1)
        assert (d.verdict, d.inject) == (Verdict.DROP, ())

    def test_a_server_that_is_down_gets_the_client_a_rst_it_accepts(self) -> None:
        t = Trace(loads_policy(COOKIES))
        cookie = parsed(t.client("S", at=0.0, options=OFFER).inject[0]).seq
        t.client("A", at=0.1, seq=1001, ack=cookie + 1)
        d = t.server("RA", at=0.2, seq=0, ack=1001)
        (rst,) = d.inject
        seg = parsed(rst)
        assert seg.flags & pk.TCP_RST and seg.seq == (cookie + 1) & 0xFFFFFFFF
        assert str(seg.src) != str(t.c.addr) and len(t.engine) == 0

    def test_expiry_rsts_carry_the_numbers_the_client_knows(self) -> None:
        t, cookie = proxied(
            COOKIES + '[timeouts]\nestablished = "1m"\n[on_expire]\ndefault = "reset-both"'
        )
        fx = t.advance(61.0)
        to_client, to_server = (parsed(p) for p in fx.inject)
        assert to_client.seq == (cookie + 1) & 0xFFFFFFFF and to_server.seq == 1001

    def test_the_asa_intercepts_past_its_embryonic_limit(self) -> None:
        e = Engine(loads_policy('[limits]\nembryonic = 1\non_embryonic = "intercept"'))
        first = Trace(e.policy, client_port=next(_ports))
        first.engine = e
        assert first.client("S", at=0.0).reason is Reason.NEW_FLOW
        second = Trace(e.policy, client_port=next(_ports))
        second.engine = e
        d = second.client("S", at=0.1, options=OFFER)
        assert d.reason is Reason.SYN_COOKIE and len(d.inject) == 1
        (event,) = d.events
        assert (event.limit, event.action) == ("embryonic", "intercept")  # type: ignore[attr-defined]


def syns(e: Engine, count: int, at: float) -> list[Decision]:
    out = []
    for _ in range(count):
        t = Trace(e.policy, client_port=next(_ports) % 60000 + 1024)
        t.engine = e
        out.append(t.client("S", at=at))
    return out


def dropped(decisions: list[Decision]) -> int:
    return sum(d.reason is Reason.SYN_FLOOD for d in decisions)


class TestRates:
    def test_random_early_drop_rises_with_the_rate_and_alarms_once_a_second(self) -> None:
        e = Engine(loads_policy("[syn_flood]\nalarm = 50\nactivate = 100\nmaximum = 200"), seed=7)
        first = syns(e, 150, at=0.0)
        assert dropped(first[:100]) == 0  # under activate
        second = syns(e, 150, at=1.0)  # at 150/s: half of them
        assert 55 <= dropped(second) <= 95
        alarms = [ev for d in first + second for ev in d.events if isinstance(ev, SynFloodAlarm)]
        assert [(a.rate, a.alarm) for a in alarms] == [(51, 50), (150, 50)]

    def test_block_drops_every_syn_while_the_rate_stays_past_activate(self) -> None:
        e = Engine(loads_policy('[syn_flood]\nactivate = 10\naction = "block"'))
        assert dropped(syns(e, 20, at=0.0)) == 10
        assert dropped(syns(e, 20, at=1.0)) == 20  # the last second was past: all blocked
        assert dropped(syns(e, 5, at=3.0)) == 0  # a quiet second between: let through

    def test_periodical_lets_activate_a_second_through(self) -> None:
        e = Engine(loads_policy('[syn_flood]\nactivate = 10\naction = "periodical"'))
        assert dropped(syns(e, 20, at=0.0)) == 10
        assert dropped(syns(e, 20, at=1.0)) == 10

    def test_per_destination_counts_each_server_apart(self) -> None:
        e = Engine(
            loads_policy('[syn_flood]\nactivate = 5\naction = "block"\ncount = "destination"')
        )
        assert dropped(syns(e, 10, at=0.0)) == 5
        t = Trace(e.policy, server_addr="10.0.2.3")
        t.engine = e
        assert t.client("S", at=0.1).reason is Reason.NEW_FLOW


class TestRandomisationAndNormaliser:
    def test_both_sides_are_shifted_and_the_table_follows_them(self) -> None:
        t = Trace(loads_policy("[normalise]\nisn_randomisation = true"), seed=3)
        d = t.client("S", at=0.0)
        assert d.rewrite is not None
        shifted_isn = parsed(d.rewrite).seq
        assert shifted_isn != 1000
        d = t.server("SA", at=0.1, seq=5000, ack=shifted_isn + 1)
        assert d.accepted and d.rewrite is not None
        server_isn = parsed(d.rewrite).seq
        assert parsed(d.rewrite).ack == 1001 and server_isn != 5000
        d = t.client("A", at=0.2, seq=1001, ack=server_isn + 1)
        assert t.state() == "ESTABLISHED" and parsed(d.rewrite or b"").ack == 5001

    @pytest.mark.parametrize("blocks", ["keep", "translate"])
    def test_sack_blocks_translated_or_left_as_on_an_asa(self, blocks: str) -> None:
        policy = f'[normalise]\nisn_randomisation = true\nsack_blocks = "{blocks}"'
        t = Trace(loads_policy(policy), seed=3)
        shifted = parsed(t.client("S", at=0.0, options=OFFER).rewrite or b"").seq
        server = parsed(
            t.server("SA", at=0.1, seq=5000, ack=shifted + 1, options=OFFER).rewrite or b""
        ).seq
        t.client("A", at=0.2, seq=1001, ack=server + 1)
        t.server("PA", 300, at=0.25, seq=5001, ack=shifted + 1)  # the client lost 1-100
        sack = pk.encode_options(sack=((server + 101, server + 201),))
        d = t.client("A", at=0.3, seq=1001, ack=server + 1, options=sack)
        assert d.rewrite is not None and parsed(d.rewrite).ack == 5001
        options = dict(IP(d.rewrite)[TCP].options)
        edges = (server + 101, server + 201) if blocks == "keep" else (5101, 5201)
        assert options["SAck"] == edges  # kept: still in the client's view, wrong for the server

    def test_the_normaliser_clears_syn_options_and_drops_syns_with_data(self) -> None:
        t = Trace(
            loads_policy(
                '[normalise]\nclear = ["window_scale", "sack"]\nmss = 1300\nsyn_data = "drop"'
            )
        )
        d = t.client("S", at=0.0, options=OFFER)
        out = parsed(d.rewrite or b"")
        assert (out.wscale, out.sack_perm, pk.syn_mss(d.rewrite or b"")) == (-1, False, 1300)
        other = Trace(t.policy, client_port=41000)
        other.engine = t.engine
        assert other.client("S", 10, at=0.1).reason is Reason.NORMALISED


def test_the_engine_counts_what_the_defences_did() -> None:
    t, _ = proxied()
    assert t.engine.defences() == {
        "syn_flood": [{"scope": "policy", "syns": 1, "dropped": 0, "cookies": 1}],
        "cookies": {"answered": 1, "opened": 1},
    }


def test_a_packet_the_queue_cut_short_is_not_rewritten_into_a_cut_packet() -> None:
    t, cookie = proxied()
    data = t._packet(t.c, t.s, "PA", 1000, 1001, cookie + 1)
    d = t.engine.handle_packet(data[:128], now=0.3)  # a copy range of 128 bytes
    assert (d.verdict, d.rewrite) == (Verdict.DROP, None) and "copy range" in d.detail


def test_a_silent_servers_embryonic_expiry_resets_the_client_with_the_cookies_numbers() -> None:
    t = Trace(
        loads_policy(
            COOKIES + '[timeouts]\nsyn_sent = "5s"\n[on_expire]\nembryonic = "reset-client"'
        )
    )
    cookie = parsed(t.client("S", at=0.0, options=OFFER).inject[0]).seq
    t.client("A", at=0.1, seq=1001, ack=cookie + 1)  # the server never answers the proxy's SYN
    (rst,) = t.advance(5.1).inject
    seg = parsed(rst)
    assert (seg.seq, seg.ack) == ((cookie + 1) & 0xFFFFFFFF, 1001)  # what the client accepts
