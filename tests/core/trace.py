"""A client and a server talking through the engine, over explicit time.

Each side keeps its own next sequence number and acknowledges everything the other sent, so a test
reads like a conversation: `t.client("PA", 5, at=1.0)` is "the client sends 5 bytes at t=1".
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from fwemu.core import packet as pk
from fwemu.core.decision import Decision, Effects, Reason
from fwemu.core.engine import Engine
from fwemu.policy.model import (
    ExpireAction,
    OnExpire,
    OutOfState,
    OutOfStateAction,
    Policy,
    Profile,
    Timeouts,
)

FLAG_BITS = {
    "F": pk.TCP_FIN,
    "S": pk.TCP_SYN,
    "R": pk.TCP_RST,
    "P": pk.TCP_PSH,
    "A": pk.TCP_ACK,
    "U": pk.TCP_URG,
}


def flags_of(text: str) -> int:
    value = 0
    for ch in text:
        value |= FLAG_BITS[ch]
    return value


def make_policy(
    *,
    oos: OutOfStateAction = OutOfStateAction.DROP,
    from_client: OutOfStateAction | None = None,
    from_server: OutOfStateAction | None = None,
    pickup: bool = False,
    default_action: ExpireAction = ExpireAction.SILENT,
    **kw: object,
) -> Policy:
    """A one-profile policy: timeouts and per-phase actions as keywords (established=10.0,
    on_established=ExpireAction.RESET_BOTH)."""
    timeouts = {k: v for k, v in kw.items() if not k.startswith("on_")}
    actions = {k[3:]: v for k, v in kw.items() if k.startswith("on_")}
    phases = {f.name: actions.get(f.name, default_action) for f in dataclasses.fields(OnExpire)}
    on_expire = OnExpire(**phases)  # type: ignore[arg-type]
    profile = Profile(
        "default",
        Timeouts(**timeouts),  # type: ignore[arg-type]
        on_expire,
        OutOfState(oos, from_client, from_server, pickup, remember=600.0),
    )
    return Policy("test", profile)


@dataclass
class Side:
    addr: bytes
    port: int
    nxt: int  # next sequence number this side will send
    rcv_nxt: int = 0  # what it has received from its peer (what it ACKs)
    isn: int | None = None  # set by its first SYN: a retransmitted SYN reuses it, as stacks do


@dataclass
class Trace:
    """`tap(side, packet)`, if given, sees every packet before the engine does (e.g. to send the
    same bytes through a real kernel)."""

    policy: Policy
    v6: bool = False
    client_addr: str | None = None
    server_addr: str | None = None
    client_port: int = 40000
    tap: Callable[[str, bytes], None] | None = None
    # False: a packet the state table calls invalid does not advance its sender's sequence, as
    # no peer would take it (the kernel's window checks then judge later packets like ours).
    count_invalid: bool = True
    seed: int = 0  # the engine's random choices
    engine: Engine = field(init=False)
    c: Side = field(init=False)
    s: Side = field(init=False)

    def __post_init__(self) -> None:
        self.engine = Engine(self.policy, self.seed)
        default_c, default_s = ("fd00:1::2", "fd00:2::2") if self.v6 else ("10.0.1.2", "10.0.2.2")
        c_addr = ipaddress.ip_address(self.client_addr or default_c).packed
        s_addr = ipaddress.ip_address(self.server_addr or default_s).packed
        self.c = Side(c_addr, self.client_port, 1000)
        self.s = Side(s_addr, 80, 5000)

    # -- sending
    def client(
        self,
        flags: str,
        length: int = 0,
        *,
        at: float,
        seq: int | None = None,
        ack: int | None = None,
        window: int = 0xFFFF,
        options: bytes = b"",
    ) -> Decision:
        return self._send(self.c, self.s, flags, length, at, seq, ack, window, options)

    def server(
        self,
        flags: str,
        length: int = 0,
        *,
        at: float,
        seq: int | None = None,
        ack: int | None = None,
        window: int = 0xFFFF,
        options: bytes = b"",
    ) -> Decision:
        return self._send(self.s, self.c, flags, length, at, seq, ack, window, options)

    def _packet(
        self,
        src: Side,
        dst: Side,
        flags: str,
        length: int,
        seq: int | None,
        ack: int | None,
        window: int = 0xFFFF,
        options: bytes = b"",
    ) -> bytes:
        f = flags_of(flags)
        return pk.build_segment(
            src.addr,
            src.port,
            dst.addr,
            dst.port,
            flags=f,
            seq=(src.isn if f & pk.TCP_SYN and src.isn is not None else src.nxt)
            if seq is None
            else seq,
            ack=(src.rcv_nxt if ack is None else ack) if f & pk.TCP_ACK else 0,
            payload_len=length,
            window=window,
            options=options,
        )

    def _send(
        self,
        src: Side,
        dst: Side,
        flags: str,
        length: int,
        at: float,
        seq: int | None,
        ack: int | None,
        window: int = 0xFFFF,
        options: bytes = b"",
    ) -> Decision:
        data = self._packet(src, dst, flags, length, seq, ack, window, options)
        if self.tap is not None:
            self.tap("client" if src is self.c else "server", data)
        decision = self.engine.handle_packet(data, now=at)
        f = flags_of(flags)
        seg = pk.parse(data)
        assert isinstance(seg, pk.Segment)
        invalid = decision.reason in (Reason.OUT_OF_STATE, Reason.PAST_ANSWER_RATE)
        if seq is None and (self.count_invalid or not invalid):
            if f & pk.TCP_SYN and src.isn is None:
                src.isn = seg.seq
            if 0 < (seg.end - src.nxt) & 0xFFFFFFFF < 0x80000000:
                src.nxt = seg.end
        if decision.accepted and not f & pk.TCP_RST and (self.count_invalid or not invalid):
            dst.rcv_nxt = seg.end  # delivered: the peer now acknowledges it
        return decision

    def handshake(self, at: float = 0.0) -> None:
        self.client("S", at=at)
        self.server("SA", at=at)
        self.client("A", at=at)

    # -- time
    def advance(self, now: float) -> Effects:
        """Run every timer due by `now` (as the adapter would) and gather what they produced."""
        inject: list[bytes] = []
        events: list[object] = []
        while (deadline := self.engine.next_deadline()) is not None and deadline <= now:
            fx = self.engine.handle_timer(now=deadline)
            inject.extend(fx.inject)
            events.extend(fx.events)
        return Effects(tuple(inject), tuple(events))  # type: ignore[arg-type]

    # -- expectations
    def deadline(self, now: float = 0.0) -> float | None:
        """When the (only) flow's timer fires: exact, unlike next_deadline(), which may be early."""
        (info,) = self.engine.flows(now=now)
        return None if info.expires_in is None else now + info.expires_in

    def state(self) -> str | None:
        flows = self.engine.flows(now=0.0)
        return flows[0].state if flows else None

    def rst_to_client(self, seq: int, ack: int | None) -> bytes:
        return pk.build_rst(self.s.addr, self.s.port, self.c.addr, self.c.port, seq=seq, ack=ack)

    def rst_to_server(self, seq: int, ack: int | None) -> bytes:
        return pk.build_rst(self.c.addr, self.c.port, self.s.addr, self.s.port, seq=seq, ack=ack)
