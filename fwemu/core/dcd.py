"""Dead connection detection (Cisco ASA `set connection timeout idle ... dcd`): which idle flows
are being probed, and the probes.

When an ESTABLISHED flow's idle timer runs out, the ASA sends each end a segment as if from its
peer with SEQ = SND.NXT - 1: one byte before what the end has received, so its TCP stack answers
with an ACK (RFC 9293 §3.10.7.4; a keepalive probe is the same segment), and discards it. If both
ends answer, the idle timer restarts; if one stays silent through every retry, the flow expires
with its phase's action. FlowTable counts any packet from an end after a probe as its answer.
"""

from __future__ import annotations

from fwemu.core import packet as pk

_ANSWERED_BOTH = 0b11


class Probes:
    """The flows being probed: per slot, the rounds of probes sent and which directions
    (ORIGINAL 0, REPLY 1) answered since the first."""

    __slots__ = ("_rounds",)

    def __init__(self) -> None:
        self._rounds: dict[int, list[int]] = {}  # slot -> [rounds sent, answered bits]

    def sent(self, slot: int) -> int:
        """Rounds sent to the flow so far (0: not being probed)."""
        found = self._rounds.get(slot)
        return 0 if found is None else found[0]

    def send(self, slot: int) -> int:
        """Note another round of probes; its number (1 for the first)."""
        found = self._rounds.setdefault(slot, [0, 0])
        found[0] += 1
        return found[0]

    def answer(self, slot: int, direction: int) -> bool:
        """A packet from `direction` of a probed flow: whether both ends have now answered
        (then the flow is no longer probed)."""
        found = self._rounds[slot]
        found[1] |= 1 << direction
        if found[1] == _ANSWERED_BOTH:
            del self._rounds[slot]
            return True
        return False

    def silent(self, slot: int) -> str:
        """Which end never answered: "client", "server" or "both"."""
        answered = self._rounds[slot][1]
        return ("both", "server", "client")[answered]

    def stop(self, slot: int) -> None:
        self._rounds.pop(slot, None)


def probe(src: bytes, sport: int, dst: bytes, dport: int, *, seq: int, ack: int) -> bytes:
    """The probe towards `dst`, as from its peer: seq is the peer's next sequence minus one,
    ack what `dst` has sent."""
    return pk.build_segment(src, sport, dst, dport, flags=pk.TCP_ACK, seq=seq - 1, ack=ack)
