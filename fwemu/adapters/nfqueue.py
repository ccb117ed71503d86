"""Binding an NFQUEUE with python-netfilterqueue, plus what the library cannot do: the queue
flags, and batch verdicts.

Facts and numbers from docs/tcp-rst-and-nfqueue.md §3 (kernel) and §4 (netfilterqueue 1.1.0).
"""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import monotonic_ns

from netfilterqueue import COPY_PACKET, NetfilterQueue, Packet

from fwemu.adapters.queue import Handler
from fwemu.errors import FwemuError

# thread-self, not /proc/net (= /proc/self/net, the main thread's namespace): a thread that
# entered another namespace with setns(2) sees its own queues.
PROC_QUEUES = "/proc/thread-self/net/netfilter/nfnetlink_queue"

# Header-only copies: 60-byte IPv4 or 40-byte IPv6 header + 60-byte TCP header fit (§3.2, §3.10).
COPY_RANGE = 128
# Whole packets, for a policy that rewrites them (Policy.rewrites): as much as netfilterqueue can
# take. Asking for 0xFFFF would not do: it clamps any range to MaxCopySize = 4016 (its 4096-byte
# BufferSize less 80), and reads each message into that buffer, so a message longer than 4096 bytes
# is cut by recv(2), never reaches the callback and its packet never gets a verdict (seen: a
# 5000-byte datagram with 84 bytes of attributes stayed queued). Besides the packet, a message holds
# at most 144 bytes (nfqnl_build_packet_message, Linux 6.18): netlink and nfgenmsg headers 20,
# NFQA_PACKET_HDR 12, NFQA_HWADDR 16, NFQA_TIMESTAMP 20, then 8 each for the in, out and two bridge
# port ifindexes, the mark, the priority, the cgroup classid, NFQA_CAP_LEN and NFQA_SKB_INFO, and
# the NFQA_PAYLOAD header's 4. Without F_GSO every packet is at most an MTU long, so all of them
# arrive whole up to a 3952-byte MTU (veth and Ethernet's 1500, not loopback's 65536 or 9000-byte
# jumbo frames); a longer one arrives cut to WHOLE_RANGE (its length in NFQA_CAP_LEN, which the
# library does not show), and must not be rewritten: nfqnl_mangle would cut the packet to the
# rewrite's length.
WHOLE_RANGE = 4096 - 144
# Kernel default is 1024 (NFQNL_QMAX_DEFAULT, §3.1); more absorbs bursts (§3.6).
MAX_LEN = 8192
# Receive buffer for a full queue, of which the kernel grants twice what is asked
# (SO_RCVBUFFORCE): a header-only message takes 832 bytes of skb truesize, one of a 1428-byte
# packet 2304 (measured, Linux 6.18; /proc/net/netlink's Rmem over 100 queued messages).
SOCK_LEN = MAX_LEN * 1024
WHOLE_SOCK_LEN = MAX_LEN * 3 * 1024

# UAPI linux/netlink.h, linux/netfilter/nfnetlink.h and nfnetlink_queue.h (§3.1, §3.10).
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8 | 0
NFQNL_MSG_VERDICT = NFNL_SUBSYS_QUEUE << 8 | 1
NFQNL_MSG_CONFIG = NFNL_SUBSYS_QUEUE << 8 | 2
NFQNL_MSG_VERDICT_BATCH = NFNL_SUBSYS_QUEUE << 8 | 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1 << 0
NFQA_CFG_F_GSO = 1 << 2
NF_ACCEPT = 1

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
_NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (network order)
_NLATTR = struct.Struct("=HH")  # len, type (host order); payloads are network order
_CONFIG_SEQ = 0x46574D55  # "FWMU": tells our ACK apart from libnetfilter_queue's traffic
_ACK_TIMEOUT = 2.0  # seconds; the kernel answers config messages synchronously

