"""IPv4/IPv6 + TCP and UDP header parsing into flow-keyed segments and datagrams, and TCP RST
construction.

Pure and allocation-lean: `parse` runs once per forwarded packet. Lengths come from the IP header,
never from `len(data)`: NFQUEUE copies may be truncated to the headers, and with F_GSO one queued
packet carries up to 64 KiB of payload (reference tcp-rst-and-nfqueue.md §3.2, §3.10).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

# TCP flag bits (RFC 9293 §3.1; ECE and CWR from RFC 3168 §6.1).
TCP_FIN: Final = 0x01
TCP_SYN: Final = 0x02
TCP_RST: Final = 0x04
TCP_PSH: Final = 0x08
TCP_ACK: Final = 0x10
TCP_URG: Final = 0x20
TCP_ECE: Final = 0x40
TCP_CWR: Final = 0x80

_SEQ_MASK: Final = 0xFFFFFFFF

# IPv4 header (RFC 791 §3.1): version/IHL, total length, flags/fragment offset, protocol, addresses.
_IP4: Final = struct.Struct("!BxH2xHxB2x4s4s").unpack_from
# The same without version/IHL, followed by the TCP fixed header: the no-options fast path.
_IP4_TCP: Final = struct.Struct("!2xH2xHxB2x4s4sHHIIBBH").unpack_from
_IP4_OFFSET_MASK: Final = 0x1FFF  # fragment offset in 8-byte units; the top 3 bits are flags
# IPv6 fixed header (RFC 8200 §3): 40 bytes; payload length, next header, addresses.
_IP6: Final = struct.Struct("!4xHBx16s16s").unpack_from
_IP6_HEADER_LEN: Final = 40
# RFC 8200 §4.5: offset << 3 | res | M
_IP6_FRAGMENT_OFFSET: Final = struct.Struct("!H").unpack_from
# Hop-by-hop (0), routing (43) and destination options (60) count 8-octet units beyond the first
# (RFC 8200 §4.3-4.6); the fragment header is 8 bytes (§4.5); AH counts 4-octet units minus 2
# (RFC 4302 §2.2). Anything else, ESP (50) and no-next-header (59) included, ends the walk.
_IP6_FRAGMENT: Final = 44
_IP6_AH: Final = 51
_IP6_EXTENSIONS: Final = frozenset((0, 43, 60, _IP6_FRAGMENT, _IP6_AH))
_IP6_EXT_MIN_LEN: Final = 8
_IP6_MAX_EXT: Final = 8  # bounds the walk; real traffic carries at most 2 or 3
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_IP6_ENDS: Final = frozenset((_PROTO_TCP, _PROTO_UDP))  # the headers an extension walk stops at

# Flow keys: address a, address b, port a, port b, with a the smaller endpoint.
# A flow key: both endpoints' addresses, their ports, and the IP protocol, so that flows of
# two protocols between the same endpoints never share one.
_KEY4: Final = struct.Struct("!4s4sHHB").pack
_KEY6: Final = struct.Struct("!16s16sHHB").pack
KEY4_LEN: Final = 13
KEY6_LEN: Final = 37

# IPv4 without options followed by the UDP header (RFC 768): total length, fragment, addresses,
# ports, UDP length.
_IP4_UDP: Final = struct.Struct("!2xH2xH4x4s4sHHH").unpack_from
_UDP: Final = struct.Struct("!HHH").unpack_from  # ports, length (RFC 768)
_UDP_LEN: Final = 8
# TCP fixed header (RFC 9293 §3.1): ports, seq, ack, data offset, flags, window.
_TCP: Final = struct.Struct("!HHIIBBH").unpack_from
_TCP_MIN_LEN: Final = 20
_OPT_END: Final = 0
_OPT_NOP: Final = 1
_OPT_WSCALE: Final = 3  # RFC 7323 §2.2: kind 3, length 3, shift count
# RFC 7323 §2.3: a larger shift MUST be treated as 14 (Linux TCP_MAX_WSCALE).
_MAX_WSCALE: Final = 14
_OPT_MSS: Final = 2  # RFC 9293 §3.2: kind 2, length 4
_DEFAULT_MSS: Final = 536
_OPT_SACK_PERM: Final = 4  # RFC 2018 §2: kind 4, length 2
_OPT_SACK: Final = 5  # RFC 2018 §3: kind 5, length 2 + 8 per block (left edge, right edge)
_OPT_TIMESTAMPS: Final = 8  # RFC 7323 §3.2: kind 8, length 10
# The right edges of 1-4 SACK blocks (every second 32-bit word of the blocks).
_SACK_EDGES: Final = {n: struct.Struct("!" + "4xI" * n).unpack_from for n in range(1, 5)}
# Linux TCPOLEN_TSTAMP_ALIGNED: NOP, NOP, timestamps; the header they make (data offset 8).
_TS_ALIGNED: Final = bytes((_OPT_NOP, _OPT_NOP, _OPT_TIMESTAMPS, 10))
_TCP_TS_ONLY_LEN: Final = _TCP_MIN_LEN + 12

# Segments we build: IPv4 IHL 5, DF, TTL 64; IPv6 hop limit 64; TCP data offset 5, no options.
_IP4_HEADER: Final = struct.Struct("!BBHHHBBH4s4s")
_IP6_HEADER: Final = struct.Struct("!IHBB16s16s")
_TCP_HEADER: Final = struct.Struct("!HHIIBBHHH")
_IP4_DF: Final = 0x4000
_TTL: Final = 64  # Linux net.ipv4.ip_default_ttl and IPv6 hop_limit default
_MAX_OPTIONS_LEN: Final = 40  # data offset 15 words at most

# tcpdump's flag letters, in the order describe() prints them.
_FLAG_LETTERS: Final = (
    (TCP_SYN, "S"),
    (TCP_FIN, "F"),
    (TCP_RST, "R"),
    (TCP_PSH, "P"),
    (TCP_ACK, "."),
    (TCP_URG, "U"),
    (TCP_ECE, "E"),
    (TCP_CWR, "W"),
)


class Packet:
    """What a segment and a datagram share: a flow key and a direction along it."""

    __slots__ = ()
    key: bytes
    forward: bool

    @property
    def src(self) -> bytes:
        size = (len(self.key) - 5) >> 1
        return self.key[:size] if self.forward else self.key[size : 2 * size]

    @property
    def dst(self) -> bytes:
        size = (len(self.key) - 5) >> 1
        return self.key[size : 2 * size] if self.forward else self.key[:size]


class Datagram(Packet):
    """One parsed UDP datagram, keyed by its flow as a Segment is (the key's last byte, the
    protocol, keeps UDP flows apart from TCP's); `payload_len` from the UDP length field."""

    __slots__ = ("dport", "forward", "key", "payload_len", "sport", "version")

    def __init__(
        self, version: int, key: bytes, forward: bool, sport: int, dport: int, payload_len: int
    ) -> None:
        self.version = version
        self.key = key
        self.forward = forward
        self.sport = sport
        self.dport = dport
        self.payload_len = payload_len

    def __repr__(self) -> str:
        ends = f"{_endpoint(self.src, self.sport)} > {_endpoint(self.dst, self.dport)}"
        return f"<Datagram {ends} len {self.payload_len}>"


class Segment(Packet):
    """One parsed TCP segment, keyed by its flow.

    `key` is the same for both directions of a connection (`endpoints` takes it apart); `forward`
    says whether this packet goes from the key's first endpoint to its second. `payload_len`
    comes from the IP length fields. What conntrack reads from the options (Linux
    `tcp_options()`, `tcp_sack()`): `wscale` is -1 unless this is a SYN carrying the option,
    `sack_perm` whether a SYN permits SACK, `has_options` whether there are any option bytes, and
    `sack` the highest right edge of the first SACK option's blocks if after `ack`, else `ack`.

    A plain slotted class rather than a frozen dataclass: frozen `__init__` goes through
    `object.__setattr__` and this is built for every forwarded packet.
    """

    __slots__ = (
        "ack",
        "dport",
        "flags",
        "forward",
        "has_options",
        "key",
        "payload_len",
        "sack",
        "sack_perm",
        "seq",
        "sport",
        "version",
        "window",
        "wscale",
    )

    def __init__(  # positional only in practice: keyword arguments make this call 2.5x slower
        self,
        version: int,
        key: bytes,
        forward: bool,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,
        window: int,
        wscale: int,
        sack_perm: bool,
        has_options: bool,
        sack: int,
        payload_len: int,
    ) -> None:
        self.version = version
        self.key = key
        self.forward = forward
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.window = window
        self.wscale = wscale
        self.sack_perm = sack_perm
        self.has_options = has_options
        self.sack = sack
        self.payload_len = payload_len

    @property
    def seg_len(self) -> int:
        """Sequence space consumed: SYN and FIN count one each (RFC 9293 §3.4)."""
        flags = self.flags
        return self.payload_len + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)

    @property
    def end(self) -> int:
        return (self.seq + self.seg_len) & _SEQ_MASK

    def __repr__(self) -> str:
        return f"<Segment {describe(self)} win {self.window} wscale {self.wscale}>"


