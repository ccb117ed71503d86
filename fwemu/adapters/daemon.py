"""The event loop of `fwemu run`: one thread, one selector, the engine's deadline as timeout.

Adapters never decide: a queued packet goes to `Engine.handle_packet`, whose verdict, RSTs and
events are applied as given; the loop sleeps until the queue is readable, a signal arrives, a
control-socket client needs serving or `Engine.next_deadline()` is due, and then calls
`handle_timer`. Control requests (fwemu.ops) are served between packet batches, with bounded work
per turn, so they never hold verdicts up for long.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from time import perf_counter_ns
from types import FrameType, TracebackType
from typing import cast

from netfilterqueue import NetfilterQueue, Packet

from fwemu.adapters.inject import Injector
from fwemu.adapters.nfqueue import BudgetSocket, queue_socket
from fwemu.adapters.output import Clock, Reporter
from fwemu.core.engine import Engine, Verdict
from fwemu.core.events import Event
from fwemu.errors import FwemuError
from fwemu.ops.commands import PolicySource
from fwemu.ops.control import ControlServer
from fwemu.ops.metrics import LATENCY_SAMPLE, Metrics

# Flows expired per handle_timer call: 100k simultaneous expiries take ~100 iterations, with
# the queue polled between them, so packets keep flowing.
TIMER_BATCH = 1024
# Queue messages handled before the timers get a turn again, so a packet flood cannot starve them.
PACKET_BATCH = 256


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
    errors: int = 0  # packets accepted because the engine raised

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Daemon:
    """Applies the engine's decisions to queued packets and runs its timers until a stop signal;
    serves the control socket and reloads the policy from the same loop."""

    def __init__(
        self,
        engine: Engine,
        reporter: Reporter,
        injector: Injector,
        source: PolicySource,
        *,
        dry_run: bool = False,
        state_file: Path | None = None,
        counters: Counters | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.reporter = reporter
        self.source = source
        self.counters = counters or Counters()
        self._injector = injector
        self._dry_run = dry_run
        self._state_file = state_file
        self._metrics = metrics
        self._latency = None if metrics is None else metrics.latency

    def on_packet(self, packet: Packet) -> None:
        """The queue callback. Every packet gets a verdict, whatever the engine does."""
        self.counters.packets += 1
        timer = None if self.counters.packets % LATENCY_SAMPLE else self._latency
        try:
            start = perf_counter_ns() if timer is not None else 0
            decision = self.engine.handle_packet(packet.get_payload(), now=Clock.now())
            if timer is not None:
                timer.observe((perf_counter_ns() - start) * 1e-9)
        except Exception as err:
            packet.accept()
            self.counters.errors += 1
            self.reporter.error(f"engine failed on a packet; accepted it: {err!r}")
            return
        if decision.verdict is Verdict.DROP:
            self.counters.dropped += 1
        else:
            self.counters.accepted += 1
        if decision.verdict is Verdict.DROP and not self._dry_run:
            packet.drop()
        else:
            packet.accept()
        self.apply(decision.inject, decision.events)

    def apply(self, inject: tuple[bytes, ...], events: Iterable[Event]) -> int:
        """Inject the RSTs and report the events; the number of RSTs sent (would-be in a dry
        run)."""
        sent = len(inject) if self._dry_run else sum(map(self._injector.send, inject))
        self.counters.resets += sent
        self.reporter.events(events)
        return sent

    def wall(self, now: float) -> float:
        return round(self.reporter.clock.wall(now), 6)

    def run(
        self, nfq: NetfilterQueue, signals: Signals, control: ControlServer | None = None
    ) -> None:
        """Serve the queue (and the control socket) until SIGINT/SIGTERM. Exceptions from the
        engine's timers propagate."""
        with queue_socket(nfq) as sock, selectors.DefaultSelector() as selector:
            batch = BudgetSocket(sock, PACKET_BATCH)
            # Each key's data is what to call with the ready mask.
            # run_socket only calls recv(); BudgetSocket provides just that.
            selector.register(
                sock, selectors.EVENT_READ, lambda _: nfq.run_socket(cast(socket.socket, batch))
            )
            selector.register(signals, selectors.EVENT_READ, lambda _: signals.drain())
            if control is not None:
                control.register(selector)
            try:
                while signals.stop is None:
                    self._on_signals(signals)
                    for key, mask in selector.select(self._timeout(control)):
                        key.data(mask)
                    now = Clock.now()
                    if control is not None:
                        control.expire_sessions(now)
                    # Re-read: the packets just handled may have moved the deadline.
                    deadline = self.engine.next_deadline()
                    if deadline is not None and now >= deadline:
                        effects = self.engine.handle_timer(now=now, limit=TIMER_BATCH)
                        self.apply(effects.inject, effects.events)
            finally:
                if control is not None:
                    control.detach()

    def _on_signals(self, signals: Signals) -> None:
        if signals.snapshot:
            signals.snapshot = False
            self.write_state()
        if signals.reload:
            signals.reload = False
            self.reload()

    def _timeout(self, control: ControlServer | None) -> float | None:
        deadlines = [self.engine.next_deadline()]
        if control is not None:
            deadlines.append(control.next_deadline())
        due = min((d for d in deadlines if d is not None), default=None)
        return None if due is None else max(0.0, due - Clock.now())

    def reload(self, path: str | None = None, preset: str | None = None) -> tuple[bool, str]:
        """Load the policy again (or the given file or preset) and enforce it, keeping every flow;
        an invalid policy changes nothing. (ok, what happened), also logged."""
        old = self.engine.policy
        try:
            source = self.source.switched(path, preset)
            policy = source.load()
        except FwemuError as err:
            message = f"reload rejected, policy {old.name} ({old.origin}) stays in force:\n{err}"
            ok = False
        else:
            kept = self.engine.reload(policy)
            same = source.preset is not None and source == self.source
            message = (
                f"reloaded policy {policy.name} ({policy.origin}): {kept} flows kept, their "
                "timers re-armed from their last packet"
                + ("; a preset does not change while fwemu runs: nothing changed" if same else "")
            )
            self.source, ok = source, True
        for line in message.splitlines():
            self.reporter.line(line)
        if self._metrics is not None:
            self._metrics.reloads.labels("ok" if ok else "rejected").inc()
        return ok, message

    def flow_count(self) -> int:
        return len(self.engine.table)

    def write_state(self) -> None:
        """Write the flow table as JSON to the state file (atomically: readers never see half)."""
        if self._state_file is None:
            self.reporter.line("SIGUSR1 ignored: no --state-file was given")
            return
        now = Clock.now()
        flows = [asdict(flow) for flow in self.engine.flows(now=now)]
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
        self.reporter.line(f"wrote {len(flows)} flows to {self._state_file}")
