"""The event loop of `fwemu run`: one thread, one epoll, the engine's deadline as timeout.

Adapters never decide: a queued packet goes to `Engine.handle_packet`, whose verdict, RSTs and
events are applied as given; the loop sleeps until the queue is readable, a signal arrives, a
control-socket client needs serving or `Engine.next_deadline()` is due, and then calls
`handle_timer`. Control requests (fwemu.ops) are served between packet batches, with bounded work
per turn, so they never hold verdicts up for long.

Lean by measurement (docs/performance.md): a readable queue is drained by its binding
(adapters/queue.py; netfilterqueue's own C loop), and a packet whose decision carries no RST
and no event (most of them) costs the engine's call and its verdict only. Under a flood the
queue never empties; a drain then ends after `PACKET_BATCH` packets, so timers, signals and the
control socket keep their turn.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter_ns
from types import FrameType, TracebackType

from fwemu.adapters.bypass import BypassWatch
from fwemu.adapters.inject import Sender
from fwemu.adapters.output import Reporter, counted
from fwemu.adapters.queue import PacketQueue, QueuedPacket
from fwemu.clock import Clock
from fwemu.core.decision import IN_STATE, Decision
from fwemu.core.engine import Engine, Verdict
from fwemu.core.events import Event, FlowExpired, FlowId, OutOfState, OutOfStateSummary
from fwemu.errors import FwemuError
from fwemu.ops.control import ControlServer
from fwemu.ops.metrics import LATENCY_SAMPLE, Metrics
from fwemu.policy import Policy
from fwemu.policy.source import PolicySource
from fwemu.signals import release as release_held

# A turn of the loop spends at most TIMER_BUDGET seconds on due timers (plus the handle_timer
# call that crosses it: TIMER_BATCH flows) before the queue is polled again, so a mass expiry
# (100k flows due at once) stalls no verdict for more than a few ms. Measured by bench/scale.py
# (docs/performance.md, "Scale"): an expiry with reset-both costs ~70-100 µs (two RSTs sent,
# three log lines, three JSON events), so the former fixed 1024 flows a turn held verdicts up
# for ~100 ms at a time; 16 flows take ~1.2 ms (turns timed with 100k due: p50 1.5 ms, p99 4.5 ms
# of wall time, the kernel's delivery of the RSTs included).
TIMER_BATCH = 16
TIMER_BUDGET = 0.001
# Queue messages handled before the timers get a turn again, so a packet flood cannot starve them.
PACKET_BATCH = 256
# A dry run remembers which sides of which expired flows had a later packet reported (see
# Daemon._reported_late), at most this many; past it the oldest is forgotten, and its flow's next
# late packet reported again.
DRY_RUN_LATE = 65536


class Signals:
    """SIGINT/SIGTERM request a stop, SIGUSR1 a state snapshot, SIGHUP a policy reload.

    Handlers only set flags; `set_wakeup_fd` makes the selector return when a signal arrives.
    Previous handlers are restored on exit.
    """

    _HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)

    def __init__(self) -> None:
        self.stop: signal.Signals | None = None
        self.snapshot = False
        self.reload = False
        self._read, self._write = socket.socketpair()
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1

    def fileno(self) -> int:
        return self._read.fileno()

    def drain(self) -> None:
        try:
            while self._read.recv(4096, socket.MSG_DONTWAIT):
                pass
        except BlockingIOError:
            pass

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            self.snapshot = True
        elif signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = signal.Signals(signum)

    def __enter__(self) -> Signals:
        for sock in (self._read, self._write):
            sock.setblocking(False)
        self._previous_wakeup = signal.set_wakeup_fd(
            self._write.fileno(), warn_on_full_buffer=False
        )
        for signum in self._HANDLED:
            self._previous[signum] = signal.signal(signum, self._handle)
        for held in release_held():  # asked for while `fwemu run` was still importing
            self._handle(held, None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        signal.set_wakeup_fd(self._previous_wakeup)
        self._read.close()
        self._write.close()


@dataclass(slots=True)
class Counters:
    """What the engine decided (in a dry run: what it would have done)."""

    packets: int = 0
    accepted: int = 0
    dropped: int = 0
    resets: int = 0  # RST packets injected
    rewritten: int = 0  # accepted packets sent on rewritten (Decision.rewrite), of `accepted`
    errors: int = 0  # packets accepted because the engine raised
    bypassed: int = 0  # packets the kernel let past fwemu unseen (adapters/bypass.py)
    expired: int = 0  # flows expired, by their timers or by `fwemu expire`
    # Packets of no flow or invalid in theirs, as the metrics count them: one per out_of_state
    # event, and those past the answer rate when their out_of_state_summary comes.
    out_of_state: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def on_event(self, event: Event) -> None:
        """Count what `fwemu top` shows of the events (the reporter's watcher)."""
        if isinstance(event, FlowExpired):
            self.expired += 1
        elif isinstance(event, OutOfState):
            self.out_of_state += 1
        elif isinstance(event, OutOfStateSummary):
            self.out_of_state += event.packets


class Daemon:
    """Applies the engine's decisions to queued packets and runs its timers until a stop signal;
    serves the control socket and reloads the policy from the same loop."""

    def __init__(
        self,
        engine: Engine,
        reporter: Reporter,
        injector: Sender,
        source: PolicySource,
        *,
        dry_run: bool = False,
        state_file: Path | None = None,
        counters: Counters | None = None,
        metrics: Metrics | None = None,
        bypass: BypassWatch | None = None,
        whole_packets: bool = False,
    ) -> None:
        """`whole_packets`: the queue copies whole packets (adapters/nfqueue.py), which a policy
        that rewrites them needs; one bound for headers refuses a reload to such a policy."""
        self.engine = engine
        self.reporter = reporter
        self.source = source
        self.counters = counters or Counters()
        reporter.watch(self.counters.on_event)
        self._injector = injector
        self._dry_run = dry_run
        self._state_file = state_file
        self._metrics = metrics
        self._bypass = bypass
        self._whole_packets = whole_packets
        self._latency = None if metrics is None else metrics.latency
        self._late: dict[tuple[FlowId, float, str | None], None] = {}  # see _reported_late

    def on_packet(self, packet: QueuedPacket) -> None:
        """The queue's handler. Every packet gets a verdict, whatever the engine does."""
        counters = self.counters
        counters.packets += 1
        try:
            if self._latency is None or counters.packets % LATENCY_SAMPLE:
                decision = self.engine.handle_packet(packet.get_payload(), now=Clock.now())
            else:
                decision = self._timed(packet)
        except Exception as err:
            packet.accept()
            counters.errors += 1
            self.reporter.error(f"engine failed on a packet; accepted it: {err!r}")
        else:
            if decision.verdict is Verdict.ACCEPT:
                counters.accepted += 1
                # IN_STATE never rewrites: most packets skip the attribute's lookup.
                if decision is not IN_STATE and decision.rewrite is not None:
                    counters.rewritten += 1
                    if not self._dry_run:
                        packet.set_payload(decision.rewrite)
                packet.accept()
            else:
                counters.dropped += 1
                if self._dry_run:
                    packet.accept()
                else:
                    packet.drop()
            # IN_STATE, the shared decision of most packets, has neither RSTs nor events.
            if (
                decision is not IN_STATE
                and (decision.inject or decision.events)
                and not (self._dry_run and self._reported_late(decision.events))
            ):
                self.apply(decision.inject, decision.events)

    def _reported_late(self, events: tuple[Event, ...]) -> bool:
        """Whether these are a late packet's events (after its flow expired) from a side whose
        first late packet was reported already; remembers the first. A dry run's connections go
        on where the policy would have cut them: the first late packet from each side tells what
        the policy would have done, the others would never have been sent."""
        oos = events[0] if events else None  # a SYN cookie comes without an event
        if type(oos) is not OutOfState or oos.expired_at is None:
            return False
        key = (oos.flow, oos.expired_at, oos.side)
        if key in self._late:
            return True
        if len(self._late) >= DRY_RUN_LATE:
            del self._late[next(iter(self._late))]
        self._late[key] = None
        return False

    def _timed(self, packet: QueuedPacket) -> Decision:
        """handle_packet, its duration observed by the latency histogram."""
        assert self._latency is not None
        start = perf_counter_ns()
        decision = self.engine.handle_packet(packet.get_payload(), now=Clock.now())
        self._latency.observe((perf_counter_ns() - start) * 1e-9)
        return decision

    def apply(self, inject: tuple[bytes, ...], events: Iterable[Event]) -> int:
        """Inject the packets (RSTs, ICMP errors) and report the events; the number of RSTs
        sent (would-be in a dry run): the ICMP errors are counted by their events."""
        sent = 0
        for packet in inject:
            if (self._dry_run or self._injector.send(packet)) and _is_tcp(packet):
                sent += 1
        self.counters.resets += sent
        self.reporter.events(events)
        return sent

    def wall(self, now: float) -> float:
        return round(self.reporter.clock.wall(now), 6)

    def run(
        self, packets: PacketQueue, signals: Signals, control: ControlServer | None = None
    ) -> None:
        """Serve the queue (and the control socket) until SIGINT/SIGTERM. Exceptions from the
        engine's timers propagate."""
        queue, wakeup = packets.fileno(), signals.fileno()
        with select.epoll() as epoll:
            epoll.register(queue, select.EPOLLIN)
            epoll.register(wakeup, select.EPOLLIN)
            if control is not None:
                epoll.register(control.fileno(), select.EPOLLIN)
            bypass = -1 if self._bypass is None else self._bypass.fileno()
            if self._bypass is not None:
                epoll.register(bypass, select.EPOLLIN)
            while signals.stop is None:
                if signals.snapshot or signals.reload:
                    self._on_signals(signals)
                for fd, _ in epoll.poll(self._run_due(control)):
                    if fd == queue:
                        packets.drain(PACKET_BATCH)
                    elif fd == wakeup:
                        signals.drain()
                    elif fd == bypass:
                        self._report_bypass()
                    elif control is not None:
                        control.serve()

    def _report_bypass(self) -> None:
        assert self._bypass is not None
        new, total = self._bypass.take()
        if new:
            self.counters.bypassed = total
            self.reporter.line(
                f"warning: {new} more packets bypassed fwemu ({total} in all): "
                "its queue overflowed and the kernel let them through unseen (fail-open), so "
                "the timers of their flows cannot be trusted"
            )

    def _on_signals(self, signals: Signals) -> None:
        if signals.snapshot:
            signals.snapshot = False
            self.write_state()
        if signals.reload:
            signals.reload = False
            self.reload()

    def _run_due(self, control: ControlServer | None) -> float:
        """Run the timers (a batch) and the control sessions' timeouts if due; the seconds until
        the next is due (-1: nothing is), the poll's timeout."""
        now = Clock.now()
        # Read on every turn: the packets just handled may have moved the deadline.
        due = self.engine.next_deadline()
        end = now + TIMER_BUDGET
        while due is not None and now >= due:
            effects = self.engine.handle_timer(now=now, limit=TIMER_BATCH)
            self.apply(effects.inject, effects.events)
            due, now = self.engine.next_deadline(), Clock.now()
            if now >= end:
                break  # the rest next turn, after the queue (the poll's timeout is then 0)
        if control is not None:
            session_due = control.expire_sessions(now)
            if session_due is not None and (due is None or session_due < due):
                due = session_due
        return -1.0 if due is None else max(0.0, due - now)

    def reload(self, path: str | None = None, preset: str | None = None) -> tuple[bool, str]:
        """Load the policy again (or the given file or preset) and enforce it, keeping every flow;
        an invalid policy, or one that rewrites packets when the queue copies only their headers,
        changes nothing. (ok, what happened), also logged."""
        old = self.engine.policy
        try:
            source = self.source.switched(path, preset)
            policy = source.load()
            self._check_copies(policy)
        except FwemuError as err:
            message = f"reload rejected, policy {old.name} ({old.origin}) stays in force:\n{err}"
            ok = False
        else:
            kept = self.engine.reload(policy)
            same = source.preset is not None and source == self.source
            message = (
                f"reloaded policy {policy.name} ({policy.origin}): {counted(kept, 'flow')} "
                "kept, their timers re-armed from their last packet"
                + ("; a preset does not change while fwemu runs: nothing changed" if same else "")
            )
            self.source, ok = source, True
        for line in message.splitlines():
            self.reporter.line(line)
        if self._metrics is not None:
            self._metrics.reloads.labels("ok" if ok else "rejected").inc()
        return ok, message

    def _check_copies(self, policy: Policy) -> None:
        """FwemuError if `policy` rewrites packets and the queue copies only their headers: the
        copy range and F_GSO are set once, when the queue is bound (adapters/nfqueue.py)."""
        if policy.rewrites and not self._whole_packets:
            raise FwemuError(
                f"{policy.origin}: policy {policy.name} rewrites packets (SYN cookies, TCP "
                "intercept, sequence randomisation or the normaliser) and needs whole packets, "
                "but the queue was bound for their headers only: restart fwemu run with this "
                "policy"
            )

    def flow_count(self) -> int:
        return len(self.engine)

    def write_state(self) -> None:
        """Write the flow table as JSON to the state file (atomically: readers never see half)."""
        if self._state_file is None:
            self.reporter.line("SIGUSR1 ignored: no --state-file was given")
            return
        now = Clock.now()
        flows = [{**asdict(f), "flow": f.flow.to_dict()} for f in self.engine.flows(now=now)]
        snapshot = {"ts": round(self.reporter.clock.wall(now), 6), "flows": flows}
        directory = self._state_file.parent
        try:
            with tempfile.NamedTemporaryFile(
                "w", dir=directory, prefix=".fwemu-state-", delete=False
            ) as tmp:
                json.dump(snapshot, tmp)
            os.replace(tmp.name, self._state_file)
        except OSError as err:
            self.reporter.error(f"cannot write the state file {self._state_file}: {err}")
            return
        self.reporter.line(f"wrote {counted(len(flows), 'flow')} to {self._state_file}")


def _is_tcp(packet: bytes) -> bool:
    """Whether an IP packet the core built (no IPv6 extension headers) carries TCP."""
    return packet[9 if packet[0] >> 4 == 4 else 6] == socket.IPPROTO_TCP
