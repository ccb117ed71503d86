"""Raw IP packets sent fast from a lab namespace: SYNs stamped on a template, sendmmsg(2)
batches, paced to a rate.

What it costs, measured with bench/flood.py on the 2-core VM this project runs on (Linux 6.18,
Python 3.11, other jobs sharing it): `fwemu.core.packet.build_segment` takes ~6 µs a SYN, so the
flood builds one template with it and stamps each SYN's source address, port, sequence number
and both checksums into place (RFC 1624's incremental update): 1.8 µs, ~550,000 a second. Sent
into a lab whose server listens, a SYN also costs the kernel ~4-5 µs on the sender's CPU (veths
run the fw's forwarding and the server's SYN-ACK or cookie in its softirq): one send() per SYN
reached 115,000-165,000 a second, sendmmsg(2) batches of 64 (through ctypes: Python's socket
module lacks it) 135,000-175,000. That is 3x the 50,000 SYN/s fwemu is tested at, so a flood's
rate is what `pace` makes it, and the report says what it achieved.
"""

from __future__ import annotations

import ctypes
import errno
import math
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fwemu.core.packet import TCP_SYN, build_segment, encode_options

# Source ports a flood uses: above the well-known ones, as flood tools pick them.
FIRST_PORT = 1024
PORTS = 65536 - FIRST_PORT
# What Linux 6.x puts on a SYN (tcp_syn_options): MSS for a 1500-byte MTU, SACK permitted,
# timestamps, window scale 7; and its window, 64240 = 44 x 1460. A SYN like a real client's
# gets the same treatment from the server's kernel and a middlebox (cookies encode the options).
SYN_WINDOW = 64240
SYN_OPTIONS = encode_options(mss=1460, sack_perm=True, timestamps=(1, 0), wscale=7)
BATCH = 64  # packets per sendmmsg(2) call: batches of 256 or 1024 sent no faster (measured)
# Where the fields a SYN varies sit: (IP checksum or None, source address, TCP header) offsets.
_LAYOUT = {4: (10, 12, 20), 16: (None, 8, 40)}
_TCP_CHECKSUM = 16  # offset within the TCP header
_PORT_AND_SEQ = struct.Struct("!HHI")  # source port, destination port, sequence number
_CHECKSUM = struct.Struct("!H")
# A packet the path refused for want of room (a full backlog or qdisc on the way): lost, as it
# would be on a wire. Raw sockets report it instead of blocking (net_xmit_errno()).
_LOST = frozenset({errno.ENOBUFS, errno.EAGAIN})


def _fold(total: int) -> int:
    """A sum of 16-bit words folded to 16 bits, one's-complement (RFC 1071)."""
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def _words(data: bytes) -> int:
    """The sum of `data`'s 16-bit big-endian words, unfolded."""
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


class SynFactory:
    """SYNs to one server port from `sources` (packed addresses of one family), each with a
    random sequence number and every (source, port) pair distinct until all of them are used:
    `len(sources) * PORTS` SYNs. The pairs come in a scrambled order (a stride coprime to their
    number), as a flood tool's random choices would, but never repeat early.
    """

    def __init__(
        self, sources: Sequence[bytes], destination: bytes, port: int, *, seed: int | None = None
    ) -> None:
        if not sources or any(len(s) != len(destination) for s in sources):
            raise ValueError("sources must be addresses of the destination's family")
        template = build_segment(
            bytes(len(destination)), 0, destination, port,
            flags=TCP_SYN, seq=0, ack=0, window=SYN_WINDOW, options=SYN_OPTIONS,
        )  # fmt: skip
        self.template = template
        self.size = len(template)
        ip_sum, at, tcp = _LAYOUT[len(destination)]
        self._tcp = tcp
        self._port = port
        # The template's source, port and sequence number are 0, so a SYN's checksum is the
        # template's with their words added in (RFC 1624 eqn. 3, HC' = ~(~HC + m')).
        tcp_base = ~_CHECKSUM.unpack_from(template, tcp + _TCP_CHECKSUM)[0] & 0xFFFF
        self._tcp_sums = [tcp_base + _words(s) for s in sources]
        # The address as stamped, preceded by the IPv4 header's checksum over it.
        if ip_sum is None:
            self._heads = list(sources)
            self._head_at = at
        else:
            ip_base = ~_CHECKSUM.unpack_from(template, ip_sum)[0] & 0xFFFF
            self._heads = [
                _CHECKSUM.pack(~_fold(ip_base + _words(s)) & 0xFFFF) + s for s in sources
            ]
            self._head_at = ip_sum
        self.distinct = len(sources) * PORTS
        self._rng = random.Random(seed)
        self._stride = _coprime_stride(self.distinct)
        self._next = self._rng.randrange(self.distinct)

    def fill(self, buffer: bytearray, count: int) -> None:
        """Write the next `count` SYNs into `buffer`, one every `self.size` bytes, over copies of
        `self.template` (only the fields that vary are written)."""
        heads, sums, head_at, tcp = self._heads, self._tcp_sums, self._head_at, self._tcp
        nsources, port, stride, distinct = len(heads), self._port, self._stride, self.distinct
        getrandbits, pack_ports, pack_sum = (
            self._rng.getrandbits,
            _PORT_AND_SEQ.pack_into,
            _CHECKSUM.pack_into,
        )
        pair = self._next
        head_end, checksum_at = head_at + len(heads[0]), tcp + _TCP_CHECKSUM
        for offset in range(0, count * self.size, self.size):
            offset_port, which = divmod(pair, nsources)
            sport, seq = FIRST_PORT + offset_port, getrandbits(32)
            buffer[offset + head_at : offset + head_end] = heads[which]
            pack_ports(buffer, offset + tcp, sport, port, seq)
            total = sums[which] + sport + (seq >> 16) + (seq & 0xFFFF)
            total = (total & 0xFFFF) + (total >> 16)
            pack_sum(buffer, offset + checksum_at, ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF)
            pair += stride
            if pair >= distinct:
                pair -= distinct
        self._next = pair


