"""What the core reports: records a test can compare whole and an adapter can print.

Slotted dataclasses, not frozen ones: a frozen dataclass's __init__ costs about four times as much
(one object.__setattr__ per field) and the core builds one per connection packet. Treat them as
values all the same: nothing mutates an event once made.

`to_dict()` is the JSON-lines form (`fwemu run --events`): always `ts`, `event`, `flow`, `state`,
`phase`, `action` and `rule`, plus the event's own fields. `describe()` is one readable line.

Times (`ts` and the fields an event names in `TIMES`) are on the core's clock, whatever `now` it
was given: the adapter maps them to wall-clock time, in its JSON (epoch seconds) and in the lines
it prints (`describe(at)` with `at` writing a core time as the local time it maps to).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

# Writes a core time for people (see the module's docstring).
TimeText = Callable[[float], str]


def core_seconds(t: float) -> str:
    """A core time as it is: seconds on the core's clock (tests, and callers without a clock)."""
    return f"{t:.3f}"


class FlowId(NamedTuple):
    """A flow's addresses as the firewall sees them: src is the client (the SYN's sender).

    A NamedTuple rather than a frozen dataclass: every event carries one, and a tuple is built
    in C at a third of the cost. Use `to_dict()`, not dataclasses.asdict, for its JSON form."""

    src: str
    sport: int
    dst: str
    dport: int
    proto: str = "tcp"  # a Protocol value

    def __str__(self) -> str:
        ends = f"{_hostport(self.src, self.sport)} > {_hostport(self.dst, self.dport)}"
        return ends if self.proto == "tcp" else f"{self.proto} {ends}"

    def to_dict(self) -> dict[str, object]:
        return {
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "proto": self.proto,
        }


_OWN_FIELDS: dict[type[Event], tuple[str, ...]] = {}


def _own_fields(kind: type[Event]) -> tuple[str, ...]:
    """The fields of an event class after ts and flow (dataclasses.fields is slow per call)."""
    names = _OWN_FIELDS.get(kind)
    if names is None:
        names = _OWN_FIELDS[kind] = tuple(field.name for field in dataclasses.fields(kind))[2:]
    return names


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{noun}s"


def _withheld(resets: int) -> str:
    return f", {resets} {_plural(resets, 'RST')} withheld" if resets else ""


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


@dataclass(slots=True)
class Event:
    ts: float
    flow: FlowId

    kind: ClassVar[str] = "event"
    # Keys every event's dict carries, so consumers can rely on them.
    _COMMON: ClassVar[tuple[str, ...]] = ("state", "phase", "action", "rule")
    # The event's own fields that hold a core time (float or None), besides `ts`.
    TIMES: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ts": self.ts,
            "event": self.kind,
            "flow": self.flow.to_dict(),
        }
        out.update(dict.fromkeys(self._COMMON))
        for name in _own_fields(type(self)):
            out[name] = getattr(self, name)
        return out

    def describe(self, at: TimeText = core_seconds) -> str:
        """One readable line; `at` writes the core times it shows (its `TIMES`)."""
        return f"{self.kind} {self.flow}"


@dataclass(slots=True)
class FlowNew(Event):
    state: str
    rule: str

    kind: ClassVar[str] = "new"

    def describe(self, at: TimeText = core_seconds) -> str:
        return f"new      {self.flow} {self.state} (rule {self.rule})"


@dataclass(slots=True)
class StateChanged(Event):
    old_state: str
    state: str
    phase: str
    rule: str

    kind: ClassVar[str] = "state"

    def describe(self, at: TimeText = core_seconds) -> str:
        return f"state    {self.flow} {self.old_state} -> {self.state}"


@dataclass(slots=True)
class FlowDeleted(Event):
    """The kernel would delete this entry outright (a RST before any reply, a SYN reopening a
    closed connection): gone without a timer, so later packets are not late packets."""

    state: str
    reason: str
    rule: str

    kind: ClassVar[str] = "delete"

    def describe(self, at: TimeText = core_seconds) -> str:
        return f"delete   {self.flow} {self.state}: {self.reason}"


@dataclass(slots=True)
class FlowExpired(Event):
    """A timer ran out (or an operator forced it): the flow is gone from the table."""

    state: str
    phase: str
    action: str
    rule: str
    timeout: float | None  # the policy timer that ran out (None when forced)
    idle: float  # seconds since the flow's last accepted packet
    forced: bool = False
    # The Timeouts cap that replaced the state's own timer ("max_retrans", "unacknowledged",
    # "close" for a RST that left the state as it was), "lifetime" (its absolute lifetime ran
    # out), "dcd" (an end did not answer dead connection detection's probes), or None.
    capped_by: str | None = None
    silent: str | None = None  # for "dcd": the end that never answered, or "both"

    kind: ClassVar[str] = "expire"

    def describe(self, at: TimeText = core_seconds) -> str:
        timer = self.phase if self.capped_by is None else f"{self.phase} ({self.capped_by})"
        why = "forced" if self.forced else f"{timer} timer {self.timeout:g}s"
        if self.silent:
            why += f", {self.silent} silent"
        return (
            f"expire   {self.flow} {self.state} after {self.idle:.3f}s idle ({why}): {self.action}"
        )


@dataclass(slots=True)
class ResetSent(Event):
    """A RST injected towards `to` ("client" or "server"), spoofed from its peer."""

    to: str
    seq: int
    ack: int | None
    state: str
    # "expire" (its flow's timer), "out_of_state" (answering a late packet), "limit" (refusing
    # a new flow) or "proxy" (the server refused a proxied handshake: the client is told)
    cause: str
    rule: str

    kind: ClassVar[str] = "reset"

    def describe(self, at: TimeText = core_seconds) -> str:
        ack = "" if self.ack is None else f" ack {self.ack}"
        why = f"{self.cause}, {self.state}"
        return f"reset    {self.flow} RST to {self.to} seq {self.seq}{ack} ({why})"