# Batch verdicts (§3.5): one NFQNL_MSG_VERDICT_BATCH accepts every queued packet whose id is up
# to the one it names, so a run of accepted packets costs one sendmsg(2) instead of one each.
# At most BATCH_MAX in a run, Suricata's cap (source-nfq.c, nfq.batchcount). A run is sent at the
# end of every drain at the latest (never held across the loop's epoll wait), and sooner once
# its first verdict has waited BATCH_DEADLINE_NS, half of issue 18's bound on the round trip
# fwemu adds (p99 < 0.2 ms). At fwemu's 5-30 µs a packet that still makes runs of several
# (bench/inline.py under load: 5-14 packets a message; docs/performance.md §1).
BATCH_MAX = 255
BATCH_DEADLINE_NS = 100_000


class QueueError(FwemuError):
    """The queue cannot be bound or configured."""


def bound_queues() -> dict[int, int]:
    """Queue number -> netlink portid of every queue bound in this network namespace (§3.3)."""
    try:
        with open(PROC_QUEUES) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    return {int(cols[0]): int(cols[1]) for cols in (line.split() for line in lines) if cols}


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """One queue's line of /proc/net/netfilter/nfnetlink_queue (kernel `seq_show`: queue,
    portid, queue_total, copy_mode, copy_range, queue_dropped, queue_user_dropped, id_sequence;
    docs: tcp-rst-and-nfqueue.md §3.3)."""

    waiting: int
    dropped: int
    user_dropped: int


def read_queue_counters(queue: int, text: str | None = None) -> QueueCounters | None:
    """The counters of `queue` in this thread's network namespace (or in `text`), if bound."""
    if text is None:
        try:
            with open(PROC_QUEUES) as f:
                text = f.read()
        except OSError:
            return None
    for line in text.splitlines():
        cols = line.split()
        if len(cols) >= 7 and cols[0] == str(queue):
            return QueueCounters(int(cols[2]), int(cols[5]), int(cols[6]))
    return None


def ensure_free(queue: int) -> None:
    """Refuse a queue another process holds: binding it would fail, but only after setup."""
    portid = bound_queues().get(queue)
    if portid is not None:
        raise QueueError(
            f"NFQUEUE {queue} is already bound by another program (netlink portid {portid}); "
            "stop it or pick another queue with --queue"
        )


def _nlattr_u32(kind: int, value: int) -> bytes:
    return _NLATTR.pack(8, kind) + struct.pack("!I", value)


def _nfq_message(kind: int, flags: int, seq: int, queue: int, attrs: bytes) -> bytes:
    body = _NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attrs
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def config_flags_message(queue: int, *, fail_open: bool, whole_packets: bool = False) -> bytes:
    """NFQNL_MSG_CONFIG setting or clearing F_FAIL_OPEN, and F_GSO (§3.10) unless the queue
    carries whole packets to rewrite.

    F_GSO lets a GSO super-packet (up to 64 KiB of TCP segments) reach fwemu as one, its checksum
    possibly unfinished (CHECKSUM_PARTIAL: the TCP field holds only the pseudo-header's sum, for
    the NIC to complete): fine for reading headers, wrong for rewriting. Without it the kernel
    segments GSO packets before queueing them (skb_gso_segment in nfqnl_enqueue_packet) and
    completes a partial checksum (nf_queue_checksum_help, i.e. skb_checksum_help, in
    nfqnl_build_packet_message). That is what a rewrite needs: nfqnl_mangle marks a packet
    whose payload we replaced CHECKSUM_NONE (sent as it is), and the core updates checksums
    incrementally (RFC 1624), which is right only on a complete one.
    """
    mask = NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN
    flags = (0 if whole_packets else NFQA_CFG_F_GSO) | (NFQA_CFG_F_FAIL_OPEN if fail_open else 0)
    attrs = _nlattr_u32(NFQA_CFG_MASK, mask) + _nlattr_u32(NFQA_CFG_FLAGS, flags)
    return _nfq_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, _CONFIG_SEQ, queue, attrs)


