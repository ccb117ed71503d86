"""Stand-ins for what the daemon talks to: a queued packet, the raw sockets, a counting reporter."""

from __future__ import annotations

from typing import Any

from fwemu.adapters.output import Reporter
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

    def _give(self, verdict: str) -> None:
        assert self.verdict is None, "a second verdict"
        self.verdict = verdict


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
