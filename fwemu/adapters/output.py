"""What a running fwemu tells people: log lines on stderr and JSON-lines events.

The core's `now` is monotonic; output shows wall-clock time through one offset captured at start,
so a clock step during a run shifts nothing the core decides.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

from fwemu.core.events import Event

# At most one error line per this many seconds; the rest are counted and summarised.
ERROR_LOG_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class Clock:
    """Monotonic time for the core, and its mapping to wall-clock epoch seconds."""

    offset: float  # wall-clock time minus monotonic time, at start

    @classmethod
    def start(cls) -> Clock:
        return cls(time.time() - time.monotonic())

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def wall(self, now: float) -> float:
        return now + self.offset


# Receives each event's JSON form (the control socket's followers, the metrics).
Listener = Callable[[dict[str, Any]], None]


class Reporter:
    """Writes log lines to `log` and, if given, one JSON object per event to `events` and to
    every subscribed listener."""

    def __init__(
        self, clock: Clock, log: TextIO, events: TextIO | None = None, *, dry_run: bool = False
    ) -> None:
        self.clock = clock
        self._log = log
        self._events = events
        self._dry_run = dry_run
        self._last_error = -ERROR_LOG_INTERVAL
        self._suppressed = 0
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def line(self, text: str, now: float | None = None) -> None:
        """One log line, prefixed with the local wall-clock time."""
        wall = self.clock.wall(Clock.now() if now is None else now)
        stamp = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall % 1 * 1000):03d}"
        self._log.write(f"{stamp} {text}\n")
        self._log.flush()

    def events(self, events: Iterable[Event]) -> None:
        for event in events:
            prefix = "[dry run] " if self._dry_run else ""
            self.line(prefix + event.describe(), event.ts)
            if self._events is None and not self._listeners:
                continue
            record = self.record(event)
            if self._events is not None:
                self._events.write(json.dumps(record) + "\n")
                self._events.flush()
            for listener in self._listeners:
                listener(record)

    def record(self, event: Event) -> dict[str, Any]:
        """The event's JSON form, with wall-clock `ts` (and `dry_run` in a dry run)."""
        record = event.to_dict()
        record["ts"] = round(self.clock.wall(event.ts), 6)
        if self._dry_run:
            record["dry_run"] = True
        return record

    def error(self, text: str) -> None:
        """A log line for a recurring problem; rate-limited, as a packet flood repeats it."""
        now = Clock.now()
        if now - self._last_error < ERROR_LOG_INTERVAL:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} similar messages suppressed)" if self._suppressed else ""
        self._last_error, self._suppressed = now, 0
        self.line(f"error: {text}{more}", now)
