"""How many out-of-state packets get a full answer: their own event and, if the policy says
reset, a RST.

A flood is made of out-of-state packets (junk, spoofed segments, late packets of nothing), and
answering each with a log line, an event and an injected RST costs several times what an
in-state packet does: a stress run saw fwemu keep up with only ~5k of them a second, and the
overflowing queue's fail-open then let live flows' packets past it. Firewalls and the kernel
rate-limit such answers for the same reason (Linux: `icmp_msgs_per_sec` = 1000 for ICMP errors,
and `tcp_challenge_ack_limit`, 1000 a second until 6.0; iptables users put `-m limit` before a
REJECT). Every packet still gets the policy's verdict; past the rate it gets nothing else, and
what was withheld is counted into one summary event per source and second.

Fixed one-second windows, opened by the first out-of-state packet after the last one closed:
counting is a dict increment, and the counts are dropped whole when the window closes.
"""

from __future__ import annotations

from collections.abc import Callable

from fwemu.core.events import Event, FlowId, LimitSummary, OutOfStateSummary

WINDOW = 1.0  # seconds: the rates are per second


class _Held:
    """What one source's packets past the rate had, in the current window."""

    __slots__ = ("action", "flow", "limit", "packets", "refused_by", "resets", "rule")

    def __init__(
        self, flow: FlowId, action: str, rule: str, limit: str, refused_by: str | None
    ) -> None:
        self.flow, self.action, self.rule, self.limit = flow, action, rule, limit
        self.refused_by = refused_by
        self.packets = 0
        self.resets = 0


class OutOfStateLimiter:
    """Admits at most `per_source` out-of-state packets a second from one source address and
    `total` from all; sums up the rest. `deadline` is when `flush` has summaries to give.
    `flow_of(key, forward)` names a packet's flow as it travelled (sender first)."""

    __slots__ = (
        "_counts",
        "_flow_of",
        "_held",
        "_ready",
        "_total",
        "_window_end",
        "per_source",
        "total",
    )

    def __init__(
        self, per_source: int, total: int, flow_of: Callable[[bytes, bool], FlowId]
    ) -> None:
        self._flow_of = flow_of
        self.per_source = per_source
        self.total = total
        self._window_end = float("-inf")
        self._counts: dict[bytes, int] = {}
        self._total = 0
        self._held: dict[tuple[bytes, str | None], _Held] = {}
        self._ready: list[Event] = []

    def admit(self, source: bytes, now: float) -> str | None:
        """None if this packet gets a full answer, else the limit it is over ("per_source" or
        "total"); the caller then calls `hold`."""
        if now >= self._window_end:
            self._close(now)
        count = self._counts.get(source, 0)
        if count >= self.per_source:
            return "per_source"
        if self._total >= self.total:
            return "total"
        self._counts[source] = count + 1
        self._total += 1
        return None

    def hold(
        self,
        source: bytes,
        limit: str,
        key: bytes,
        forward: bool,
        action: str,
        rule: str,
        reset: bool,
        refused_by: str | None = None,
    ) -> None:
        """Count a packet `admit` refused: its flow key and direction (the window's first is
        kept, to name the source), its verdict's `action`, whether a RST was withheld, and the
        connection limit that refused its new flow, if that is what it was answered for."""
        held = self._held.get((source, refused_by))
        if held is None:
            flow = self._flow_of(key, forward)
            held = self._held[source, refused_by] = _Held(flow, action, rule, limit, refused_by)
        held.packets += 1
        held.resets += reset

    @property
    def deadline(self) -> float | None:
        if self._ready:
            return self._ready[0].ts
        return self._window_end if self._held else None

    def flush(self, now: float) -> list[Event]:
        """The summaries of the windows closed by `now`."""
        if self._held and now >= self._window_end:
            self._close(now)
        ready, self._ready = self._ready, []
        return ready

    def _close(self, now: float) -> None:
        """End the current window (summing up what it held) and open the next at `now`."""
        end = self._window_end
        for h in self._held.values():
            rate = self.per_source if h.limit == "per_source" else self.total
            if h.refused_by is None:
                self._ready.append(
                    OutOfStateSummary(
                        end,
                        h.flow,
                        h.flow.src,
                        h.packets,
                        h.resets,
                        h.action,
                        h.rule,
                        h.limit,
                        rate,
                    )
                )
            else:
                self._ready.append(
                    LimitSummary(
                        end,
                        h.flow,
                        h.flow.src,
                        h.packets,
                        h.resets,
                        h.refused_by,
                        h.action,
                        h.rule,
                        h.limit,
                        rate,
                    )
                )
        self._held.clear()
        self._counts.clear()
        self._total = 0
        self._window_end = now + WINDOW
