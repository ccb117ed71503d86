"""The event loop of `fwemu run`: one thread, one selector, the engine's deadline as timeout.

Adapters never decide: a queued packet goes to `Engine.handle_packet`, whose verdict, RSTs and
events are applied as given; the loop sleeps until the queue is readable, a signal arrives or
`Engine.next_deadline()` is due, and then calls `handle_timer`.
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
from types import FrameType, TracebackType
from typing import cast

from netfilterqueue import NetfilterQueue, Packet

from fwemu.adapters.inject import Injector
from fwemu.adapters.nfqueue import BudgetSocket, queue_socket
from fwemu.adapters.output import Clock, Reporter
from fwemu.core.engine import Engine, Verdict
from fwemu.core.events import Event

# Flows expired per handle_timer call: 100k simultaneous expiries take ~100 iterations, with
# the queue polled between them, so packets keep flowing.
TIMER_BATCH = 1024
# Queue messages handled before the timers get a turn again, so a packet flood cannot starve them.
PACKET_BATCH = 256


class Signals:
    """SIGINT/SIGTERM request a stop, SIGUSR1 a state snapshot; SIGHUP is ignored (reserved).

    Handlers only set flags; `set_wakeup_fd` makes the selector return when a signal arrives.
    Previous handlers are restored on exit.
    """

    _HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)

    def __init__(self) -> None:
        self.stop: signal.Signals | None = None
        self.snapshot = False
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
        else:
            self.stop = signal.Signals(signum)

    def __enter__(self) -> Signals:
        for sock in (self._read, self._write):
            sock.setblocking(False)
        self._previous_wakeup = signal.set_wakeup_fd(
            self._write.fileno(), warn_on_full_buffer=False
        )
        for signum in self._HANDLED:
            handler = signal.SIG_IGN if signum == signal.SIGHUP else self._handle
            self._previous[signum] = signal.signal(signum, handler)
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


class Daemon:
    """Applies the engine's decisions to queued packets and runs its timers until a stop signal."""

    def __init__(
        self,
        engine: Engine,
        reporter: Reporter,
        injector: Injector,
        *,
        dry_run: bool = False,
        state_file: Path | None = None,
    ) -> None:
        self.engine = engine
        self.counters = Counters()
        self._reporter = reporter
        self._injector = injector
        self._dry_run = dry_run
        self._state_file = state_file

    def on_packet(self, packet: Packet) -> None:
        """The queue callback. Every packet gets a verdict, whatever the engine does."""
        self.counters.packets += 1
        try:
            decision = self.engine.handle_packet(packet.get_payload(), now=Clock.now())
        except Exception as err:
            packet.accept()
            self.counters.errors += 1
            self._reporter.error(f"engine failed on a packet; accepted it: {err!r}")
            return
        if decision.verdict is Verdict.DROP:
            self.counters.dropped += 1
        else:
            self.counters.accepted += 1
        if decision.verdict is Verdict.DROP and not self._dry_run:
            packet.drop()
        else:
            packet.accept()
        self._apply(decision.inject, decision.events)

    def _apply(self, inject: tuple[bytes, ...], events: Iterable[Event]) -> None:
        if self._dry_run:
            self.counters.resets += len(inject)
        else:
            self.counters.resets += sum(self._injector.send(data) for data in inject)
        self._reporter.events(events)

    def run(self, nfq: NetfilterQueue, signals: Signals) -> None:
        """Serve the queue until SIGINT/SIGTERM. Exceptions from the engine's timers propagate."""
        with queue_socket(nfq) as sock, selectors.DefaultSelector() as selector:
            batch = BudgetSocket(sock, PACKET_BATCH)
            selector.register(sock, selectors.EVENT_READ, "queue")
            selector.register(signals, selectors.EVENT_READ, "signals")
            while signals.stop is None:
                if signals.snapshot:
                    signals.snapshot = False
                    self.write_state()
                deadline = self.engine.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - Clock.now())
                for key, _ in selector.select(timeout):
                    if key.data == "queue":
                        # run_socket only calls recv(); BudgetSocket provides just that.
                        nfq.run_socket(cast(socket.socket, batch))
                    else:
                        signals.drain()
                # Re-read: the packets just handled may have moved the deadline.
                deadline = self.engine.next_deadline()
                now = Clock.now()
                if deadline is not None and now >= deadline:
                    effects = self.engine.handle_timer(now=now, limit=TIMER_BATCH)
                    self._apply(effects.inject, effects.events)

    def flow_count(self) -> int:
        return len(self.engine.table)

    def write_state(self) -> None:
        """Write the flow table as JSON to the state file (atomically: readers never see half)."""
        if self._state_file is None:
            self._reporter.line("SIGUSR1 ignored: no --state-file was given")
            return
        now = Clock.now()
        flows = [asdict(flow) for flow in self.engine.flows(now=now)]
        snapshot = {"ts": round(self._reporter.clock.wall(now), 6), "flows": flows}
        directory = self._state_file.parent
        try:
            with tempfile.NamedTemporaryFile(
                "w", dir=directory, prefix=".fwemu-state-", delete=False
            ) as tmp:
                json.dump(snapshot, tmp)
            os.replace(tmp.name, self._state_file)
        except OSError as err:
            self._reporter.error(f"cannot write the state file {self._state_file}: {err}")
            return
        self._reporter.line(f"wrote {len(flows)} flows to {self._state_file}")