@dataclass(frozen=True, slots=True)
class Unparseable:
    """Why a packet is not a TCP segment or UDP datagram fwemu can track."""

    reason: str


@dataclass(frozen=True, slots=True)
class OtherProtocol(Unparseable):
    """A well-formed IP packet of a protocol fwemu does not track (ICMP, SCTP, ESP...): its IP
    protocol or IPv6 next-header number."""

    protocol: int


# Inlined for speed (it runs per packet): one return per way a header can be unusable.
def parse(data: bytes) -> Segment | Datagram | Unparseable:  # noqa: PLR0911, PLR0912
    """Parse an IP packet as queued, possibly truncated after its headers; never raises."""
    size = len(data)
    if size >= 40 and data[0] == 0x45:
        # IPv4 without options, most of the traffic: both fixed headers in one unpack.
        (ip_len, fragment, protocol, src, dst, sport, dport, seq, ack, offset, flags, window) = (
            _IP4_TCP(data)
        )
        fast = protocol == _PROTO_TCP and not fragment & _IP4_OFFSET_MASK and ip_len >= 40
    else:
        fast = False
    if fast:
        version, tcp_at, tcp_len, pack_key = 4, 20, ip_len - 20, _KEY4
    elif size >= 28 and data[0] == 0x45 and data[9] == _PROTO_UDP:
        # IPv4 without options carrying UDP: the datagram's fast path.
        ip_len, fragment, src, dst, sport, dport, udp_len = _IP4_UDP(data)
        if fragment & _IP4_OFFSET_MASK:
            return Unparseable("IPv4 fragment")
        return _datagram(4, ip_len - 20, src, dst, sport, dport, udp_len, _KEY4)
    else:
        located = _locate(data)
        if isinstance(located, Unparseable):
            return located
        version, tcp_at, tcp_len, src, dst, pack_key, protocol = located
        if protocol == _PROTO_UDP:
            if size < tcp_at + _UDP_LEN:
                return Unparseable(f"truncated UDP header ({max(size - tcp_at, 0)} bytes)")
            sport, dport, udp_len = _UDP(data, tcp_at)
            return _datagram(version, tcp_len, src, dst, sport, dport, udp_len, pack_key)
        if size < tcp_at + _TCP_MIN_LEN:
            return Unparseable(f"truncated TCP header ({max(size - tcp_at, 0)} bytes)")
        sport, dport, seq, ack, offset, flags, window = _TCP(data, tcp_at)

    header_len = (offset >> 4) << 2
    if header_len < _TCP_MIN_LEN:
        return Unparseable(f"bad TCP data offset {offset >> 4}")
    payload_len = tcp_len - header_len
    if payload_len < 0:
        return Unparseable(f"TCP header ({header_len} bytes) exceeds IP length ({tcp_len} bytes)")
    if header_len == _TCP_MIN_LEN:
        wscale, sack_perm, has_options, sack = -1, False, False, ack
    else:
        options_at = tcp_at + _TCP_MIN_LEN
        has_options = True
        if (
            header_len == _TCP_TS_ONLY_LEN
            and not flags & TCP_SYN
            and data[options_at : options_at + 4] == _TS_ALIGNED
        ):
            # Timestamps alone, on most packets: tcp_sack()'s own fast path.
            wscale, sack_perm, sack = -1, False, ack
        else:
            wscale, sack_perm, sack = _read_options(
                data, options_at, min(tcp_at + header_len, size), ack, flags & TCP_SYN
            )
    forward = src < dst or (src == dst and sport <= dport)
    key = (
        pack_key(src, dst, sport, dport, _PROTO_TCP)
        if forward
        else pack_key(dst, src, dport, sport, _PROTO_TCP)
    )
    return Segment(
        version,
        key,
        forward,
        sport,
        dport,
        seq,
        ack,
        flags,
        window,
        wscale,
        sack_perm,
        has_options,
        sack,
        payload_len,
    )


