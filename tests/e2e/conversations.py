"""Conversations for the kernel parity test (tests/e2e/test_kernel_parity.py), as hypothesis
strategies: TCP-plausible ones, and hostile ones whose numbers sit where the kernel's
tcp_in_window() draws its lines.

A hostile conversation is a list of `Move`s whose sequence and acknowledgement numbers are
`Num`s: an anchor in the conversation as it stands when the move is played (the sender's next
byte, the right edge of the window its peer advertised, what it received, what its peer sent)
plus a delta that is mostly small (the window checks' edges) and sometimes far.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from hypothesis import strategies as st

from fwemu.core.packet import encode_options
from tests.core.trace import Trace

SideName = Literal["client", "server"]
Script = Callable[[Trace], None]
Anchor = Literal["next", "edge", "got", "sent", "abs"]
_MOD = 1 << 32
_HALF = 1 << 31
_NO_WINDOW_YET = 0xFFFF  # the edge before the peer advertised anything: an unscaled full window
_SACK_BLOCK = 100  # bytes each SACK block covers, up to its right edge
_TIMESTAMPS = (123456, 654321)  # value, echo reply: the kernel's conntrack reads neither


@dataclass(frozen=True)
class Num:
    """A sequence or ACK number: `anchor`, resolved for the sender when the move is played, plus
    `delta` (mod 2**32). Anchors: next (the sender's next sequence number), edge (the right edge
    of the window its peer advertised, scaled), got (what the sender received from its peer),
    sent (what the peer sent), abs (zero: `delta` is the number)."""

    anchor: Anchor
    delta: int = 0

    def __repr__(self) -> str:
        if self.anchor == "abs":
            return str(self.delta)
        return f"{self.anchor}{self.delta:+d}" if self.delta else self.anchor


@dataclass(frozen=True)
class SynOptions:
    """What a SYN or SYN/ACK offers: window scaling counts only if both sides offer it."""

    wscale: int | None = None
    sack_perm: bool = False
    mss: int | None = 1460

    def __repr__(self) -> str:
        parts = [f"wscale={self.wscale}"] if self.wscale is not None else []
        parts += ["sackOK"] if self.sack_perm else []
        parts += [f"mss={self.mss}"] if self.mss is not None else []
        return "<" + ",".join(parts) + ">"


@dataclass(frozen=True)
class Move:
    """One packet from `side`, sent `times` times unchanged (retransmissions). `seq` None: the
    Trace's own (in order; a SYN reuses the side's ISN). A SYN with `restart` makes `seq` the
    side's new ISN (a restarted stack on the same ports) instead of a one-off spoof."""

    side: SideName
    flags: str
    length: int = 0
    seq: Num | None = None
    ack: Num | None = None  # None: what the side received
    window: int = 0xFFFF
    syn: SynOptions = SynOptions()  # options of a SYN or SYN/ACK
    sack: tuple[Num, ...] = ()  # right edges of SACK blocks
    timestamps: bool = False
    restart: bool = False
    times: int = 1

    def __repr__(self) -> str:
        parts = [self.side, self.flags]
        parts += [str(self.length)] if self.length else []
        parts += [f"seq={self.seq!r}"] if self.seq is not None else []
        parts += [f"ack={self.ack!r}"] if self.ack is not None else []
        parts += [f"win={self.window}"] if self.window != 0xFFFF else []
        parts += [repr(self.syn)] if "S" in self.flags else []
        parts += [f"sack={list(self.sack)}"] if self.sack else []
        parts += ["ts"] if self.timestamps else []
        parts += ["restart"] if self.restart else []
        parts += [f"x{self.times}"] if self.times > 1 else []
        return " ".join(parts)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # how hypothesis prints an example
        p.text(repr(self))


@dataclass(frozen=True)
class Conversation:
    """Moves played from initial sequence numbers `isn` (client, server): near 2**32 they wrap."""

    isn: tuple[int, int]
    moves: tuple[Move, ...]

    def __repr__(self) -> str:
        moves = "".join(f"\n    {m!r}," for m in self.moves)
        return f"Conversation(isn={self.isn}, moves=({moves}\n))"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(repr(self))

    def play(self, t: Trace) -> None:
        t.c.nxt, t.s.nxt = self.isn
        Player(t).play(self.moves)


