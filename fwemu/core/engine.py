"""The core's one entry point: packet bytes and `now` in; verdict, packets to inject, events out.

Sans-IO in the h11/aioquic sense: no sockets, no clock, no threads. The adapter owns time: it
passes `now` to every call, asks `next_deadline()` when to call `handle_timer()` next, and applies
the decisions. Bad network input is a verdict with a reason, never an exception.
"""

from __future__ import annotations

from fwemu.core import packet as pk
from fwemu.core.conntrack import FlowInfo, FlowTable
from fwemu.core.decision import NO_EFFECTS, Decision, Effects, Reason, Verdict
from fwemu.core.limits import Usage
from fwemu.policy.model import ExpireAction, Policy

__all__ = ["Decision", "Effects", "Engine", "Verdict"]


class Engine:
    def __init__(self, policy: Policy, seed: int = 0) -> None:
        """`seed` drives the policy's random choices (a fixed one gives repeatable runs)."""
        self.policy = policy
        self.table = FlowTable(policy, seed)

    def handle_packet(self, data: bytes, *, now: float) -> Decision:
        """Decide on one IP packet as queued (it may be truncated to its headers)."""
        seg = pk.parse(data)
        if type(seg) is pk.Segment:
            return self.table.packet(seg, now, data)
        if type(seg) is pk.Datagram:
            return self.table.udp.datagram(seg, now, data)
        return _not_ours(seg)  # type: ignore[arg-type]

    def adopt(self, data: bytes, *, now: float, sender_is_client: bool) -> Decision:
        """Like handle_packet, but a mid-stream ACK of no flow starts an ESTABLISHED flow
        (loose pickup) whatever the policy says, its sender being the client or the server as
        given: for captures that begin after connections opened (`fwemu replay`). A datagram
        needs no adopting: any opens a flow."""
        seg = pk.parse(data)
        if type(seg) is pk.Segment:
            return self.table.adopt(seg, now, sender_is_client=sender_is_client, data=data)
        if type(seg) is pk.Datagram:
            return self.table.udp.datagram(seg, now, data)
        return _not_ours(seg)  # type: ignore[arg-type]

    def next_deadline(self) -> float | None:
        return self.table.next_deadline()

    def handle_timer(self, *, now: float, limit: int = 10_000) -> Effects:
        """Expire what is due by `now`, at most `limit` flows (call again while
        `next_deadline() <= now`: spreading a mass expiry keeps verdicts flowing)."""
        inject, events = self.table.expire_due(now, limit)
        return Effects(tuple(inject), tuple(events)) if events else NO_EFFECTS

    def expire(
        self, keys: list[bytes], *, now: float, action: ExpireAction | None = None
    ) -> Effects:
        """Expire these flows now, as if their timers fired; `action` overrides the policy's."""
        inject, events = self.table.expire_now(keys, now, action)
        return Effects(tuple(inject), tuple(events))

    def retime(self, keys: list[bytes], *, now: float, seconds: float) -> list[bytes]:
        """Make these flows' timers run out `seconds` from now (until their next packet re-arms
        the policy's); the keys of those still tracked."""
        return self.table.retime(keys, now, seconds)

    def reload(self, policy: Policy) -> int:
        """Switch to `policy`, keeping every flow (see FlowTable.reload); the flow count."""
        self.policy = policy
        return self.table.reload(policy)

    def flows(self, *, now: float) -> list[FlowInfo]:
        return self.table.flows(now)

    def keys(self) -> list[bytes]:
        """The tracked flows' keys, a snapshot: for listing or expiring them a few at a time."""
        return self.table.keys()

    def info(self, key: bytes, *, now: float) -> FlowInfo | None:
        """One flow's snapshot, or None if it is gone (since `keys()` was taken)."""
        return self.table.info(key, now)

    def limits(self, *, now: float) -> list[Usage]:
        """Each [limits] table of the policy against its counts (none: no limits set)."""
        return self.table.book.usage(now)

    def defences(self) -> dict[str, object]:
        """What the SYN-flood defences did since fwemu started: SYNs seen, dropped and answered
        with a cookie per [syn_flood] table; cookies sent and connections they opened."""
        table = self.table
        answered, opened = table.defences.proxied
        return {
            "syn_flood": [guard.seen()._asdict() for guard in table.defences.guards],
            "cookies": {"answered": answered, "opened": opened},
        }

    def __len__(self) -> int:
        return len(self.table)


def _not_ours(seg: pk.Unparseable) -> Decision:
    """Fragments, other protocols, garbage: not ours to judge (conntrack would not track them
    as TCP or UDP either), so they pass."""
    reason = Reason.OTHER_PROTOCOL if type(seg) is pk.OtherProtocol else Reason.UNPARSEABLE
    return Decision(Verdict.ACCEPT, reason, detail=seg.reason)
