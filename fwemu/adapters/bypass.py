"""Counting the packets that went past fwemu unseen.

Fail-open (fwemu's default) makes the kernel accept a packet when the queue is full or fwemu's
socket cannot take it, and no kernel counter says so: `queue_dropped` and `queue_user_dropped`
count only the fail-closed drops (nfnetlink_queue.c, `__nfqnl_enqueue_packet`). Such a packet
never reaches the state machine, so its flow's timer is not renewed and the policy no longer
says what happens to it. fwemu's own rules count every packet they send towards the queue (its
chain's NFQUEUE rules, which every protocol's jump leads to: their counters summed are TCP's and
UDP's together); what fwemu neither received nor has waiting in the queue, nor the kernel
dropped, went past it.

The rules' counters take an `iptables` process to read (milliseconds), so a thread reads them
once a second and wakes the event loop through a socket only when the count grew; the loop
reports it (`Daemon`), so log lines and counters stay single-threaded.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from contextlib import suppress

from fwemu.adapters import iptables
from fwemu.adapters.nfqueue import read_queue_counters

INTERVAL = 1.0  # seconds between readings: the warning comes at most this often


class BypassWatch:
    """Watches queue `queue`'s rules against `received()`, the packets fwemu has taken off it.

    The readings can only err low: the rules' counter is read first, and a packet is counted
    by its rule and enqueued in one go, so whatever it counted is by then waiting, taken,
    dropped or bypassed; a verdict given between reading the queue and `received()` counts a
    packet twice. (fwemu binds its queue before it installs its rules, whose counters start at
    0, so there is nothing to subtract at start.) Readings are believed only once two in a row
    show a count, in case a packet is ever caught in flight.
    """

    def __init__(self, queue: int, received: Callable[[], int]) -> None:
        self._queue = queue
        self._received = received
        self._wake, self._signal = socket.socketpair()
        for sock in (self._wake, self._signal):
            sock.setblocking(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fwemu-bypass", daemon=True)
        self._confirmed = 0  # written by the thread only
        self._reported = 0  # read and written by the loop only

    def fileno(self) -> int:
        """Readable when more packets were seen to bypass fwemu since `take()` last ran."""
        return self._wake.fileno()

    def start(self) -> None:
        """Start watching, once the rules are in place."""
        self._thread.start()

    def take(self) -> tuple[int, int]:
        """(packets bypassed since the last call, packets bypassed in all)."""
        with suppress(BlockingIOError):
            while self._wake.recv(64):
                pass
        total = self._confirmed
        new, self._reported = total - self._reported, total
        return new, total

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._wake.close()
        self._signal.close()

    def _watch(self) -> None:
        previous = 0
        while not self._stop.wait(INTERVAL):
            gap = self._gap()
            if gap is None:
                continue
            seen, previous = min(previous, gap), gap
            if seen > self._confirmed:
                self._confirmed = seen
                with suppress(BlockingIOError):  # a wake-up is already pending
                    self._signal.send(b"!")

    def _gap(self) -> int | None:
        """Packets the rules counted that fwemu did not take and the kernel did not drop."""
        counted = iptables.queued_packets(self._queue)  # first: what follows can only be newer
        queue = read_queue_counters(self._queue)
        if counted is None or queue is None:
            return None
        taken = self._received()
        return counted - taken - queue.waiting - queue.dropped - queue.user_dropped
