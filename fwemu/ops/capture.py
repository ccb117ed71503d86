"""Reading packet captures (pcap and pcapng, the common link layers) as IP packets with their
timestamps, for `fwemu replay`.

Formats come from dpkt's header classes and constants (pcap file header, pcapng interface
blocks with their options); the per-record loop is our own `struct` code because dpkt's
iterators cost 1.5 µs a packet, as much as the engine itself (bench/replay.py has the figures).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import dpkt

from fwemu.errors import FwemuError


class CaptureError(FwemuError):
    """A file that is not a capture fwemu can read, or that is corrupt."""


# --- link layers --------------------------------------------------------------------------
# Link-type numbers: https://www.tcpdump.org/linktypes.html (dpkt names most of them).
# Each decoder returns the IP packet inside a frame, or None for anything else (ARP, LLDP...).

_ETHERTYPE_IP = frozenset((b"\x08\x00", b"\x86\xdd"))  # IEEE 802.3 EtherTypes: IPv4, IPv6
_ETHERTYPE_VLAN = frozenset((b"\x81\x00", b"\x88\xa8", b"\x91\x00"))  # 802.1Q, 802.1ad, QinQ
_ETHER_HEADER = 14
_VLAN_TAG = 4


def _ethernet(frame: bytes) -> bytes | None:
    at = 12
    ethertype = frame[at : at + 2]
    while ethertype in _ETHERTYPE_VLAN:
        at += _VLAN_TAG
        ethertype = frame[at : at + 2]
    return frame[at + 2 :] if ethertype in _ETHERTYPE_IP else None


def _sll(frame: bytes) -> bytes | None:
    # Linux cooked v1: 16-byte header, protocol (an EtherType) in its last two bytes.
    return frame[16:] if frame[14:16] in _ETHERTYPE_IP else None


def _sll2(frame: bytes) -> bytes | None:
    # Linux cooked v2: 20-byte header, protocol (an EtherType) in its first two bytes.
    return frame[20:] if frame[0:2] in _ETHERTYPE_IP else None


def _raw(frame: bytes) -> bytes | None:
    return frame


def _loopback(frame: bytes) -> bytes | None:
    # BSD loopback: a 4-byte address family in the writer's (NULL) or network (LOOP) byte order,
    # whose IPv6 value differs by OS; the IP version nibble says it all.
    return frame[4:] if len(frame) > 4 and frame[4] >> 4 in (4, 6) else None


_LINKS: dict[int, tuple[str, Callable[[bytes], bytes | None]]] = {
    dpkt.pcap.DLT_EN10MB: ("Ethernet", _ethernet),
    dpkt.pcap.DLT_LINUX_SLL: ("Linux cooked (SLL)", _sll),
    dpkt.pcap.DLT_LINUX_SLL2: ("Linux cooked v2 (SLL2)", _sll2),
    101: ("raw IP", _raw),  # LINKTYPE_RAW
    12: ("raw IP", _raw),  # DLT_RAW on most systems, found in old files
    14: ("raw IP", _raw),  # DLT_RAW on OpenBSD
    dpkt.pcap.DLT_IPV4: ("raw IPv4", _raw),
    dpkt.pcap.DLT_IPV6: ("raw IPv6", _raw),
    dpkt.pcap.DLT_NULL: ("BSD loopback", _loopback),
    dpkt.pcap.DLT_LOOP: ("OpenBSD loopback", _loopback),
}
_LINKTYPE_MASK = 0xFFFF  # pcap's upper bits carry FCS information (linktypes.html)


def _link(path: Path, linktype: int) -> tuple[str, Callable[[bytes], bytes | None]]:
    link = _LINKS.get(linktype & _LINKTYPE_MASK)
    if link is None:
        raise CaptureError(
            f"{path}: link type {linktype & _LINKTYPE_MASK} is not supported (fwemu replays "
            "Ethernet, Linux cooked SLL/SLL2, raw IP and loopback captures)"
        )
    return link


# --- capture files ------------------------------------------------------------------------

_CHUNK = 1 << 20  # bytes read at a time; records are cut from the buffer with unpack_from
# Wireshark's largest plausible record (WTAP_MAX_PACKET_SIZE_STANDARD); a bigger length in a
# record header means the file is corrupt, not that a packet was that big.
_MAX_RECORD = 262_144
# dpkt's pcap magics as read big-endian: the first three mean a big-endian file, their byte-swapped
# forms (PMUDPCT..., PACPDOM) a little-endian one; MAGIC_TO_PKT_HDR maps all six to record headers.
_BIG_ENDIAN_MAGICS = frozenset(
    (dpkt.pcap.TCPDUMP_MAGIC, dpkt.pcap.TCPDUMP_MAGIC_NANO, dpkt.pcap.MODPCAP_MAGIC)
)
_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_BOM = 0x1A2B3C4D
_PCAPNG_EPB = dpkt.pcapng.PCAPNG_BT_EPB
_PCAPNG_PB = dpkt.pcapng.PCAPNG_BT_PB
_PCAPNG_SPB = dpkt.pcapng.PCAPNG_BT_SPB
_PCAPNG_IDB = dpkt.pcapng.PCAPNG_BT_IDB
_PCAPNG_MIN_BLOCK = 12  # type, length, trailing length
_PCAPNG_MAX_BLOCK = 16 << 20  # far above any packet block; guards against garbage lengths
_PCAPNG_TSRESOL_POW2 = 0x80  # if_tsresol: MSB set means a negative power of 2, else of 10
_DEFAULT_TSRESOL = 1e-6  # pcapng: microseconds unless if_tsresol says otherwise
_PCAPNG_PROGRESS_EVERY = 0xFFF  # report progress every 4096 packets (a mask)


@dataclass(slots=True)
class _Interface:
    name: str
    decode: Callable[[bytes], bytes | None]
    scale: float
    offset: int


class Capture:
    """A pcap or pcapng file, read as `(timestamp, IP packet or None)` pairs.

    `bytes_read` follows the reading (for a progress bar); `warnings` collects what was
    survivable (a file cut mid-packet, as when tcpdump is killed). Corrupt content raises
    CaptureError naming the file, the packet number and what is wrong.
    """

    def __init__(self, path: Path, file: BinaryIO, size: int) -> None:
        self.path = path
        self.size = size
        self.bytes_read = 0
        self.on_progress: Callable[[int], None] | None = (
            None  # called with bytes_read, now and then
        )
        self.warnings: list[str] = []
        self.packets = 0
        self._file = file
        head = file.read(4)
        if len(head) < 4:
            raise CaptureError(f"{path}: not a capture file ({len(head)} bytes)")
        magic = int.from_bytes(head)
        if magic == _PCAPNG_SHB:
            self.format = "pcapng"
            self.link = ""
            self._file.seek(0)
            self._records = self._pcapng()
        elif magic in dpkt.pcap.MAGIC_TO_PKT_HDR:
            self.format = "pcap"
            self._file.seek(0)
            self._records = self._pcap()
        else:
            raise CaptureError(
                f"{path}: not a pcap or pcapng file (starts with 0x{magic:08x}; pcap files "
                "start with a1b2c3d4 or a1b23c4d in either byte order, pcapng with 0a0d0d0a)"
            )

    def __iter__(self) -> Iterator[tuple[float, bytes | None]]:
        return self._records

    def _progress(self, position: int) -> None:
        self.bytes_read = position
        if self.on_progress is not None:
            self.on_progress(position)

    def close(self) -> None:
        self._file.close()

    def _corrupt(self, what: str) -> CaptureError:
        return CaptureError(f"{self.path}: corrupt at packet {self.packets + 1}: {what}")

    def _truncated(self, what: str) -> None:
        self.warnings.append(
            f"{self.path} ends in the middle of {what} (after packet {self.packets}); "
            "replayed what was complete"
        )

    # --- pcap -----------------------------------------------------------------------------

    def _pcap(self) -> Iterator[tuple[float, bytes | None]]:
        header = self._file.read(dpkt.pcap.FileHdr.__hdr_len__)
        if len(header) < dpkt.pcap.FileHdr.__hdr_len__:
            raise CaptureError(f"{self.path}: pcap file header cut short ({len(header)} bytes)")
        magic = int.from_bytes(header[:4])
        big = magic in _BIG_ENDIAN_MAGICS
        fh = (dpkt.pcap.FileHdr if big else dpkt.pcap.LEFileHdr)(header)
        record_class = dpkt.pcap.MAGIC_TO_PKT_HDR[magic]
        nano = magic in (dpkt.pcap.TCPDUMP_MAGIC_NANO, dpkt.pcap.PMUDPCT_MAGIC_NANO)
        self.link, decode = _link(self.path, fh.linktype)
        # Records: seconds, fraction, captured length, original length (+ extra fields in the
        # "modified pcap" variant, whose header is longer).
        record = struct.Struct(("!" if big else "<") + "IIII")
        size = record_class.__hdr_len__
        return self._pcap_records(record, size, 1e-9 if nano else 1e-6, decode)

    def _pcap_records(
        self,
        record: struct.Struct,
        size: int,
        scale: float,
        decode: Callable[[bytes], bytes | None],
    ) -> Iterator[tuple[float, bytes | None]]:
        unpack = record.unpack_from
        read = self._file.read
        base = dpkt.pcap.FileHdr.__hdr_len__
        buf = b""
        pos = 0
        while chunk := read(_CHUNK):
            buf = buf[pos:] + chunk
            base += pos
            pos = 0
            end = len(buf)
            self._progress(base)
            while pos + size <= end:
                sec, frac, caplen, _ = unpack(buf, pos)
                if caplen > _MAX_RECORD:
                    raise self._corrupt(f"record length {caplen} at byte {base + pos}")
                start = pos + size
                stop = start + caplen
                if stop > end:
                    break
                self.packets += 1
                yield sec + frac * scale, decode(buf[start:stop])
                pos = stop
        self._progress(base + len(buf))
        if pos < len(buf):
            self._truncated("a packet record")

    # --- pcapng ---------------------------------------------------------------------------

    # The pcapng block loop, by block type, inline: it runs once per captured packet.
    def _pcapng(self) -> Iterator[tuple[float, bytes | None]]:  # noqa: PLR0912
        read = self._file.read
        interfaces: list[_Interface] = []
        order = "<"
        offset = 0
        while True:
            start = read(8)
            if len(start) < 8:
                if start:
                    self._truncated("a pcapng block header")
                break
            if int.from_bytes(start[:4]) == _PCAPNG_SHB:  # the same in both byte orders
                # A new section: its byte-order magic decides how everything after it reads.
                bom = read(4)
                if int.from_bytes(bom, "little") == _PCAPNG_BOM:
                    order = "<"
                elif int.from_bytes(bom) == _PCAPNG_BOM:
                    order = ">"
                else:
                    raise self._corrupt(
                        f"pcapng section header at byte {offset} has no byte-order magic"
                    )
                start += bom
                interfaces = []
            block_type, length = struct.unpack_from(order + "II", start)
            if not _PCAPNG_MIN_BLOCK <= length <= _PCAPNG_MAX_BLOCK or length % 4:
                raise self._corrupt(f"pcapng block length {length} at byte {offset}")
            block = start + read(length - len(start))
            if len(block) < length:
                self._truncated("a pcapng block")
                break
            if block[-4:] != start[4:8]:
                raise self._corrupt(f"pcapng block at byte {offset} has mismatched lengths")
            offset += length
            if not self.packets & _PCAPNG_PROGRESS_EVERY:
                self._progress(offset)
            if block_type == _PCAPNG_IDB:
                interfaces.append(self._interface(block, order == "<"))
            elif block_type in (_PCAPNG_EPB, _PCAPNG_PB):
                yield self._packet(block, block_type, order, interfaces, length)
            elif block_type == _PCAPNG_SPB:
                raise CaptureError(
                    f"{self.path}: packet {self.packets + 1} is a pcapng simple packet block, "
                    "which has no timestamp: fwemu cannot replay it"
                )
        self._progress(offset)

    def _interface(self, block: bytes, little: bool) -> _Interface:
        idb = (
            dpkt.pcapng.InterfaceDescriptionBlockLE
            if little
            else dpkt.pcapng.InterfaceDescriptionBlock
        )(block)
        name, decode = _link(self.path, idb.linktype)
        scale, ts_offset = _DEFAULT_TSRESOL, 0
        for opt in idb.opts:
            if opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and opt.data:
                exponent = opt.data[0] & 0x7F
                scale = 2.0**-exponent if opt.data[0] & _PCAPNG_TSRESOL_POW2 else 10.0**-exponent
            elif opt.code == dpkt.pcapng.PCAPNG_OPT_IF_TSOFFSET:
                ts_offset = int.from_bytes(opt.data[:8], "little" if little else "big", signed=True)
        if not self.link:
            self.link = name
        elif name not in self.link.split(" + "):
            self.link += f" + {name}"
        return _Interface(name, decode, scale, ts_offset)

    def _packet(
        self, block: bytes, block_type: int, order: str, interfaces: list[_Interface], length: int
    ) -> tuple[float, bytes | None]:
        if block_type == _PCAPNG_EPB:
            iface, high, low, caplen = struct.unpack_from(order + "IIII", block, 8)
        else:  # the obsolete packet block: 16-bit interface id and drop count
            iface, _, high, low, caplen = struct.unpack_from(order + "HHIII", block, 8)
        data_at = 28  # both: type, length, interface (+ drops), timestamp, lengths
        if iface >= len(interfaces):
            raise self._corrupt(f"packet on interface {iface}, which was never described")
        if data_at + caplen > length - 4:
            raise self._corrupt(f"captured length {caplen} exceeds its block")
        self.packets += 1
        info = interfaces[iface]
        ts = info.offset + ((high << 32) | low) * info.scale
        return ts, info.decode(block[data_at : data_at + caplen])


def open_capture(path: str | Path) -> Capture:
    """Open a capture file; CaptureError if it cannot be read or is not pcap/pcapng."""
    path = Path(path)
    try:
        file = open(path, "rb")  # noqa: SIM115 (Capture owns it; replay() closes it)
        size = path.stat().st_size
    except OSError as err:
        raise CaptureError(f"cannot read {path}: {err.strerror}") from None
    try:
        return Capture(path, file, size)
    except BaseException:
        file.close()
        raise
