"""The seam between fwemu's loop and a packet queue binding.

The loop (adapters/daemon.py) knows a queue only as a file descriptor to poll and a `drain` that
hands it waiting packets, each of which its handler gives one verdict. netfilterqueue's binding
(adapters/nfqueue.py), with batch verdicts written on the library's socket, is the one in use;
another library becomes one more class with these two methods, and the tests' fakes are another
(tests/adapters/fakes.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class QueuedPacket(Protocol):
    """One queued packet: its bytes as queued (maybe cut to the copy range), and exactly one
    verdict to give."""

    def get_payload(self) -> bytes: ...

    def accept(self) -> None: ...

    def drop(self) -> None: ...

    def set_payload(self, payload: bytes) -> None:
        """Replace the packet's bytes; the next `accept` sends these on (a rewritten packet)."""
        ...


Handler = Callable[[QueuedPacket], None]


class PacketQueue(Protocol):
    """A bound queue whose packets go to the handler given when it was bound."""

    def fileno(self) -> int:
        """Readable while packets wait."""
        ...

    def drain(self, limit: int) -> None:
        """Hand the handler the packets waiting now, at most `limit` (then return, so timers
        and signals get their turn under a flood); a packet's verdict is given before the next
        one is read. A binding may hold accepted packets' verdicts to send them together, but
        never past its return: the loop may then sleep."""
        ...
