"""The flow table and the TCP state machine over it (pure: packets and `now` in, outcomes out).

The table is columnar: one `array` per field, indexed by a slot number, plus a dict from the
canonical flow key to the slot. A slotted object per flow costs ~600 bytes at the sizes that
matter (each 32-bit sequence number is a 32-byte int object); columns cost ~200. `FlowInfo` is the
readable snapshot for everything outside the hot path.

The state machine is `fwemu.core.states.TRANSITIONS` plus the special cases Linux applies after
the table lookup (`nf_conntrack_tcp_packet()`), each marked where it is implemented, and the
kernel's window checks (`tcp_in_window()`, fwemu.core.window). Kernel version matched: 6.1-6.18.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from fwemu.core import packet as pk
from fwemu.core.addresses import address, flow_id
from fwemu.core.dcd import Probes, probe
from fwemu.core.decision import (
    IGNORED,
    IN_STATE,
    REFUSED_PAST_RATE,
    Decision,
    Reason,
    Verdict,
    accept,
)
from fwemu.core.defences import CUT, TRANSLATED, SynDefences
from fwemu.core.events import (
    Event,
    FlowDeleted,
    FlowExpired,
    FlowId,
    FlowNew,
    LimitRefused,
    OutOfState,
    ProbeSent,
    ResetSent,
    StateChanged,
)
from fwemu.core.limits import LimitBook, Refusal
from fwemu.core.ratelimit import OutOfStateLimiter
from fwemu.core.states import (
    CLOSING_STATES,
    ORIGINAL,
    PHASE_NAME,
    PHASE_OF,
    REPLY,
    TIMEOUT_FIELD,
    TRANSITIONS,
    UDP_STATES,
    PacketClass,
    State,
    classify,
    flags_valid,
)
from fwemu.core.timers import Timers
from fwemu.core.udp import UdpFlows
from fwemu.core.window import (
    CLOSE_INIT,
    DATA_UNACKNOWLEDGED,
    IGNORE,
    MAX_RETRANS,
    MAXACK_SET,
    SACK_PERM,
    WINDOW_SCALE,
    TcpWindows,
)
from fwemu.policy.model import (
    ExpireAction,
    LimitAction,
    OutOfStateAction,
    Policy,
    Profile,
)

# Module constants are Final: compiled (mypyc), a Final is a C constant, not a dict lookup.
_SYN: Final = int(PacketClass.SYN)
_SYNACK: Final = int(PacketClass.SYNACK)
_FIN: Final = int(PacketClass.FIN)
_ACK: Final = int(PacketClass.ACK)
_RST: Final = int(PacketClass.RST)
_INVALID_CLASS: Final = -1
_NO_CLASS: Final = int(PacketClass.NONE)  # tcp_new()'s last_index: no packet in window yet
# Packet class per TCP flags byte, or _INVALID_CLASS for combinations tcp_error() rejects.
_CLASS_OF: Final[tuple[int, ...]] = tuple(
    int(classify(f)) if flags_valid(f) else _INVALID_CLASS for f in range(256)
)

# Per-flow flag bits: ct->status's SEEN_REPLY and ASSURED, and ct->proto.tcp.last_flags (the
# per-direction flags are fwemu.core.window's).
SEEN_REPLY: Final = 1 << 0
ASSURED: Final = 1 << 1
SIMULTANEOUS_OPEN: Final = 1 << 2  # IP_CT_TCP_SIMULTANEOUS_OPEN
# A SYN was let through in LAST_ACK (IP_CT_EXP_CHALLENGE_ACK).
CHALLENGE_ACK_EXPECTED: Final = 1 << 3
LAST_WINDOW_SCALE: Final = 1 << 4  # the ignored SYN offered window scaling
LAST_SACK_PERM: Final = 1 << 5  # ... and SACK
PROBING: Final = 1 << 6  # dead connection detection is probing the flow (off the fast path)
_SLOW: Final = PROBING | TRANSLATED
_LAST_OPTIONS: Final = LAST_WINDOW_SCALE | LAST_SACK_PERM
# Which timer a flow's deadline comes from (the `_timer` column; FlowExpired.capped_by): the
# state's own, a cap, or one an operator set (`fwemu expire --in`) until the flow's next packet.
_OWN_TIMER: Final = 0
_RETRANS_TIMER: Final = 1
_UNACK_TIMER: Final = 2
_CLOSE_TIMER: Final = 3
_SET_TIMER: Final = 4
_TIMER_NAMES: Final[tuple[str | None, ...]] = (
    None,
    "max_retrans",
    "unacknowledged",
    "close",
    "fwemu expire --in",
)
_LIFETIME_CAUSE: Final = "lifetime"  # FlowExpired.capped_by of those expiries
_DCD_CAUSE: Final = "dcd"
_BY_HAND: Final = "by hand"  # an expiry `fwemu expire` asked for (FlowExpired.forced)
# nf_tcp_handle_invalid(): a timer shorter than this is left alone.
_HANDLE_INVALID_MIN: Final = 120.0
_INF: Final = math.inf

_MASK32: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000  # serial arithmetic: a - b mod 2**32 in (0, _HALF] means a is after b
_LAST_ACK_FROM: Final = (_ACK, _ACK | REPLY << 3)  # the `last` column after an ACK per direction
# States an ACK-class packet leaves unchanged from both directions: the fast path's domain.
# Names by State value, for events (an enum lookup per event costs more than the event).
_STATE_NAME: Final = tuple(s.name for s in State)
_PHASE_NAME: Final = tuple(PHASE_NAME.get(s, "") for s in State)
_ACK_KEEPS: Final = tuple(
    s < State.INVALID and all(TRANSITIONS[d][_ACK][s] == s for d in (ORIGINAL, REPLY))
    for s in range(len(State))
)
# State values as plain ints: an enum attribute per comparison costs on every connection packet.
_NONE: Final = int(State.NONE)
_SYN_SENT: Final = int(State.SYN_SENT)
_SYN_RECV: Final = int(State.SYN_RECV)
_ESTABLISHED: Final = int(State.ESTABLISHED)
_FIN_WAIT: Final = int(State.FIN_WAIT)
_LAST_ACK: Final = int(State.LAST_ACK)
_TIME_WAIT: Final = int(State.TIME_WAIT)
_CLOSE: Final = int(State.CLOSE)
_SYN_SENT2: Final = int(State.SYN_SENT2)
_INVALID: Final = int(State.INVALID)
_IGNORE: Final = int(State.IGNORE)


def _special(d: int, cls: int, old: int) -> bool:
    """Whether a packet of class `cls` from direction `d` in state `old` may meet one of the
    kernel's special cases (`FlowTable._special`); the rest take the table's state as is, after
    tcp_in_window() (RSTs all go through `_special` for their own rules). A flow tcp_new() just
    opened (NONE) meets none: its first packet's new state is tcp_new()'s."""
    new = TRANSITIONS[d][cls][old]
    return old != _NONE and (
        cls == _RST
        or new in (_IGNORE, _INVALID, _SYN_SENT2)
        or (new == _SYN_SENT and old >= _TIME_WAIT)
        or (new == _TIME_WAIT and old == _LAST_ACK and cls == _ACK)
        or (new == _SYN_RECV and d == REPLY and cls == _ACK)
    )


# _SPECIAL[direction][class][state], for states below INVALID (those a flow can be in).
_SPECIAL: Final = tuple(
    tuple(tuple(_special(d, c, s) for s in range(_INVALID)) for c in range(len(PacketClass)))
    for d in (ORIGINAL, REPLY)
)
_FLOW_ID_CACHE: Final = 16384  # FlowIds kept (~200 B each): enough for the flows changing state now


@dataclass(frozen=True, slots=True)
class FlowInfo:
    """A readable snapshot of one tracked flow."""

    flow: FlowId
    state: str
    phase: str
    rule: str
    age: float
    idle: float
    expires_in: float | None  # None: no timer in this state
    packets: tuple[int, int]  # (from client, from server)
    bytes: tuple[int, int]  # TCP payload bytes (from client, from server)
    next_seq: tuple[int, int]  # highest sequence end sent (client, server)
    last_ack: tuple[int, int]  # highest ACK value sent (client, server)


class _Tombstone(NamedTuple):
    """An expired flow, remembered so a late packet can say which flow it was and which side.

    The table stores each as a plain tuple (`_Buried`) and makes this readable form when one is
    looked up: the cyclic GC stops tracking a plain tuple of atoms, never a NamedTuple, and 100k
    tracked tombstones made every full collection take ~30 ms, stalling verdicts after a mass
    expiry (bench/scale.py)."""

    client_forward: bool  # the client is the key's first endpoint
    expired_at: float
    phase: str
    state: str
    profile: int
    forget_at: float


_Buried = tuple[bool, float, str, str, int, float]  # a _Tombstone's fields, as stored
_FORGET_AT: Final = 5  # a literal index, for the type checker
assert _Tombstone._fields[_FORGET_AT] == "forget_at"


class _Expiry(NamedTuple):
    """A profile's expiry of a flow in one state, resolved once per policy (enum lookups cost
    more than the expiry itself)."""

    state: str
    phase: str
    action: str  # ExpireAction value
    targets: tuple[int, ...]  # directions to reset
    rule: str
    timeout: float | None
    remember: float  # seconds a tombstone is kept

    @classmethod
    def of(cls, profile: Profile, state: State, timeout: float | None) -> _Expiry:
        phase = PHASE_OF.get(state)
        action = profile.on_expire.for_phase(phase) if phase else ExpireAction.SILENT
        return cls(
            state.name,
            PHASE_NAME.get(state, ""),
            action.value,
            _RESET_TARGETS[action],
            profile.name,
            timeout,
            profile.out_of_state.remember,
        )


class FlowTable:
    """Tracks flows; `packet()` per accepted-or-not packet, `expire_due()` when timers run out."""

    def __init__(self, policy: Policy, seed: int = 0) -> None:
        """`seed` makes the random choices (random early drop, randomised sequence numbers,
        the cookies' secret): pass a random one in production, a fixed one in tests."""
        self.defences = SynDefences(self, seed)
        self.limiter = OutOfStateLimiter(0, 0, flow_id)
        self.udp = UdpFlows(self)
        self._use(policy)
        self._index: dict[bytes, int] = {}
        self._keys: list[bytes | None] = []
        self._free: list[int] = []
        self._state = array("B")
        self._flags = array("B")
        self._client_fwd = array("B")  # 1 if the client is the key's first endpoint
        self._profile = array("H")
        self._last = array("B")  # last_index | last_dir << 3, as the kernel's last_index/last_dir
        self._timer = array("B")  # which timer the deadline is (_OWN_TIMER, _RETRANS_TIMER, ...)
        self._created = array("d")
        self._seen_at = array("d")  # time of the last accepted packet that refreshed the timer
        self.win = TcpWindows()
        self._set_seconds: dict[int, float] = {}  # per slot with an operator's timer: its seconds
        # Per direction (ORIGINAL, REPLY): packets and payload bytes in window.
        self._pkts = (array("Q"), array("Q"))
        self._bytes = (array("Q"), array("Q"))
        self.timers = Timers()
        self._deadlines = self.timers.deadlines
        self.lifetimes = Timers()  # each flow's absolute lifetime, if its profile has one
        self.probes = Probes()
        self._tombstones: dict[bytes, _Buried] = {}
        # FlowId per slot of recent flows: a connection's ~6 events share one.
        self._flow_ids: dict[int, FlowId] = {}
        self._forget_queues: list[deque[bytes]] = [deque() for _ in self._profiles]

    def _use(self, policy: Policy) -> None:
        self.policy = policy
        # Policy-wide, kept across a reload (with what it holds): only its rates change.
        self.limiter.per_source = policy.answer_rate.per_source
        self.limiter.total = policy.answer_rate.total
        self._profiles: list[Profile] = list(policy.profiles)
        self.book = LimitBook(policy)
        self._early_drop = any(scope.buckets for scope in self.book.scopes)
        # Timeout per profile per State value (None = never), looked up on every packet.
        self._timeouts: list[tuple[float | None, ...]] = [
            tuple(
                getattr(p.timeouts, TIMEOUT_FIELD[State(s)]) if State(s) in TIMEOUT_FIELD else None
                for s in range(len(State))
            )
            for p in self._profiles
        ]
        # What an expiry needs per profile per State value (tracked states only).
        self._expiry: list[tuple[_Expiry, ...]] = [
            tuple(_Expiry.of(p, State(s), timeouts[s]) for s in range(len(State)))
            for p, timeouts in zip(self._profiles, self._timeouts, strict=True)
        ]
        # The timer caps per profile (max_retrans, unacknowledged; inf = none).
        self._caps: list[tuple[float, float]] = [
            (_seconds(p.timeouts.max_retrans), _seconds(p.timeouts.unacknowledged))
            for p in self._profiles
        ]
        self._liberal = [not p.out_of_state.window_check for p in self._profiles]
        self._lifetime = [p.timeouts.lifetime for p in self._profiles]
        self._dcd = [p.dcd for p in self._profiles]
        self.defences.use(policy, self._profiles)
        self.udp.use()
        # Per profile per State value: the timer while data is unacknowledged (the fast path's).
        self._unacked: list[tuple[tuple[float | None, int], ...]] = [
            tuple(
                (unack, _UNACK_TIMER) if _seconds(own) > unack else (own, _OWN_TIMER)
                for own in timeouts
            )
            for timeouts, (_, unack) in zip(self._timeouts, self._caps, strict=True)
        ]

    def reload(self, policy: Policy) -> int:
        """Enforce `policy` from now on without losing a flow: each flow is matched against the
        new rules and its timer re-armed from its last packet under the new timeouts (so a flow
        whose new timer has already run out expires at the next handle_timer). Remembered
        (expired) flows keep their rule by name, else fall back to the default. Returns the
        number of live flows re-timed."""
        old_names = [p.name for p in self._profiles]
        old_book = self.book
        self._use(policy)
        self.book.carry(old_book)
        by_name = {p.name: i for i, p in enumerate(self._profiles)}
        default = len(self._profiles) - 1
        for key, slot in self._index.items():
            forward = bool(self._client_fwd[slot])
            profile = self._match(key, forward)
            self._profile[slot] = profile
            lifetime = self._lifetime[profile]
            self.lifetimes.set(slot, None if lifetime is None else self._created[slot] + lifetime)
            if self.book.active:
                self.book.opened(slot, key, forward, profile, self._state[slot] in _EMBRYONIC)
                if self._flags[slot] & ASSURED:
                    self.book.assured(slot)
            # The timer the last packet would have set under the new policy.
            current, seen_at = self._state[slot], self._seen_at[slot]
            if current in _UDP:
                self.udp.arm(slot, profile, current, seen_at)
            else:
                last = self._last[slot] & 7
                self._arm(slot, profile, current, last, self._flags[slot], seen_at)
        queues: list[deque[bytes]] = [deque() for _ in self._profiles]
        for key, (client_forward, at, phase, state, profile, forget_at) in self._tombstones.items():
            index = by_name.get(old_names[profile], default)
            self._tombstones[key] = (client_forward, at, phase, state, index, forget_at)
            queues[index].append(key)
        self._forget_queues = queues
        return len(self._index)

    # ---------------------------------------------------------------- queries

    def __len__(self) -> int:
        return len(self._index)

    def flows(self, now: float) -> list[FlowInfo]:
        return [self._info(slot, now) for slot in self._index.values()]

    def info(self, key: bytes, now: float) -> FlowInfo | None:
        slot = self._index.get(key)
        return None if slot is None else self._info(slot, now)

    def _info(self, slot: int, now: float) -> FlowInfo:
        state = State(self._state[slot])
        deadline = self.timers.deadline(slot)
        return FlowInfo(
            flow=self._flow_id(slot),
            state=state.name,
            phase=_PHASE_NAME[state],
            rule=self._profiles[self._profile[slot]].name,
            age=now - self._created[slot],
            idle=now - self._seen_at[slot],
            expires_in=None if deadline is None else deadline - now,
            packets=(self._pkts[0][slot], self._pkts[1][slot]),
            bytes=(self._bytes[0][slot], self._bytes[1][slot]),
            next_seq=(self.win.end[slot << 1], self.win.end[slot << 1 | 1]),
            last_ack=(self.win.maxack[slot << 1], self.win.maxack[slot << 1 | 1]),
        )

    # ---------------------------------------------------------------- packets

    # The fast path is inlined here, not split into calls: it runs for almost every packet.
    def packet(self, seg: pk.Segment, now: float, data: bytes = b"") -> Decision:  # noqa: PLR0912
        """Decide on one segment; `data`, the packet it was parsed from, is needed only for the
        policies that rewrite packets (Policy.rewrites)."""
        cls = _CLASS_OF[seg.flags]
        slot = self._index.get(seg.key)
        if slot is None:
            return self._no_flow(seg, cls, now, data)
        if cls == _INVALID_CLASS:
            return self._invalid(slot, seg, now, "invalid TCP flags")
        d = ORIGINAL if seg.forward == self._client_fwd[slot] else REPLY
        old = self._state[slot]
        flags = self._flags[slot]
        if cls == _ACK and _ACK_KEEPS[old] and not flags & _SLOW:
            # Fast path: an ACK or data segment in a state it keeps, the vast majority of
            # packets: _transition() for this case, inlined (no special case applies).
            profile = self._profile[slot]
            win = self.win
            i = slot << 1 | d
            if win.maxwin[i]:
                # tcp_in_window() for an ACK-class segment from a side it has seen before:
                # nothing to read beyond the header (no SYN, no RST, the ACK flag set).
                seq, ack = seg.seq, seg.ack
                outcome = win.judge(
                    slot,
                    i,
                    _ACK,
                    seq,
                    ack,
                    seg.sack if win.flags[i ^ 1] & SACK_PERM else ack,
                    (seq + seg.payload_len) & _MASK32,
                    seg.window,
                    seg.flags,
                    self._liberal[profile],
                    self._last[slot] >> 3,
                )
            else:
                outcome = win.check(
                    slot, d, _ACK, seg, old, self._liberal[profile], self._last[slot] >> 3
                )
            if outcome:
                return self._window_failed(slot, d, _ACK, seg, now, outcome)
            self._last[slot] = _LAST_ACK_FROM[d]
            self._pkts[d][slot] += 1
            self._bytes[d][slot] += seg.payload_len
            new_flags = flags | SEEN_REPLY if d else flags
            if flags & SEEN_REPLY and old == _ESTABLISHED:
                new_flags |= ASSURED
            if new_flags != flags:
                self._flags[slot] = new_flags
                if new_flags & ASSURED and self._early_drop:
                    self.book.assured(slot)
            self._seen_at[slot] = now
            if not flags & SEEN_REPLY or win.retrans[slot] >= MAX_RETRANS or not win.last_win[slot]:
                self._arm(slot, profile, old, _ACK, flags, now)
                return IN_STATE
            # The timer _arm() would set, for the two cases of bulk traffic: the state's own, or
            # capped by `unacknowledged` while data is in flight.
            i &= ~1
            if (win.flags[i] | win.flags[i | 1]) & DATA_UNACKNOWLEDGED:
                timeout, timer = self._unacked[profile][old]
            else:
                timeout, timer = self._timeouts[profile][old], _OWN_TIMER
            if self._timer[slot] != timer:
                self._timer[slot] = timer
            deadline = None if timeout is None else now + timeout
            if deadline is not None and deadline >= self._deadlines[slot]:
                self._deadlines[slot] = deadline  # later: Timers re-files it lazily
            else:
                self.timers.set(slot, deadline)
            return IN_STATE
        return self._slow(slot, d, cls, old, seg, data, now)

    def _slow(
        self, slot: int, d: int, cls: int, old: int, seg: pk.Segment, data: bytes, now: float
    ) -> Decision:
        """A packet off the fast path: translated flows, normalised SYN-ACKs, then the state
        machine's special cases."""
        edited = None
        if cls == _SYNACK and self.defences.normalises[self._profile[slot]]:
            edited = self.defences.normalise(self._profile[slot], data)
            if edited is None:
                return CUT
            data = edited
            seg = pk.parse(data)  # type: ignore[assignment]  # a normalised SYN-ACK parses
        if self._flags[slot] & TRANSLATED:
            return self.defences.translated(slot, d, cls, old, seg, data, now)
        out = self._transition(slot, d, cls, old, TRANSITIONS[d][cls][old], seg, now)
        return out._replace(rewrite=edited) if edited is not None and out.accepted else out

    # nf_conntrack_tcp_packet()'s tail, in its order: one branch per case it distinguishes.
    def _transition(  # noqa: PLR0912
        self, slot: int, d: int, cls: int, old: int, new: int, seg: pk.Segment, now: float
    ) -> Decision:
        """nf_conntrack_tcp_packet() after the table lookup: its special cases in kernel order
        (only where `_SPECIAL` says one may apply), tcp_in_window(), then the in-window update.
        `old` is NONE for a flow tcp_new() just opened."""
        flags = self._flags[slot]
        checked = True
        if _SPECIAL[d][cls][old]:
            outcome = self._special(slot, d, cls, old, new, seg, now, flags)
            if isinstance(outcome, Decision):
                return outcome
            old, new, flags, checked = outcome
            self._flags[slot] = flags
        if checked:
            profile = self._profile[slot]
            outcome_ = self.win.check(
                slot, d, cls, seg, self._state[slot], self._liberal[profile], self._last[slot] >> 3
            )
            if outcome_:
                return self._window_failed(slot, d, cls, seg, now, outcome_)
        # in_window:
        self._last[slot] = cls | d << 3
        self._state[slot] = new
        if new == _FIN_WAIT and old != new:
            self.win.flags[(slot << 1) | d] |= CLOSE_INIT
        self._pkts[d][slot] += 1
        self._bytes[d][slot] += seg.payload_len
        event: Event | None = None
        if old == _NONE:
            profile_name = self._profiles[self._profile[slot]].name
            event = FlowNew(now, self._flow_id(slot), _STATE_NAME[new], profile_name)
        elif old != new:
            event = self._state_event(slot, now, old, new)
        if not flags & SEEN_REPLY:
            if cls == _RST:
                # The only reply is a RST: the kernel deletes the entry at once.
                gone = self._remove(slot, now, reason="reset before any reply")
                return accept(Reason.RESET_BEFORE_REPLY, *((event, gone) if event else (gone,)))
            if cls == _SYN and old == _SYN_SENT:
                self._flags[slot] = flags | (SEEN_REPLY if d else 0)
                return accept(Reason.SYN_RETRANSMIT, event) if event else _SYN_RETRANSMIT
        elif new == _ESTABLISHED and not flags & ASSURED and old in (_SYN_RECV, new):
            flags |= ASSURED
            self.book.assured(slot)
        self._flags[slot] = flags | SEEN_REPLY if d else flags
        self._seen_at[slot] = now
        if not flags & PROBING or self._answered(slot, d, new):
            self._arm(slot, self._profile[slot], new, cls, flags, now)
        if old == _NONE:
            return accept(Reason.NEW_FLOW, *(() if event is None else (event,)))
        return accept(Reason.IN_STATE, event) if event else IN_STATE

    # The kernel's RST rules (its `case TCP_CONNTRACK_CLOSE`), each outcome where it decides.
    def _rst(  # noqa: PLR0911
        self, slot: int, d: int, old: int, new: int, seg: pk.Segment, now: float, flags: int
    ) -> Decision | tuple[int, int, int, bool]:
        """A RST's checks before tcp_in_window(): as `_special`'s result."""
        last = self._last[slot]
        last_index, last_dir = last & 7, last >> 3
        win = self.win
        if old in CLOSING_STATES:
            return old, new, flags, False  # tcp_can_early_drop(): the tuple may be reused
        peer = (slot << 1) | (1 - d)
        if win.flags[peer] & MAXACK_SET and last_index != _SYN:
            # The RST's sequence against the peer's highest ACK.
            seq = seg.seq
            established = old == _ESTABLISHED and bool(flags & ASSURED)
            if seq == 0 and not established:
                return old, new, flags, True  # most likely the answer to a SYN let through
            max_ack = win.maxack[peer]
            if 0 < (max_ack - seq) & _MASK32 <= _HALF:
                return self._invalid(slot, seg, now, "invalid RST (below the receiver's ACK)")
            if not established or seq == max_ack:
                return old, new, flags, True
            if last_index == _ACK and last_dir == d and seq == win.last_end[slot]:
                return old, new, flags, True  # a RST continuing a data train
            new = old  # not exact: keep the state, allow a challenge ACK
        # A RST to a SYN or half-open ACK let through. The SYN must be the other side's: this
        # machine's 6.18 kernel does not skip the window check for a RST from the SYN's sender
        # (tests/e2e/test_kernel_parity.py, "simultaneous open, the server's RST just beyond
        # its SYN").
        answers_ignored = (flags & SEEN_REPLY and last_index == _SYN and last_dir != d) or (
            not flags & ASSURED and last_index == _ACK
        )
        if answers_ignored and seg.ack == win.last_end[slot]:
            return old, new, flags, False
        if (
            old == _SYN_SENT
            and last_index == _ACK
            and last_dir == REPLY
            and seg.seq == win.last_ack[slot]
        ):
            return old, new, flags, False  # a RST answering a challenge ACK let through
        return old, new, flags, True

    def _arm(self, slot: int, profile: int, state: int, cls: int, flags: int, now: float) -> None:
        """The timer nf_conntrack_tcp_packet() sets after an in-window packet of class `cls`
        leaving the flow in `state`: the state's own, unless a cap applies (`flags`: the flow's
        before this packet, as the kernel sets SEEN_REPLY only after it)."""
        timeouts = self._timeouts[profile]
        own = timeouts[state]
        limit = _seconds(own)
        retrans_cap, unack_cap = self._caps[profile]
        win = self.win
        i = slot << 1
        timeout, timer = own, _OWN_TIMER
        if win.retrans[slot] >= MAX_RETRANS and limit > retrans_cap:
            timeout, timer = retrans_cap, _RETRANS_TIMER
        elif cls == _RST:
            timeout, timer = timeouts[_CLOSE], _CLOSE_TIMER
        elif (win.flags[i] | win.flags[i | 1]) & DATA_UNACKNOWLEDGED and limit > unack_cap:
            timeout, timer = unack_cap, _UNACK_TIMER
        elif not win.last_win[slot] and limit > retrans_cap:
            timeout, timer = retrans_cap, _RETRANS_TIMER  # a zero window
        if not flags & SEEN_REPLY and state == _ESTABLISHED and _seconds(timeout) > unack_cap:
            timeout, timer = unack_cap, _UNACK_TIMER  # picked up, no reply yet: not 5 days
        self._timer[slot] = timer if timer != _CLOSE_TIMER or state != _CLOSE else _OWN_TIMER
        self.timers.set(slot, None if timeout is None or timeout == _INF else now + timeout)

    def _timer_value(self, slot: int, timer: int) -> float | None:
        """The seconds of a cap (`timer` not _OWN_TIMER) under the flow's profile."""
        profile = self._profile[slot]
        if timer == _SET_TIMER:
            return self._set_seconds.get(slot)
        if timer == _CLOSE_TIMER:
            return self._timeouts[profile][_CLOSE]
        return self._caps[profile][timer == _UNACK_TIMER]

    def _window_failed(
        self, slot: int, d: int, cls: int, seg: pk.Segment, now: float, outcome: int
    ) -> Decision:
        """tcp_in_window() said IGNORE (the packet passes, nothing changes) or INVALID."""
        why = self.win.why
        if outcome == IGNORE:
            if d:
                # nf_conntrack_in() marks SEEN_REPLY for every accepted reply, ignored or not.
                self._flags[slot] |= SEEN_REPLY
            return Decision(Verdict.ACCEPT, Reason.IGNORED, (), (), why)
        self._handle_invalid(slot, d, cls, now)
        return self._invalid(slot, seg, now, why)

    def _handle_invalid(self, slot: int, d: int, cls: int, now: float) -> None:
        """nf_tcp_handle_invalid(): an out-of-window FIN or RST answering the other side's FIN
        or RST on an assured flow shortens its timer to `unacknowledged`, so a connection that
        is gone but out of sync with conntrack does not linger; else it is remembered as the
        last packet."""
        if cls not in (_FIN, _RST) or not self._flags[slot] & ASSURED:
            return
        last = self._last[slot]
        if last >> 3 != d and last & 7 in (_FIN, _RST):
            left = self._deadlines[slot] - now
            unack_cap = self._caps[self._profile[slot]][1]
            if left >= _HANDLE_INVALID_MIN and left > unack_cap:
                self._timer[slot] = _UNACK_TIMER
                self.timers.set(slot, now + unack_cap)
        else:
            self._last[slot] = cls | d << 3

    # One branch per special case of nf_conntrack_tcp_packet(), in the kernel's order, on the
    # per-packet path: split up, it would cost a call per packet and read less like the source.
    def _special(  # noqa: PLR0911, PLR0912
        self,
        slot: int,
        d: int,
        cls: int,
        old: int,
        new: int,
        seg: pk.Segment,
        now: float,
        flags: int,
    ) -> Decision | tuple[int, int, int, bool]:
        """The kernel's special cases: a Decision when one settles the packet, else the
        (old, new, flags) to go on with and whether tcp_in_window() is to judge the packet."""
        last = self._last[slot]
        last_index, last_dir = last & 7, last >> 3
        win = self.win
        if new == _SYN_SENT and old >= _TIME_WAIT:
            # A SYN re-opening a closed connection: kill the entry and track the SYN afresh
            # (-NF_REPEAT) if either side closed it or this side last sent a RST; else ignore it.
            i = slot << 1
            closed = (win.flags[i] | win.flags[i | 1]) & CLOSE_INIT
            if closed or (last_dir == d and last_index == _RST):
                gone = self._remove(slot, now, reason="reopened")
                out = self._new_flow(seg, cls, now)
                reason = Reason.REOPENED if out.accepted else out.reason
                return out._replace(reason=reason, events=(gone, *out.events))
            new = _IGNORE
        if new == _IGNORE:
            if (
                cls == _SYNACK
                and last_index == _SYN
                and last_dir != d
                and seg.ack == win.last_end[slot]
            ):
                # The SYN/ACK answers a SYN we ignored: client and server are in sync and we are
                # not; resynchronise from the annotated SYN.
                flags &= ~CHALLENGE_ACK_EXPECTED
                seen = (WINDOW_SCALE if flags & LAST_WINDOW_SCALE else 0) | (
                    SACK_PERM if flags & LAST_SACK_PERM else 0
                )
                end, window = win.last_end[slot], win.last_win[slot]
                win.resync((slot << 1) | last_dir, end, window, win.last_wscale[slot], seen)
                return _SYN_SENT, _SYN_RECV, flags, True
            self._last[slot] = cls | d << 3
            win.last_seq[slot] = seg.seq
            win.last_end[slot] = seg.end
            win.last_win[slot] = seg.window
            if cls == _SYN and d == ORIGINAL:
                # Annotate the SYN's options for a resync. An RFC 5961 challenge ACK may answer
                # it; in LAST_ACK it must not be taken for the ACK of the last FIN.
                flags &= ~(SIMULTANEOUS_OPEN | CHALLENGE_ACK_EXPECTED | _LAST_OPTIONS)
                win.last_wscale[slot] = max(seg.wscale, 0)
                if seg.wscale >= 0:
                    flags |= LAST_WINDOW_SCALE
                if seg.sack_perm:
                    flags |= LAST_SACK_PERM
                if old == _LAST_ACK:
                    flags |= CHALLENGE_ACK_EXPECTED
            if old == _SYN_SENT and cls == _ACK and d == REPLY:
                win.last_ack[slot] = seg.ack  # a possible challenge ACK answering the SYN
            # nf_conntrack_in() marks SEEN_REPLY for every accepted reply, ignored or not.
            self._flags[slot] = flags | SEEN_REPLY if d else flags
            return IGNORED  # accepted, no state change, timer not refreshed
        if new == _INVALID:
            return self._invalid(slot, seg, now, f"invalid in {State(old).name}")
        if (
            new == _TIME_WAIT
            and old == _LAST_ACK
            and cls == _ACK
            and last_dir != d
            and last_index == _SYN
            and flags & CHALLENGE_ACK_EXPECTED
        ):
            self._flags[slot] = flags & ~CHALLENGE_ACK_EXPECTED | (SEEN_REPLY if d else 0)
            return accept(Reason.CHALLENGE_ACK)
        if new == _SYN_SENT2:
            flags |= SIMULTANEOUS_OPEN
        elif new == _SYN_RECV and d == REPLY and cls == _ACK and flags & SIMULTANEOUS_OPEN:
            new = _ESTABLISHED
        elif new == _CLOSE and cls == _RST:
            return self._rst(slot, d, old, new, seg, now, flags)
        return old, new, flags, True

    # ---------------------------------------------------------------- new flows, out-of-state

    def _no_flow(self, seg: pk.Segment, cls: int, now: float, data: bytes) -> Decision:
        self._forget_tombstones(now)
        if cls == _SYN:
            return self.defences.syn(seg, now, data)
        defences = self.defences
        if cls == _ACK and defences.cookies_sent and (proxied := defences.cookie_ack(seg, now)):
            return proxied
        tomb = self._tombstone(seg.key, now)
        if cls == _ACK:
            profile = self._profile_index(seg, tomb)
            if self._profiles[profile].out_of_state.pickup:
                return self._new_flow(seg, cls, now, profile)
        reason = "no flow" if cls != _INVALID_CLASS else "no flow, invalid TCP flags"
        return self._out_of_state(seg, now, reason, tomb)

    def adopt(
        self, seg: pk.Segment, now: float, *, sender_is_client: bool, data: bytes = b""
    ) -> Decision:
        """Track the connection of a mid-stream ACK as ESTABLISHED, as loose pickup does,
        whatever the policy's `pickup` (a capture that starts mid-connection); the caller says
        which side is the client. Any other packet is handled as usual."""
        if seg.key in self._index or _CLASS_OF[seg.flags] != _ACK:
            return self.packet(seg, now, data)
        return self._new_flow(seg, _ACK, now, sender_is_client=sender_is_client, data=data)

    def _new_flow(
        self,
        seg: pk.Segment,
        cls: int,
        now: float,
        profile: int | None = None,
        *,
        sender_is_client: bool = True,
        data: bytes = b"",
        proven: bool = False,
    ) -> Decision:
        """tcp_new(): a SYN opens SYN_SENT; a picked-up ACK opens ESTABLISHED (loose). Then
        the packet goes through the state machine as the kernel's does (old state NONE).
        `proven`: a handshake a SYN cookie proved, past the handshake limits."""
        if profile is None:
            profile = self._profile_index(seg, None)
        forward = seg.forward == sender_is_client
        opened = self._open(seg, forward, profile, now, cls == _SYN, cls == _SYN and not proven)
        if isinstance(opened, Refusal):
            return self._refused(seg, profile, opened, now, data)
        slot, evicted = opened
        self._state[slot] = _NONE
        direction = ORIGINAL if sender_is_client else REPLY
        self._last[slot] = _NO_CLASS | direction << 3
        row = (slot << 1) | direction
        if cls == _SYN:
            self.win.open_syn(row, seg)
            new = _SYN_SENT
        else:
            self.win.open_midstream(row, seg)
            new = _ESTABLISHED
        # tcp_in_window() always passes here: a SYN is within what it opened, a pickup liberal.
        out = self._transition(slot, direction, cls, _NONE, new, seg, now)
        return out._replace(events=(*evicted, *out.events)) if evicted else out

    def _open(
        self,
        packet: pk.Packet,
        forward: bool,
        profile: int,
        now: float,
        handshake: bool,
        counted: bool,
    ) -> tuple[int, tuple[Event, ...]] | Refusal:
        """A new flow's slot if the limits let it in (`handshake`: it opens with a SYN;
        `counted`: the handshake limits count it), and the flows early drop evicted for it; else
        why not. `forward`: its client is the key's first endpoint."""
        evicted: tuple[Event, ...] = ()
        if self.book.active:
            verdict = self.book.admit(packet.key, forward, profile, counted, now)
            if isinstance(verdict, Refusal):
                return verdict
            if verdict:
                reason = "early drop: the table is full"
                evicted = tuple(self._remove(victim, now, reason) for victim in verdict)
        self._tombstones.pop(packet.key, None)
        slot = self._alloc(packet.key)
        self._client_fwd[slot] = forward
        self._profile[slot] = profile
        if self.book.active:
            self.book.opened(slot, packet.key, forward, profile, handshake)
        if (lifetime := self._lifetime[profile]) is not None:
            self.lifetimes.set(slot, now + lifetime)
        self._created[slot] = now
        return slot, evicted

    def _refused(
        self, seg: pk.Segment, profile: int, refusal: Refusal, now: float, data: bytes
    ) -> Decision:
        """A new flow a limit refuses: dropped, and for `reset` answered with a RST (as an
        out-of-state answer: within the policy's answer rate); for `intercept` answered with a
        SYN cookie (always: the defence must not depend on the answer rate)."""
        reset = refusal.action == LimitAction.RESET
        intercepted = (
            self.defences.answer(seg, profile, now, data)
            if refusal.action == LimitAction.INTERCEPT
            else None
        )
        events = self._refusal_events(seg, profile, refusal, now, reset)
        if events is None:
            return intercepted or REFUSED_PAST_RATE
        inject: tuple[bytes, ...] = ()
        if reset:
            rst = pk.build_reply_rst(seg)
            inject = (rst.packet,)
            rule = self._profiles[profile].name
            flow = flow_id(seg.key, seg.forward)
            events.append(ResetSent(now, flow, "client", rst.seq, rst.ack, "NONE", "limit", rule))
        if intercepted is not None:
            return intercepted._replace(events=tuple(events))
        return Decision(Verdict.DROP, Reason.LIMIT, inject, tuple(events), refusal.detail)

    def _refusal_events(
        self, packet: pk.Packet, profile: int, refusal: Refusal, now: float, answered: bool
    ) -> list[Event] | None:
        """Count a refusal of a new flow; its event, or None past the answer rate (then it is
        summed up; `answered`: a RST or ICMP error was withheld)."""
        rule = self._profiles[profile].name
        self.book.refused(refusal)
        source = _source(packet)
        if limit := self.limiter.admit(source, now):
            action = refusal.action.value
            self.limiter.hold(
                source, limit, packet.key, packet.forward, action, rule, answered, refusal.limit
            )
            return None
        flow = flow_id(packet.key, packet.forward)
        return [
            LimitRefused(
                now,
                flow,
                refusal.limit,
                refusal.value,
                refusal.current,
                refusal.counted,
                refusal.limits,
                refusal.action.value,
                rule,
            )
        ]

    def _invalid(self, slot: int, seg: pk.Segment, now: float, reason: str) -> Decision:
        """A packet the state table rejects on a live flow. It never resets the flow's
        endpoints: `reset` in the policy answers late packets of *gone* flows only."""
        d = ORIGINAL if seg.forward == self._client_fwd[slot] else REPLY
        profile = self._profiles[self._profile[slot]]
        oos = profile.out_of_state.for_side(d == ORIGINAL)
        action = (
            OutOfStateAction.ACCEPT if oos == OutOfStateAction.ACCEPT else OutOfStateAction.DROP
        )
        source = _source(seg)
        if limit := self.limiter.admit(source, now):
            self.limiter.hold(source, limit, seg.key, seg.forward, action, profile.name, False)
            return _PAST_RATE[action]
        flow = self._flow_id(slot)
        event = OutOfState(
            now,
            flow,
            reason=reason,
            action=action.value,
            side="client" if d == ORIGINAL else "server",
            state=State(self._state[slot]).name,
            rule=self._profiles[self._profile[slot]].name,
        )
        verdict = Verdict.ACCEPT if action == OutOfStateAction.ACCEPT else Verdict.DROP
        return Decision(verdict, Reason.OUT_OF_STATE, (), (event,), reason)

    def _out_of_state(
        self, seg: pk.Segment, now: float, reason: str, tomb: _Tombstone | None
    ) -> Decision:
        if tomb is None:
            side: str | None = None
            profile = self._profile_index(seg, None)
            flow = flow_id(seg.key, seg.forward)  # as the packet travelled
            from_client: bool | None = None
        else:
            from_client = seg.forward == tomb.client_forward
            side = "client" if from_client else "server"
            profile = tomb.profile
            flow = flow_id(seg.key, tomb.client_forward)
            reason = f"{reason} (expired)"
        action = self._profiles[profile].out_of_state.for_side(from_client)
        source = _source(seg)
        if limit := self.limiter.admit(source, now):
            reset = action == OutOfStateAction.RESET and not seg.flags & pk.TCP_RST
            rule = self._profiles[profile].name
            self.limiter.hold(source, limit, seg.key, seg.forward, action, rule, reset)
            return _PAST_RATE[action]
        events: list[Event] = [self._late(now, flow, reason, action.value, side, profile, tomb)]
        inject: tuple[bytes, ...] = ()
        if action == OutOfStateAction.RESET and not seg.flags & pk.TCP_RST:
            rst = pk.build_reply_rst(seg)
            inject = (rst.packet,)
            events.append(
                ResetSent(
                    now,
                    flow,
                    to=side or "sender",
                    seq=rst.seq,
                    ack=rst.ack,
                    state=tomb.state if tomb else "NONE",
                    cause="out_of_state",
                    rule=self._profiles[profile].name,
                )
            )
        verdict = Verdict.ACCEPT if action == OutOfStateAction.ACCEPT else Verdict.DROP
        return Decision(verdict, Reason.OUT_OF_STATE, inject, tuple(events), reason)

    def _late(
        self,
        now: float,
        flow: FlowId,
        reason: str,
        action: str,
        side: str | None,
        profile: int,
        tomb: _Tombstone | None,
    ) -> OutOfState:
        """The event of a packet of no flow (`tomb`: the expired flow it belongs to, if known)."""
        return OutOfState(
            now,
            flow,
            reason=reason,
            action=action,
            side=side,
            state=None,
            rule=self._profiles[profile].name,
            expired_at=None if tomb is None else tomb.expired_at,
            expired_phase=None if tomb is None else tomb.phase,
        )

    def _tombstone(self, key: bytes, now: float) -> _Tombstone | None:
        buried = self._tombstones.get(key)
        if buried is None:
            return None
        if buried[_FORGET_AT] <= now:
            del self._tombstones[key]
            return None
        return _Tombstone._make(buried)

    def _profile_index(self, seg: pk.Packet, tomb: _Tombstone | None) -> int:
        """The first rule matching the flow seen client > server, else the default profile.
        Without a tombstone the packet's own direction is tried first, then the reverse."""
        if tomb is not None:
            return tomb.profile
        if not self.policy.rules:
            return len(self._profiles) - 1
        return self._match(seg.key, seg.forward, not seg.forward)

    def _match(self, key: bytes, *client_forward: bool) -> int:
        """The index of the first rule matching the flow of `key` seen client > server, the
        client being the key's first endpoint or not as given (each tried in turn), else of the
        default profile."""
        addr_a, port_a, addr_b, port_b = pk.endpoints(key)
        a, b = address(addr_a), address(addr_b)
        proto = pk.protocol_of(key)
        for forward in client_forward:
            src, sport, dst, dport = (a, port_a, b, port_b) if forward else (b, port_b, a, port_a)
            for i, rule in enumerate(self.policy.rules):
                if rule.match.matches(src, sport, dst, dport, proto):
                    return i
        return len(self._profiles) - 1

    # ---------------------------------------------------------------- expiry

    def expire_due(self, now: float, limit: int) -> tuple[list[bytes], list[Event]]:
        """Expire flows whose timer ran out (at most `limit`), doing what the policy says."""
        inject: list[bytes] = []
        events: list[Event] = []
        for slot in self.timers.pop_due(now, limit):
            if self._dcd[self._profile[slot]] is None or not self._probe(slot, now, inject, events):
                self._expire(slot, now, None, inject, events)
        for slot in self.lifetimes.pop_due(now, limit):
            self._expire(slot, now, None, inject, events, _LIFETIME_CAUSE)
        self._forget_tombstones(now)
        if self.limiter.deadline is not None:
            events += self.limiter.flush(now)
        return inject, events

    def next_deadline(self) -> float | None:
        """When `expire_due` next has work: a timer, or the answer limiter's summaries."""
        deadlines = [
            d
            for d in (
                self.timers.next_deadline(),
                self.lifetimes.next_deadline(),
                self.limiter.deadline,
            )
            if d is not None
        ]
        return min(deadlines) if deadlines else None

    def expire_now(
        self, keys: list[bytes], now: float, action: ExpireAction | None = None
    ) -> tuple[list[bytes], list[Event]]:
        """Expire the given flows at once, as if their timers fired (`fwemu expire`)."""
        inject: list[bytes] = []
        events: list[Event] = []
        for key in keys:
            slot = self._index.get(key)
            if slot is not None:
                self.timers.set(slot, None)
                self._expire(slot, now, action, inject, events, _BY_HAND)
        return inject, events

    def keys(self) -> list[bytes]:
        return list(self._index)

    def retime(self, keys: list[bytes], now: float, seconds: float) -> list[bytes]:
        """Set the given flows' timers to run out `seconds` from now, as `conntrack -U
        --timeout` does: until the flow's next packet, which arms its policy timer again. The
        keys of the flows still tracked."""
        done = []
        for key in keys:
            slot = self._index.get(key)
            if slot is not None:
                self._timer[slot] = _SET_TIMER
                self._set_seconds[slot] = seconds
                self.timers.set(slot, now + seconds)
                done.append(key)
        return done

    def _probe(self, slot: int, now: float, inject: list[bytes], events: list[Event]) -> bool:
        """Dead connection detection when an idle timer runs out: probe both ends and wait for
        their answers, unless the flow is exempt (not ESTABLISHED, a timer set by `fwemu
        expire --in`, an end whose sequence is unknown) or the retries are spent. Whether the
        flow lives on."""
        dcd = self._dcd[self._profile[slot]]
        assert dcd is not None
        if (
            self._state[slot] != _ESTABLISHED
            or self._timer[slot] == _SET_TIMER
            or not (self._pkts[0][slot] and self._pkts[1][slot])
            or self.probes.sent(slot) >= dcd.retries
        ):
            return False
        sent = self.probes.send(slot)
        self._flags[slot] |= PROBING
        win = self.win
        for y in (ORIGINAL, REPLY):
            src, sport, dst, dport = self._endpoints_towards(slot, y)
            seq = win.end[slot << 1 | (1 - y)] + self._shift(slot, 1 - y)
            ack = win.end[slot << 1 | y]
            inject.append(probe(src, sport, dst, dport, seq=seq, ack=ack))
        rule = self._profiles[self._profile[slot]].name
        events.append(ProbeSent(now, self._flow_id(slot), "ESTABLISHED", sent, dcd.retries, rule))
        self.timers.set(slot, now + dcd.interval)
        return True

    def _answered(self, slot: int, d: int, state: int) -> bool:
        """A packet from `d` of a flow DCD probes: whether the probing is over (both ends
        answered, or the flow left ESTABLISHED), so its idle timer restarts."""
        if state == _ESTABLISHED and not self.probes.answer(slot, d):
            return False
        self.probes.stop(slot)
        self._flags[slot] &= ~PROBING
        return True

    def _expire(
        self,
        slot: int,
        now: float,
        forced: ExpireAction | None,
        inject: list[bytes],
        events: list[Event],
        cause: str | None = None,
    ) -> None:
        """Expire the flow with its policy's action, or `forced`; `cause` is _LIFETIME_CAUSE
        when its lifetime ran out, _BY_HAND when an operator expired it (`fwemu expire`)."""
        state, profile = self._state[slot], self._profile[slot]
        facts = self._expiry[profile][state]
        action, targets = facts.action, facts.targets
        timer = self._timer[slot]
        timeout = facts.timeout if timer == _OWN_TIMER else self._timer_value(slot, timer)
        capped_by = _TIMER_NAMES[timer]
        silent = None
        if cause == _LIFETIME_CAUSE:
            forced = self._profiles[profile].on_expire.lifetime
            timeout, capped_by = self._lifetime[profile], cause
        elif self._flags[slot] & PROBING:
            timeout, capped_by, silent = facts.timeout, _DCD_CAUSE, self.probes.silent(slot)
        if forced is not None:
            action, targets = forced.value, _RESET_TARGETS[forced]
        if state in _UDP:
            action, targets = _SILENT, ()  # a datagram flow has nothing to reset
        flow = self._flow_id(slot)
        by_hand = cause == _BY_HAND
        events.append(
            FlowExpired(
                now,
                flow,
                facts.state,
                facts.phase,
                action,
                facts.rule,
                None if by_hand else timeout,
                now - self._seen_at[slot],
                by_hand,
                None if by_hand else capped_by,
                silent,
            )
        )
        if state != _CLOSE:  # after a RST there is no connection left to reset
            for d in targets:
                rst, seq, ack = self._reset_towards(slot, d)
                inject.append(rst)
                to = "client" if d == ORIGINAL else "server"
                events.append(ResetSent(now, flow, to, seq, ack, facts.state, "expire", facts.rule))
        key = self._keys[slot]
        assert key is not None
        self._forget_queues[profile].append(key)
        self._tombstones[key] = (
            bool(self._client_fwd[slot]),
            now,
            facts.phase,
            facts.state,
            profile,
            now + facts.remember,
        )
        self._free_slot(slot, now)

    def _reset_towards(self, slot: int, y: int) -> tuple[bytes, int, int | None]:
        """A RST that endpoint `y` accepts in its likely state (docs/tcp-rst-and-nfqueue.md §2.5).

        seq = y's rcv_nxt = the highest sequence end its peer x sent (in SYN_SENT nothing: 0,
        and the kernel checks only the ACK there). ack = y's own next sequence, which a client in
        SYN_SENT requires (ISN+1) and a listener in SYN_RECV checks (ISN+1) when the ACK flag is
        set; when y has sent nothing we cannot know its ISN, so the RST goes without ACK (which a
        SYN_RECV request accepts on its exact seq).
        """
        x = 1 - y
        win = self.win
        row_x, row_y = slot << 1 | x, slot << 1 | y
        if self._pkts[x][slot]:
            seq = win.end[row_x] + self._shift(slot, x)
        elif win.flags[row_y] & MAXACK_SET:
            seq = win.maxack[row_y]  # y's ACK is its rcv_nxt (a picked-up flow's silent side)
        elif (told := self.defences.told_isn(slot, x)) is not None:
            seq = told + 1  # the proxy answered for a silent server: the cookie is its ISN
        else:
            seq = 0
        ack = win.end[row_y] if self._pkts[y][slot] else None
        src, sport, dst, dport = self._endpoints_towards(slot, y)
        return pk.build_rst(src, sport, dst, dport, seq=seq, ack=ack), seq, ack

    def _shift(self, slot: int, d: int) -> int:
        """What the receiver of direction d's packets sees added to their sequence numbers."""
        tr = self.defences.translations.get(slot) if self._flags[slot] & TRANSLATED else None
        return 0 if tr is None else tr.shift[d]

    def _endpoints_towards(self, slot: int, y: int) -> tuple[bytes, int, bytes, int]:
        """(src, sport, dst, dport) of a packet from y's peer to y."""
        key = self._keys[slot]
        assert key is not None
        addr_a, port_a, addr_b, port_b = pk.endpoints(key)
        y_is_a = bool(self._client_fwd[slot]) == (y == ORIGINAL)
        if y_is_a:
            return addr_b, port_b, addr_a, port_a
        return addr_a, port_a, addr_b, port_b

    def _forget_tombstones(self, now: float) -> None:
        """Drop tombstones past their `remember`. Each profile has its own queue: its tombstones
        are forgotten in the order they were made, whatever other profiles remember."""
        tombs = self._tombstones
        for queue in self._forget_queues:
            while queue:
                buried = tombs.get(queue[0])
                if buried is not None and buried[_FORGET_AT] > now:
                    break
                key = queue.popleft()
                if buried is not None:
                    del tombs[key]

    # ---------------------------------------------------------------- slots

    def _alloc(self, key: bytes) -> int:
        if self._free:
            slot = self._free.pop()
            self._keys[slot] = key
            for col in self._per_direction_columns():
                col[slot] = 0
            self._flags[slot] = self._timer[slot] = 0
            self.win.clear(slot)
        else:
            slot = len(self._keys)
            self._keys.append(key)
            for col in self._scalar_columns():
                col.append(0)
            for col in self._per_direction_columns():
                col.append(0)
            self.win.add()
        self._index[key] = slot
        return slot

    def _scalar_columns(self) -> tuple[array[Any], ...]:
        return (
            self._state,
            self._flags,
            self._client_fwd,
            self._profile,
            self._last,
            self._timer,
            self._created,
            self._seen_at,
        )

    def _per_direction_columns(self) -> tuple[array[int], ...]:
        return (*self._pkts, *self._bytes)

    def _free_slot(self, slot: int, now: float) -> None:
        key = self._keys[slot]
        assert key is not None
        del self._index[key]
        self._keys[slot] = None
        self._flow_ids.pop(slot, None)
        self._set_seconds.pop(slot, None)
        self.timers.set(slot, None)
        if slot < len(self.lifetimes.deadlines):  # else it never had one: no need to grow
            self.lifetimes.set(slot, None)
        if self._flags[slot] & PROBING:
            self.probes.stop(slot)
        if self._flags[slot] & TRANSLATED:
            del self.defences.translations[slot]
        self._free.append(slot)
        if self.book.active:
            self.book.closed(slot, now)

    def _remove(self, slot: int, now: float, reason: str) -> Event:
        """Drop a flow the kernel would delete outright (not a timer expiry: no tombstone)."""
        state = State(self._state[slot])
        event = FlowDeleted(
            now,
            self._flow_id(slot),
            state=state.name,
            reason=reason,
            rule=self._profiles[self._profile[slot]].name,
        )
        self._free_slot(slot, now)
        return event

    def _state_event(self, slot: int, now: float, old: int, new: int) -> Event:
        """A state change's event (and its news for the limits: a handshake is over)."""
        if new not in _EMBRYONIC and self.book.active:
            self.book.established(slot)
        return StateChanged(
            now,
            self._flow_id(slot),
            old_state=_STATE_NAME[old],
            state=_STATE_NAME[new],
            phase=_PHASE_NAME[new],
            rule=self._profiles[self._profile[slot]].name,
        )

    def _flow_id(self, slot: int) -> FlowId:
        flow = self._flow_ids.get(slot)
        if flow is None:
            if len(self._flow_ids) >= _FLOW_ID_CACHE:
                self._flow_ids.clear()  # bounded: long-lived flows just format again
            key = self._keys[slot]
            assert key is not None
            flow = self._flow_ids[slot] = flow_id(key, bool(self._client_fwd[slot]))
        return flow


_RESET_TARGETS: Final[dict[ExpireAction, tuple[int, ...]]] = {
    ExpireAction.SILENT: (),
    ExpireAction.RESET_CLIENT: (ORIGINAL,),
    ExpireAction.RESET_SERVER: (REPLY,),
    ExpireAction.RESET_BOTH: (ORIGINAL, REPLY),
}


def _seconds(timeout: float | None) -> float:
    """A timer for comparisons: None (never) is infinitely long."""
    return _INF if timeout is None else timeout


def _source(seg: pk.Packet) -> bytes:
    """The sender's packed address (the key holds both endpoints, in a fixed order)."""
    key = seg.key
    size = 4 if len(key) == pk.KEY4_LEN else 16
    return key[:size] if seg.forward else key[size : size + size]


_SYN_RETRANSMIT: Final = accept(Reason.SYN_RETRANSMIT)
_EMBRYONIC: Final = (_SYN_SENT, _SYN_RECV, _SYN_SENT2)  # the states a limit counts as handshakes
_UDP: Final = frozenset(map(int, UDP_STATES))
_SILENT: Final = ExpireAction.SILENT.value
# The whole answer to an out-of-state packet past the policy's answer rate: the verdict alone.
_PAST_RATE: Final = {
    OutOfStateAction.ACCEPT: accept(Reason.PAST_ANSWER_RATE),
    OutOfStateAction.DROP: Decision(Verdict.DROP, Reason.PAST_ANSWER_RATE),
    OutOfStateAction.RESET: Decision(Verdict.DROP, Reason.PAST_ANSWER_RATE),
}
