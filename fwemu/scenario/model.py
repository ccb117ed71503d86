"""A scenario as data: the policy, what each endpoint does step by step, what must be observed.

Every duration is in the scenario's own time (the policy's time): the runner divides it by
`speed`, as `fwemu run --speed` divides the policy's timers, so a scenario reads like the field
failure it reproduces ("idle for 6m") and runs in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

from fwemu.lab.flood import FloodSpec
from fwemu.policy import Policy

Side = Literal["client", "server"]
SIDES: tuple[Side, ...] = ("client", "server")


class Outcome(StrEnum):
    """What a step observed, in the words a scenario expects."""

    OK = "ok"
    RESET = "reset"  # ECONNRESET, or EPIPE (Linux's word for a RST received in CLOSE_WAIT)
    REFUSED = "refused"  # ECONNREFUSED: a RST answered the SYN
    TIMEOUT = "timeout"  # nothing came before the step's timeout
    EOF = "eof"  # the peer closed its sending side (a FIN)
    # A UDP socket got an ICMP port unreachable: its next call fails with ECONNREFUSED (udp(7))
    UNREACHABLE = "unreachable"
    ERROR = "error"  # any other failure: another errno, a command's non-zero exit


class Action(StrEnum):
    """A step's `do`."""

    LISTEN = "listen"
    ACCEPT = "accept"
    CONNECT = "connect"
    SEND = "send"
    RECV = "recv"
    SLEEP = "sleep"
    IDLE = "idle"
    HALF_CLOSE = "half-close"
    CLOSE = "close"
    ABORT = "abort"
    RUN = "run"
    WAIT = "wait"
    SYN_FLOOD = "syn-flood"
    BIND = "bind"
    SEND_TO = "send-to"
    RECV_FROM = "recv-from"
    ECHO = "echo"


# The steps on a side's UDP socket, and the outcomes each can come to (a datagram's send never
# waits, so it has no timeout; only a socket told of an ICMP error is unreachable).
UDP_OUTCOMES: Mapping[Action, tuple[Outcome, ...]] = {
    Action.BIND: (Outcome.OK, Outcome.ERROR),
    Action.SEND_TO: (Outcome.OK, Outcome.UNREACHABLE, Outcome.ERROR),
    Action.RECV_FROM: (Outcome.OK, Outcome.TIMEOUT, Outcome.UNREACHABLE, Outcome.ERROR),
    Action.ECHO: (Outcome.OK, Outcome.UNREACHABLE, Outcome.ERROR),
}


# What each of a count step's connections can come to (`expect = { ok = 64, timeout = 36 }`).
COUNTED: tuple[Outcome, ...] = (
    Outcome.OK,
    Outcome.REFUSED,
    Outcome.TIMEOUT,
    Outcome.RESET,
    Outcome.ERROR,
)
# A count step's expectation: the range (inclusive) of connections each outcome may have; an
# outcome it does not name must have none.
Expected = Mapping[Outcome, tuple[int, int]]


def show_counts(counts: Mapping[Outcome, int] | Expected) -> str:
    """e.g. "ok 64, timeout 36" or "ok 60..64, timeout 36..40", in COUNTED's order, 0s left out."""
    shown = []
    for outcome in COUNTED:
        value = counts.get(outcome, 0)
        low, high = value if isinstance(value, tuple) else (value, value)
        if high:
            shown.append(f"{outcome} {low}" if low == high else f"{outcome} {low}..{high}")
    return ", ".join(shown)


# The fields of fwemu's JSON events a scenario may match on (top-level, then the flow's).
EVENT_FIELDS = (
    "state",
    "old_state",
    "phase",
    "action",
    "rule",
    "to",
    "side",
    "cause",
    "reason",
    "limit",  # limit, limit_summary: the Limits key that refused the flow
    "counted",  # limit: whose count ("table", "client 10.0.1.2", ...)
    "capped_by",  # expire: the cap, "lifetime" or "dcd" that ended the flow
    "silent",  # expire after dcd: the end that never answered
)
FLOW_FIELDS = ("proto", "src", "sport", "dst", "dport")
EVENT_KINDS = (
    "new",
    "state",
    "expire",
    "reset",
    "out_of_state",
    "out_of_state_summary",
    "delete",
    "limit",
    "limit_summary",
    "probe",
    "syn_flood",
    "unreachable",
)


