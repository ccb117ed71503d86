"""The core's answers: a verdict per packet, and what timers produce."""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

from fwemu.core.events import Event


class Verdict(IntEnum):
    """Netfilter verdict values (NF_DROP, NF_ACCEPT)."""

    DROP = 0
    ACCEPT = 1


class Decision(NamedTuple):
    """A verdict, why, and its effects. A NamedTuple: one is built per connection packet, and a
    tuple is built in C at a fifth of a frozen dataclass's cost."""

    verdict: Verdict
    reason: str
    inject: tuple[bytes, ...] = ()  # complete IP packets (RSTs) to send now
    events: tuple[Event, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.verdict == Verdict.ACCEPT


class Effects(NamedTuple):
    """What running the timers (or forcing an expiry) produced."""

    inject: tuple[bytes, ...] = ()
    events: tuple[Event, ...] = ()


def accept(reason: str, *events: Event) -> Decision:
    return Decision(Verdict.ACCEPT, reason, (), events)


IN_STATE = accept("in-state")
IGNORED = accept("ignored (state unchanged)")
NO_EFFECTS = Effects()