def _datagram(
    version: int,
    ip_payload: int,
    src: bytes,
    dst: bytes,
    sport: int,
    dport: int,
    udp_len: int,
    pack_key: Callable[[bytes, bytes, int, int, int], bytes],
) -> Datagram | Unparseable:
    """A Datagram, unless its length field is one Linux's udp_error() rejects (shorter than the
    header, or longer than the IP payload: "truncated/malformed packet")."""
    if not _UDP_LEN <= udp_len <= ip_payload:
        return Unparseable(f"bad UDP length {udp_len} (IP payload {ip_payload} bytes)")
    forward = src < dst or (src == dst and sport <= dport)
    key = (
        pack_key(src, dst, sport, dport, _PROTO_UDP)
        if forward
        else pack_key(dst, src, dport, sport, _PROTO_UDP)
    )
    return Datagram(version, key, forward, sport, dport, udp_len - _UDP_LEN)


_Located = tuple[int, int, int, bytes, bytes, Callable[[bytes, bytes, int, int, int], bytes], int]


# One early return per way an IP header can be unusable: the slow path of `parse`, in header
# order, as the RFCs list the checks.
def _locate(data: bytes) -> _Located | Unparseable:  # noqa: PLR0911, PLR0912
    """(IP version, TCP or UDP header offset, its length per the IP header, src, dst, key
    packer, IP protocol), or why not."""
    size = len(data)
    if not size:
        return Unparseable("empty packet")
    version = data[0] >> 4
    if version == 4:
        if size < 20:
            return Unparseable(f"truncated IPv4 header ({size} bytes)")
        version_ihl, ip_len, fragment, protocol, src, dst = _IP4(data)
        tcp_at = (version_ihl & 0x0F) << 2
        if tcp_at < 20:
            return Unparseable(f"bad IPv4 header length {tcp_at}")
        if tcp_at > size:
            return Unparseable(f"truncated IPv4 header ({size} of {tcp_at} bytes)")
        if protocol not in _IP6_ENDS:
            return OtherProtocol(f"not TCP or UDP (protocol {protocol})", protocol)
        if fragment & _IP4_OFFSET_MASK:
            return Unparseable("IPv4 fragment")
        if ip_len < tcp_at + (_TCP_MIN_LEN if protocol == _PROTO_TCP else _UDP_LEN):
            return Unparseable(f"bad IPv4 total length {ip_len}")
        return 4, tcp_at, ip_len - tcp_at, src, dst, _KEY4, protocol
    if version == 6:
        if size < _IP6_HEADER_LEN:
            return Unparseable(f"truncated IPv6 header ({size} bytes)")
        payload_len, next_header, src, dst = _IP6(data)
        if not payload_len:
            # RFC 2675 jumbograms and Linux BIG TCP carry the length in a hop-by-hop option.
            return Unparseable("IPv6 jumbogram")
        if next_header in _IP6_ENDS:
            tcp_at, protocol = _IP6_HEADER_LEN, next_header
        else:
            walked = _skip_ip6_extensions(data, next_header)
            if isinstance(walked, Unparseable):
                return walked
            tcp_at, protocol = walked
            if tcp_at > _IP6_HEADER_LEN + payload_len:
                return Unparseable(
                    f"IPv6 extension headers ({tcp_at - _IP6_HEADER_LEN} bytes)"
                    f" exceed payload length {payload_len}"
                )
        return 6, tcp_at, _IP6_HEADER_LEN + payload_len - tcp_at, src, dst, _KEY6, protocol
    return Unparseable(f"not IP (version {version})")