class Player:
    """Plays moves on a Trace, resolving their numbers against what each side has sent and the
    windows each advertised (kept as the kernel keeps td_maxend: the highest ack + window)."""

    def __init__(self, t: Trace) -> None:
        self.t = t
        self.wscale: dict[SideName, int | None] = {"client": None, "server": None}
        self.edge: dict[SideName, int] = {}  # the right edge of the window each side may send in

    def play(self, moves: Iterable[Move]) -> None:
        for move in moves:
            self.send(move)

    def send(self, m: Move) -> None:
        t = self.t
        src = t.c if m.side == "client" else t.s
        syn = "S" in m.flags
        seq = None if m.seq is None else self.number(m.seq, m.side)
        if syn:
            self.wscale[m.side] = m.syn.wscale
            if m.restart and seq is not None:
                src.isn = src.nxt = seq
                seq = None
        ack = src.rcv_nxt if m.ack is None else self.number(m.ack, m.side)
        if syn:
            options = encode_options(
                mss=m.syn.mss,
                wscale=m.syn.wscale,
                sack_perm=m.syn.sack_perm,
                timestamps=_TIMESTAMPS if m.timestamps else None,
            )
        else:
            blocks = tuple(((r := self.number(edge, m.side)) - _SACK_BLOCK, r) for edge in m.sack)
            options = encode_options(sack=blocks, timestamps=_TIMESTAMPS if m.timestamps else None)
        send = t.client if m.side == "client" else t.server
        # The retransmissions repeat the first copy's numbers, as the Trace chose them.
        pinned = (src.isn if syn and src.isn is not None else src.nxt) if seq is None else seq
        send(m.flags, m.length, at=0, seq=seq, ack=ack, window=m.window, options=options)
        for _ in range(m.times - 1):
            send(m.flags, m.length, at=0, seq=pinned, ack=ack, window=m.window, options=options)
        if "A" in m.flags:
            self.advertised(m.side, ack, m.window, syn)

    def number(self, n: Num, side: SideName) -> int:
        t = self.t
        src, dst = (t.c, t.s) if side == "client" else (t.s, t.c)
        base = {
            "next": src.nxt,
            "edge": self.edge.get(side, src.nxt + _NO_WINDOW_YET),
            "got": src.rcv_nxt,
            "sent": dst.nxt,
            "abs": 0,
        }[n.anchor]
        return (base + n.delta) % _MOD

    def advertised(self, side: SideName, ack: int, window: int, syn: bool) -> None:
        """`side` acknowledged `ack` with `window`: its peer may now send up to there (a SYN's
        window is never scaled; a zero window still lets one byte through, as in the kernel)."""
        peer: SideName = "server" if side == "client" else "client"
        both = self.wscale[side] is not None and self.wscale[peer] is not None
        scale = min(self.wscale[side] or 0, 14) if both and not syn else 0
        edge = (ack + (window << scale) + (window == 0)) % _MOD
        old = self.edge.get(peer)
        if old is None or 0 < (edge - old) % _MOD < _HALF:
            self.edge[peer] = edge


def play(t: Trace, *moves: Move) -> None:
    """Moves played in order: scripted cases that read better as moves than as Trace calls."""
    Player(t).play(moves)


def script(*steps: str | Move) -> Script:
    """A scripted conversation: moves, or "side flags [length]" for one in order: "client PA 10"."""
    moves = tuple(step if isinstance(step, Move) else _in_order(step) for step in steps)
    return lambda t: play(t, *moves)


def _in_order(step: str) -> Move:
    side, flags, *length = step.split()
    return Move(_SIDES[side], flags, int(length[0]) if length else 0)


_SIDES: dict[str, SideName] = {"client": "client", "server": "server"}
HANDSHAKE = ("client S", "server SA", "client A")


# -- hostile conversations

SIDES: st.SearchStrategy[SideName] = st.sampled_from(["client", "server"])
_FAR = (1 << 30, -(1 << 30), _HALF - 1, 1_100_000_000, -1_100_000_000)
DELTAS = st.one_of(
    st.just(0),
    st.integers(-3, 3),  # at the edge: the checks' off-by-ones
    st.integers(-70_000, 70_000),  # around a window and MAXACKWINDOW (66,000)
    st.sampled_from(_FAR),
)
SEQS = st.one_of(
    st.builds(Num, st.sampled_from(["next", "edge"]), DELTAS),
    st.builds(Num, st.just("abs"), st.integers(0, _MOD - 1)),
)
ACKS = st.one_of(
    st.builds(Num, st.sampled_from(["got", "sent"]), DELTAS),
    st.builds(Num, st.just("abs"), st.just(0) | st.integers(0, _MOD - 1)),
)
WINDOWS = st.one_of(st.just(0xFFFF), st.sampled_from([0, 1, 100, 512, 8192]))
LENGTHS = st.sampled_from([0, 1, 100, 1400])
TIMES = st.one_of(st.just(1), st.integers(2, 4))
SYN_OPTIONS = st.builds(
    SynOptions,
    wscale=st.none() | st.sampled_from([0, 2, 7, 14, 15]),  # 15: the kernel caps it at 14
    sack_perm=st.booleans(),
    mss=st.none() | st.just(1460),
)
# ISNs: the Trace's, just below the wrap, anywhere.
ISNS = st.sampled_from([1000, 5000, _MOD - 300]) | st.integers(0, _MOD - 1)