@dataclass(slots=True)
class UnreachableSent(Event):
    """An ICMP port unreachable sent to `to` ("client", "server" or "sender"), from the address
    its datagram was sent to: answering a late datagram of a UDP flow (cause "out_of_state") or
    one a limit refused ("limit")."""

    to: str
    cause: str
    rule: str

    kind: ClassVar[str] = "unreachable"

    def describe(self, at: TimeText = core_seconds) -> str:
        return f"unreach  {self.flow} ICMP port unreachable to {self.to} ({self.cause})"


@dataclass(slots=True)
class ProbeSent(Event):
    """Dead connection detection probed both ends of an idle flow (round `round` of
    `retries`), as the Cisco ASA does before it expires one (fwemu/core/dcd.py)."""

    state: str
    round: int
    retries: int
    rule: str

    kind: ClassVar[str] = "probe"

    def describe(self, at: TimeText = core_seconds) -> str:
        return f"probe    {self.flow} {self.state} idle: probes {self.round} of {self.retries} sent"


@dataclass(slots=True)
class OutOfState(Event):
    """A packet that matched no flow, or that the state table calls invalid.

    `flow` is oriented client > server when the side is known, else as the packet travelled.
    `expired_at`/`expired_phase` name the tombstone of the flow it belonged to, if remembered.
    """

    reason: str
    action: str
    side: str | None  # "client", "server" or None (unknown)
    state: str | None
    rule: str
    expired_at: float | None = None
    expired_phase: str | None = None

    kind: ClassVar[str] = "out_of_state"
    TIMES: ClassVar[tuple[str, ...]] = ("expired_at",)

    def describe(self, at: TimeText = core_seconds) -> str:
        frm = f" from {self.side}" if self.side else ""
        gone = ""
        if self.expired_at is not None:
            gone = f"; flow expired at {at(self.expired_at)} by its {self.expired_phase} timer"
        return f"oos      {self.flow} {self.reason}{frm}: {self.action}{gone}"


@dataclass(slots=True)
class OutOfStateSummary(Event):
    """Out-of-state packets from `source` past the policy's rate in one second (ending at
    `ts`): each got the policy's verdict (`action`), but no event of its own and no RST
    (fwemu/core/ratelimit.py). `flow` is the first one's, as it travelled."""

    source: str
    packets: int
    resets_withheld: int
    action: str
    rule: str
    limit: str  # "per_source" or "total": the rate it was over
    rate: int  # that rate, packets a second

    kind: ClassVar[str] = "out_of_state_summary"

    def describe(self, at: TimeText = core_seconds) -> str:
        limit = "from one source" if self.limit == "per_source" else "in all"
        return (
            f"oos      {self.packets} more out-of-state {_plural(self.packets, 'packet')} from "
            f"{self.source} in the last second: {self.action}{_withheld(self.resets_withheld)} "
            f"(past {self.rate}/s {limit}, e.g. {self.flow})"
        )


@dataclass(slots=True)
class LimitRefused(Event):
    """A new flow a limit refused (fwemu/core/limits.py): no flow opened, and its packet got
    `action`: dropped, dropped and answered with a RST (reset), or answered with a SYN cookie
    (intercept: the flow opens if the client's ACK proves it)."""

    limit: str  # the Limits key: "max_flows", "per_client", "ports_per_destination", ...
    value: int  # its value
    count: int  # the count that reached it
    counted: str  # whose count: "table", "client 10.0.0.1", "client 10.0.0.1 to 10.0.0.2:80"
    limits: str  # whose [limits]: "policy" or "rule NAME"
    action: str  # LimitAction value
    rule: str  # the flow's rule

    kind: ClassVar[str] = "limit"

    def describe(self, at: TimeText = core_seconds) -> str:
        return (
            f"limit    {self.flow} refused: {self.limit} = {self.value} reached by "
            f"{self.counted} ({self.limits}): {self.action}"
        )


@dataclass(slots=True)
class LimitSummary(Event):
    """New flows from `source` a limit refused past the policy's answer rate in one second
    (ending at `ts`): each got `action`, but no event of its own and no RST. `flow` is the
    first one's."""

    source: str
    packets: int
    resets_withheld: int
    limit: str  # the Limits key that refused them
    action: str
    rule: str
    past: str  # "per_source" or "total": the answer rate it was over
    rate: int  # that rate, packets a second

    kind: ClassVar[str] = "limit_summary"

    def describe(self, at: TimeText = core_seconds) -> str:
        return (
            f"limit    {self.packets} more new {_plural(self.packets, 'flow')} from {self.source} "
            f"refused by {self.limit} in the last second: "
            f"{self.action}{_withheld(self.resets_withheld)} (past {self.rate}/s, e.g. {self.flow})"
        )


@dataclass(slots=True)
class SynFloodAlarm(Event):
    """New SYNs passed a [syn_flood] alarm rate: the first time in a second, per destination or
    in total (`per_destination`). `flow` is the SYN that passed it."""

    rate: int  # SYNs a second
    alarm: int  # the alarm rate
    scope: str  # whose [syn_flood]: "policy" or "rule NAME"
    per_destination: bool
    rule: str  # the SYN's rule

    kind: ClassVar[str] = "syn_flood"

    def describe(self, at: TimeText = core_seconds) -> str:
        where = f"to {self.flow.dst}:{self.flow.dport}" if self.per_destination else "in total"
        return (
            f"flood    {self.rate} SYN/s {where}, past the alarm rate {self.alarm} ({self.scope})"
        )
