"""Binding a queue: the flags message the kernel ACKs, /proc showing the binding, whole packets
for a policy that rewrites them, and batch verdicts (runs of accepts, what ends them)."""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import cast

import pytest
from netfilterqueue import NetfilterQueue

from fwemu.adapters import nfqueue
from fwemu.adapters.nfqueue import (
    BATCH_DEADLINE_NS,
    WHOLE_RANGE,
    NfqueueBinding,
    QueueCounters,
    QueueError,
    read_queue_counters,
)
from fwemu.adapters.queue import QueuedPacket
from fwemu.lab import call_in_netns, socket_in

from .fakes import FakeNfq, FakePacket
from .nfq_lab import bound_queues, in_netns


def flags_of(message: bytes) -> tuple[int, int, int, int]:
    """(queue, mask, flags, length) of a config message, after checking its header."""
    _, kind, nl_flags, _, _ = struct.unpack_from("=IHHII", message)
    _, _, queue = struct.unpack_from("!BBH", message, 16)
    mask, flags = struct.unpack_from("!4xI4xI", message, 20)
    assert kind == 3 << 8 | 2  # NFQNL_MSG_CONFIG
    assert nl_flags == 0x1 | 0x4  # NLM_F_REQUEST | NLM_F_ACK
    return queue, mask, flags, len(message)


def test_fail_open_sets_both_flags_and_fail_closed_clears_fail_open() -> None:
    # F_FAIL_OPEN = 1, F_GSO = 4 (uapi nfnetlink_queue.h); the mask names both in both cases.
    assert flags_of(nfqueue.config_flags_message(7, fail_open=True)) == (7, 5, 5, 36)
    assert flags_of(nfqueue.config_flags_message(7, fail_open=False)) == (7, 5, 4, 36)


def test_whole_packets_clear_gso() -> None:
    # The mask still names F_GSO: cleared, not left as it was.
    whole = {"whole_packets": True}
    assert flags_of(nfqueue.config_flags_message(7, fail_open=True, **whole)) == (7, 5, 1, 36)
    assert flags_of(nfqueue.config_flags_message(7, fail_open=False, **whole)) == (7, 5, 0, 36)


def accept(packet: QueuedPacket) -> None:
    packet.accept()


def test_bound_queue_is_configured_listed_and_released(netns: str) -> None:
    with ExitStack() as stack:
        # bound() returns only once the kernel ACKed the flags message without error.
        binding = call_in_netns(
            netns, lambda: stack.enter_context(nfqueue.bound(4, accept, fail_open=True))
        )
        columns = bound_queues(netns).split()
        # queue, portid, queue_total, copy_mode (2 = COPY_PACKET), copy_range (§3.3)
        assert columns[0] == "4" and columns[3] == "2" and columns[4] == "128"
        with pytest.raises(QueueError, match="NFQUEUE 4 is already bound by another program"):
            call_in_netns(netns, lambda: nfqueue.ensure_free(4))
        assert call_in_netns(netns, nfqueue.bound_queues) == {4: int(columns[1])}

        # The kernel's refusal is reported: queue 9 is not bound, so it cannot be configured.
        with nfqueue.queue_socket(binding.nfq) as sock, pytest.raises(QueueError) as refused:
            nfqueue.set_flags(sock, 9, fail_open=True)
        assert str(refused.value) == "the kernel refused NFQUEUE 9's flags: No such device"
    assert bound_queues(netns) == ""


PROC = """\
    0  12345     3 2 128    17     4 99 1
    7  23456     0 2 128     0     0  5 1
"""


def test_queue_counters_are_read_for_our_queue() -> None:
    assert read_queue_counters(0, PROC) == QueueCounters(waiting=3, dropped=17, user_dropped=4)
    assert read_queue_counters(7, PROC) == QueueCounters(waiting=0, dropped=0, user_dropped=0)
    assert read_queue_counters(1, PROC) is None


PORT = 9999


def _sum16(data: bytes) -> int:
    """The one's-complement sum of `data` as 16-bit words (RFC 1071), an odd byte padded."""
    total = int.from_bytes(data + b"\0" * (len(data) % 2)) % 0xFFFF
    return total or 0xFFFF


def udp_checksum_ok(ip: bytes) -> bool:
    """Whether an IPv4/UDP packet's checksum is complete and right (RFC 768)."""
    udp = ip[(ip[0] & 0xF) * 4 :]
    pseudo = ip[12:20] + struct.pack("!BBH", 0, socket.IPPROTO_UDP, len(udp))
    return _sum16(pseudo + udp) == 0xFFFF


