"""The metrics' pure parts: --metrics addresses, per-state flow counts kept from events
(checked against the engine's own table), refusals by limit."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from fwemu.core.decision import Decision, Effects
from fwemu.core.engine import Engine
from fwemu.ops.metrics import Metrics, MetricsError, StateCounts, parse_listen_address
from fwemu.policy import loads_policy
from tests.core.trace import Trace, make_policy


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
    policy = make_policy(established=10.0)
    a = Trace(policy)
    b = Trace(policy, client_port=40001)
    b.engine = a.engine  # two flows, one table

    def feed(outcome: Decision | Effects) -> None:
        for event in outcome.events:
            counts.on_event(event)
        table = Counter(info.state for info in a.engine.flows(now=0.0))
        assert +counts.counts == table

    feed(a.client("S", at=0.0))
    feed(a.server("SA", at=0.1))
    feed(b.client("S", at=0.1))
    feed(a.client("A", at=0.2))
    feed(b.server("R", at=0.3))  # a RST before any reply: deleted outright
    feed(b.client("S", at=0.4))
    feed(a.client("FA", at=0.5))
    feed(a.server("A", at=0.6))
    feed(a.engine.expire(a.engine.keys(), now=0.7))
    assert not +counts.counts


def test_refusals_count_per_limit_those_past_the_answer_rate_included() -> None:
    """Each refused new flow once: as its own `limit` event, or within a `limit_summary`."""
    policy = loads_policy(
        '[out_of_state]\nrate_per_source = 2\n[limits]\nper_client = 1\non_full = "reset"'
    )
    engine = Engine(policy)
    metrics = Metrics(
        SimpleNamespace(accepted=0, dropped=0, resets=0, rewritten=0, errors=0, bypassed=0),
        engine,
        lambda: None,
    )
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
