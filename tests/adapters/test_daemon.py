"""The daemon's queue handler: a verdict for every packet, netfilterqueue batches that end to give
the loop its turn, and events that reach their consumers, with JSON built only for those who read
it."""

from __future__ import annotations

import io
from typing import Any, cast

import pytest
from netfilterqueue import NetfilterQueue

from fwemu.adapters.daemon import PACKET_BATCH, Daemon
from fwemu.adapters.inject import Injector
from fwemu.adapters.nfqueue import NfqueueBinding
from fwemu.adapters.output import Reporter
from fwemu.clock import Clock
from fwemu.core import packet as pk
from fwemu.core.engine import Engine
from fwemu.core.icmp import port_unreachable
from fwemu.ops.metrics import StateCounts
from fwemu.policy.model import OutOfStateAction
from fwemu.policy.source import PolicySource
from tests.core.trace import Trace, make_policy

from .fakes import CountingReporter, FakeNfq, FakePacket, NoInjector

POLICY = make_policy(established=60.0)


def conversation(data_packets: int) -> list[bytes]:
    """A handshake, then `data_packets` in-state packets, as the queue would deliver them."""
    captured: list[bytes] = []
    trace = Trace(POLICY, tap=lambda side, data: captured.append(data))
    trace.handshake(at=0.0)
    for _ in range(data_packets):
        trace.client("PA", 10, at=0.1)
    return captured


def make_daemon(
    engine: Engine | None = None, *, dry_run: bool = False
) -> tuple[Daemon, CountingReporter, io.StringIO]:
    log = io.StringIO()
    reporter = CountingReporter(Clock.start(), log, dry_run=dry_run)
    injector = cast(Injector, NoInjector())
    source = PolicySource(None, "linux", 1.0)
    daemon = Daemon(
        Engine(POLICY) if engine is None else engine, reporter, injector, source, dry_run=dry_run
    )
    return daemon, reporter, log


def feed(daemon: Daemon, data: bytes) -> FakePacket:
    packet = FakePacket(data)
    daemon.on_packet(packet)
    return packet


def test_every_packet_gets_a_verdict() -> None:
    daemon, _, _ = make_daemon()
    packets = [feed(daemon, data) for data in conversation(10)]
    assert {p.verdict for p in packets} == {"accept"}
    assert daemon.counters.accepted == daemon.counters.packets == len(packets)


def test_the_netfilterqueue_binding_ends_a_drain_after_its_limit_with_every_verdict_given() -> None:
    daemon, _, _ = make_daemon()
    packets = [FakePacket(data, i) for i, data in enumerate(conversation(PACKET_BATCH), 1)]
    nfq = FakeNfq(packets)
    binding = NfqueueBinding(cast(NetfilterQueue, nfq), daemon.on_packet, nfq.queue)
    nfq.callback = binding.on_packet
    half = PACKET_BATCH // 2
    binding.drain(half)
    assert len(nfq.packets) == len(packets) - half  # the rest wait for the next
    # Every packet so far accepted by batch messages (sent on the deadline too: this is real
    # time), the last one's as the drain ended.
    assert {verdict for verdict, _ in nfq.wire} == {"batch"}
    assert nfq.wire[-1] == ("batch", half)
    binding.drain(PACKET_BATCH)
    assert not nfq.packets and nfq.wire[-1] == ("batch", len(packets))
    assert daemon.counters.accepted == len(packets)
    nfq.close()


class Broken(Engine):
    def handle_packet(self, data: bytes, *, now: float) -> Any:
        raise RuntimeError("engine bug")


def test_a_packet_the_engine_fails_on_is_accepted_and_logged() -> None:
    daemon, _, log = make_daemon(Broken(POLICY))
    assert feed(daemon, conversation(0)[0]).verdict == "accept"
    assert daemon.counters.errors == 1
    assert "engine failed on a packet; accepted it: RuntimeError('engine bug')" in log.getvalue()


