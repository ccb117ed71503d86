"""Stand-ins for what the daemon talks to: a queued packet and a queue of them, the raw sockets,
a counting reporter, an engine that rewrites packets."""

from __future__ import annotations

import socket
from typing import Any

from fwemu.adapters.output import Reporter
from fwemu.adapters.queue import Handler
from fwemu.core.decision import Decision
from fwemu.core.engine import Engine
from fwemu.core.events import Event


class FakePacket:
    """What netfilterqueue hands the callback: the bytes, and one verdict to give."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.verdict: str | None = None

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
