"""Rewriting a TCP packet in place of the queued one: sequence numbers translated, SACK edges,
the window, SYN options cleared or clamped; the TCP checksum updated incrementally.

Middleboxes that answer SYNs themselves (SYN cookies, TCP Intercept) or randomise initial
sequence numbers (the Cisco ASA's default) translate every later packet of the connection
(Linux: nf_conntrack_seqadj.c). The checksum is updated from the header's old and new bytes,
as RFC 1624 says, not recomputed: the payload is not read, and a packet that arrived corrupt
stays corrupt. That needs a complete checksum in the packet as queued, which is why the queue
is bound without F_GSO when the policy rewrites (the kernel then completes partial checksums
before queueing: nfnetlink_queue.c, nfqnl_build_packet_message()).
"""

from __future__ import annotations

import struct

from fwemu.core import packet as pk

_MASK32 = 0xFFFFFFFF
_SEQ_ACK = struct.Struct("!II")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_OPT_NOP, _OPT_MSS, _OPT_SACK = 1, 2, 5
_CHECKSUM = 16  # the TCP checksum's offset in the header
_WINDOW = 14


def rewrite(
    data: bytes,
    *,
    seq: int = 0,
    ack: int = 0,
    sack: int = 0,
    window: int | None = None,
    clear: frozenset[int] = frozenset(),
    mss: int | None = None,
) -> bytes | None:
    """`data` (a whole IP packet carrying a TCP segment `pk.parse` accepts) with `seq` added to
    its sequence number, `ack` to its acknowledgment (if the ACK flag is set) and `sack` to
    every SACK block edge, its window field set to `window`, the options of the kinds in `clear`
    overwritten with NOPs (the length stays) and an MSS option above `mss` lowered to it.
    None if `data` is cut short of the IP length (the queue's copy range): a rewrite would cut
    the packet the kernel sends on to what was copied."""
    if not pk.whole(data):
        return None
    at = pk.tcp_offset(data)
    header_len = (data[at + 12] >> 4) << 2
    out = bytearray(data)
    old = data[at : at + header_len]
    if seq or ack:
        old_seq, old_ack = _SEQ_ACK.unpack_from(data, at + 4)
        if not data[at + 13] & pk.TCP_ACK:
            ack = 0
        _SEQ_ACK.pack_into(out, at + 4, (old_seq + seq) & _MASK32, (old_ack + ack) & _MASK32)
    if window is not None:
        _U16.pack_into(out, at + _WINDOW, window)
    if sack or clear or mss is not None:
        _options(out, sack, clear, mss)
    new = bytes(out[at : at + header_len])
    if new != old:
        (checksum,) = _U16.unpack_from(data, at + _CHECKSUM)
        _U16.pack_into(out, at + _CHECKSUM, _updated(checksum, old, new))
    return bytes(out)


def _options(out: bytearray, sack: int, clear: frozenset[int], mss: int | None) -> None:
    """Edit the TCP options of the packet in `out` in place."""
    for kind, at, length in pk.options(out):
        if kind in clear:
            out[at : at + length] = bytes((_OPT_NOP,)) * length
        elif kind == _OPT_MSS and mss is not None and length == 4:
            (value,) = _U16.unpack_from(out, at + 2)
            _U16.pack_into(out, at + 2, min(value, mss))
        elif kind == _OPT_SACK and sack and not (length - 2) % 8:
            for edge in range(at + 2, at + length, 4):
                (value,) = _U32.unpack_from(out, edge)
                _U32.pack_into(out, edge, (value + sack) & _MASK32)


def _updated(checksum: int, old: bytes, new: bytes) -> int:
    """RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m'), over the changed header words at once: the
    one's-complement sum of 16-bit words is the bytes read as one number modulo 0xFFFF."""
    old_sum = int.from_bytes(old) % 0xFFFF
    new_sum = int.from_bytes(new) % 0xFFFF
    total = ((~checksum & 0xFFFF) + (0xFFFF - old_sum) + new_sum) % 0xFFFF
    return ~(total or 0xFFFF) & 0xFFFF  # a zero sum is 0xFFFF (-0), as pk's checksum has it
