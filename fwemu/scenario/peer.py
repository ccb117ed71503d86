"""Scripted endpoint sockets that note, in plain words, what each call saw.

Shared by `fwemu demo` and `fwemu test`. Each call returns what it observed as a word: "connected",
"sent", "data", "EOF", "timeout", "nothing", "readable", "echoed", "unreachable" (a UDP socket
told of an ICMP port unreachable), or the errno name of the failure ("ECONNRESET",
"ECONNREFUSED", ...). Failures are observations, never exceptions.
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
# The largest UDP payload (IPv6's, 65,535 minus the UDP header): a receive never truncates one.
_MAX_DATAGRAM = 65527
# Python 3.11's socket module lacks them: linux/in.h and linux/in6.h.
_IP_RECVERR = 11
_IPV6_RECVERR = 25


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
        return _failure(self.note, call, err, timeout)


class DatagramPeer:
    """One endpoint's UDP socket (the client's connected to the server's port, the server's
    bound to it); `note` records what it saw. `sender` is where its latest datagram came from:
    where a server answers."""

    def __init__(self, sock: socket.socket, note: Callable[[str], None]) -> None:
        self.sock = sock
        self.note = note
        self.sender: tuple[str, int] | None = None

    def send_to(self, data: bytes, address: tuple[str, int]) -> str:
        """ "sent" once the kernel took the datagram (nothing says it arrived), "unreachable"
        if the socket had been told of an ICMP port unreachable since its last call, or the
        errno."""
        # Noted first: the datagram may cross fwemu and arrive before this thread runs again.
        self.note(f"sends {_shown(data)} to {hostport(address)}")
        try:
            self.sock.sendto(data, address)
        except OSError as err:
            return self._failed("sendto", err, 0)
        return "sent"

    def recv_from(self, timeout: float) -> str:
        """Wait up to `timeout` for a datagram: "data", "timeout", "unreachable" or the errno."""
        self.sock.settimeout(timeout)
        try:
            data, sender = self.sock.recvfrom(_MAX_DATAGRAM)
        except OSError as err:
            return self._failed("recvfrom", err, timeout)
        self.sender = sender[:2]
        self.note(f"received {_shown(data)} from {hostport(sender)}")
        return "data"

    def echo(self, seconds: float) -> tuple[str, int]:
        """Send every datagram back to its sender for `seconds`: ("echoed", how many), or the
        word for what stopped it ("unreachable", an errno) and how many it echoed before."""
        end = time.monotonic() + seconds
        echoed = 0
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, sender = self.sock.recvfrom(_MAX_DATAGRAM)
            except TimeoutError:
                break
            except OSError as err:
                return self._failed("echo", err, left), echoed
            self.sender = sender[:2]
            self.note(f"echoes {_shown(data)} to {hostport(sender)}")  # first, as in send_to
            try:
                self.sock.sendto(data, sender)
            except OSError as err:
                return self._failed("echo", err, 0), echoed
            echoed += 1
        plural = "datagram" if echoed == 1 else "datagrams"
        self.note(f"echo over: {echoed} {plural} echoed, answering no more")
        return "echoed", echoed

    def _failed(self, call: str, err: OSError, timeout: float) -> str:
        if err.errno == errno.ECONNREFUSED:
            # What a UDP socket reports of an ICMP port unreachable (udp(7)).
            self.note(f"{call}: ECONNREFUSED: an ICMP port unreachable came back")
            return "unreachable"
        return _failure(self.note, call, err, timeout)


def hear_errors(sock: socket.socket) -> None:
    """Let an unconnected UDP socket learn of ICMP errors as a connected one does: its next call
    fails with the error (IP_RECVERR, ip(7); IPV6_RECVERR, ipv6(7))."""
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)


def _failure(note: Callable[[str], None], call: str, err: OSError, timeout: float) -> str:
    """Note a failed call: "timeout", or the errno's name."""
    if isinstance(err, TimeoutError) or err.errno is None:
        note(f"{call}: no answer within {format_duration(timeout)} (its socket timeout)")
        return "timeout"
    name = errno.errorcode.get(err.errno, str(err.errno))
    note(f"{call}: {name} ({os.strerror(err.errno).lower()})")
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
