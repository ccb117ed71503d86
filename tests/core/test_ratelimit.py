"""The answer rate: past it, out-of-state packets get the policy's verdict and nothing else,
and one summary per source and second says what was withheld. Traces over explicit time."""

from __future__ import annotations

import dataclasses
import ipaddress

from fwemu.core import packet as pk
from fwemu.core.decision import Decision, Verdict
from fwemu.core.engine import Engine
from fwemu.core.events import FlowExpired, OutOfState, OutOfStateSummary, ResetSent
from fwemu.policy.model import AnswerRate, ExpireAction, OutOfStateAction, Policy

from .trace import Trace, make_policy

CLIENT = ipaddress.ip_address("10.0.1.2").packed
OTHER = ipaddress.ip_address("10.0.1.3").packed
SERVER = ipaddress.ip_address("10.0.2.2").packed


def limited(per_source: int, total: int = 1000, **kw: object) -> Policy:
    policy = make_policy(**kw)  # type: ignore[arg-type]
    return dataclasses.replace(policy, answer_rate=AnswerRate(per_source, total))


def junk(engine: Engine, at: float, port: int, src: bytes = CLIENT) -> Decision:
    """A mid-stream ACK of no flow: what a flood of spoofed segments is made of."""
    data = pk.build_segment(src, port, SERVER, 80, flags=pk.TCP_ACK, seq=1, ack=1)
    return engine.handle_packet(data, now=at)


def summaries(fx_events: tuple[object, ...]) -> list[OutOfStateSummary]:
    return [e for e in fx_events if isinstance(e, OutOfStateSummary)]


def test_past_the_per_source_rate_packets_get_the_verdict_alone_then_one_summary() -> None:
    engine = Engine(limited(3, oos=OutOfStateAction.RESET))
    answered = [junk(engine, 0.1 * i, 2000 + i) for i in range(3)]
    assert all(d.verdict == Verdict.DROP and len(d.inject) == 1 for d in answered)
    assert all({type(e) for e in d.events} == {OutOfState, ResetSent} for d in answered)
    past = [junk(engine, 0.5 + 0.01 * i, 3000 + i) for i in range(7)]
    assert all(d.verdict == Verdict.DROP and not d.inject and not d.events for d in past)
    # The window opened at 0.0 with the first packet: its summary is due at 1.0, not before.
    assert engine.next_deadline() == 1.0
    assert engine.handle_timer(now=0.99).events == ()
    (summary,) = summaries(engine.handle_timer(now=1.0).events)
    assert (summary.ts, summary.source, summary.packets, summary.resets_withheld) == (
        1.0,
        "10.0.1.2",
        7,
        7,
    )
    assert (summary.limit, summary.rate, summary.action) == ("per_source", 3, "reset")
    assert (summary.flow.sport, summary.flow.dport) == (3000, 80)  # the first held, as it went
    assert engine.next_deadline() is None
    # A new second, a new allowance.
    assert len(junk(engine, 1.5, 4000).inject) == 1


def test_one_source_past_its_rate_leaves_the_others_their_answers() -> None:
    engine = Engine(limited(2, oos=OutOfStateAction.RESET))
    for i in range(50):
        junk(engine, 0.001 * i, 2000 + i)
    other = junk(engine, 0.2, 5000, src=OTHER)
    assert len(other.inject) == 1 and other.events
    (summary,) = summaries(engine.handle_timer(now=1.0).events)
    assert (summary.source, summary.packets) == ("10.0.1.2", 48)


def test_the_total_rate_caps_a_flood_from_many_sources() -> None:
    engine = Engine(limited(100, total=5))
    sources = [ipaddress.ip_address(f"10.0.9.{i}").packed for i in range(1, 21)]
    decisions = [junk(engine, 0.01 * i, 2000, src=src) for i, src in enumerate(sources)]
    assert sum(bool(d.events) for d in decisions) == 5
    held = summaries(engine.handle_timer(now=1.0).events)
    assert len(held) == 15 and {s.limit for s in held} == {"total"}
    assert sum(s.packets for s in held) == 15 and all(s.resets_withheld == 0 for s in held)


def test_an_invalid_packet_flood_on_a_live_flow_changes_nothing_of_the_flow() -> None:
    t = Trace(limited(5, established=10.0, on_established=ExpireAction.RESET_BOTH))
    t.handshake(at=0.0)
    for i in range(200):  # SYN|FIN|RST: invalid flags on the live flow, from its own client
        assert t.client("SFR", at=1.0 + i * 0.001).verdict == Verdict.DROP
    assert t.client("PA", 5, at=2.0).events == ()  # the real client goes on, in state
    fx = t.advance(12.0)
    (summary,) = summaries(fx.events)
    assert (summary.packets, summary.ts) == (195, 2.0)
    (expired,) = [e for e in fx.events if isinstance(e, FlowExpired)]
    assert (expired.ts, expired.state) == (12.0, "ESTABLISHED")  # 10 s after its last packet
    assert len(fx.inject) == 2  # and both ends get the policy's RSTs


def test_a_reload_keeps_what_the_limiter_holds_and_takes_the_new_rates() -> None:
    engine = Engine(limited(1))
    junk(engine, 0.0, 2000)
    junk(engine, 0.1, 2001)  # held
    engine.reload(limited(50))
    assert engine.table.limiter.per_source == 50
    (summary,) = summaries(engine.handle_timer(now=1.0).events)
    assert summary.packets == 1
