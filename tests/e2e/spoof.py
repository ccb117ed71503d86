"""A third party who knows only a connection's four-tuple, and what the kernel makes of its
guesses: the helpers of tests/e2e/test_spoof.py.

`Watch` sees every packet of the connection where it reaches or leaves the server (an AF_PACKET
socket in the server's namespace, kernel timestamps), so a test knows the real sequence numbers
(to place guesses near them but outside the window) and when the last real packet passed fwemu
(where its timer should be). `Spoofer` sends the guesses with a raw socket from the client's
namespace with the client's address: the path of the client's own packets, which fwemu's rules
queue (adapters/iptables.py captures all forwarded TCP). `kernel_outcome` is what nf_conntrack
does with them (net/netfilter/nf_conntrack_proto_tcp.c as of Linux 6.18, the kernel here).
"""

from __future__ import annotations

import functools
import random
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fwemu.core import packet as pk
from fwemu.testing import Firewall, HarnessError

ETH_P_ALL = 0x0003
# include/uapi/asm-generic/socket.h (x86, arm): a struct timespec per packet, stamped by the
# kernel as it arrived or left; Python's socket module has no name for it.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_MASK32 = 0xFFFFFFFF
_HALF = 0x80000000
WAIT = 5.0  # seconds for what fwemu forwards to show up (microseconds when the host is idle)
_POLL = 0.002  # seconds between questions to fwemu's control socket while one is awaited
NEAR = 1 << 24  # near-ish guesses miss the real number by at most 16 MiB
_LINUX_WINDOW = 502  # the window field of Linux's ACKs on a fresh connection (x128: 64 KiB)


def after(a: int, b: int) -> bool:
    """Sequence-space a > b (the kernel's after())."""
    return 0 < (a - b) & _MASK32 < _HALF


def latest(values: Iterable[int]) -> int:
    """The last of some sequence numbers of one connection in sequence space."""
    return functools.reduce(lambda a, b: b if after(b, a) else a, values)


@dataclass(frozen=True)
class Numbers:
    """A quiet connection's numbers: each side's next sequence number (what the other has
    acknowledged) and the largest window either side advertised, in bytes."""

    client_nxt: int
    server_nxt: int
    window: int

    @property
    def margin(self) -> int:
        """How far a guess stays from the real sequence number to be outside the window: past
        the receiver's window (td_maxend) and the overshoot the kernel lets by there ("bytes
        more than expected": td_maxwin again), with as much to spare; 256 KiB at least."""
        return max(4 * self.window, 1 << 18)


# --- the guesses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """One kind of spoof the issue lists, and how many of it."""

    name: str
    flags: int
    payload: int  # bytes of data each carries
    count: int


FIN_ACK = Kind("fin-ack", pk.TCP_FIN | pk.TCP_ACK, 0, 16)
DATA = Kind("data", pk.TCP_PSH | pk.TCP_ACK, 100, 64)
RST = Kind("rst", pk.TCP_RST, 0, 16)  # half of them RST|ACK
SYN = Kind("syn", pk.TCP_SYN, 0, 16)
KINDS = (FIN_ACK, DATA, RST, SYN)
# The options of a Linux SYN: MSS, SACK permitted, timestamps, window scale 7.
SYN_OPTIONS = pk.encode_options(mss=1460, sack_perm=True, timestamps=(1, 0), wscale=7)


@dataclass(frozen=True)
class Spoof:
    flags: int
    seq: int
    ack: int
    payload: int

    def packet(self, src: bytes, sport: int, dst: bytes, dport: int) -> bytes:
        return pk.build_segment(
            *(src, sport, dst, dport),
            flags=self.flags,
            seq=self.seq,
            ack=self.ack,
            payload_len=self.payload,
            window=_LINUX_WINDOW,
            options=SYN_OPTIONS if self.flags & pk.TCP_SYN else b"",
        )


