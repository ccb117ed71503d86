"""ICMP port unreachable built for a datagram, as a firewall that rejects sends it (Linux's
REJECT target: --reject-with icmp-port-unreachable / icmp6-port-unreachable).

From the address the datagram was sent to, to its sender, quoting the datagram from its IP header
on: as much as fits in 576 bytes for IPv4 (RFC 1812 §4.3.2.3), in 1280 for IPv6 (RFC 4443 §2.4
(c)); a copy cut by the queue's copy range is quoted as far as it goes (RFC 792 asks for the IP
header and 8 bytes, which every queued datagram has). The receiver's kernel matches the quoted
header to its socket: a connected UDP socket then fails with ECONNREFUSED.
"""

from __future__ import annotations

import struct

from fwemu.core.packet import Datagram, internet_checksum

_ICMP4 = 1
_ICMP6 = 58
_DEST_UNREACHABLE4, _PORT_UNREACHABLE4 = 3, 3  # RFC 792
_DEST_UNREACHABLE6, _PORT_UNREACHABLE6 = 1, 4  # RFC 4443 §3.1
_IP4_HEADER = struct.Struct("!BBHHHBBH4s4s")
_IP6_HEADER = struct.Struct("!IHBB16s16s")
_ICMP_HEADER = struct.Struct("!BBHI")  # type, code, checksum, unused
_TTL = 64
_MAX4 = 576 - 20 - 8  # the quote's room: IPv4 header and ICMP header left out
_MAX6 = 1280 - 40 - 8


def port_unreachable(dg: Datagram, data: bytes) -> bytes:
    """The ICMP (IPv4) or ICMPv6 port unreachable answering the datagram `dg` parsed from
    `data` (the IP packet as queued)."""
    src, dst = dg.dst, dg.src  # from whom it was meant for, to its sender
    if dg.version == 4:
        quote = data[:_MAX4]
        icmp = _icmp(_DEST_UNREACHABLE4, _PORT_UNREACHABLE4, quote, b"")
        header = (0x45, 0, 20 + len(icmp), 0, 0, _TTL, _ICMP4)
        checksum = internet_checksum(_IP4_HEADER.pack(*header, 0, src, dst))
        return _IP4_HEADER.pack(*header, checksum, src, dst) + icmp
    quote = data[:_MAX6]
    length = _ICMP_HEADER.size + len(quote)
    # RFC 8200 §8.1 pseudo-header: src, dst, 32-bit length, 3 zero bytes, next header.
    pseudo = src + dst + struct.pack("!I3xB", length, _ICMP6)
    icmp = _icmp(_DEST_UNREACHABLE6, _PORT_UNREACHABLE6, quote, pseudo)
    return _IP6_HEADER.pack(6 << 28, length, _ICMP6, _TTL, src, dst) + icmp


def _icmp(kind: int, code: int, quote: bytes, pseudo: bytes) -> bytes:
    """An ICMP error message with its checksum (over `pseudo` too: ICMPv6's pseudo-header)."""
    checksum = internet_checksum(pseudo + _ICMP_HEADER.pack(kind, code, 0, 0) + quote)
    return _ICMP_HEADER.pack(kind, code, checksum, 0) + quote