def _skip_ip6_extensions(data: bytes, next_header: int) -> tuple[int, int] | Unparseable:
    """(offset, protocol) of the TCP or UDP header after IPv6 extension headers (RFC 8200 §4),
    or why there is none."""
    at = _IP6_HEADER_LEN
    seen = 0
    while next_header not in _IP6_ENDS:
        if next_header not in _IP6_EXTENSIONS:
            return OtherProtocol(f"not TCP or UDP (next header {next_header})", next_header)
        if seen == _IP6_MAX_EXT:
            return Unparseable(f"more than {_IP6_MAX_EXT} IPv6 extension headers")
        if at + _IP6_EXT_MIN_LEN > len(data):
            return Unparseable(f"truncated IPv6 extension header ({len(data) - at} bytes)")
        if next_header == _IP6_FRAGMENT:
            if _IP6_FRAGMENT_OFFSET(data, at + 2)[0] >> 3:
                return Unparseable("IPv6 fragment")
            length = _IP6_EXT_MIN_LEN
        elif next_header == _IP6_AH:
            length = (data[at + 1] + 2) << 2
        else:
            length = (data[at + 1] + 1) << 3
        seen += 1
        next_header = data[at]
        at += length
    return at, next_header


def _read_options(data: bytes, at: int, end: int, ack: int, syn: int) -> tuple[int, bool, int]:
    """(window-scale shift or -1, SACK permitted, highest SACK edge) from the options in
    data[at:end], as Linux reads them: `tcp_options()` (a SYN's scale and SACK permission) and
    `tcp_sack()` (the highest right edge, in serial order, of the first well-formed SACK
    option's blocks, starting from `ack`). A malformed list ends the walk: the segment stays
    valid."""
    wscale, sack_perm, sack, sacked = -1, False, ack, False
    while at < end:
        kind = data[at]
        if kind == _OPT_END:
            break
        if kind == _OPT_NOP:
            at += 1
            continue
        if at + 1 >= end:
            break
        length = data[at + 1]
        if length < 2 or at + length > end:
            break
        if kind == _OPT_SACK and not sacked and length >= 10 and not (length - 2) % 8:
            sacked = True
            for edge in _SACK_EDGES[(length - 2) >> 3](data, at + 2):
                if 0 < ((edge - sack) & _SEQ_MASK) <= 0x80000000:  # the kernel's after()
                    sack = edge
        elif syn and kind == _OPT_WSCALE and length == 3:
            wscale = min(data[at + 2], _MAX_WSCALE)
        elif syn and kind == _OPT_SACK_PERM and length == 2:
            sack_perm = True
        at += length
    return wscale, sack_perm, sack


