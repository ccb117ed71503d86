"""Replay a packet capture through the core: what would this policy have done to that traffic?

The capture's own timestamps are the core's `now`, and time moves exactly as in `fwemu run`:
before each packet every timer due by its timestamp fires, at its deadline, so expiries are
reported at the instant the policy would have expired the flow. The capture shows what the
endpoints sent *without* this policy in the way, so once a flow is expired its later packets in
the capture are exactly the packets the policy would have dropped or answered with a RST (or,
for UDP, an ICMP port unreachable). TCP and UDP flows are replayed alike; other protocols pass.

The capture files themselves are read by fwemu/ops/capture.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from fwemu.core import packet as pk
from fwemu.core.addresses import flow_id
from fwemu.core.conntrack import FlowInfo
from fwemu.core.decision import IN_STATE, Decision, Reason, Verdict
from fwemu.core.engine import Engine
from fwemu.core.events import (
    Event,
    FlowDeleted,
    FlowExpired,
    FlowId,
    FlowNew,
    LimitRefused,
    OutOfState,
    ResetSent,
    UnreachableSent,
)
from fwemu.ops.capture import Capture
from fwemu.policy.model import (
    FloodAction,
    LimitAction,
    Limits,
    Phase,
    Policy,
    Profile,
    Protocol,
    SynFlood,
)

__all__ = ["FlowReport", "LatePacket", "ReplayReport", "Summary", "replay"]


# --- what the replay reports --------------------------------------------------------------

# Phases whose expiry cuts a connection that is still open; a TIME_WAIT or CLOSE expiry only
# forgets one that has ended, and counts only if late packets then meet the policy. So does a
# UDP flow's (udp, udp_stream): its end is its timer's.
_OPEN_PHASES = frozenset(
    (Phase.EMBRYONIC.value, Phase.ESTABLISHED.value, Phase.HALF_CLOSED.value, Phase.CLOSING.value)
)
_SIDES = {"client": "server", "server": "client"}
# What a late packet met that harms its flow (LatePacket.outcome).
DROPPED, RESET, UNREACHABLE = (
    "dropped",
    "answered with a RST",
    "answered with an ICMP port unreachable",
)
_REJECTED = frozenset((DROPPED, RESET, UNREACHABLE))


@dataclass(frozen=True, slots=True)
class LatePacket:
    """A captured packet of a flow the policy had expired (or rejects): what it would do to it."""

    ts: float
    side: str | None  # "client", "server", or None when the policy cannot tell
    packet: str  # tcpdump-like: addresses, [flags], seq, ack, len (a datagram: "udp ..., len")
    flags: int | None  # a datagram's three: None
    seq: int | None
    ack: int | None
    length: int  # payload bytes
    # DROPPED, RESET, UNREACHABLE, "accepted", "picked up as a new flow" (TCP), "opened a new
    # flow" (UDP)
    outcome: str
    reason: str
    reset: ResetSent | None = None  # the RST the policy would answer it with

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "ts": self.ts,
            "side": self.side,
            "packet": self.packet,
            "flags": self.flags,
            "seq": self.seq,
            "ack": self.ack,
            "len": self.length,
            "outcome": self.outcome,
            "reason": self.reason,
        }
        out["reset"] = None if self.reset is None else _reset_dict(self.reset)
        return out


def _reset_dict(reset: ResetSent) -> dict[str, object]:
    return {"ts": reset.ts, "to": reset.to, "seq": reset.seq, "ack": reset.ack}


@dataclass(frozen=True, slots=True)
class FlowReport:
    """One connection (a 5-tuple from its SYN, or its first packet, to its end)."""

    flow: FlowId
    rule: str
    opened: float | None  # first tracked packet; None: the policy never tracked it
    already_open: bool  # open before the capture began: tracked as ESTABLISHED from its 1st packet
    expired: FlowExpired | None
    resets: tuple[ResetSent, ...]  # RSTs the policy injects when the flow expires
    late: tuple[LatePacket, ...]
    # When the capture shows the policy's own RSTs (a live firewall's): those sent at expiry, to
    # a late packet, to a refused SYN, or by the proxy for a server that refused.
    echoes: tuple[float, ...]
    gone_at: float | None  # for a flow known only from late packets: when its timer had run out
    gone_phase: str | None
    events: tuple[Event, ...]  # the core's events for this flow, in order
    refused: tuple[LimitRefused, ...] = ()  # its SYNs (or first packets) a limit refused

    @property
    def affected(self) -> bool:
        cut = self.expired is not None and self.expired.phase in _OPEN_PHASES
        rejected = any(p.outcome in _REJECTED for p in self.late)
        return cut or rejected or bool(self.refused)

    @property
    def impact(self) -> float:
        """When the policy first touched the flow: its expiry, its first refused or rejected
        packet."""
        times = [p.ts for p in self.late] + [r.ts for r in self.refused]
        if self.expired is not None:
            times.append(self.expired.ts)
        return min(times, default=self.opened or 0.0)

    def to_dict(self) -> dict[str, object]:
        expired = self.expired
        return {
            "flow": self.flow.to_dict(),
            "rule": self.rule,
            "affected": self.affected,
            "opened": self.opened,
            "already_open": self.already_open,
            "expired": None
            if expired is None
            else {
                "ts": expired.ts,
                "state": expired.state,
                "phase": expired.phase,
                "timeout": expired.timeout,
                "idle": expired.idle,
                "action": expired.action,
            },
            "resets": [_reset_dict(r) for r in self.resets],
            "refused": [
                {k: v for k, v in r.to_dict().items() if k not in ("flow", "state", "phase")}
                for r in self.refused
            ],
            "late_packets": [p.to_dict() for p in self.late],
            "own_resets_seen": list(self.echoes),
            "gone": None
            if self.gone_at is None
            else {"ts": self.gone_at, "phase": self.gone_phase},
            "events": [e.to_dict() for e in self.events],
        }


@dataclass(frozen=True, slots=True)
class Summary:
    capture: str
    format: str
    link: str
    policy: str
    policy_origin: str
    speed: float  # every timer this many times shorter (`fwemu run --speed`)
    packets: int  # records in the file
    tracked_packets: int  # TCP segments and UDP datagrams replayed through the policy
    not_ip: int  # frames carrying no IP packet (ARP, LLDP, ...)
    other_protocol: int  # IP packets fwemu does not track (ICMP, fragments, truncated headers)
    flows: int  # flows (TCP connections, UDP flows) the policy tracked
    protocols: dict[str, int]  # those flows per protocol, every protocol named
    refusals: int  # new flows a limit refused (each SYN retransmission again)
    first_ts: float | None
    last_ts: float | None
    out_of_order: int  # packets stamped earlier than the one before (replayed at that one's time)
    warnings: tuple[str, ...]

    @property
    def duration(self) -> float:
        return (
            0.0 if self.first_ts is None or self.last_ts is None else self.last_ts - self.first_ts
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "capture": self.capture,
            "format": self.format,
            "link": self.link,
            "policy": self.policy,
            "policy_origin": self.policy_origin,
            "speed": self.speed,
            "packets": self.packets,
            "tracked_packets": self.tracked_packets,
            "skipped": {"not_ip": self.not_ip, "other_protocol": self.other_protocol},
            "flows": self.flows,
            "protocols": self.protocols,
            "refusals": self.refusals,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "duration": self.duration,
            "out_of_order": self.out_of_order,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True, slots=True)
class ReplayReport:
    summary: Summary
    flows: tuple[FlowReport, ...]  # affected flows (or those selected), by when they were hit
    alive: tuple[FlowInfo, ...]  # flows the policy still tracked at the last packet

    def to_dict(self) -> dict[str, object]:
        return {
            "summary": self.summary.to_dict(),
            "flows": [f.to_dict() for f in self.flows],
            "alive_at_end": [
                {
                    "flow": i.flow.to_dict(),
                    "state": i.state,
                    "rule": i.rule,
                    "idle": i.idle,
                    "expires_in": i.expires_in,
                }
                for i in self.alive
            ],
        }


# --- following flows through the core's events ----------------------------------------------

_Key = tuple[str, int, str, int, str]


def _key(flow: FlowId) -> _Key:
    """The same for both orientations of a flow."""
    a, b = (flow.src, flow.sport), (flow.dst, flow.dport)
    return (*a, *b, flow.proto) if a <= b else (*b, *a, flow.proto)


class _Record:
    """A flow's report being built (mutable; frozen into a FlowReport at the end)."""

    __slots__ = (
        "already_open",
        "echoes",
        "events",
        "expired",
        "flow",
        "gone_at",
        "gone_phase",
        "late",
        "opened",
        "refused",
        "resets",
        "rule",
        "sent",
    )

    def __init__(
        self,
        flow: FlowId,
        rule: str,
        opened: float | None,
        *,
        already_open: bool = False,
        gone_at: float | None = None,
        gone_phase: str | None = None,
    ) -> None:
        self.flow = flow
        self.rule = rule
        self.opened = opened
        self.already_open = already_open
        self.gone_at = gone_at
        self.gone_phase = gone_phase
        self.expired: FlowExpired | None = None
        self.resets: list[ResetSent] = []
        self.late: list[LatePacket] = []
        self.echoes: list[float] = []
        self.sent: set[tuple[str, int]] = set()  # (to, seq) of every RST the policy sent
        self.events: list[Event] = []
        self.refused: list[LimitRefused] = []

    def freeze(self) -> FlowReport:
        return FlowReport(
            self.flow,
            self.rule,
            self.opened,
            self.already_open,
            self.expired,
            tuple(self.resets),
            tuple(self.late),
            tuple(self.echoes),
            self.gone_at,
            self.gone_phase,
            tuple(self.events),
            tuple(self.refused),
        )


