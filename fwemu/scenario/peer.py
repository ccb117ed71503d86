"""A scripted endpoint socket that notes, in plain words, what each call saw.

Shared by `fwemu demo` and `fwemu test`. Each call returns what it observed as a word: "connected",
"sent", "data", "EOF", "timeout", "nothing", "readable", or the errno name of the failure
("ECONNRESET", "ECONNREFUSED", ...). Failures are observations, never exceptions.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from fwemu.policy import format_duration

# How long `poll` waits per round in `quiet`, so it notices the end of its wait promptly.
_POLL_MS = 50
# A payload longer than this is noted by its size rather than its text.
_SHOWN_BYTES = 40


class Peer:
    """One endpoint's connected (or connecting) socket; `note` records what it saw."""

    def __init__(self, sock: socket.socket, note: Callable[[str], None]) -> None:
        self.sock = sock
        self.note = note

    def connect(self, address: tuple[str, int], timeout: float) -> str:
        """ "connected" or the errno name ("timeout" when no answer came within `timeout`)."""
        self.sock.settimeout(timeout)
        self.note(f"connect() to {hostport(address)}")
        try:
            self.sock.connect(address)
        except OSError as err:
            return self.failed("connect", err, timeout)
        local = hostport(self.sock.getsockname())
        self.note(f"connected to {hostport(address)} from {local}")
        return "connected"

    def send(self, data: bytes) -> str:
        """ "sent" once the kernel took all of `data` (not that the peer got it), or the errno."""
        try:
            self.sock.sendall(data)
        except OSError as err:
            return self.failed("send", err, 0)
        self.note(f"sent {_shown(data)}")
        return "sent"

    def recv(self, timeout: float, size: int | None = None) -> str:
        """Wait up to `timeout` for data (`size` bytes in all, if given): "data", "EOF",
        "timeout" or the errno name."""
        self.sock.settimeout(timeout)
        end = time.monotonic() + timeout
        received = b""
        try:
            while True:
                data = self.sock.recv(4096 if size is None else size - len(received))
                received += data
                if not data or size is None or len(received) >= size:
                    break
                self.sock.settimeout(max(end - time.monotonic(), 0.001))
        except OSError as err:
            return self.failed("recv", err, timeout, received)
        if received:
            self.note(f"received {_shown(received)}")
        if not data:
            self.note("recv: EOF (the peer will send no more)")
            return "EOF"
        return "data"

    def quiet(self, over: threading.Event, timeout: float | None = None) -> str:
        """Wait, reading nothing, until `over` is set (or `timeout` passes): "nothing" if the
        socket stayed quiet, else what woke it (the errno name, or "readable")."""
        poller = select.poll()
        # No event asked for: poll still reports POLLHUP and POLLERR, i.e. a reset (poll(2)).
        poller.register(self.sock, 0)
        started = time.monotonic()
        end = None if timeout is None else started + timeout
        while not over.is_set() and (end is None or time.monotonic() < end):
            if poller.poll(_POLL_MS):
                return self._woken(started)
        still = "" if end is not None else " (still waiting)"
        self.note(f"saw nothing for {format_duration(time.monotonic() - started, 0.1)}{still}")
        return "nothing"

    def _woken(self, started: float) -> str:
        code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not code:
            self.note("socket woke up with no error")
            return "readable"
        name = errno.errorcode.get(code, str(code))
        # Linux reports a RST received in CLOSE_WAIT as EPIPE, elsewhere ECONNRESET (tcp_reset()
        # in net/ipv4/tcp_input.c).
        self.note(
            f"socket reset after {format_duration(time.monotonic() - started, 0.1)} quiet: {name} "
            f"({os.strerror(code).lower()})"
        )
        return name

    def failed(self, call: str, err: OSError, timeout: float, received: bytes = b"") -> str:
        if received:
            self.note(f"received {_shown(received)}")
        if isinstance(err, TimeoutError) or err.errno is None:
            self.note(f"{call}: no answer within {format_duration(timeout)} (its socket timeout)")
            return "timeout"
        name = errno.errorcode.get(err.errno, str(err.errno))
        self.note(f"{call}: {name} ({os.strerror(err.errno).lower()})")
        return name


def abort(sock: socket.socket) -> None:
    """Close without a FIN handshake (SO_LINGER 0: a RST), so nothing lingers on into what comes
    next; SHUT_RD first wakes a thread still blocked on it (shutdown(2))."""
    with suppress(OSError):
        # struct linger {int l_onoff; int l_linger;} (socket(7)): on, 0 seconds.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    sock.close()


def hostport(address: tuple[str, int]) -> str:
    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shown(data: bytes) -> str:
    if len(data) > _SHOWN_BYTES:
        return f"{len(data)} bytes"
    return repr(data.decode(errors="replace"))
