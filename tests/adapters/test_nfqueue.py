"""Binding a queue: the flags message the kernel ACKs, /proc showing the binding."""

from __future__ import annotations

import struct
from contextlib import ExitStack

import pytest
from netfilterqueue import Packet

from fwemu.adapters import nfqueue
from fwemu.adapters.nfqueue import QueueCounters, QueueError, read_queue_counters
from fwemu.lab import call_in_netns

from .nfq_lab import bound_queues


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
