"""Prometheus metrics for `fwemu run --metrics HOST:PORT`, on a registry of their own.

Cheap on the packet path: flow counts per protocol and state are kept from the events (a
flow's life has a handful; the core's Event objects, never their JSON form), packet counts are
the daemon's own integers read at scrape time, and the verdict latency is timed on one packet in
`LATENCY_SAMPLE`. The HTTP server runs in threads started after the daemon entered its network
namespace, so they serve, and read the queue counters of, that namespace (a thread inherits its
creator's namespace: setns(2), clone(2)).
"""

from __future__ import annotations

import ipaddress
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from fwemu.core.engine import Engine
from fwemu.core.events import (
    Event,
    FlowDeleted,
    FlowExpired,
    FlowNew,
    LimitRefused,
    LimitSummary,
    OutOfState,
    OutOfStateSummary,
    StateChanged,
    UnreachableSent,
)
from fwemu.core.states import PHASE_NAME, PHASE_OF, UDP_STATES
from fwemu.errors import FwemuError
from fwemu.policy import ExpireAction, OutOfStateAction, Phase
from fwemu.policy.model import LIMIT_NAMES, UdpAction
from fwemu.policy.model import Protocol as IPProtocol

# The series fwemu_flows always has, at 0 until a flow is in them: (proto, state).
FLOW_SERIES = sorted(
    [(IPProtocol.TCP.value, state.name) for state in PHASE_OF]
    + [(IPProtocol.UDP.value, state.name) for state in UDP_STATES]
)
# The causes of an ICMP port unreachable (UnreachableSent.cause).
UNREACHABLE_CAUSES = ("out_of_state", "limit")

# One packet in this many is timed: perf_counter_ns twice plus Histogram.observe cost ~1.2 us,
# about a third of an in-state packet's time in the engine; sampled, ~0.1 us per packet.
LATENCY_SAMPLE = 16
# Time inside Engine.handle_packet, in seconds: an in-state packet takes a few microseconds,
# a new flow tens, a mass of events more.
LATENCY_BUCKETS = (1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 1e-2)
DEFAULT_HOST = "127.0.0.1"


class MetricsError(FwemuError):
    """--metrics is malformed or its address cannot be served."""


def parse_listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [V6]:PORT, :PORT or PORT (host 127.0.0.1); MetricsError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host or DEFAULT_HOST
    try:
        ipaddress.ip_address(host)
        # An IPv6 address needs brackets: "::1:9100" is itself an address.
        number = -1 if ":" in host and not bracketed else int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise MetricsError(
            f"bad --metrics {text!r}: expected [HOST]:PORT with an IP address, e.g. :9100 "
            "or 127.0.0.1:9100"
        )
    return host, number


class StateCounts:
    """Tracked flows per protocol and conntrack state, (proto, state), kept from the event
    stream: every flow enters with `new`, moves with `state` and leaves with `expire` or
    `delete`."""

    def __init__(self) -> None:
        self.counts: Tally[tuple[str, str]] = Tally()

    def on_event(self, event: Event) -> None:
        if isinstance(event, FlowNew):
            self.counts[event.flow.proto, event.state] += 1
        elif isinstance(event, StateChanged):
            proto = event.flow.proto
            self.counts[proto, event.old_state] -= 1
            self.counts[proto, event.state] += 1
        elif isinstance(event, FlowExpired | FlowDeleted):
            self.counts[event.flow.proto, event.state] -= 1


class PacketCounts(Protocol):
    """The daemon's own counters (fwemu.adapters.daemon.Counters), read at scrape time."""

    accepted: int
    dropped: int
    resets: int
    rewritten: int
    errors: int
    bypassed: int