def accept_message(queue: int, packet_id: int, *, batch: bool = False) -> bytes:
    """NFQNL_MSG_VERDICT accepting one packet, or NFQNL_MSG_VERDICT_BATCH accepting every queued
    packet up to `packet_id` (the kernel's nfqnl_recv_verdict_batch; libnetfilter_queue's
    nfq_set_verdict_batch builds the same message)."""
    attr = _NLATTR.pack(4 + 8, NFQA_VERDICT_HDR) + struct.pack("!II", NF_ACCEPT, packet_id)
    kind = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    return _nfq_message(kind, NLM_F_REQUEST, 0, queue, attr)


def _packet_id(message: bytes) -> int | None:
    """The id in an NFQNL_MSG_PACKET's NFQA_PACKET_HDR attribute."""
    offset = _NLMSGHDR.size + _NFGENMSG.size
    while offset + _NLATTR.size <= len(message):
        length, kind = _NLATTR.unpack_from(message, offset)
        if length < _NLATTR.size:
            return None
        if kind & 0x3FFF == NFQA_PACKET_HDR:  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER
            packet_id: int = struct.unpack_from("!I", message, offset + _NLATTR.size)[0]
            return packet_id
        offset += (length + 3) & ~3
    return None


def set_flags(
    sock: socket.socket, queue: int, *, fail_open: bool, whole_packets: bool = False
) -> None:
    """Send the config message on the queue's own socket and wait for the kernel's ACK.

    Only the portid that bound a queue may configure it, hence the library's socket. A packet
    that arrives before the ACK (rules already in place) is accepted here: it never reaches
    the library, and every queued packet must get a verdict.
    """
    sock.send(config_flags_message(queue, fail_open=fail_open, whole_packets=whole_packets))
    while True:
        if not select.select([sock], [], [], _ACK_TIMEOUT)[0]:
            raise QueueError(f"no answer from the kernel when setting NFQUEUE {queue}'s flags")
        data = sock.recv(65536)
        offset = 0
        while offset + _NLMSGHDR.size <= len(data):
            length, kind, _, seq, _ = _NLMSGHDR.unpack_from(data, offset)
            message = data[offset : offset + length]
            if kind == NLMSG_ERROR and seq == _CONFIG_SEQ:
                (code,) = struct.unpack_from("=i", message, _NLMSGHDR.size)
                if code != 0:
                    raise QueueError(
                        f"the kernel refused NFQUEUE {queue}'s flags: {os.strerror(-code)}"
                    )
                return
            if kind == NFQNL_MSG_PACKET and (packet_id := _packet_id(message)) is not None:
                sock.send(accept_message(queue, packet_id))
            offset += max((length + 3) & ~3, _NLMSGHDR.size)


_ID = struct.Struct("!I")


class _BatchDone(Exception):
    """Raised by the callback after a batch's last verdict, to end `NetfilterQueue.run` (the
    callback's exception propagates out of it: netfilterqueue 1.1.0, `nfq_handle_packet` is
    declared `except? -1`). One message per recv: the rest of a batch is never skipped."""


class _Verdicts:
    """What the handler is given for the packet in hand, and the run of accepted packets whose
    verdicts wait to be sent as one batch message.

    An accept joins the run; a drop, or an accept of a rewritten packet, sends the run and then
    the packet's own verdict, so packets leave in the order they came (Suricata's verdict cache
    does the same). A mark would end a run too; fwemu sets none. A netfilterqueue Packet left
    without a verdict sends nothing of its own (its deallocation gives none, 1.1.0), so the run's
    message is all the kernel gets for the packets in it.

    One of these serves every packet in turn, pointed at each: the queue's contract is one
    verdict before the next packet is read (adapters/queue.py).
    """

    __slots__ = ("_fd", "_head", "_held", "_last", "_since", "packet", "rewritten")

    def __init__(self, fd: int, queue: int) -> None:
        self.packet: Packet
        self.rewritten = False
        self._fd = fd
        self._head = accept_message(queue, 0, batch=True)[: -_ID.size]  # all but the last id
        self._held = 0  # packets in the run
        self._last = 0  # the last one's id
        self._since = 0  # monotonic_ns when the first joined

    def get_payload(self) -> bytes:
        payload: bytes = self.packet.get_payload()
        return payload

    def set_payload(self, payload: bytes) -> None:
        self.packet.set_payload(payload)
        self.rewritten = True

    def accept(self) -> None:
        """Join the run, sent once full or once its first verdict has waited long enough."""
        if self.rewritten:
            self.flush()
            self.packet.accept()
            return
        now = monotonic_ns()
        if not self._held:
            self._since = now
        self._held += 1
        self._last = self.packet.id
        if self._held >= BATCH_MAX or now - self._since >= BATCH_DEADLINE_NS:
            self.flush()

    def drop(self) -> None:
        self.flush()
        self.packet.drop()

    def flush(self) -> None:
        """Send the run, if any: one message accepting every queued packet up to its last."""
        if self._held:
            self._held = 0
            os.write(self._fd, self._head + _ID.pack(self._last))


