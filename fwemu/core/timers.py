"""Per-slot deadlines that stay cheap at a million flows.

Every accepted packet moves its flow's deadline; pushing a heap entry per packet would dominate the
per-packet cost. Instead each slot's *current* deadline lives in an array, and the slot is filed in
a bucket (one per `granularity` seconds) only when its deadline moves *earlier* than where it is
filed. A deadline that moves later (the common case: an idle timer re-armed by traffic) costs one
array store; when its old bucket comes due, the slot is found not yet due and re-filed. Each bucket
remembers the minimum deadline filed into it, so `next_deadline()` is exact: a flow whose timer is
10 s and whose last packet came at t expires at t + 10, not at the next sweep. The price is an
occasional early wake-up that only re-files slots.
"""

from __future__ import annotations

import heapq
import math
from array import array
from typing import Final

_INF: Final = math.inf
_UNFILED: Final = -1


class Timers:
    """Deadlines for integer slots 0..n-1 (the flow table's slots)."""

    __slots__ = ("_buckets", "_filed", "_granularity", "_heap", "_min", "deadlines")

    def __init__(self, granularity: float = 1.0) -> None:
        self._granularity = granularity
        # The slot's real deadline (inf = no timer). A caller may move an armed deadline *later*
        # by storing here directly (the slot stays filed earlier and is re-filed when that tick
        # comes due); anything else goes through set().
        self.deadlines = array("d")
        self._filed = array("q")  # the bucket tick the slot is filed in; _UNFILED = none
        self._buckets: dict[int, array[int]] = {}
        self._min: dict[int, float] = {}  # lower bound (exact unless stale) of each bucket
        self._heap: list[int] = []  # bucket ticks, possibly with stale duplicates

    def set(self, slot: int, deadline: float | None) -> None:
        """Arm (or re-arm, or with None disarm) `slot`'s timer."""
        deadline_array = self.deadlines
        if slot >= len(deadline_array):
            grow = slot + 1 - len(deadline_array)
            deadline_array.extend([_INF] * grow)
            self._filed.extend([_UNFILED] * grow)
        if deadline is None:
            deadline_array[slot] = _INF
            return
        deadline_array[slot] = deadline
        tick = int(deadline // self._granularity)
        filed = self._filed[slot]
        if filed == _UNFILED or tick < filed:
            self._file(slot, tick, deadline)
        elif tick == filed and deadline < self._min[tick]:
            self._min[tick] = deadline

    def deadline(self, slot: int) -> float | None:
        if slot >= len(self.deadlines):
            return None
        d = self.deadlines[slot]
        return None if d == _INF else d

    def next_deadline(self) -> float | None:
        heap, buckets = self._heap, self._buckets
        while heap and heap[0] not in buckets:
            heapq.heappop(heap)
        return self._min[heap[0]] if heap else None

    def pop_due(self, now: float, limit: int) -> list[int]:
        """Slots whose deadline is <= now (at most `limit`); their timers are disarmed."""
        due: list[int] = []
        deadline, filed, heap = self.deadlines, self._filed, self._heap
        while len(due) < limit:
            head = self.next_deadline()
            if head is None or head > now:
                break
            tick = heapq.heappop(heap)
            bucket = self._buckets.pop(tick)
            lower = self._min.pop(tick)
            refile: list[int] = []
            while bucket and len(due) < limit:
                slot = bucket.pop()
                if filed[slot] != tick:
                    continue  # filed again, earlier, after this entry was made
                filed[slot] = _UNFILED
                d = deadline[slot]
                if d <= now:
                    deadline[slot] = _INF
                    due.append(slot)
                elif d != _INF:
                    refile.append(slot)
            for slot in refile:
                d = deadline[slot]
                self._file(slot, int(d // self._granularity), d)
            if bucket:  # stopped at `limit`: put the unexamined rest back, still filed at `tick`
                if tick not in self._buckets:
                    self._buckets[tick] = array("I")
                    heapq.heappush(heap, tick)
                self._buckets[tick].extend(bucket)
                self._min[tick] = min(lower, self._min.get(tick, _INF))
        return due

    def _file(self, slot: int, tick: int, deadline: float) -> None:
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = array("I")
            self._min[tick] = deadline
            heapq.heappush(self._heap, tick)
        elif deadline < self._min[tick]:
            self._min[tick] = deadline
        bucket.append(slot)
        self._filed[slot] = tick