def options(data: bytes | bytearray) -> Iterator[tuple[int, int, int]]:
    """(kind, offset, length) of each option of the TCP segment in an IP packet that `parse`
    accepts, NOPs and the end of the list left out; a malformed list ends the walk, as in
    `_read_options` (which inlines this walk: it runs on every segment with options)."""
    at = tcp_offset(data)
    end = min(at + ((data[at + 12] >> 4) << 2), len(data))
    at += _TCP_MIN_LEN
    while at < end:
        kind = data[at]
        if kind == _OPT_END:
            return
        if kind == _OPT_NOP:
            at += 1
            continue
        if at + 1 >= end:
            return
        length = data[at + 1]
        if length < 2 or at + length > end:
            return
        yield kind, at, length
        at += length


def syn_mss(data: bytes) -> int:
    """The MSS option of a SYN (whole IP packet as `parse` accepts), or 536 without one (RFC
    9293 §3.7.1's default for IPv4; IPv6's 1220 is larger, and a proxy would round it down)."""
    for kind, at, length in options(data):
        if kind == _OPT_MSS and length == 4:
            return int.from_bytes(data[at + 2 : at + 4])
    return _DEFAULT_MSS


def whole(data: bytes) -> bool:
    """Whether an IP packet holds all the bytes its header's length says (not cut by a copy
    range)."""
    if len(data) < 20:  # not even an IPv4 header
        return False
    if data[0] >> 4 == 4:
        return len(data) >= int.from_bytes(data[2:4])
    return len(data) >= _IP6_HEADER_LEN + int.from_bytes(data[4:6])


