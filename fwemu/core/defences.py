"""The flow table's SYN-flood defences (a mixin of FlowTable, on its columns): a new SYN meets
the normaliser and the [syn_flood] rates, may be answered with a cookie (fwemu.core.synproxy),
whose ACK opens a proxied flow; and every packet of a flow whose numbers are translated goes
through `_translated`. Split from fwemu.core.conntrack, which keeps the kernel's state machine.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from fwemu.core import packet as pk
from fwemu.core import synflood
from fwemu.core.addresses import flow_id
from fwemu.core.cookies import MSS_TABLE, Cookies, Offer
from fwemu.core.decision import Decision, Reason, Verdict
from fwemu.core.events import ResetSent, SynFloodAlarm
from fwemu.core.limits import POLICY_SCOPE
from fwemu.core.rewrite import rewrite
from fwemu.core.states import ORIGINAL, REPLY, TRANSITIONS, PacketClass
from fwemu.core.synflood import FloodGuard
from fwemu.core.synproxy import (
    Translation,
    answer,
    client_ack,
    open_syn,
    told_wscale,
    window_update,
)
from fwemu.policy.model import Normalise, Policy, Profile, SackBlocks, SynData, SynOption

if TYPE_CHECKING:
    from fwemu.core.conntrack import FlowTable

TRANSLATED = 1 << 7  # a flow flag: its packets are rewritten (synproxy.Translation; not fast)
_SYN, _SYNACK, _ACK, _RST = (
    int(PacketClass.SYN),
    int(PacketClass.SYNACK),
    int(PacketClass.ACK),
    int(PacketClass.RST),
)
_MASK32 = 0xFFFFFFFF


class SynDefences:
    """What the flow table does with a SYN of no flow, the proxy's handshake and the packets of
    translated flows; it works on the table's own columns."""

    __slots__ = (
        "_guards",
        "_rng",
        "cookies",
        "cookies_sent",
        "guards",
        "normalises",
        "proxied",
        "table",
        "translations",
    )

    def __init__(self, table: FlowTable, seed: int) -> None:
        """`seed` makes the random choices: random early drop, randomised sequence numbers and
        the cookies' secret (a random one in production, a fixed one in tests)."""
        self.table = table
        self._rng = random.Random(seed)
        self.cookies = Cookies(self._rng.randbytes(16))
        self.cookies_sent = False  # whether an ACK of no flow may carry a cookie
        self.proxied = [0, 0]  # SYNs answered with a cookie, connections a cookie opened
        self.translations: dict[int, Translation] = {}  # per slot of a TRANSLATED flow

    def use(self, policy: Policy, profiles: list[Profile]) -> None:
        """The defences of `policy`, whose profiles are `profiles` (the table's indices)."""
        top = FloodGuard(POLICY_SCOPE, policy.syn_flood, self._rng)
        own = [FloodGuard(f"rule {p.name}", p.syn_flood, self._rng) for p in profiles]
        self.guards = [g for g in (*own, top) if g.config.active]
        # The [syn_flood] defences a new SYN of each profile meets: its rule's, then the policy's.
        self._guards: list[tuple[FloodGuard, ...]] = [
            tuple(g for g in (mine, top) if g.config.active) for mine in own
        ]
        self.normalises = [syn_edits(p.normalise) for p in profiles]  # what SYN options get

    def told_isn(self, slot: int, d: int) -> int | None:
        """The ISN the proxy told the client direction d has, if the flow waits for a server
        that has not answered (the client then knows the cookie, the table nothing)."""
        tr = self.translations.get(slot)
        return tr.cookie if tr is not None and tr.pending and d == REPLY else None

    def syn(self, seg: pk.Segment, now: float, data: bytes) -> Decision:
        """A SYN of no flow: the normaliser, the [syn_flood] defences, then a new flow (its SYN
        rewritten if the flow's sequence numbers are randomised or its options normalised)."""
        profile = self.table._profile_index(seg, None)
        normalise = self.table._profiles[profile].normalise
        if seg.payload_len and normalise.syn_data == SynData.DROP:
            return SYN_DATA_DROPPED
        alarms: list[SynFloodAlarm] = []
        if self._guards[profile] and (defended := self.flood(seg, profile, now, data, alarms)):
            return defended
        if self.normalises[profile]:
            edited = self.normalise(profile, data)
            if edited is None:
                return CUT
            data = edited
            seg = pk.parse(data)  # type: ignore[assignment]  # a normalised SYN parses
        out = self.table._new_flow(seg, _SYN, now, profile, data=data)
        if alarms:
            out = out._replace(events=(*alarms, *out.events))
        slot = self.table._index.get(seg.key)
        if slot is None or not out.accepted:
            return out
        if normalise.isn_randomisation:
            shift = (self._rng.getrandbits(32), self._rng.getrandbits(32))
            self.translations[slot] = Translation(shift, normalise.sack_blocks)
            self.table._flags[slot] |= TRANSLATED
            return rewritten(out, rewrite(data, seq=shift[ORIGINAL]))
        return out._replace(rewrite=data) if self.normalises[profile] else out

    def flood(
        self,
        seg: pk.Segment,
        profile: int,
        now: float,
        data: bytes,
        alarms: list[SynFloodAlarm],
    ) -> Decision | None:
        """The [syn_flood] defences' answer to a new SYN: dropped, answered with a cookie, or
        None to let it open a flow (the alarms they raised are appended to `alarms`)."""
        server, rule = _server(seg), self.table._profiles[profile].name
        for guard in self._guards[profile]:
            verdict = guard.judge(server, lambda: flow_id(seg.key, seg.forward), rule, now, alarms)
            if verdict == synflood.DROP:
                return Decision(Verdict.DROP, Reason.SYN_FLOOD, (), tuple(alarms), guard.name)
            if verdict == synflood.COOKIE:
                out = self.answer(seg, profile, now, data)
                return out._replace(events=tuple(alarms)) if alarms else out
        return None

    def answer(self, seg: pk.Segment, profile: int, now: float, data: bytes) -> Decision:
        """Answer a SYN with a SYN cookie (fwemu.core.synproxy step 1); keep nothing."""
        # No packet bytes where a SYN reopens a closed flow (the state machine has only its
        # segment): the MSS a SYN without the option has, then.
        offer = Offer(pk.syn_mss(data) if data else MSS_TABLE[0], seg.wscale, seg.sack_perm)
        cookie = self.cookies.make(_tuple(seg), seg.seq, offer, now)
        synack, _ = answer(seg, cookie, self.table._profiles[profile].syn_proxy, offer)
        self.cookies_sent = True
        self.proxied[0] += 1
        return Decision(Verdict.DROP, Reason.SYN_COOKIE, (synack,), (), "answered with a cookie")

    def cookie_ack(self, seg: pk.Segment, now: float) -> Decision | None:
        """An ACK of no flow carrying a valid cookie: open to the server (step 2); None if it
        carries none."""
        isn = (seg.seq - 1) & _MASK32
        offer = self.cookies.check(_tuple(seg), isn, (seg.ack - 1) & _MASK32, now)
        if offer is None:
            return None
        profile = self.table._profile_index(seg, None)
        syn = open_syn(seg, offer)
        syn_seg = pk.parse(syn)
        assert isinstance(syn_seg, pk.Segment)
        out = self.table._new_flow(syn_seg, _SYN, now, profile, proven=True)
        slot = self.table._index.get(seg.key)
        if slot is None or not out.accepted:
            return out  # a limit refused it: the client's connection hangs
        tr = Translation((0, 0), SackBlocks.TRANSLATE)
        tr.pending, tr.cookie, tr.client_window = True, (seg.ack - 1) & _MASK32, seg.window
        tr.told = told_wscale(self.table._profiles[profile].syn_proxy, offer)
        self.translations[slot] = tr
        self.table._flags[slot] |= TRANSLATED
        self.proxied[1] += 1
        detail = "a valid cookie: opening to the server"
        return Decision(Verdict.DROP, Reason.SYN_COOKIE, (syn,), out.events, detail)

    def translated(
        self,
        slot: int,
        d: int,
        cls: int,
        old: int,
        seg: pk.Segment,
        data: bytes,
        now: float,
    ) -> Decision:
        """A packet of a flow whose numbers are translated (a SYN-ACK already normalised): as
        its sender sent it, with the ACK moved back into the numbering of the side it
        acknowledges, for the table; then rewritten for its receiver."""
        tr = self.translations[slot]
        if tr.pending:
            return self.proxy_handshake(slot, d, cls, old, seg, now, tr)
        other = tr.shift[1 - d]
        if other and seg.flags & pk.TCP_ACK:
            seg.ack = (seg.ack - other) & _MASK32
            seg.sack = (seg.sack - other) & _MASK32
        out = self.table._transition(slot, d, cls, old, TRANSITIONS[d][cls][old], seg, now)
        if not out.accepted:
            return out
        window = tr.window(seg.window) if d == REPLY and tr.rescale else None
        sack = 0 if tr.sack == SackBlocks.KEEP else -other
        return rewritten(out, rewrite(data, seq=tr.shift[d], ack=-other, sack=sack, window=window))

    def proxy_handshake(
        self,
        slot: int,
        d: int,
        cls: int,
        old: int,
        seg: pk.Segment,
        now: float,
        tr: Translation,
    ) -> Decision:
        """A proxied flow waiting for the server (step 3): its SYN-ACK is answered for the
        client, its RST turned into one for the client; the client's packets wait."""
        if d == ORIGINAL or cls not in (_SYNACK, _RST):
            return PROXY_WAITS
        out = self.table._transition(slot, d, cls, old, TRANSITIONS[d][cls][old], seg, now)
        if cls == _RST:
            rst = pk.build_rst(
                seg.src, seg.sport, seg.dst, seg.dport, seq=tr.cookie + 1, ack=seg.ack
            )
            flow = flow_id(seg.key, not seg.forward)
            rule = (
                self.table._profiles[self.table._profile[slot]].name
                if slot in self.translations
                else ""
            )
            sent = ResetSent(
                now, flow, "client", (tr.cookie + 1) & _MASK32, seg.ack, "SYN_SENT", "proxy", rule
            )
            return Decision(
                Verdict.DROP, Reason.SYN_COOKIE, (rst,), (*out.events, sent), "the server refused"
            )
        if not out.accepted:
            return out
        tr.pending = False
        tr.shift[REPLY] = (tr.cookie - seg.seq) & _MASK32
        tr.windows(seg.wscale)
        ack = client_ack(seg, tr.client_window)
        ack_seg = pk.parse(ack)
        assert isinstance(ack_seg, pk.Segment)
        state = self.table._state[slot]
        done = self.table._transition(
            slot, ORIGINAL, _ACK, state, TRANSITIONS[ORIGINAL][_ACK][state], ack_seg, now
        )
        update = window_update(seg, tr.cookie, tr.told)
        detail = "the server's SYN-ACK answered for the client, its window passed on"
        return Decision(
            Verdict.DROP, Reason.SYN_COOKIE, (ack, update), (*out.events, *done.events), detail
        )

    def normalise(self, profile: int, data: bytes) -> bytes | None:
        """A SYN or SYN-ACK with the options the normaliser clears or clamps."""
        clear, mss = self.normalises[profile]  # type: ignore[misc]  # only called when set
        return rewrite(data, clear=clear, mss=mss)