class QueueReading(Protocol):
    """The kernel's counters of fwemu's queue (fwemu.adapters.nfqueue.QueueCounters)."""

    @property
    def waiting(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    @property
    def user_dropped(self) -> int: ...


class Metrics:
    """The registry, fed by the daemon's events; `serve` exposes it over HTTP. `queue()` reads
    the kernel's queue counters (None while the queue is not bound)."""

    def __init__(
        self,
        counters: PacketCounts,
        engine: Engine,
        queue: Callable[[], QueueReading | None],
    ) -> None:
        self.registry = CollectorRegistry()
        self.states = StateCounts()
        self._queue = queue
        self._counters = counters
        self._engine = engine
        self._server: Any = None
        self.expiries = Counter(
            "fwemu_expiries",
            "Flows expired, by connection phase and expiry action (forced ones included)",
            ["phase", "action"],
            registry=self.registry,
        )
        self.out_of_state = Counter(
            "fwemu_out_of_state_packets",
            "Packets of no (or an expired) flow, or invalid in their flow, by action taken",
            ["action"],
            registry=self.registry,
        )
        self.unreachables = Counter(
            "fwemu_unreachables_sent",
            "ICMP port unreachables sent (in a dry run: that would have been), by cause",
            ["cause"],
            registry=self.registry,
        )
        self.refusals = Counter(
            "fwemu_limit_refusals",
            "New flows refused by a connection limit of the policy, by limit",
            ["limit"],
            registry=self.registry,
        )
        self.reloads = Counter(
            "fwemu_policy_reloads",
            "Policy reloads (SIGHUP or 'fwemu reload'), by result",
            ["result"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fwemu_verdict_latency_seconds",
            f"Time inside the engine per packet (one packet in {LATENCY_SAMPLE} is timed)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for phase in Phase:
            for action in ExpireAction:
                self.expiries.labels(phase.value, action.value)
        for udp_phase in sorted({PHASE_NAME[state] for state in UDP_STATES}):
            self.expiries.labels(udp_phase, ExpireAction.SILENT.value)  # UDP's only expiry
        for oos in (*OutOfStateAction, UdpAction.ICMP_UNREACHABLE):
            self.out_of_state.labels(oos.value)
        for cause in UNREACHABLE_CAUSES:
            self.unreachables.labels(cause)
        for limit in LIMIT_NAMES:
            self.refusals.labels(limit)
        for result in ("ok", "rejected"):
            self.reloads.labels(result)
        self.registry.register(_Snapshot(self))

    def on_event(self, event: Event) -> None:
        self.states.on_event(event)
        if isinstance(event, FlowExpired):
            self.expiries.labels(event.phase, event.action).inc()
        elif isinstance(event, OutOfState):
            self.out_of_state.labels(event.action).inc()
        elif isinstance(event, OutOfStateSummary):  # past the answer rate, summed up
            self.out_of_state.labels(event.action).inc(event.packets)
        elif isinstance(event, LimitRefused):
            self.refusals.labels(event.limit).inc()
        elif isinstance(event, LimitSummary):
            self.refusals.labels(event.limit).inc(event.packets)
        elif isinstance(event, UnreachableSent):
            self.unreachables.labels(event.cause).inc()

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP server (daemon threads); the port it listens on."""
        try:
            self._server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as err:
            raise MetricsError(
                f"cannot serve metrics on {host}:{port}: {err.strerror or err}"
            ) from None
        bound: int = self._server.server_address[1]
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def collect_snapshot(self) -> Iterator[Metric]:
        """The metrics read at scrape time (from the scraping thread: plain int reads)."""
        flows = GaugeMetricFamily(
            "fwemu_flows",
            "Tracked flows by protocol and conntrack state",
            labels=["proto", "state"],
        )
        counts = dict(self.states.counts)  # one C-level copy: the loop thread may be counting
        for proto, state in FLOW_SERIES:
            flows.add_metric([proto, state], max(counts.get((proto, state), 0), 0))
        yield flows
        yield GaugeMetricFamily(
            "fwemu_flows_tracked", "Tracked flows in the table", value=len(self._engine)
        )
        c = self._counters
        packets = CounterMetricFamily(
            "fwemu_packets", "Queued packets, by the engine's verdict", labels=["verdict"]
        )
        packets.add_metric(["accept"], c.accepted)
        packets.add_metric(["drop"], c.dropped)
        yield packets
        yield CounterMetricFamily(
            "fwemu_resets_injected",
            "RSTs injected (in a dry run: that would have been)",
            value=c.resets,
        )
        yield CounterMetricFamily(
            "fwemu_packets_rewritten",
            "Accepted packets sent on rewritten: sequence numbers translated, options "
            "normalised (in a dry run: that would have been)",
            value=c.rewritten,
        )
        yield CounterMetricFamily(
            "fwemu_engine_errors", "Packets accepted because the engine failed", value=c.errors
        )
        yield CounterMetricFamily(
            "fwemu_queue_bypassed",
            "Packets the kernel let past fwemu unseen because its queue overflowed (fail-open)",
            value=c.bypassed,
        )
        queue = self._queue()
        if queue is not None:
            yield GaugeMetricFamily(
                "fwemu_queue_waiting", "Packets waiting in the NFQUEUE", value=queue.waiting
            )
            yield CounterMetricFamily(
                "fwemu_queue_dropped",
                "Packets the kernel dropped because the NFQUEUE was full (fail-closed only)",
                value=queue.dropped,
            )
            yield CounterMetricFamily(
                "fwemu_queue_user_dropped",
                "Packets the kernel could not deliver to fwemu's socket (fail-closed only)",
                value=queue.user_dropped,
            )


class _Snapshot:
    """A custom collector (prometheus_client's Collector protocol: `collect`)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self._metrics.collect_snapshot()