def guesses(kind: Kind, real: Numbers, rng: random.Random) -> list[Spoof]:
    """`kind.count` spoofs from the client: every second one's sequence and acknowledgment
    numbers uniformly random, the others near-ish, alternately above and below the real ones
    by real.margin to NEAR. None comes within real.margin of the client's real sequence
    number: none is in the window, nor the exact number a RST would need."""

    def near(value: int, i: int) -> int:
        return (value + (1 if i % 4 == 1 else -1) * rng.randrange(real.margin, NEAR)) & _MASK32

    def far(seq: int) -> bool:
        gap = (seq - real.client_nxt) & _MASK32
        return real.margin <= gap <= (1 << 32) - real.margin

    out = []
    for i in range(kind.count):
        if i % 2:
            seq, ack = near(real.client_nxt, i), near(real.server_nxt, i)
        else:
            seq, ack = rng.getrandbits(32), rng.getrandbits(32)
            while not far(seq):
                seq = rng.getrandbits(32)
        flags = kind.flags | (pk.TCP_ACK if kind is RST and i % 4 >= 2 else 0)
        out.append(Spoof(flags, seq, ack if flags & pk.TCP_ACK else 0, kind.payload))
    return out


# --- what the kernel does with them ---------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """The flow after the spoofs: its state, the timer running (a Timeouts field), and which
    spoofs restarted it (none: only the real endpoints' packets did)."""

    state: str
    timer: str
    restarts: tuple[Spoof, ...]


def kernel_outcome(kind: Kind, liberal: bool, spoofs: list[Spoof], real: Numbers) -> Outcome:
    """nf_conntrack_tcp_packet() on `spoofs` from the client into an idle ESTABLISHED entry,
    with nf_conntrack_tcp_be_liberal = `liberal`.

    Window checks on: tcp_in_window() calls each FIN or data segment INVALID ("SEQ is over upper
    bound", "ACK is over upper bound") or IGNOREs it ("SEQ is under lower bound"): no state, no
    timer. A RST below the server's td_maxack is an "invalid rst"; above it, not being the exact
    number, it keeps the state and fails tcp_in_window() as the others do. A SYN in ESTABLISHED
    is sIG: annotated and let through, nothing else.

    be_liberal: nf_tcp_log_invalid() turns every window failure into ACCEPT (returning before
    tcp_in_window() updates td_end, td_maxack or the windows): a FIN moves sES -> sFW, the next
    sFW -> sLA ("FIN seen in both directions"), the rest sLA -> sLA, each restarting the state's
    timer; data restarts ESTABLISHED's. The RST check is not a window check: below td_maxack is
    still INVALID, above it keeps ESTABLISHED ("allow a possible challenge ACK") and, being a
    RST, gets the CLOSE timer (index == TCP_RST_SET). SYNs are ignored as before.

    The server's answers (test_spoof holds them) would change none of this but a refresh: a
    dupACK or challenge ACK is an in-window ACK from the reply side, and in the liberal FIN case
    moves sFW -> sCW before the next FIN makes it sLA all the same.
    """
    if not liberal or kind is SYN:
        return Outcome("ESTABLISHED", "established", ())
    if kind is FIN_ACK:
        return Outcome("LAST_ACK", "last_ack", tuple(spoofs))
    if kind is DATA:
        return Outcome("ESTABLISHED", "established", tuple(spoofs))
    # The server has acknowledged all the client sent: its td_maxack is the client's next seq.
    above = tuple(s for s in spoofs if after(s.seq, real.client_nxt))
    return Outcome("ESTABLISHED", "close" if above else "established", above)


# --- the lab side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One packet of the watched connection at the server's interface."""

    ts: float  # wall-clock seconds, the kernel's stamp
    seg: pk.Segment
    tcp: bytes  # TCP header and payload, as sent: forwarding changes only the IP header
    from_server: bool


class Watch:
    """The packets to and from `port` on the server's interface since the watch began."""

    def __init__(self, fw: Firewall, port: int) -> None:
        self.port = port
        self.seen: list[Seen] = []
        self.spoofed: set[bytes] = set()  # the TCP bytes of what a Spoofer sent
        self._sock = fw.call(
            "server",
            lambda: socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)),
        )
        self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.bind((fw.plan.server.ifname, 0))
        self._sock.setblocking(False)

    def close(self) -> None:
        self._sock.close()

    def drain(self) -> None:
        """Take in what has arrived so far."""
        while True:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(65535, socket.CMSG_SPACE(16))
            except BlockingIOError:
                return
            seg = pk.parse(data)
            if not isinstance(seg, pk.Segment) or self.port not in (seg.sport, seg.dport):
                continue
            sec, nsec = _TIMESPEC.unpack(ancillary[0][2])
            header = (data[0] & 0x0F) * 4 if seg.version == 4 else 40
            self.seen.append(Seen(sec + nsec * 1e-9, seg, data[header:], seg.sport == self.port))

    def wait(self, done: Callable[[], bool], what: str) -> None:
        """Take packets in until `done()`; HarnessError naming `what` after WAIT seconds."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        end = time.monotonic() + WAIT
        self.drain()
        while not done():
            left = end - time.monotonic()
            if left <= 0:
                raise HarnessError(f"the server's interface never saw {what}")
            poller.poll(left * 1000)
            self.drain()

    def settled(self) -> Numbers:
        """Wait until each side has acknowledged all the other sent; the numbers then."""

        def nxt(from_server: bool) -> int:
            return latest(s.seg.end for s in self.real() if s.from_server == from_server)

        def acked() -> bool:
            last = {s.from_server: s.seg.ack for s in self.real()}
            return len(last) == 2 and last == {False: nxt(True), True: nxt(False)}

        self.wait(acked, "both sides acknowledge all the other sent")
        syn, synack = (
            next(s.seg for s in self.real() if s.seg.flags & pk.TCP_SYN and s.from_server == side)
            for side in (False, True)
        )
        both = syn.wscale >= 0 and synack.wscale >= 0  # RFC 7323 §1.3: scaling needs both
        shift = {False: syn.wscale, True: synack.wscale} if both else {False: 0, True: 0}
        window = max(
            s.seg.window << (0 if s.seg.flags & pk.TCP_SYN else shift[s.from_server])
            for s in self.real()
        )
        numbers = Numbers(nxt(False), nxt(True), window)
        if 2 * numbers.margin > NEAR:
            raise HarnessError(f"windows of {window} bytes leave no room for near-ish guesses")
        return numbers

    def real(self) -> list[Seen]:
        """The real endpoints' packets: all the server sent, and what reached it unspoofed."""
        return [s for s in self.seen if s.from_server or s.tcp not in self.spoofed]

    def last_real(self) -> float:
        """When the last packet of the real endpoints passed."""
        return max(s.ts for s in self.real())