@dataclass(frozen=True, slots=True)
class EventPattern:
    """fwemu events of kind `event` whose fields equal `fields`; `after`/`within` bound when
    (seconds since the scenario began)."""

    event: str
    fields: Mapping[str, str | int] = field(default_factory=dict)
    after: float | None = None
    within: float | None = None
    line: int | None = None

    def matches(self, record: Mapping[str, object]) -> bool:
        flow = record.get("flow")
        flow = flow if isinstance(flow, Mapping) else {}
        return record.get("event") == self.event and all(
            (record[k] if k in record else flow.get(k)) == v for k, v in self.fields.items()
        )

    def describe(self) -> str:
        return " ".join([self.event, *(f"{k}={v}" for k, v in self.fields.items())])


@dataclass(frozen=True, slots=True)
class Step:
    """One thing an endpoint does. `number` counts from 1 within its side; `expect` is the
    outcome it must observe, `after`/`within` bound when (seconds since the step began).

    A step with a `count` (connect, accept) makes that many connections at once and `counts` is
    what it expects of them; its own `expect` stays ok. A syn-flood's `count` is its SYNs.
    """

    side: Side
    number: int
    action: Action
    expect: Outcome = Outcome.OK
    after: float | None = None
    within: float | None = None
    timeout: float | None = None  # blocking steps: when the outcome becomes "timeout"
    duration: float | None = None  # sleep, idle, echo: `for`
    data: bytes | None = None  # send, send-to
    size: int | None = None  # recv: how many bytes in all
    keepalive: float | None = None  # connect: TCP keepalive idle time and probe interval
    count: int | None = None  # connect, accept: how many connections at once; syn-flood: SYNs
    counts: Expected | None = None  # ... and how many of them each outcome may have
    source: int | None = None  # connect: which client address (1-based) it binds to
    every: bool = False  # close, abort: every connection of the side (`all = true`)
    command: tuple[str, ...] | str | None = None  # run: argv, or a shell command line
    background: bool = False  # run, syn-flood: start it and go on; stopped when the scenario ends
    rate: float | None = None  # syn-flood: SYNs a wall-clock second
    sources: int | None = None  # syn-flood: how many spoofed addresses (None: the whole subnet)
    wait_for: EventPattern | None = None  # wait
    line: int | None = None

    @property
    def label(self) -> str:
        """e.g. "recv", "connect x100"."""
        return self.action if self.count is None else f"{self.action} x{self.count}"

    def describe(self) -> str:
        """e.g. "client step 4 (recv)", "client step 2 (connect x100)"."""
        return f"{self.side} step {self.number} ({self.label})"


@dataclass(frozen=True, slots=True)
class Scenario:
    """A whole scenario file, validated. `policy_ref` is a preset name or a policy file, or
    None when `policy_toml` holds the policy's text."""

    name: str
    origin: str
    policy: Policy
    policy_ref: str | Path | None
    policy_toml: str | None
    speed: float
    port: int
    ipv6: bool
    clients: int  # the client namespace's addresses of each family (a step's `source`)
    timeout: float
    tolerance: float
    client: tuple[Step, ...]
    server: tuple[Step, ...]
    events: tuple[EventPattern, ...]
    no_events: tuple[EventPattern, ...]
    description: str = ""

    def steps(self, side: Side) -> tuple[Step, ...]:
        return self.client if side == "client" else self.server

    def real(self, seconds: float) -> float:
        """Scenario time -> wall-clock seconds."""
        return seconds / self.speed


def flood_spec(step: Step, port: int, ipv6: bool, speed: float) -> FloodSpec:
    """What a syn-flood step sends to `port`: its count, rate and sources (where it leaves them
    out, `fwemu flood`'s defaults), for its `for` at most, in wall-clock seconds at `speed`.
    FloodError if they do not make a flood."""
    default = FloodSpec()
    return FloodSpec(
        count=default.count if step.count is None else step.count,
        rate=default.rate if step.rate is None else step.rate,
        seconds=None if step.duration is None else step.duration / speed,
        sources=step.sources,
        port=port,
        ipv6=ipv6,
    )
