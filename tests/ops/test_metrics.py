"""The metrics' pure parts: --metrics addresses, flow counts per protocol and state kept from
events (checked against the engine's own table), refusals by limit, ICMP unreachables sent."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
from scapy.layers.inet import IP, UDP

from fwemu.core.decision import Decision, Effects
from fwemu.core.engine import Engine
from fwemu.ops.metrics import Metrics, MetricsError, StateCounts, parse_listen_address
from fwemu.policy import loads_policy
from tests.core.trace import Trace, make_policy

CLIENT, SERVER = "10.0.0.1", "10.0.1.1"


def datagram(sport: int, *, from_client: bool = True) -> bytes:
    """A DNS-like datagram between CLIENT and SERVER."""
    if from_client:
        return bytes(IP(src=CLIENT, dst=SERVER) / UDP(sport=sport, dport=53) / b"q")
    return bytes(IP(src=SERVER, dst=CLIENT) / UDP(sport=53, dport=sport) / b"a")


def new_metrics(engine: Engine) -> Metrics:
    counters = SimpleNamespace(accepted=0, dropped=0, resets=0, rewritten=0, errors=0, bypassed=0)
    return Metrics(counters, engine, lambda: None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        (":9100", ("127.0.0.1", 9100)),
        ("9100", ("127.0.0.1", 9100)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9100", ("::1", 9100)),
        ("[::]:0", ("::", 0)),
    ],
)
def test_listen_addresses(text: str, address: tuple[str, int]) -> None:
    assert parse_listen_address(text) == address


@pytest.mark.parametrize("text", ["", ":", "localhost:9100", ":http", ":70000", "::1:9100"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(MetricsError, match=r"expected \[HOST\]:PORT with an IP address"):
        parse_listen_address(text)


def test_state_counts_follow_the_table() -> None:
    counts = StateCounts()
    policy = make_policy(established=10.0, udp=0.5, udp_stream=5.0, udp_stream_after=0.1)
    a = Trace(policy)
    b = Trace(policy, client_port=40001)
    b.engine = a.engine  # two flows, one table
    engine = a.engine

    def feed(outcome: Decision | Effects) -> None:
        for event in outcome.events:
            counts.on_event(event)
        table = Counter((info.flow.proto, info.state) for info in engine.flows(now=0.0))
        assert +counts.counts == table

    feed(engine.handle_packet(datagram(5353), now=0.0))
    feed(engine.handle_packet(datagram(5353, from_client=False), now=0.05))
    feed(engine.handle_packet(datagram(5353), now=0.2))  # past udp_stream_after: a stream
    feed(engine.handle_packet(datagram(5354), now=0.2))
    assert counts.counts[("udp", "STREAM")] == counts.counts[("udp", "UNREPLIED")] == 1

    feed(a.client("S", at=0.0))
    feed(a.server("SA", at=0.1))
    feed(b.client("S", at=0.1))
    feed(a.client("A", at=0.2))
    feed(b.server("R", at=0.3))  # a RST before any reply: deleted outright
    feed(b.client("S", at=0.4))
    feed(a.client("FA", at=0.5))
    feed(a.server("A", at=0.6))
    feed(a.engine.handle_timer(now=0.7))  # the unreplied datagram's udp timer
    assert not counts.counts[("udp", "UNREPLIED")]
    feed(a.engine.expire(a.engine.keys(), now=0.7))
    assert not +counts.counts


def test_flows_are_exposed_by_protocol_and_state_every_series_from_the_start() -> None:
    engine = Engine(loads_policy(""))
    metrics = new_metrics(engine)
    for event in engine.handle_packet(datagram(5353), now=0.0).events:
        metrics.on_event(event)

    def flows(proto: str, state: str) -> float | None:
        return metrics.registry.get_sample_value("fwemu_flows", {"proto": proto, "state": state})

    assert flows("udp", "UNREPLIED") == 1
    assert flows("udp", "STREAM") == flows("tcp", "ESTABLISHED") == 0
    assert flows("udp", "ESTABLISHED") is None  # no series for a state of the other protocol
    tracked = metrics.registry.get_sample_value("fwemu_flows_tracked")
    assert tracked == 1


def test_icmp_unreachables_sent_are_counted_by_cause() -> None:
    """A late answer of an expired flow (udp_from_server), and new flows a limit refused with
    on_full = "reset": each ICMP port unreachable once, as its `unreachable` event."""
    policy = loads_policy(
        '[timeouts]\nudp = "1s"\n[out_of_state]\nudp_from_server = "icmp-unreachable"\n'
        '[limits]\nmax_flows = 1\non_full = "reset"'
    )
    engine = Engine(policy)
    metrics = new_metrics(engine)
    outcomes = [
        engine.handle_packet(datagram(5353), now=0.0),
        engine.handle_packet(datagram(5354), now=0.1),  # over max_flows
        engine.handle_timer(now=1.0),
        engine.handle_packet(datagram(5353, from_client=False), now=1.5),  # late
    ]
    for outcome in outcomes:
        for event in outcome.events:
            metrics.on_event(event)
    sent = [len(outcome.inject) for outcome in outcomes]
    assert sent == [0, 1, 0, 1]

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("fwemu_unreachables_sent_total", {"cause": "limit"}) == 1
    assert sample("fwemu_unreachables_sent_total", {"cause": "out_of_state"}) == 1
    assert sample("fwemu_out_of_state_packets_total", {"action": "icmp-unreachable"}) == 1
    assert sample("fwemu_expiries_total", {"phase": "udp", "action": "silent"}) == 1
    assert sample("fwemu_expiries_total", {"phase": "udp_stream", "action": "silent"}) == 0


def test_refusals_count_per_limit_those_past_the_answer_rate_included() -> None:
    """Each refused new flow once: as its own `limit` event, or within a `limit_summary`."""
    policy = loads_policy(
        '[out_of_state]\nrate_per_source = 2\n[limits]\nper_client = 1\non_full = "reset"'
    )
    engine = Engine(policy)
    metrics = new_metrics(engine)
    t = Trace(policy)
    t.engine = engine
    t.client("S", at=0.0)
    for port in range(41000, 41010):
        other = Trace(policy, client_port=port)
        other.engine = engine
        for event in other.client("S", at=0.5).events:
            metrics.on_event(event)
    for event in t.advance(2.0).events:
        metrics.on_event(event)
    value = metrics.registry.get_sample_value("fwemu_limit_refusals_total", {"limit": "per_client"})
    assert value == 10
