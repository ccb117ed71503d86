"""SYN-flood defences by rate ([syn_flood]): an alarm, random early drop, blocking, and when to
answer SYNs with cookies. New SYNs are counted over fixed one-second windows, per server
address and port or in total, as the products count them (PAN-OS zone protection: SYNs a second
to the zone; FortiGate tcp_syn_flood: to each destination, retransmissions included).

The rate a SYN is judged by is the larger of the last full second's count and the count so far
in this one: a flood is met within its first second, and the drop probability of random early
drop is steady while the flood is (PAN-OS: rising linearly from `activate` to 100 % at
`maximum`). `block` (FortiGate continuous mode) drops every SYN while the rate is past
`activate`; `periodical` lets `activate` of them through each second.
"""

from __future__ import annotations

from collections.abc import Callable
from random import Random
from typing import NamedTuple

from fwemu.core.events import FlowId, SynFloodAlarm
from fwemu.policy.model import FloodAction, FloodCount, SynFlood

WINDOW = 1.0  # seconds: rates are per second

PASS, DROP, COOKIE = range(3)  # what `judge` says of a new SYN


class _Counts:
    """One destination's (or the whole scope's) SYNs: this window's, the last one's."""

    __slots__ = ("alarmed", "dropped", "last", "now")

    def __init__(self) -> None:
        self.now = self.last = self.dropped = 0
        self.alarmed = False


class Seen(NamedTuple):
    """A scope's SYN counts since fwemu started, for people (status)."""

    scope: str
    syns: int
    dropped: int
    cookies: int


class FloodGuard:
    """One [syn_flood] table's counts and decisions."""

    __slots__ = ("_counts", "_end", "_rng", "config", "cookies", "dropped", "name", "syns")

    def __init__(self, name: str, config: SynFlood, rng: Random) -> None:
        self.name = name
        self.config = config
        self._rng = rng
        self._counts: dict[bytes, _Counts] = {}
        self._end = float("-inf")
        self.syns = self.dropped = self.cookies = 0

    def judge(
        self,
        server: bytes,
        flow: Callable[[], FlowId],
        rule: str,
        now: float,
        alarms: list[SynFloodAlarm],
    ) -> int:
        """PASS, DROP or COOKIE for a new SYN to `server` (packed address and port); an alarm
        the first time in a window the rate passes `alarm`, appended to `alarms` (naming the
        SYN's `flow()`, made only then)."""
        if now >= self._end:
            self._roll(now)
        config = self.config
        key = server if config.count == FloodCount.DESTINATION else b""
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = _Counts()
        counts.now += 1
        self.syns += 1
        rate = max(counts.now, counts.last)
        if config.alarm is not None and rate > config.alarm and not counts.alarmed:
            counts.alarmed = True
            alarm = SynFloodAlarm(now, flow(), rate, config.alarm, self.name, key != b"", rule)
            alarms.append(alarm)
        activate = config.activate
        if activate is None or rate <= activate:
            return PASS
        verdict = self._past(counts, rate)
        if verdict == DROP:
            self.dropped += 1
            counts.dropped += 1
        elif verdict == COOKIE:
            self.cookies += 1
        return verdict

    def _past(self, counts: _Counts, rate: int) -> int:
        """The action for a SYN while the rate is past `activate`."""
        config = self.config
        activate = config.activate or 0
        action = config.action
        if action == FloodAction.SYN_COOKIES:
            return COOKIE
        if action == FloodAction.BLOCK:
            return DROP
        if action == FloodAction.PERIODICAL:
            return DROP if counts.now > activate else PASS
        maximum = config.maximum
        if maximum is None or maximum <= activate:
            return DROP
        return DROP if self._rng.random() < (rate - activate) / (maximum - activate) else PASS

    def _roll(self, now: float) -> None:
        """Close the window: its counts become the last ones (a window with no SYN in it
        leaves the last ones at zero)."""
        fresh = now >= self._end + WINDOW  # a whole window passed without a SYN
        kept: dict[bytes, _Counts] = {}
        for key, counts in self._counts.items():
            if not fresh and counts.now:
                counts.last, counts.now, counts.dropped = counts.now, 0, 0
                counts.alarmed = False
                kept[key] = counts
        self._counts = kept
        self._end = now + WINDOW

    def seen(self) -> Seen:
        return Seen(self.name, self.syns, self.dropped, self.cookies)