class _Tracker:
    """Turns the core's events into per-flow records, keeping only the ones worth reporting:
    a flow that ends without harm is forgotten at once, so memory follows the live flows."""

    def __init__(self, select: Callable[[FlowId], bool] | None) -> None:
        self.current: dict[_Key, _Record] = {}
        self.done: list[FlowReport] = []
        self.seen: set[_Key] = set()  # every flow the policy tracked (or refused)
        self.flows = dict.fromkeys((p.value for p in Protocol), 0)  # per protocol
        self.refusals = 0
        self._select = select

    def _wanted(self, record: _Record, report: FlowReport | None = None) -> bool:
        if self._select is not None:
            return self._select(record.flow)
        return (report or record.freeze()).affected

    def _close(self, key: _Key) -> None:
        record = self.current.pop(key, None)
        if record is not None:
            report = record.freeze()
            if self._wanted(record, report):
                self.done.append(report)

    def new(self, event: FlowNew, ts: float, ip: bytes | None, *, already_open: bool) -> None:
        key = _key(event.flow)
        old = self.current.get(key)
        if old is not None and old.expired is not None and ip is not None:
            old.late.append(_reopening(old.flow, ts, ip))
        self._close(key)
        record = _Record(event.flow, event.rule, ts, already_open=already_open)
        if not already_open:
            record.events.append(event)
        self.current[key] = record
        self.seen.add(key)
        self.flows[event.flow.proto] += 1

    def events(self, events: tuple[Event, ...]) -> None:
        """Events of live (or refused) flows: state changes, deletions, expiries and the RSTs
        the policy sent (at expiry, to a refused SYN, for the proxy)."""
        for event in events:
            key = _key(event.flow)
            record = self.current.get(key)
            if record is None:
                continue
            record.events.append(event)
            if type(event) is ResetSent:
                record.sent.add((event.to, event.seq))
                if event.cause == "expire":
                    record.resets.append(event)
            elif type(event) is FlowExpired:
                record.expired = event
                if event.phase not in _OPEN_PHASES:
                    self._ended(key, record)
            elif type(event) is FlowDeleted:
                self._ended(key, record)

    def _ended(self, key: _Key, record: _Record) -> None:
        """A flow gone without harm: forgotten unless selected (then late packets join it) or
        the policy sent it a RST, which a capture behind a firewall shows afterwards."""
        if (self._select is None or not self._select(record.flow)) and not record.sent:
            del self.current[key]

    def decision(self, ts: float, ip: bytes, decision: Decision) -> None:
        oos: OutOfState | None = None
        rest: list[Event] = []
        for event in decision.events:
            if type(event) is OutOfState:
                oos = event
            elif type(event) is LimitRefused:
                self.refused(event)
            elif type(event) is FlowNew:
                self.new(
                    event,
                    ts,
                    ip,
                    already_open=event.state == "ESTABLISHED" and not self._known(event),
                )
            elif not _answers_late(event):
                rest.append(event)  # a late packet's RST or ICMP goes with it (_late)
        self.events(tuple(rest))
        if oos is not None:
            self._late(ts, ip, decision, oos)

    def refused(self, event: LimitRefused) -> None:
        """A new flow a limit refused: its later packets are late packets, never a connection
        that was open before the capture."""
        key = _key(event.flow)
        record = self.current.get(key)
        if record is None:
            record = self.current[key] = _Record(event.flow, event.rule, None)
        record.refused.append(event)
        record.events.append(event)
        self.seen.add(key)
        self.refusals += 1

    def _known(self, event: FlowNew) -> bool:
        return _key(event.flow) in self.seen

    def _late(self, ts: float, ip: bytes, decision: Decision, oos: OutOfState) -> None:
        key = _key(oos.flow)
        record = self.current.get(key)
        if record is None:
            # The flow ended unharmed (and was forgotten), or the policy never tracked it.
            record = _Record(
                oos.flow, oos.rule, None, gone_at=oos.expired_at, gone_phase=oos.expired_phase
            )
            self.current[key] = record
        answer = next((e for e in decision.events if _answers_late(e)), None)
        record.events.append(oos)
        if answer is not None:
            record.events.append(answer)
        packet = pk.parse(ip)
        assert isinstance(packet, pk.Segment | pk.Datagram)  # only tracked ones are out of state
        sender = _sender(record.flow, packet)
        if (
            type(packet) is pk.Segment
            and packet.flags & pk.TCP_RST
            and (_SIDES[sender], packet.seq) in record.sent
        ):
            # The policy's own RST: the capture was taken behind a firewall that sent it.
            record.echoes.append(ts)
            record.events.pop()
            return
        reset = answer if type(answer) is ResetSent else None
        if reset is not None:
            record.sent.add((sender, reset.seq))  # the RST goes back to the packet's sender
            outcome = RESET
        elif answer is not None:
            outcome = UNREACHABLE
        else:
            outcome = DROPPED if decision.verdict == Verdict.DROP else "accepted"
        record.late.append(_late_packet(ts, ip, outcome, oos.reason, reset, oos.side))

    def finish(self) -> list[FlowReport]:
        for key in list(self.current):
            self._close(key)
        return sorted(self.done, key=lambda r: r.impact)