def tcp_offset(data: bytes | bytearray) -> int:
    """Where the TCP header starts in an IP packet that `parse` accepts as a Segment."""
    if data[0] == 0x45:
        return 20
    located = _locate(bytes(data))
    if isinstance(located, Unparseable) or located[6] != _PROTO_TCP:
        raise ValueError("not a TCP packet")
    return located[1]


def endpoints(key: bytes) -> tuple[bytes, int, bytes, int]:
    """(addr_a, port_a, addr_b, port_b) of a flow key built by `parse`."""
    if len(key) not in (KEY4_LEN, KEY6_LEN):
        raise ValueError(
            f"a flow key is {KEY4_LEN} (IPv4) or {KEY6_LEN} (IPv6) bytes, not {len(key)}"
        )
    size = (len(key) - 5) >> 1
    ports = 2 * size
    return (
        key[:size],
        int.from_bytes(key[ports : ports + 2]),
        key[size:ports],
        int.from_bytes(key[ports + 2 : ports + 4]),
    )


def protocol_of(key: bytes) -> int:
    """The IP protocol number of a flow key's flow (6: TCP, 17: UDP)."""
    return key[-1]


def build_segment(
    src: bytes,
    sport: int,
    dst: bytes,
    dport: int,
    *,
    flags: int,
    seq: int,
    ack: int,
    payload_len: int = 0,
    window: int = 0xFFFF,
    options: bytes = b"",
) -> bytes:
    """A complete IP packet carrying one TCP segment with a zero payload.

    The address length (4 or 16 bytes) selects IPv4 (IHL 5, DF, TTL 64, id 0) or IPv6 (hop limit
    64, flow label 0); both checksums are correct, so a real stack accepts it. `seq` and `ack` are
    taken modulo 2**32 so callers can pass sequence arithmetic unmasked. `options` (see
    `encode_options`) are padded with end-of-list bytes to a multiple of 4.
    """
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError(f"addresses must both be 4 or 16 bytes, not {len(src)} and {len(dst)}")
    if len(options) > _MAX_OPTIONS_LEN:
        raise ValueError(f"{len(options)} bytes of TCP options exceed {_MAX_OPTIONS_LEN}")
    options += bytes(-len(options) % 4)
    ipv4 = len(src) == 4
    header_len = _TCP_MIN_LEN + len(options)
    tcp_len = header_len + payload_len
    # IPv4's 16-bit total length counts its own header; IPv6's payload length does not.
    if not 0 <= payload_len <= 0xFFFF - header_len - (20 if ipv4 else 0):
        raise ValueError(f"a {payload_len}-byte payload does not fit in one IP packet")
    if ipv4:
        # RFC 9293 §3.1 pseudo-header: src, dst, zero, protocol, TCP length.
        pseudo = src + dst + struct.pack("!xBH", _PROTO_TCP, tcp_len)
    else:
        # RFC 8200 §8.1 pseudo-header: src, dst, 32-bit length, 3 zero bytes, next header.
        pseudo = src + dst + struct.pack("!I3xB", tcp_len, _PROTO_TCP)
    offset = (header_len >> 2) << 4
    fields = (sport, dport, seq & _SEQ_MASK, ack & _SEQ_MASK, offset, flags, window)
    payload = options + bytes(payload_len)
    checksum = internet_checksum(pseudo + _TCP_HEADER.pack(*fields, 0, 0) + payload)
    tcp = _TCP_HEADER.pack(*fields, checksum, 0) + payload
    if not ipv4:
        return _IP6_HEADER.pack(6 << 28, tcp_len, _PROTO_TCP, _TTL, src, dst) + tcp
    header = (0x45, 0, 20 + tcp_len, 0, _IP4_DF, _TTL, _PROTO_TCP)
    checksum = internet_checksum(_IP4_HEADER.pack(*header, 0, src, dst))
    return _IP4_HEADER.pack(*header, checksum, src, dst) + tcp


