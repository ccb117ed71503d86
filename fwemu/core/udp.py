"""The table's UDP flows: Linux's nf_conntrack_udp_packet() on the flow table's columns, and what
a late datagram of an expired flow meets.

UDP has no handshake: any datagram of no flow opens one, its sender the client (UNREPLIED, the
`udp` timer). A datagram back makes it REPLIED (the kernel's IPS_SEEN_REPLY, set after the
packet: the reply itself still gets `udp`). Once seen both ways, a datagram more than
`udp_stream_after` after the first makes it a STREAM (IPS_ASSURED) with `udp_stream`; until then
each datagram re-arms `udp` (the kernel's 2 s grace for DNS A/AAAA pairs). Kernel version
matched: 6.2-6.18 (the grace applies to assuring too since commit d535c8a69c19).

Expiry is silent: there is nothing to reset. A late datagram of a remembered flow meets its
side's `[out_of_state] udp_from_client` / `udp_from_server`: a new flow, a drop, or a drop with an
ICMP port unreachable to its sender.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from fwemu.core import packet as pk
from fwemu.core.addresses import flow_id
from fwemu.core.decision import IN_STATE, REFUSED_PAST_RATE, Decision, Reason, Verdict
from fwemu.core.events import Event, FlowNew, UnreachableSent
from fwemu.core.icmp import port_unreachable
from fwemu.core.limits import Refusal
from fwemu.core.states import ORIGINAL, REPLY, State
from fwemu.policy.model import LimitAction, UdpAction

if TYPE_CHECKING:
    from fwemu.core.conntrack import FlowTable

SEEN_REPLY: Final = 1 << 0  # the flow table's flag bits (ct->status)
ASSURED: Final = 1 << 1
UNREPLIED: Final = int(State.UNREPLIED)
REPLIED: Final = int(State.REPLIED)
STREAM: Final = int(State.STREAM)
_NAME: Final = {UNREPLIED: "UNREPLIED", REPLIED: "REPLIED", STREAM: "STREAM"}


class UdpFlows:
    """Decides datagrams on the flow table's slots (its columns, timers, limits, tombstones):
    UDP flows share one table with TCP's, as in the kernel, so [limits] count both."""

    def __init__(self, table: FlowTable) -> None:
        self.table = table
        self._after: list[float] = []

    def use(self) -> None:
        """Read the table's (new) policy: the grace per profile."""
        self._after = [p.timeouts.udp_stream_after for p in self.table._profiles]

    def datagram(self, dg: pk.Datagram, now: float, data: bytes) -> Decision:
        """One datagram: nf_conntrack_udp_packet() for a tracked flow, else a new flow or a late
        datagram of an expired one."""
        t = self.table
        slot = t._index.get(dg.key)
        if slot is None:
            return self._no_flow(dg, now, data)
        d = ORIGINAL if dg.forward == t._client_fwd[slot] else REPLY
        t._pkts[d][slot] += 1
        t._bytes[d][slot] += dg.payload_len
        t._seen_at[slot] = now
        flags = t._flags[slot]
        profile = t._profile[slot]
        event: Event | None = None
        state = old = t._state[slot]
        if flags & SEEN_REPLY and now > t._created[slot] + self._after[profile]:
            state = STREAM  # time_after(jiffies, stream_ts): udp_stream, and assured
            if not flags & ASSURED:
                t._flags[slot] = flags | ASSURED
                if t._early_drop:
                    t.book.assured(slot)
        elif d == REPLY and not flags & SEEN_REPLY:
            state = REPLIED  # the kernel sets IPS_SEEN_REPLY after this packet's timer
            t._flags[slot] = flags | SEEN_REPLY
        if state != old:
            t._state[slot] = state
            event = t._state_event(slot, now, old, state)
        self.arm(slot, profile, state, now)
        return (
            IN_STATE if event is None else Decision(Verdict.ACCEPT, Reason.IN_STATE, (), (event,))
        )

    def arm(self, slot: int, profile: int, state: int, now: float) -> None:
        """The timer a datagram leaving the flow in `state` at `now` sets (the state's own:
        UDP has no caps)."""
        t = self.table
        t._timer[slot] = 0  # _OWN_TIMER: an operator's timer lasts until the next datagram
        timeout = t._timeouts[profile][state]
        deadline = None if timeout is None else now + timeout
        if deadline is not None and deadline >= t._deadlines[slot]:
            t._deadlines[slot] = deadline  # later: Timers re-files it lazily
        else:
            t.timers.set(slot, deadline)

    def _no_flow(self, dg: pk.Datagram, now: float, data: bytes) -> Decision:
        t = self.table
        t._forget_tombstones(now)
        tomb = t._tombstone(dg.key, now)
        if tomb is None:
            return self._open(dg, now, data)
        from_client = dg.forward == tomb.client_forward
        oos = t._profiles[tomb.profile].out_of_state
        action = oos.udp_from_client if from_client else oos.udp_from_server
        if action == UdpAction.NEW:
            return self._open(dg, now, data)
        side = "client" if from_client else "server"
        rule = t._profiles[tomb.profile].name
        source = dg.src
        if limit := t.limiter.admit(source, now):
            t.limiter.hold(source, limit, dg.key, dg.forward, action.value, rule, False)
            return _PAST_RATE
        flow = flow_id(dg.key, tomb.client_forward)
        reason = "no flow (expired)"
        events: list[Event] = [t._late(now, flow, reason, action.value, side, tomb.profile, tomb)]
        inject: tuple[bytes, ...] = ()
        if action == UdpAction.ICMP_UNREACHABLE:
            inject = (port_unreachable(dg, data),)
            events.append(UnreachableSent(now, flow, side, "out_of_state", rule))
        return Decision(Verdict.DROP, Reason.OUT_OF_STATE, inject, tuple(events), reason)

    def _open(self, dg: pk.Datagram, now: float, data: bytes) -> Decision:
        """udp_new(): a flow UNREPLIED, its sender the client, if the limits let it in."""
        t = self.table
        profile = t._profile_index(dg, None)
        opened = t._open(dg, dg.forward, profile, now, handshake=False, counted=False)
        if isinstance(opened, Refusal):
            return self._refused(dg, profile, opened, now, data)
        slot, evicted = opened
        t._state[slot] = UNREPLIED
        t._seen_at[slot] = now
        t._pkts[ORIGINAL][slot] = 1
        t._bytes[ORIGINAL][slot] = dg.payload_len
        t.timers.set(slot, None)  # a reused slot's deadline must not stand
        self.arm(slot, profile, UNREPLIED, now)
        name = t._profiles[profile].name
        event = FlowNew(now, t._flow_id(slot), _NAME[UNREPLIED], name)
        return Decision(Verdict.ACCEPT, Reason.NEW_FLOW, (), (*evicted, event))

    def _refused(
        self, dg: pk.Datagram, profile: int, refusal: Refusal, now: float, data: bytes
    ) -> Decision:
        """A new flow a limit refuses: dropped; for `reset`, its sender told port unreachable
        (as Linux's REJECT does for UDP), within the answer rate."""
        t = self.table
        reject = refusal.action == LimitAction.RESET
        events = t._refusal_events(dg, profile, refusal, now, reject)
        if events is None:
            return REFUSED_PAST_RATE
        inject: tuple[bytes, ...] = ()
        if reject:
            inject = (port_unreachable(dg, data),)
            flow = flow_id(dg.key, dg.forward)
            rule = t._profiles[profile].name
            events.append(UnreachableSent(now, flow, "client", "limit", rule))
        return Decision(Verdict.DROP, Reason.LIMIT, inject, tuple(events), refusal.detail)


_PAST_RATE: Final = Decision(Verdict.DROP, Reason.PAST_ANSWER_RATE)
