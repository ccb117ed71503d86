"""Binding a queue: the flags message the kernel ACKs, /proc showing the binding, and whole
packets for a policy that rewrites them."""

from __future__ import annotations

import select
import socket
import struct
from contextlib import ExitStack

import pytest
from netfilterqueue import Packet

from fwemu.adapters import nfqueue
from fwemu.adapters.nfqueue import WHOLE_RANGE, QueueCounters, QueueError, read_queue_counters
from fwemu.adapters.queue import QueuedPacket
from fwemu.lab import call_in_netns, socket_in

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


def accept(packet: Packet) -> None:
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