def upper_cased(ip: bytes) -> bytes:
    """`ip` with its UDP payload upper-cased and the checksum updated from the old and new
    payload only (RFC 1624 eqn. 3), as the core updates its rewrites'."""
    at = (ip[0] & 0xF) * 4 + 8
    old, new = ip[at:], ip[at:].upper()
    (checksum,) = struct.unpack_from("!H", ip, at - 2)
    total = (~checksum & 0xFFFF) + (0xFFFF - _sum16(old)) + _sum16(new)
    updated = ~(total % 0xFFFF or 0xFFFF) & 0xFFFF
    return ip[: at - 2] + struct.pack("!H", updated) + new


def test_whole_packets_come_with_complete_checksums_and_leave_rewritten(netns: str) -> None:
    """On loopback a UDP checksum is left partial for the device (CHECKSUM_PARTIAL); queued
    without F_GSO it comes complete, and the rewrite we send is checked by the receiving socket
    (the kernel marks it CHECKSUM_NONE). A packet longer than the copy range still gets its
    verdict, cut, and goes on whole."""
    in_netns(netns, "ip", "link", "set", "lo", "up")
    rule = ["OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", "4"]
    in_netns(netns, "iptables", "-A", *rule)
    seen: list[tuple[int, bool]] = []

    def rewrite(packet: QueuedPacket) -> None:
        data = packet.get_payload()
        seen.append((len(data), udp_checksum_ok(data)))
        if len(data) < WHOLE_RANGE:
            packet.set_payload(upper_cased(data))
        packet.accept()

    with ExitStack() as stack:
        binding = call_in_netns(
            netns,
            lambda: stack.enter_context(
                nfqueue.bound(4, rewrite, fail_open=False, whole_packets=True)
            ),
        )
        assert bound_queues(netns).split()[4] == str(WHOLE_RANGE)  # the copy range
        receiver = stack.enter_context(socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM))
        sender = stack.enter_context(socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM))
        receiver.settimeout(5)
        receiver.bind(("127.0.0.1", PORT))
        short, long = b"rewritten on its way " * 50, b"x" * 5000
        for payload, delivered in ((short, short.upper()), (long, long)):
            sender.sendto(payload, receiver.getsockname())
            assert select.select([binding], [], [], 5)[0]
            binding.drain(1)
            assert receiver.recv(8192) == delivered
    # IPv4 and UDP headers and the payload, whole; the long one cut (its checksum unverifiable).
    assert seen == [(20 + 8 + len(short), True), (WHOLE_RANGE, False)]


# --- batch verdicts ---------------------------------------------------------------------------


def test_a_batch_verdict_is_the_message_libnetfilter_queue_sends() -> None:
    # nfq_set_verdict_batch(qh, id, NF_ACCEPT): nlmsghdr, nfgenmsg (res_id = the queue, network
    # order), NFQA_VERDICT_HDR {verdict, id}, network order (uapi nfnetlink_queue.h).
    assert nfqueue.accept_message(7, 0x01020304, batch=True) == (
        struct.pack("=IHHII", 32, 3 << 8 | 3, 0x1, 0, 0)
        + struct.pack("!BBH", socket.AF_UNSPEC, 0, 7)
        + struct.pack("=HH", 12, 2)
        + struct.pack("!II", 1, 0x01020304)
    )


Decide = Callable[[QueuedPacket], None]


def by_payload(packet: QueuedPacket) -> None:
    """Drop b"drop", send b"rewrite" on as b"REWRITTEN", accept the rest."""
    data = packet.get_payload()
    if data == b"drop":
        packet.drop()
    else:
        if data == b"rewrite":
            packet.set_payload(b"REWRITTEN")
        packet.accept()


CLOCK = [0]  # the binding's monotonic_ns while `queue_of` is in use: time stands still


@pytest.fixture
def queue_of(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., tuple[NfqueueBinding, FakeNfq]]]:
    """A binding over a FakeNfq of packets with these payloads (ids 1, 2, ...), deciding with
    `decide`, on a clock that moves only when a test moves CLOCK."""
    CLOCK[0] = 0
    monkeypatch.setattr(nfqueue, "monotonic_ns", lambda: CLOCK[0])
    made: list[FakeNfq] = []

    def make(
        payloads: list[bytes], decide: Decide = by_payload, **options: bool
    ) -> tuple[NfqueueBinding, FakeNfq]:
        nfq = FakeNfq([FakePacket(data, i) for i, data in enumerate(payloads, 1)], queue=7)
        made.append(nfq)
        binding = NfqueueBinding(cast(NetfilterQueue, nfq), decide, 7, **options)
        nfq.callback = binding.on_packet
        return binding, nfq

    yield make
    for nfq in made:
        nfq.close()