def _answers_late(event: Event) -> bool:
    """A RST or ICMP port unreachable answering a late packet (it goes with that packet)."""
    return isinstance(event, ResetSent | UnreachableSent) and event.cause == "out_of_state"


def _sender(flow: FlowId, packet: pk.Segment | pk.Datagram) -> str:
    """Which end of `flow` sent `packet`: "client" or "server"."""
    travelled = flow_id(packet.key, packet.forward)
    return "client" if (travelled.src, travelled.sport) == (flow.src, flow.sport) else "server"


def _reopening(flow: FlowId, ts: float, ip: bytes) -> LatePacket:
    """A packet of an expired flow that opened it again: a mid-stream TCP segment picked up
    (policy pickup = true), or any datagram its side's udp_from_* lets open a new flow."""
    if flow.proto == Protocol.UDP:
        packet = pk.parse(ip)
        assert type(packet) is pk.Datagram
        side = _sender(flow, packet)
        return _late_packet(ts, ip, "opened a new flow", f"udp_from_{side} = new", None, side)
    return _late_packet(ts, ip, "picked up as a new flow", "pickup", None)


def _late_packet(
    ts: float,
    ip: bytes,
    outcome: str,
    reason: str,
    reset: ResetSent | None,
    side: str | None = None,
) -> LatePacket:
    packet = pk.parse(ip)
    if type(packet) is pk.Datagram:
        travelled = flow_id(packet.key, packet.forward)
        length = packet.payload_len
        return LatePacket(
            ts, side, f"{travelled} len {length}", None, None, None, length, outcome, reason
        )
    assert type(packet) is pk.Segment
    return LatePacket(
        ts,
        side,
        pk.describe(packet),
        packet.flags,
        packet.seq,
        packet.ack,
        packet.payload_len,
        outcome,
        reason,
        reset,
    )


