"""The one clock of a running fwemu: monotonic time for the core, wall-clock time for people.

The core's `now` is monotonic; output shows wall-clock time through one offset captured at start,
so a clock step during a run shifts nothing the core decides. A module of its own because the
adapters (the loop) and ops (the control commands) both read it, and neither depends on the other
for it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clock:
    """Monotonic time for the core, and its mapping to wall-clock epoch seconds."""

    offset: float  # wall-clock time minus monotonic time, at start

    # Called for every packet: the C function itself, no Python frame around it.
    now = staticmethod(time.monotonic)

    @classmethod
    def start(cls) -> Clock:
        return cls(time.time() - time.monotonic())

    def wall(self, now: float) -> float:
        return now + self.offset