@dataclass(frozen=True)
class Sent:
    at: float  # wall-clock seconds, just before it left
    spoof: Spoof
    tcp: bytes


class Spoofer:
    """Sends spoofs from the client's namespace as the client (`sport`) to the server's
    `watch.port`, one at a time: each `send` returns once fwemu has handled the spoof (its
    packet counter says so: the spoof was queued to it, not routed past it)."""

    def __init__(self, fw: Firewall, watch: Watch, sport: int) -> None:
        self.fw = fw
        self.watch = watch
        self.sport = sport
        self.sent: list[Sent] = []
        self._raw = fw.call(
            "client", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        )
        self._handled = self._packets()

    def close(self) -> None:
        self._raw.close()

    def send(self, spoof: Spoof) -> None:
        fw = self.fw
        src, dst = (socket.inet_aton(a) for a in (fw.client_address(), fw.server_address()))
        packet = spoof.packet(src, self.sport, dst, self.watch.port)
        tcp = packet[20:]  # build_segment's IPv4 header has no options
        self.watch.spoofed.add(tcp)
        self.sent.append(Sent(time.time(), spoof, tcp))
        self._raw.sendto(packet, (fw.server_address(), 0))
        self._handled += 1
        end = time.monotonic() + WAIT
        while (handled := self._packets()) < self._handled:
            if time.monotonic() > end:
                raise HarnessError(f"fwemu handled {handled} packets, not {self._handled}")
            time.sleep(_POLL)

    def _packets(self) -> int:
        """How many packets fwemu has handled (it counts each before its verdict)."""
        packets: int = self.fw.status()["packets"]
        return packets