# --- the replay loop ------------------------------------------------------------------------


def _without_rewriting(policy: Policy) -> Policy:
    """`policy` minus what rewrites packets: no sequence randomisation or SYN option edits, no
    SYN cookies (their alarm stays), no TCP Intercept (those handshake limits are lifted)."""

    def profile(p: Profile, limits: Limits, flood: SynFlood) -> tuple[Profile, Limits, SynFlood]:
        normalise = dataclasses.replace(p.normalise, isn_randomisation=False, clear=(), mss=None)
        if limits.on_embryonic == LimitAction.INTERCEPT:
            limits = dataclasses.replace(
                limits, embryonic=None, per_client_embryonic=None, on_embryonic=LimitAction.DROP
            )
        if flood.action == FloodAction.SYN_COOKIES:
            flood = SynFlood(alarm=flood.alarm, count=flood.count)
        return dataclasses.replace(p, normalise=normalise), limits, flood

    default, limits, flood = profile(policy.default, policy.limits, policy.syn_flood)
    rules = []
    for rule in policy.rules:
        own, own_limits, own_flood = profile(
            rule.profile, rule.profile.limits, rule.profile.syn_flood
        )
        rules.append(
            dataclasses.replace(
                rule, profile=dataclasses.replace(own, limits=own_limits, syn_flood=own_flood)
            )
        )
    return dataclasses.replace(
        policy, default=default, rules=tuple(rules), limits=limits, syn_flood=flood
    )