@pytest.mark.parametrize(("dry_run", "verdict"), [(False, "drop"), (True, "accept")])
def test_an_out_of_state_packet_is_dropped_unless_dry_run(dry_run: bool, verdict: str) -> None:
    daemon, _, log = make_daemon(dry_run=dry_run)
    late_ack = conversation(1)[-1]  # data of a flow this daemon never saw open
    assert feed(daemon, late_ack).verdict == verdict
    assert daemon.counters.dropped == 1
    assert " oos " in log.getvalue()


def test_events_reach_watchers_and_json_is_built_only_for_listeners() -> None:
    daemon, reporter, _ = make_daemon()
    states = StateCounts()
    reporter.watch(states.on_event)
    first, *rest = conversation(1)
    feed(daemon, first)  # SYN: a new flow
    assert +states.counts == {("tcp", "SYN_SENT"): 1}
    assert reporter.built == 0  # nobody reads JSON: none is built

    records: list[dict[str, Any]] = []
    reporter.subscribe(records.append)
    for data in rest:
        feed(daemon, data)
    assert +states.counts == {("tcp", "ESTABLISHED"): 1}
    assert [r["state"] for r in records] == ["SYN_RECV", "ESTABLISHED"]
    assert reporter.built == 2


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_dry_run_reports_an_expired_flow_s_first_later_packet_from_each_side(
    monkeypatch: pytest.MonkeyPatch, dry_run: bool
) -> None:
    """The flow's expiry, then each side's first late packet and the RST the policy would answer
    it with; the connection going on, as nothing was cut, would not have happened."""
    policy = make_policy(established=10.0, oos=OutOfStateAction.RESET)
    captured: list[bytes] = []
    trace = Trace(policy, tap=lambda side, data: captured.append(data))
    trace.handshake(at=0.0)
    for at in (21.0, 22.0, 23.0):
        trace.client("PA", 10, at=at)
        trace.server("A", at=at)
    now = [0.0]
    monkeypatch.setattr(Clock, "now", staticmethod(lambda: now[0]))
    log, sent = io.StringIO(), Sent()
    daemon = Daemon(
        Engine(policy),
        Reporter(Clock.start(), log, dry_run=dry_run),
        cast(Injector, sent),
        PolicySource(None, "linux", 1.0),
        dry_run=dry_run,
    )
    for data in captured[:3]:
        feed(daemon, data)
    now[0] = 20.0
    daemon._run_due(None)  # the expiry
    for data in captured[3:]:
        feed(daemon, data)

    lines = [line.split(maxsplit=1)[1] for line in log.getvalue().splitlines()]
    late = [line for line in lines if "oos " in line]
    assert len([line for line in lines if "expire " in line]) == 1
    if dry_run:
        assert [line.split(" from ")[1].split(":")[0] for line in late] == ["client", "server"]
        assert (daemon.counters.resets, sent.packets) == (2, [])
    else:
        assert len(late) == 6 and daemon.counters.resets == len(sent.packets) == 6


class Sent:
    """An injector that keeps what it is given."""

    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def send(self, packet: bytes) -> bool:
        self.packets.append(packet)
        return True


def test_only_rsts_count_as_resets_injected() -> None:
    # An ICMP port unreachable is injected too, but counted by its `unreachable` event. (A dry
    # run's daemon counts what it would send.)
    daemon, _, _ = make_daemon(dry_run=True)
    a, b = bytes((10, 0, 0, 1)), bytes((10, 0, 0, 2))
    rst = pk.build_rst(a, 1, b, 2, seq=1, ack=None)
    udp = bytes.fromhex("0035c35000080000")  # 53 > 50000, length 8
    datagram = pk.parse(bytes.fromhex("4500001c0000400040110000") + a + b + udp)
    assert isinstance(datagram, pk.Datagram)
    icmp = port_unreachable(datagram, rst)
    assert daemon.apply((rst, icmp), ()) == 1
    assert daemon.counters.resets == 1