def _coprime_stride(n: int) -> int:
    """A step through 0..n-1 that visits every number before repeating: coprime to n, near
    n / golden ratio so that consecutive SYNs differ in both address and port."""
    stride = max(1, round(n / ((1 + math.sqrt(5)) / 2)))
    while math.gcd(stride, n) != 1:
        stride += 1
    return stride


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


_libc = ctypes.CDLL(None, use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
_sendmmsg.restype = ctypes.c_int


class RawSender:
    """A raw socket (IPPROTO_RAW: the packets carry their own IP header) to `destination`,
    created in the calling thread's namespace, and `slots` packet buffers of `slot_size` bytes
    that one sendmmsg(2) call sends: fill `buffer` (or `load` packets), then `send`."""

    def __init__(self, destination: str, slot_size: int, slots: int = BATCH) -> None:
        family = socket.AF_INET6 if ":" in destination else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
        # Connected, so no message needs an address; the kernel routes by the packets' own.
        self.sock.connect((destination, 0))
        self.slot_size, self.slots = slot_size, slots
        self.buffer = bytearray(slot_size * slots)
        base = ctypes.addressof((ctypes.c_char * len(self.buffer)).from_buffer(self.buffer))
        self._iov = (_Iovec * slots)(
            *(_Iovec(base + i * slot_size, slot_size) for i in range(slots))
        )
        self._messages = (_Mmsghdr * slots)()
        for i in range(slots):
            self._messages[i].hdr.iov = ctypes.pointer(self._iov[i])
            self._messages[i].hdr.iovlen = 1
        self._first = ctypes.addressof(self._messages)
        self._step = ctypes.sizeof(_Mmsghdr)

    def load(self, packets: Sequence[bytes]) -> None:
        """Copy `packets` (each at most `slot_size` bytes) into the first slots."""
        for i, packet in enumerate(packets):
            at = i * self.slot_size
            self.buffer[at : at + len(packet)] = packet
            self._iov[i].len = len(packet)

    def send(self, count: int) -> tuple[int, int]:
        """Send the first `count` slots: (sent, lost). A packet the kernel refuses for want of
        room is lost and the rest still go; any other error is raised."""
        fd, sent, lost = self.sock.fileno(), 0, 0
        while sent + lost < count:
            done = _sendmmsg(fd, self._first + (sent + lost) * self._step, count - sent - lost, 0)
            if done >= 0:
                sent += done
                continue
            code = ctypes.get_errno()
            if code not in _LOST:
                raise OSError(code, os.strerror(code))
            lost += 1
        return sent, lost

    def close(self) -> None:
        self.sock.close()


@dataclass(slots=True)
class Sent:
    """How a paced send went so far; `seconds` from the first packet to the latest batch."""

    sent: int = 0
    lost: int = 0
    seconds: float = 0.0
    stopped: bool = False  # `stop` was set before `count` packets went (Ctrl-C, the scenario end)

    @property
    def rate(self) -> float:
        """Packets a second actually sent (lost ones included: they left this socket)."""
        return (self.sent + self.lost) / self.seconds if self.seconds > 0 else 0.0


def pace(
    send: Callable[[int], tuple[int, int]],
    *,
    count: int,
    rate: float,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    progress: Sent | None = None,
    batch: int = BATCH,
) -> Sent:
    """Call `send(n)` (which sends the next n packets: (sent, lost)) until `count` packets have
    gone, `seconds` have passed or `stop` is set, keeping to `rate` packets a second.

    Packets go in bursts of at most `batch`, one about every millisecond at high rates: the k-th
    packet is due k / rate seconds after the first. A sender slower than `rate` sends without
    pause and the achieved rate says so. `progress`, if given, is updated as it goes (read it
    from another thread) and returned.
    """
    done = progress if progress is not None else Sent()
    stop = stop or threading.Event()
    burst = max(1, min(batch, int(rate / 1000)))
    start = time.monotonic()
    end = math.inf if seconds is None else start + seconds
    total = 0
    while total < count and not stop.is_set():
        now = time.monotonic()
        if now >= end:
            break
        due = min(count, math.floor((now - start) * rate) + 1) - total
        if due < min(burst, count - total):
            stop.wait(min(end, start + (total + burst - 1) / rate) - now)
            continue
        sent, lost = send(min(due, batch))
        total += sent + lost
        done.sent, done.lost, done.seconds = (
            done.sent + sent,
            done.lost + lost,
            time.monotonic() - start,
        )
    done.stopped = total < count and stop.is_set()
    return done