def _adoptable(seg: pk.Segment | pk.Datagram | pk.Unparseable) -> bool:
    """A mid-connection TCP packet: an ACK without SYN or RST. (A datagram of no flow always
    opens one: UDP has nothing to adopt.)"""
    return (
        type(seg) is pk.Segment
        and bool(seg.flags & pk.TCP_ACK)
        and not seg.flags & (pk.TCP_SYN | pk.TCP_RST)
    )


def _adopt(engine: Engine, ip: bytes, seg: pk.Segment, ts: float) -> Decision:
    """Track a connection that was open before the capture began, as loose pickup would. The
    client is the side with the higher (ephemeral) port."""
    return engine.adopt(ip, now=ts, sender_is_client=seg.sport >= seg.dport)


def _run_timers(engine: Engine, tracker: _Tracker, until: float) -> None:
    """Every timer due by `until`, each at its own deadline (as `fwemu run` does, minus its
    scheduling delay)."""
    while (deadline := engine.next_deadline()) is not None and deadline <= until:
        tracker.events(engine.handle_timer(now=deadline).events)


# The replay's per-packet loop, inline: a helper call per packet costs what the engine does.
def replay(  # noqa: PLR0912, PLR0915
    capture: Capture,
    policy: Policy,
    *,
    speed: float = 1.0,
    assume_open: bool = True,
    select: Callable[[FlowId], bool] | None = None,
) -> ReplayReport:
    """Run `capture` through a fresh engine enforcing `policy` with every timer `speed` times
    shorter (a capture of `fwemu run --speed`), and report the flows it hits (or, with `select`,
    every flow `select` accepts, hit or not).

    With `assume_open`, a connection already open when the capture began is tracked as
    ESTABLISHED from its first packet (a firewall running before the capture knew it);
    without, its packets meet the policy as a freshly started firewall would meet them.
    """
    notes: list[str] = []
    if policy.rewrites:
        policy = _without_rewriting(policy)
        notes.append(
            "the policy rewrites packets (SYN cookies, TCP Intercept, sequence randomisation or "
            "the normaliser's option edits): replayed without them, since a capture holds the "
            "endpoints' own numbers and options; what they would do is not reported"
        )
    engine = Engine(policy.scaled(speed))
    tracker = _Tracker(select)
    handle, next_deadline = engine.handle_packet, engine.next_deadline
    frames = not_ip = other_protocol = out_of_order = stray = unlisted = 0
    first: float | None = None
    last = float("-inf")
    for stamp, ip in capture:
        frames += 1
        if ip is None:
            not_ip += 1
            continue
        if stamp < last:
            out_of_order += 1  # replayed at the previous packet's time: the core's never goes back
        else:
            last = stamp
            if first is None:
                first = stamp
        ts = last
        deadline = next_deadline()
        if deadline is not None and deadline <= ts:
            _run_timers(engine, tracker, ts)
        decision = handle(ip, now=ts)
        if decision is IN_STATE:
            continue
        events = decision.events
        if not events:
            if decision.reason in (Reason.OTHER_PROTOCOL, Reason.UNPARSEABLE):
                other_protocol += 1
            elif decision.reason is Reason.LIMIT:
                unlisted += 1  # refused past the answer rate: counted, not itemised
            continue
        head = events[0]
        if (
            assume_open
            and type(head) is OutOfState
            and head.state is None
            and head.expired_at is None
            and _key(head.flow) not in tracker.seen
        ):
            seg = pk.parse(ip)
            if not _adoptable(seg):
                stray += 1
                continue
            assert type(seg) is pk.Segment
            decision = _adopt(engine, ip, seg, ts)
            new = decision.events[0]
            assert type(new) is FlowNew
            tracker.new(new, ts, None, already_open=True)
            continue
        tracker.decision(ts, ip, decision)
    if first is not None:
        _run_timers(engine, tracker, last)
    warnings = [*capture.warnings, *notes]
    if unlisted:
        warnings.append(
            f"{unlisted} more new {'flow was' if unlisted == 1 else 'flows were'} refused by a "
            "limit past the policy's answer rate: "
            "counted, not listed per flow"
        )
    if stray:
        warnings.append(
            f"{stray} packets of connections not seen opening could not be placed "
            "(e.g. a lone RST): not replayed"
        )
    summary = Summary(
        capture=str(capture.path),
        format=capture.format,
        link=capture.link,
        policy=policy.name,
        policy_origin=policy.origin,
        speed=speed,
        packets=frames,
        tracked_packets=frames - not_ip - other_protocol - stray,
        not_ip=not_ip,
        other_protocol=other_protocol,
        flows=sum(tracker.flows.values()),
        protocols=tracker.flows,
        refusals=tracker.refusals + unlisted,
        first_ts=first,
        last_ts=None if first is None else last,
        out_of_order=out_of_order,
        warnings=tuple(warnings),
    )
    alive = tuple(engine.flows(now=last)) if first is not None else ()
    if select is not None:
        alive = tuple(info for info in alive if select(info.flow))
    return ReplayReport(summary, tuple(tracker.finish()), alive)