def test_a_run_of_accepts_is_one_message_and_a_drop_or_a_rewrite_ends_it(
    queue_of: Callable[..., tuple[NfqueueBinding, FakeNfq]],
) -> None:
    payloads = [b"a", b"b", b"drop", b"c", b"rewrite", b"d", b"e", b"f"]
    binding, nfq = queue_of(payloads)
    packets = list(nfq.packets)
    binding.drain(256)
    # The run before a drop or a rewrite is sent first, so packets leave in the order they came;
    # the last run as the drain ends (no packet left: recv would block).
    assert nfq.wire == [("batch", 2), ("drop", 3), ("batch", 4), ("accept", 5), ("batch", 8)]
    assert packets[4].data == b"REWRITTEN"
    # A batched packet gives no verdict of its own: the run's message is all the kernel gets.
    assert [p.verdict for p in packets] == [None, None, "drop", None, "accept", None, None, None]


def test_a_run_holds_at_most_255_verdicts(
    queue_of: Callable[..., tuple[NfqueueBinding, FakeNfq]],
) -> None:
    binding, nfq = queue_of([b"a"] * 600)
    binding.drain(1000)
    assert nfq.wire == [("batch", 255), ("batch", 510), ("batch", 600)]


def test_a_run_is_sent_once_its_first_verdict_has_waited_the_deadline(
    queue_of: Callable[..., tuple[NfqueueBinding, FakeNfq]],
) -> None:
    step = BATCH_DEADLINE_NS * 2 // 5  # each packet takes 40 % of the deadline to decide

    def slow(packet: QueuedPacket) -> None:
        CLOCK[0] += step
        packet.accept()

    binding, nfq = queue_of([b"a"] * 10, slow)
    binding.drain(256)
    # Packet 1 held at 1 step; at packet 4 it has waited 3 steps (>= the deadline): sent. The
    # next run starts at packet 5 and is sent at packet 8; 9 and 10 as the drain ends.
    assert nfq.wire == [("batch", 4), ("batch", 8), ("batch", 10)]


def test_a_drain_ended_by_its_limit_or_a_failing_handler_sends_its_run(
    queue_of: Callable[..., tuple[NfqueueBinding, FakeNfq]],
) -> None:
    binding, nfq = queue_of([b"a"] * 5)
    binding.drain(3)
    assert nfq.wire == [("batch", 3)] and len(nfq.packets) == 2

    def fails_on_the_third(packet: QueuedPacket) -> None:
        if packet.get_payload() == b"!":
            raise RuntimeError("handler bug")
        packet.accept()

    binding, nfq = queue_of([b"a", b"b", b"!", b"c"], fails_on_the_third)
    with pytest.raises(RuntimeError, match="handler bug"):
        binding.drain(256)
    assert nfq.wire == [("batch", 2)]


def test_without_batch_verdicts_the_handler_gives_the_library_s_own(
    queue_of: Callable[..., tuple[NfqueueBinding, FakeNfq]],
) -> None:
    seen: list[QueuedPacket] = []

    def accept(packet: QueuedPacket) -> None:
        seen.append(packet)
        packet.accept()

    binding, nfq = queue_of([b"a", b"b"], accept, batch_verdicts=False)
    packets = list(nfq.packets)
    binding.drain(256)
    assert seen == packets
    assert nfq.wire == [("accept", 1), ("accept", 2)]


def test_a_burst_leaves_in_order_by_batch_verdicts_dropped_and_rewritten_ones_by_their_own(
    netns: str,
) -> None:
    """Eight datagrams queued before the queue is read, then one drain: the accepted ones leave
    by batch messages alone (had the kernel refused them, they would stay queued, and never
    arrive), the dropped one never arrives, the rewritten one arrives rewritten, all in order."""
    in_netns(netns, "ip", "link", "set", "lo", "up")
    rule = ["OUTPUT", "-p", "udp", "--dport", str(PORT), "-j", "NFQUEUE", "--queue-num", "4"]
    in_netns(netns, "iptables", "-A", *rule)
    payloads = [b"1", b"2", b"drop", b"3", b"rewrite", b"4", b"5", b"6"]

    def decide(packet: QueuedPacket) -> None:
        data = packet.get_payload()
        if data.endswith(b"drop"):
            packet.drop()
        else:
            if data.endswith(b"rewrite"):
                packet.set_payload(upper_cased(data))
            packet.accept()

    with ExitStack() as stack:
        binding = call_in_netns(
            netns,
            lambda: stack.enter_context(
                nfqueue.bound(4, decide, fail_open=False, whole_packets=True)
            ),
        )
        receiver = stack.enter_context(socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM))
        sender = stack.enter_context(socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM))
        receiver.settimeout(5)
        receiver.bind(("127.0.0.1", PORT))
        for payload in payloads:
            sender.sendto(payload, receiver.getsockname())
        assert bound_queues(netns).split()[2] == str(len(payloads))  # all queued, none read
        binding.drain(256)
        assert bound_queues(netns).split()[2] == "0"  # every one has its verdict
        arrived = [receiver.recv(64) for _ in range(len(payloads) - 1)]
    assert arrived == [b"1", b"2", b"3", b"REWRITE", b"4", b"5", b"6"]