def _tuple(seg: pk.Segment) -> bytes:
    """The addresses and ports of a segment as sent, for cookies: its key and direction."""
    return seg.key + (b"\x01" if seg.forward else b"\x00")


def _server(seg: pk.Segment) -> bytes:
    """The packed address and port a SYN goes to."""
    return seg.dst + seg.dport.to_bytes(2)


SYN_OPTIONS = {SynOption.SACK: 4, SynOption.TIMESTAMPS: 8, SynOption.WINDOW_SCALE: 3}


def syn_edits(normalise: Normalise) -> tuple[frozenset[int], int | None] | None:
    """What the normaliser does to SYN options (option kinds to clear, the MSS clamp), or None."""
    if not normalise.clear and normalise.mss is None:
        return None
    return frozenset(SYN_OPTIONS[o] for o in normalise.clear), normalise.mss


SYN_DATA_DROPPED: Final = Decision(Verdict.DROP, Reason.NORMALISED, detail="a SYN with data")
# A packet to rewrite that the queue copied only in part: rewriting it would cut it.
CUT: Final = Decision(
    Verdict.DROP, Reason.UNPARSEABLE, detail="cut by the copy range: not rewritten"
)


def rewritten(out: Decision, packet: bytes | None) -> Decision:
    """`out` accepting `packet` in place of the queued one; dropped if it could not be made."""
    return CUT if packet is None else out._replace(rewrite=packet)


PROXY_WAITS: Final = Decision(
    Verdict.DROP, Reason.SYN_COOKIE, detail="waiting for the server to answer the proxy"
)
