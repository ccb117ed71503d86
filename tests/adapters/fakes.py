"""Stand-ins for what the daemon talks to: a queued packet and a queue of them, netfilterqueue's
queue, the raw sockets, a counting reporter, an engine that rewrites packets."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from fwemu.adapters.output import Reporter
from fwemu.adapters.queue import Handler
from fwemu.core.decision import Decision
from fwemu.core.engine import Engine
from fwemu.core.events import Event


class FakePacket:
    """What netfilterqueue hands the callback: the bytes, its queue id, and one verdict to give
    (told to `on_verdict` if set)."""

    def __init__(self, data: bytes, packet_id: int = 0) -> None:
        self.data = data
        self.id = packet_id  # netfilterqueue's name
        self.verdict: str | None = None
        self.on_verdict: Callable[[FakePacket], None] | None = None

    def get_payload(self) -> bytes:
        return self.data

    def accept(self) -> None:
        self._give("accept")

    def drop(self) -> None:
        self._give("drop")

    def set_payload(self, payload: bytes) -> None:
        assert self.verdict is None, "rewritten after its verdict"
        self.data = payload

    def _give(self, verdict: str) -> None:
        assert self.verdict is None, "a second verdict"
        self.verdict = verdict
        if self.on_verdict is not None:
            self.on_verdict(self)


class FakeNfq:
    """netfilterqueue's NetfilterQueue as NfqueueBinding uses it: `run(block=False)` hands each
    waiting packet to the callback until none is left or the callback raises, and its socket
    is one end of a datagram pair whose other end plays the kernel: `wire` is every verdict in
    the order the kernel got them, ("batch", last id) for a batch message, (verdict, id) for a
    packet's own."""

    def __init__(self, packets: list[FakePacket], queue: int = 0) -> None:
        self.packets = list(packets)
        self.callback: Callable[[Any], None] | None = None  # the binding's, for Packets
        self.queue = queue
        self._wire: list[tuple[str, int]] = []
        self._kernel, self._ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for packet in self.packets:
            packet.on_verdict = self._own_verdict

    def get_fd(self) -> int:
        return self._ours.fileno()

    def run(self, block: bool) -> None:
        assert not block and self.callback is not None
        while self.packets:
            self.callback(self.packets.pop(0))

    @property
    def wire(self) -> list[tuple[str, int]]:
        self._read()
        return self._wire

    def close(self) -> None:
        self._kernel.close()
        self._ours.close()

    def _own_verdict(self, packet: FakePacket) -> None:
        assert packet.verdict is not None
        self._read()  # batch messages written before it came first
        self._wire.append((packet.verdict, packet.id))

    def _read(self) -> None:
        while True:
            try:
                message = self._kernel.recv(256, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            self._wire.append(("batch", batch_verdict_id(message, self.queue)))


def batch_verdict_id(message: bytes, queue: int) -> int:
    """The id an NFQNL_MSG_VERDICT_BATCH accepting packets of `queue` goes up to, after checking
    every field (uapi linux/netlink.h, nfnetlink.h, nfnetlink_queue.h)."""
    length, kind, flags, _, _ = struct.unpack_from("=IHHII", message)
    family, version, res_id = struct.unpack_from("!BBH", message, 16)
    attr_len, attr_type = struct.unpack_from("=HH", message, 20)
    verdict, packet_id = struct.unpack_from("!II", message, 24)
    assert (length, len(message)) == (32, 32)
    assert (kind, flags) == (3 << 8 | 3, 0x1)  # NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST
    assert (family, version, res_id) == (socket.AF_UNSPEC, 0, queue)
    assert (attr_len, attr_type, verdict) == (12, 2, 1)  # NFQA_VERDICT_HDR {NF_ACCEPT, id}
    return int(packet_id)


class FakeQueue:
    """A PacketQueue (fwemu/adapters/queue.py) of FakePackets put in by the test; readable while
    any wait."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.waiting: list[FakePacket] = []
        self._readable, self._writable = socket.socketpair()
        self.drains: list[int] = []  # packets handed over per drain

    def put(self, *packets: FakePacket) -> None:
        if not self.waiting:
            self._writable.send(b"!")
        self.waiting.extend(packets)

    def fileno(self) -> int:
        return self._readable.fileno()

    def drain(self, limit: int) -> None:
        batch, self.waiting = self.waiting[:limit], self.waiting[limit:]
        if not self.waiting:
            self._readable.recv(1)
        for packet in batch:
            self._handler(packet)
        self.drains.append(len(batch))

    def close(self) -> None:
        self._readable.close()
        self._writable.close()


class CountingReporter(Reporter):
    """Counts the JSON records built."""

    built = 0

    def record(self, event: Event) -> dict[str, Any]:
        self.built += 1
        return super().record(event)


class NoInjector:
    """Instead of the raw sockets (root only): no packet here makes the engine inject."""

    def send(self, packet: bytes) -> bool:
        raise AssertionError("nothing is to be injected")


def rewritten(data: bytes) -> bytes:
    """What `Rewriting` sends on in place of `data`: its last byte inverted."""
    return data[:-1] + bytes([data[-1] ^ 0xFF])


class Rewriting(Engine):
    """The real engine, but every packet it accepts goes on rewritten (Decision.rewrite), as the
    core's SYN cookies and sequence translation will have it: the loop's side without them."""

    def handle_packet(self, data: bytes, *, now: float) -> Decision:
        decision = super().handle_packet(data, now=now)
        return decision._replace(rewrite=rewritten(data)) if decision.accepted else decision