SYNS = st.builds(
    Move,
    side=SIDES,
    flags=st.sampled_from(["S", "SA"]),
    length=st.sampled_from([0, 0, 20]),  # 20: data on the SYN (TCP Fast Open)
    seq=st.none() | SEQS,  # none: a retransmission; else a re-ISN'd SYN
    ack=st.none() | ACKS,
    window=WINDOWS,
    syn=SYN_OPTIONS,
    timestamps=st.booleans(),
    restart=st.booleans(),
    times=TIMES,
)
SEGMENTS = st.builds(
    Move,
    side=SIDES,
    flags=st.sampled_from(["A", "PA", "FA", "FA", "R", "RA"]),  # FINs twice: the closing states
    length=LENGTHS,
    seq=st.none() | SEQS,
    ack=st.none() | ACKS,
    window=WINDOWS,
    sack=st.lists(ACKS, max_size=3).map(tuple),
    timestamps=st.booleans(),
    times=TIMES,
)


@st.composite
def zero_window_probes(draw: st.DrawFn) -> list[Move]:
    """The peer closes its window; the sender probes (Linux: an empty segment one below its next
    byte, or one byte of data), then the window may open again."""
    side = draw(SIDES)
    peer: SideName = "server" if side == "client" else "client"
    moves = [Move(peer, "A", window=0)]
    moves += [Move(side, "A", seq=Num("next", -1), times=draw(TIMES))]
    moves += [Move(side, "PA", 1)] if draw(st.booleans()) else []
    moves += [Move(peer, "A", window=draw(WINDOWS))]
    return moves


@st.composite
def openings(draw: st.DrawFn) -> list[Move]:
    """How far the conversation got before the hostile moves: nowhere, a SYN, a SYN/ACK without
    the client's ACK (where a TCP Fast Open server sends), a handshake, some data, the client's
    FIN, or a simultaneous open; with each side's SYN options and windows."""
    c = Move("client", "S", syn=draw(SYN_OPTIONS), window=draw(WINDOWS))
    s = Move("server", "SA", syn=draw(SYN_OPTIONS), window=draw(WINDOWS))
    handshake = [c, s, Move("client", "A", window=draw(WINDOWS))]
    data = [Move("client", "PA", 100), Move("server", "PA", 1400), Move("client", "A")]
    closing = [*handshake, *data, Move("client", "FA")]
    simultaneous = [c, Move("server", "S", syn=s.syn, window=s.window)]
    return draw(
        st.sampled_from([[], [c], [c, s], handshake, handshake + data, closing, simultaneous])
    )


def _episode(move: Move) -> list[Move]:
    return [move]


EPISODES = st.one_of(SEGMENTS.map(_episode), SYNS.map(_episode), zero_window_probes())


def _flatten(opening: list[Move], episodes: list[list[Move]]) -> tuple[Move, ...]:
    return tuple(opening) + tuple(m for episode in episodes for m in episode)


def conversations(max_episodes: int = 8) -> st.SearchStrategy[Conversation]:
    """Beyond what a TCP stack would send: out-of-window data, FINs and RSTs, ACKs of unsent or
    long-acknowledged data, retransmitted and re-ISN'd SYNs, zero windows and probes, window
    scaling on and off, SACK, data before the handshake completes, simultaneous opens."""
    moves = st.builds(_flatten, openings(), st.lists(EPISODES, min_size=1, max_size=max_episodes))
    return st.builds(Conversation, st.tuples(ISNS, ISNS), moves)


# -- plausible conversations

PLAUSIBLE_FLAGS = ["S", "SA", "A", "PA", "FA", "RA", "R"]


def plausible(steps: list[tuple[SideName, str, int]]) -> list[Move]:
    """The steps a TCP stack could take: a SYN/ACK only answers a SYN, and data or a FIN only
    follow the sender's completed handshake."""
    got_syn: set[str] = set()
    sent_syn: set[str] = set()
    open_: set[str] = set()  # sides whose handshake completed
    fin: set[str] = set()
    kept = []
    for side, flags, wanted in steps:
        peer = "server" if side == "client" else "client"
        if flags == "S" and (side in got_syn or (peer in sent_syn and side not in sent_syn)):
            continue
        if flags == "SA" and side not in got_syn:
            continue
        if flags in ("PA", "FA") and (side not in open_ or side in fin):
            continue
        # No data on a SYN, before the handshake completes or after the FIN.
        length = 0 if "S" in flags or side not in open_ or side in fin else wanted
        kept.append(Move(side, flags, length))
        if "S" in flags:
            sent_syn.add(side)
            got_syn.add(peer)
            if flags == "SA":
                open_.add(peer)
        elif flags == "A" and side in open_ and peer in sent_syn and peer in got_syn:
            open_.add(peer)
        if flags == "FA":
            fin.add(side)
    return kept


PLAUSIBLE = st.lists(
    st.tuples(SIDES, st.sampled_from(PLAUSIBLE_FLAGS), st.integers(0, 3)), min_size=1, max_size=10
).map(plausible)
