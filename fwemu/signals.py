"""Signals held from the first moment of `fwemu run` until its loop takes them over.

Python's default for SIGUSR1 and SIGHUP is to terminate, and `fwemu run` spends ~0.5 s importing
its adapters before the loop's handlers exist: a snapshot (`kill -USR1`) or a reload asked for
then would kill the firewall. `hold()` runs first thing in the command line; the loop's
`Signals` replays what was held (`release()`), so nothing asked for is lost.
"""

from __future__ import annotations

import signal
from types import FrameType

# SIGINT is left alone: Python's own handler raises KeyboardInterrupt, which stops a start-up
# (nothing is installed yet) as Ctrl-C should.
HELD = (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM)
_pending: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _pending.append(signum)


def hold() -> None:
    """Remember these signals instead of acting on them, until `release()`."""
    for signum in HELD:
        signal.signal(signum, _remember)


def release() -> list[int]:
    """The signals held so far, in order (each once), and stop holding: the caller's handlers
    take over (it installs them before calling this)."""
    held = list(dict.fromkeys(_pending))
    _pending.clear()
    return held
