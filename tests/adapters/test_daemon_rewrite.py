"""Rewritten packets (Decision.rewrite, issue 14): the loop sends the rewrite on in place of the
queued packet, counts it, and in a dry run only counts it."""

from __future__ import annotations

from prometheus_client import generate_latest

from fwemu.ops.metrics import Metrics

from .fakes import FakePacket, Rewriting, rewritten
from .test_daemon import POLICY, conversation, feed, make_daemon


def test_a_rewrite_is_set_as_the_payload_before_the_accept() -> None:
    daemon, _, _ = make_daemon(Rewriting(POLICY))
    queued = conversation(2)
    packets = [feed(daemon, data) for data in queued]
    # FakePacket refuses a payload set after its verdict: each was set, then accepted.
    assert [(p.data, p.verdict) for p in packets] == [(rewritten(d), "accept") for d in queued]
    counters = daemon.counters
    assert counters.rewritten == counters.accepted == counters.packets == len(queued)


def test_a_dry_run_accepts_the_packet_as_queued_and_counts_the_rewrite() -> None:
    daemon, _, _ = make_daemon(Rewriting(POLICY), dry_run=True)
    queued = conversation(1)
    packets = [feed(daemon, data) for data in queued]
    assert [(p.data, p.verdict) for p in packets] == [(d, "accept") for d in queued]
    assert daemon.counters.rewritten == len(queued)


def test_a_dropped_packet_is_not_rewritten() -> None:
    daemon, _, _ = make_daemon(Rewriting(POLICY))
    late_ack = conversation(1)[-1]  # of a flow this daemon never saw open: out of state
    packet = feed(daemon, late_ack)
    assert (packet.data, packet.verdict) == (late_ack, "drop")
    assert daemon.counters.rewritten == 0


def test_rewritten_packets_are_a_metric() -> None:
    daemon, _, _ = make_daemon(Rewriting(POLICY))
    metrics = Metrics(daemon.counters, daemon.engine, lambda: None)
    for data in conversation(0):
        daemon.on_packet(FakePacket(data))
    scraped = generate_latest(metrics.registry).decode()
    assert "\nfwemu_packets_rewritten_total 3.0\n" in scraped
