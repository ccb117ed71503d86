"""The core's answers: a verdict per packet, and what timers produce."""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final, NamedTuple

from fwemu.core.events import Event


class Verdict(IntEnum):
    """Netfilter verdict values (NF_DROP, NF_ACCEPT)."""

    DROP = 0
    ACCEPT = 1


class Reason(StrEnum):
    """Why a packet got its verdict: a closed set, for callers to test (`is Reason.UNPARSEABLE`);
    a Decision's `detail` says more, for people."""

    IN_STATE = "in-state"
    NEW_FLOW = "new flow"
    IGNORED = "ignored (state unchanged)"  # the kernel's IGNORE: passes, changes nothing
    CHALLENGE_ACK = "challenge ACK ignored"
    SYN_RETRANSMIT = "SYN retransmit (timer not renewed)"
    REOPENED = "reopened"
    RESET_BEFORE_REPLY = "reset before any reply"
    LIMIT = "refused by a limit"  # a new flow over one of the policy's [limits]
    SYN_FLOOD = "dropped by a SYN-flood defence"  # [syn_flood]: random early drop, block
    SYN_COOKIE = "answered by the SYN proxy"  # a SYN cookie sent, checked, or its handshake
    NORMALISED = "dropped by the normaliser"  # [normalise]: a SYN with data
    OUT_OF_STATE = "out-of-state"
    PAST_ANSWER_RATE = "out-of-state, past the answer rate"
    OTHER_PROTOCOL = "other protocol"  # neither TCP nor UDP: not tracked, passed
    UNPARSEABLE = "unparseable"


class Decision(NamedTuple):
    """A verdict, why, and its effects. A NamedTuple: one is built per connection packet, and a
    tuple is built in C at a fifth of a frozen dataclass's cost."""

    verdict: Verdict
    reason: Reason
    inject: tuple[bytes, ...] = ()  # complete IP packets (RSTs) to send now
    events: tuple[Event, ...] = ()
    detail: str = ""  # e.g. "no flow (expired)", "truncated TCP header (12 bytes)"
    # The whole packet to accept in place of the queued one (sequence numbers translated,
    # options normalised); None: accept it as it came. Only with an ACCEPT verdict.
    rewrite: bytes | None = None

    @property
    def accepted(self) -> bool:
        return self.verdict == Verdict.ACCEPT


class Effects(NamedTuple):
    """What running the timers (or forcing an expiry) produced."""

    inject: tuple[bytes, ...] = ()
    events: tuple[Event, ...] = ()


def accept(reason: Reason, *events: Event) -> Decision:
    return Decision(Verdict.ACCEPT, reason, (), events)


IN_STATE: Final = accept(Reason.IN_STATE)
# A refusal past the answer rate: the verdict alone (summed up in a limit_summary event).
REFUSED_PAST_RATE: Final = Decision(Verdict.DROP, Reason.LIMIT, detail="past the answer rate")
IGNORED: Final = accept(Reason.IGNORED)
NO_EFFECTS: Final = Effects()
