"""nf_conntrack's TCP states, packet classes and transition table, as data; and the UDP states.

Transcribed from Linux `net/netfilter/nf_conntrack_proto_tcp.c` (modern 6.x: `tcp_conntracks[2][6]
[TCP_CONNTRACK_MAX]`, `get_conntrack_index()`, `tcp_valid_flags[]`), as quoted in
docs/tcp-rst-and-nfqueue.md §1.2-§1.3. The special cases the kernel applies after the
table lookup live in `fwemu.core.conntrack`, next to the code that needs flow state.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from fwemu.core.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCP_URG
from fwemu.policy.model import PHASE_STATES, Phase


class State(IntEnum):
    """Connection-level guesses, numbered as the kernel numbers them (enum tcp_conntrack)."""

    NONE = 0
    SYN_SENT = 1  # SYN only seen
    SYN_RECV = 2  # SYN/ACK seen
    ESTABLISHED = 3  # ACK seen
    FIN_WAIT = 4  # a FIN seen
    CLOSE_WAIT = 5  # that FIN ACKed
    LAST_ACK = 6  # FIN seen in both directions
    TIME_WAIT = 7  # last ACK seen
    CLOSE = 8  # RST seen
    SYN_SENT2 = 9  # SYN seen from the reply direction too (simultaneous open)
    INVALID = 10  # TCP_CONNTRACK_MAX, "sIV": the packet is invalid in this state
    IGNORE = 11  # "sIG": passed without a state change (the entry may be out of sync)
    # UDP's: the kernel keeps no state for UDP, only status bits (nf_conntrack_proto_udp.c);
    # these name their combinations, as `conntrack -L` shows them.
    UNREPLIED = 12  # seen one way ([UNREPLIED])
    REPLIED = 13  # seen both ways (IPS_SEEN_REPLY), not yet a stream: still the udp timer
    STREAM = 14  # [ASSURED]: a datagram after udp_stream_after, seen both ways: udp_stream


class PacketClass(IntEnum):
    """get_conntrack_index(): RST beats SYN beats FIN beats ACK."""

    SYN = 0
    SYNACK = 1
    FIN = 2
    ACK = 3
    RST = 4
    NONE = 5


def classify(flags: int) -> PacketClass:
    if flags & TCP_RST:
        return PacketClass.RST
    if flags & TCP_SYN:
        return PacketClass.SYNACK if flags & TCP_ACK else PacketClass.SYN
    if flags & TCP_FIN:
        return PacketClass.FIN
    if flags & TCP_ACK:
        return PacketClass.ACK
    return PacketClass.NONE


# tcp_valid_flags[]: the flag combinations tcp_error() accepts once PSH, ECE and CWR are masked off.
_SIGNIFICANT = TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK | TCP_URG
VALID_FLAGS = frozenset(
    {
        TCP_SYN,
        TCP_SYN | TCP_URG,
        TCP_SYN | TCP_ACK,
        TCP_RST,
        TCP_RST | TCP_ACK,
        TCP_FIN | TCP_ACK,
        TCP_FIN | TCP_ACK | TCP_URG,
        TCP_ACK,
        TCP_ACK | TCP_URG,
    }
)


def flags_valid(flags: int) -> bool:
    return (flags & _SIGNIFICANT) in VALID_FLAGS


ORIGINAL: Final = 0
REPLY: Final = 1

_S = State
sNO, sSS, sSR, sES, sFW, sCW, sLA, sTW, sCL, sS2, sIV, sIG = (
    _S.NONE,
    _S.SYN_SENT,
    _S.SYN_RECV,
    _S.ESTABLISHED,
    _S.FIN_WAIT,
    _S.CLOSE_WAIT,
    _S.LAST_ACK,
    _S.TIME_WAIT,
    _S.CLOSE,
    _S.SYN_SENT2,
    _S.INVALID,
    _S.IGNORE,
)

# TRANSITIONS[direction][packet class][old state] -> new state: tcp_conntracks[][][] row by row.
# Columns:       sNO  sSS  sSR  sES  sFW  sCW  sLA  sTW  sCL  sS2
TRANSITIONS: Final[tuple[tuple[tuple[State, ...], ...], ...]] = (
    (  # ORIGINAL
        (sSS, sSS, sIG, sIG, sIG, sIG, sIG, sSS, sSS, sS2),  # syn
        (sIV, sIV, sSR, sIV, sIV, sIV, sIV, sIV, sIV, sSR),  # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),  # fin
        (sES, sIV, sES, sES, sCW, sCW, sTW, sTW, sCL, sIV),  # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),  # rst
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),  # none
    ),
    (  # REPLY
        (sIV, sS2, sIV, sIV, sIV, sIV, sIV, sSS, sIV, sS2),  # syn
        (sIV, sSR, sIG, sIG, sIG, sIG, sIG, sIG, sIG, sSR),  # synack
        (sIV, sIV, sFW, sFW, sLA, sLA, sLA, sTW, sCL, sIV),  # fin
        (sIV, sIG, sSR, sES, sCW, sCW, sTW, sTW, sCL, sIG),  # ack
        (sIV, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL, sCL),  # rst
        (sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV, sIV),  # none
    ),
)

# The policy Timeouts field for each real state (SYN_SENT2 shares syn_sent, as in Linux).
TIMEOUT_FIELD: dict[State, str] = {
    State.SYN_SENT: "syn_sent",
    State.SYN_SENT2: "syn_sent",
    State.SYN_RECV: "syn_recv",
    State.ESTABLISHED: "established",
    State.FIN_WAIT: "fin_wait",
    State.CLOSE_WAIT: "close_wait",
    State.LAST_ACK: "last_ack",
    State.TIME_WAIT: "time_wait",
    State.CLOSE: "close",
    State.UNREPLIED: "udp",
    State.REPLIED: "udp",
    State.STREAM: "udp_stream",
}
UDP_STATES = (State.UNREPLIED, State.REPLIED, State.STREAM)

# The policy phase whose timer and expiry action apply in each real state, from the policy's
# one table of phases (policy.model.PHASE_STATES).
PHASE_OF: dict[State, Phase] = {
    state: next(phase for phase, fields in PHASE_STATES.items() if field in fields)
    for state, field in TIMEOUT_FIELD.items()
    if state not in UDP_STATES
}
# The phase events and views name for every tracked state: a UDP state's is its timer's name.
PHASE_NAME: dict[State, str] = {
    **{state: phase.value for state, phase in PHASE_OF.items()},
    **{state: TIMEOUT_FIELD[state] for state in UDP_STATES},
}

# tcp_can_early_drop(): closing states in which the kernel accepts a RST without sequence checks.
CLOSING_STATES = frozenset(
    {State.FIN_WAIT, State.CLOSE_WAIT, State.LAST_ACK, State.TIME_WAIT, State.CLOSE}
)
