"""What a running fwemu tells people: log lines on stderr and JSON-lines events, stamped with
wall-clock time (fwemu.clock). Every core time an event holds (its `ts` and its `TIMES`) is
mapped: epoch seconds in JSON, the local time of day in log lines.

Events cost nothing nobody consumes: watchers (the metrics, the control socket's history) get the
core's Event objects as they are; the JSON form (half of the ~14 µs per connection packet that
reporting cost: docs/performance.md §6) is built only while an events file is open or a
listener (a following client) is subscribed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from fwemu.clock import Clock
from fwemu.core.events import Event

# At most one error line per this many seconds; the rest are counted and summarised.
ERROR_LOG_INTERVAL = 5.0
# Event kinds logged only with --verbose: a connection has about 6 (docs/performance.md §6),
# each line a strftime, a write(2) and a flush.
VERBOSE_KINDS = frozenset({"new", "state"})


def counted(n: int, noun: str) -> str:
    """A count in a log line: 1 flow, 2 flows."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# Sees each event as the core made it (cheap: the metrics, the control socket's history).
Watcher = Callable[[Event], None]
# Receives each event's JSON form (the control socket's followers).
Listener = Callable[[dict[str, Any]], None]


class Reporter:
    """Writes log lines to `log` and, if given, one JSON object per event to `events` and to
    every subscribed listener. New flows and state changes are logged only if `verbose`."""

    def __init__(
        self,
        clock: Clock,
        log: TextIO,
        events: TextIO | None = None,
        *,
        dry_run: bool = False,
        verbose: bool = False,
    ) -> None:
        self.clock = clock
        self._log = log
        self._events = events
        self._dry_run = dry_run
        self._prefix = "[dry run] " if dry_run else ""
        self._quiet: frozenset[str] = frozenset() if verbose else VERBOSE_KINDS
        self._last_error = -ERROR_LOG_INTERVAL
        self._suppressed = 0
        self._watchers: list[Watcher] = []
        self._listeners: list[Listener] = []
        self._second, self._hms = -1, ""  # the last log line's second and its text

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    # A listener may unsubscribe while it is being called: the list is replaced, never changed.
    def subscribe(self, listener: Listener) -> None:
        self._listeners = [*self._listeners, listener]

    def unsubscribe(self, listener: Listener) -> None:
        self._listeners = [known for known in self._listeners if known != listener]

    def line(self, text: str, now: float | None = None) -> None:
        """One log line, prefixed with the local wall-clock time."""
        self._log.write(self._stamped(text, Clock.now() if now is None else now))
        self._log.flush()

    def _stamped(self, text: str, now: float) -> str:
        return f"{self.local(now)} {text}\n"

    def local(self, now: float) -> str:
        """A core time as the local time of day it maps to, to the millisecond."""
        wall = self.clock.wall(now)
        second = int(wall)
        if second != self._second:  # strftime once a second: a mass expiry logs thousands
            self._second = second
            self._hms = time.strftime("%H:%M:%S", time.localtime(second))
        return f"{self._hms}.{int(wall % 1 * 1000):03d}"

    def events(self, events: Iterable[Event]) -> None:
        """Hand the events to watchers, log them (one write for all the lines) and send their
        JSON form where it is wanted."""
        out, listeners = self._events, self._listeners
        lines: list[str] = []
        for event in events:
            for watcher in self._watchers:
                watcher(event)
            if event.kind not in self._quiet:
                lines.append(self._stamped(self._prefix + event.describe(self.local), event.ts))
            if out is None and not listeners:
                continue
            record = self.record(event)
            if out is not None:
                out.write(json.dumps(record) + "\n")
            for listener in listeners:
                listener(record)
        if lines:
            self._log.write("".join(lines))
            self._log.flush()
        if out is not None:
            out.flush()

    def record(self, event: Event) -> dict[str, Any]:
        """The event's JSON form, its times in wall-clock epoch seconds (and `dry_run` in a dry
        run)."""
        record: dict[str, Any] = event.to_dict()
        wall = self.clock.wall
        record["ts"] = round(wall(event.ts), 6)
        for name in event.TIMES:
            if (t := record[name]) is not None:
                record[name] = round(wall(t), 6)
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