class NfqueueBinding:
    """A PacketQueue (adapters/queue.py) over netfilterqueue, with batch verdicts. `drain` runs
    the library's own C loop (`run(block=False)`: recv until EAGAIN, no Python between messages
    but the callback), ended after `limit` packets by `_BatchDone`, and then sends the run of
    accepted packets held (`_Verdicts`).

    Without `batch_verdicts` the handler gets the library's Packets, each verdict its own message.
    """

    def __init__(
        self, nfq: NetfilterQueue, handler: Handler, queue: int, *, batch_verdicts: bool = True
    ) -> None:
        self.nfq = nfq
        self._handler = handler
        self._left = 0
        self._fd: int = nfq.get_fd()
        self._verdicts = _Verdicts(self._fd, queue) if batch_verdicts else None

    def fileno(self) -> int:
        return self._fd

    def drain(self, limit: int) -> None:
        self._left = limit
        try:
            self.nfq.run(block=False)
        except _BatchDone:
            pass  # more may wait: the loop polls again at once (level-triggered)
        finally:
            if self._verdicts is not None:
                self._verdicts.flush()

    def on_packet(self, packet: Packet) -> None:
        """The library's callback: the handler, then the end of the batch if it is full."""
        verdicts = self._verdicts
        if verdicts is None:
            self._handler(packet)
        else:
            verdicts.packet = packet
            verdicts.rewritten = False
            self._handler(verdicts)
        self._left -= 1
        if not self._left:
            raise _BatchDone


@contextmanager
def bound(
    queue: int,
    handler: Handler,
    *,
    fail_open: bool,
    whole_packets: bool = False,
    batch_verdicts: bool = True,
) -> Iterator[NfqueueBinding]:
    """The queue bound and configured for the block's duration; unbound on every way out.

    Copies of the headers with F_GSO (the fastest: §3.10), or `whole_packets` (WHOLE_RANGE,
    without F_GSO) for a policy that rewrites them. Accepted packets get batch verdicts unless
    told (NfqueueBinding). Fails before binding when another process holds the queue
    (`ensure_free`).
    """
    ensure_free(queue)
    nfq = NetfilterQueue()
    binding = NfqueueBinding(nfq, handler, queue, batch_verdicts=batch_verdicts)
    try:
        nfq.bind(
            queue,
            binding.on_packet,
            max_len=MAX_LEN,
            mode=COPY_PACKET,
            range=WHOLE_RANGE if whole_packets else COPY_RANGE,
            sock_len=WHOLE_SOCK_LEN if whole_packets else SOCK_LEN,
        )
    except OSError:
        raise QueueError(
            f"cannot bind NFQUEUE {queue}: another program holds it, or this is not root"
        ) from None
    try:
        with queue_socket(nfq) as sock:
            # ENOBUFS only says the kernel dropped messages; with fail-open it accepted them (§3.3).
            sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            set_flags(sock, queue, fail_open=fail_open, whole_packets=whole_packets)
        yield binding
    finally:
        nfq.unbind()


@contextmanager
def queue_socket(nfq: NetfilterQueue) -> Iterator[socket.socket]:
    """A duplicate of the library's netlink socket (same portid), closed after the block."""
    sock = socket.fromfd(nfq.get_fd(), socket.AF_NETLINK, socket.SOCK_RAW)
    try:
        yield sock
    finally:
        sock.close()