def encode_options(
    *,
    mss: int | None = None,
    wscale: int | None = None,
    sack_perm: bool = False,
    timestamps: tuple[int, int] | None = None,
    sack: tuple[tuple[int, int], ...] = (),
) -> bytes:
    """TCP options as stacks lay them out (NOPs aligning each to 4 bytes, as Linux does):
    MSS, SACK permitted, timestamps (value, echo reply), window scale, SACK blocks (left, right)."""
    out = b""
    if mss is not None:
        out += struct.pack("!BBH", _OPT_MSS, 4, mss)
    if sack_perm and timestamps is not None:
        out += struct.pack("!BBBBII", _OPT_SACK_PERM, 2, _OPT_TIMESTAMPS, 10, *timestamps)
    elif timestamps is not None:
        out += _TS_ALIGNED + struct.pack("!II", *timestamps)
    elif sack_perm:
        out += bytes((_OPT_NOP, _OPT_NOP, _OPT_SACK_PERM, 2))
    if wscale is not None:
        out += bytes((_OPT_NOP, _OPT_WSCALE, 3, wscale))
    if sack:
        out += bytes((_OPT_NOP, _OPT_NOP, _OPT_SACK, 2 + 8 * len(sack)))
        for left, right in sack:
            out += struct.pack("!II", left & _SEQ_MASK, right & _SEQ_MASK)
    return out


def build_rst(
    src: bytes, sport: int, dst: bytes, dport: int, *, seq: int, ack: int | None
) -> bytes:
    """A complete IP packet carrying a TCP RST (window 0), or RST|ACK when `ack` is given.

    No options: Linux accepts an RST without timestamps (docs/tcp-rst-and-nfqueue.md §2.1:
    "Reset is accepted even if it did not pass PAWS").
    """
    flags = TCP_RST if ack is None else TCP_RST | TCP_ACK
    return build_segment(src, sport, dst, dport, flags=flags, seq=seq, ack=ack or 0, window=0)


class ReplyRst(NamedTuple):
    """A RST built in answer to a segment, with the numbers it carries (for its event)."""

    packet: bytes
    seq: int
    ack: int | None  # None: no ACK flag


def build_reply_rst(seg: Segment) -> ReplyRst:
    """The RST a TCP stack sends in answer to `seg` (RFC 9293 §3.10.7.1, Linux tcp_v4_send_reset).

    With ACK set the RST takes its seq from the ACK; otherwise it is RST|ACK acknowledging all of
    `seg` (which is what a SYN_SENT client needs, reference §2.2). Stacks never answer an RST
    (RFC 9293 §3.10.7.1): that check is the caller's.
    """
    seq, ack = (seg.ack, None) if seg.flags & TCP_ACK else (0, seg.end)
    return ReplyRst(build_rst(seg.dst, seg.dport, seg.src, seg.sport, seq=seq, ack=ack), seq, ack)


def describe(seg: Segment) -> str:
    """tcpdump-like one line: `10.0.0.1:1234 > 10.0.0.2:80 [S.] seq 1 ack 2 len 0`."""
    flags = "".join(letter for bit, letter in _FLAG_LETTERS if seg.flags & bit) or "none"
    ack = f" ack {seg.ack}" if seg.flags & TCP_ACK else ""
    return (
        f"{_endpoint(seg.src, seg.sport)} > {_endpoint(seg.dst, seg.dport)} [{flags}]"
        f" seq {seg.seq}{ack} len {seg.payload_len}"
    )


def _endpoint(addr: bytes, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


def internet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement checksum; an odd length counts as padded with a zero byte.

    The one's-complement sum of 16-bit words is the data read as one big number modulo 0xFFFF
    (2**16 = 1 mod 0xFFFF), except that a non-zero sum folds to 0xFFFF, never 0: one big-int
    operation in C instead of a word loop."""
    if len(data) & 1:
        data += b"\x00"
    number = int.from_bytes(data)
    total = number % 0xFFFF or (0xFFFF if number else 0)
    return ~total & 0xFFFF
