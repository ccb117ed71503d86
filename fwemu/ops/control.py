"""The daemon's side of the control socket, served from its one event loop.

Everything is non-blocking and every turn does bounded work, so a client can never stall packet
verdicts: a few accepts, one recv and one send per ready connection, and at most `ITEMS_PER_TURN`
reply items built within `TURN_BUDGET` (a flow listing of a million flows, or `fwemu expire` of
100k flows, is spread over many loop iterations). A
client that sends no request in time, stops reading its reply, or lets a followed event stream
back up past `MAX_BACKLOG` is dropped.

The server keeps the latest events as the core's Event objects (appending one costs nothing
measurable) and subscribes to the reporter's JSON records only while a client follows events, so
nobody pays for JSON nobody reads.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import stat
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from fwemu.adapters.output import Reporter
from fwemu.core.events import Event
from fwemu.errors import FwemuError
from fwemu.ops.filters import Selector
from fwemu.ops.protocol import (
    MAX_REQUEST,
    ProtocolError,
    Request,
    encode,
    error_reply,
    parse_request,
)

# Where the daemon listens by default, and where clients look for daemons.
CONTROL_DIR = Path("/run/fwemu")
CONTROL_SUFFIX = ".sock"
# Events kept for `fwemu events`: enough to see what just happened, bounded in memory.
HISTORY_SIZE = 1000
ACCEPT_BATCH = 8  # connections accepted per turn
RECV_SIZE = 4096
ITEMS_PER_TURN = 256  # reply items built per turn (a flow record takes a few microseconds)
# Seconds of reply building per turn, whatever the items cost (an expiry with RSTs: ~0.1 ms), as
# the daemon's TIMER_BUDGET for timers: verdicts wait at most about this long.
TURN_BUDGET = 0.001
SEND_CHUNK = 64 * 1024  # a reply is built ahead until this much waits to be sent
MAX_BACKLOG = 1024 * 1024  # unsent bytes after which a following client is dropped as too slow
REQUEST_TIMEOUT = 5.0  # seconds to send a complete request after connecting
STALL_TIMEOUT = 10.0  # seconds a reply may wait unread before the client is dropped
CONNECT_TIMEOUT = 1.0  # seconds a liveness probe waits for connect()


class ControlError(FwemuError):
    """The control socket cannot be created, or no daemon can be reached through one."""


def default_path(queue: int, netns: str | None) -> Path:
    """/run/fwemu/q<N>.sock, or /run/fwemu/<netns>.q<N>.sock inside a named namespace (queue
    numbers are per namespace, so two labs may both use queue 0)."""
    name = f"q{queue}{CONTROL_SUFFIX}"
    return CONTROL_DIR / (f"{netns}.{name}" if netns else name)


def is_alive(path: Path) -> bool:
    """Whether a process accepts connections on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONNECT_TIMEOUT)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class Reply:
    """What a request produces: item records, built lazily as the client reads them (the
    last is the {"ok": ...} summary), then, if `follow` is set, every new matching event."""

    items: Iterator[dict[str, Any]]
    follow: Selector | None = None


class Handler(Protocol):
    def handle(self, request: Request, history: deque[Event]) -> Reply:
        """Serve one request; `history` holds the latest events, oldest first."""
        ...


@dataclass(slots=True)
class _Session:
    sock: socket.socket
    deadline: float  # monotonic time by which the session must make progress
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    reply: Iterator[dict[str, Any]] | None = None
    follow: Selector | None = None
    done: bool = False  # the reply is complete: close once outbuf is sent
    eof: bool = False  # the client sends no more


class ControlServer:
    """Listens on `path` (mode 0600; a stale socket left by a killed run is replaced) until
    closed, then removes it. Its connections wait in a selector of its own: the daemon's loop
    polls `fileno()` (readable when a connection is ready) and calls `serve()`."""

    def __init__(self, path: Path, handler: Handler, reporter: Reporter) -> None:
        self.path = path
        self._handler = handler
        self._reporter = reporter
        self._history: deque[Event] = deque(maxlen=HISTORY_SIZE)
        self._sessions: dict[int, _Session] = {}
        self._subscribed = False
        self._listener = _listen(path)
        self._inode = os.stat(path).st_ino
        # Each key's data is what to call with the ready mask.
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
        reporter.watch(self._history.append)

    def fileno(self) -> int:
        return self._selector.fileno()

    def serve(self) -> None:
        """One turn: serve every ready connection, with bounded work each."""
        for key, mask in self._selector.select(0):
            key.data(mask)

    def _log(self, text: str) -> None:
        self._reporter.line(text)

    # ------------------------------------------------------------------ loop callbacks

    def _accept(self, mask: int) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and the like: the next turn tries again
                self._log(f"control socket: cannot accept a client: {err}")
                return
            sock.setblocking(False)
            session = _Session(sock, time.monotonic() + REQUEST_TIMEOUT)
            self._sessions[sock.fileno()] = session
            self._selector.register(sock, selectors.EVENT_READ, partial(self._ready, session))

    def _ready(self, session: _Session, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read(session)
        if mask & selectors.EVENT_WRITE and session.sock.fileno() in self._sessions:
            self._write(session)

    def _read(self, session: _Session) -> None:
        try:
            data = session.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        answering = session.reply is not None or session.outbuf or session.done
        if not data:
            # The client hung up, or only shut down its sending side: a reply still being sent
            # goes on; a followed stream ends (nobody asks for more).
            session.eof = True
            if answering and session.follow is None:
                self._rewatch(session)
            else:
                self._drop(session)
            return
        if answering or session.follow is not None:
            return  # one request per connection; later bytes are ignored
        session.inbuf += data
        line, newline, _ = session.inbuf.partition(b"\n")
        if not newline:
            if len(session.inbuf) > MAX_REQUEST:
                self._respond(session, iter([error_reply("request too long")]))
            return
        try:
            request = parse_request(bytes(line))
        except ProtocolError as err:
            self._respond(session, iter([error_reply(str(err))]))
            return
        try:
            reply = self._handler.handle(request, self._history)
        except Exception as err:
            self._respond(session, iter([self._failed(request.command, err)]))
            return
        self._respond(session, reply.items, reply.follow)

    def _failed(self, command: str, err: Exception) -> dict[str, Any]:
        """A bug while serving a request: the client is told, the firewall goes on."""
        message = f"internal error serving {command!r}: {err!r}"
        self._log(f"control socket: {message}")
        return error_reply(message)

    def _respond(
        self,
        session: _Session,
        items: Iterator[dict[str, Any]],
        follow: Selector | None = None,
    ) -> None:
        session.inbuf.clear()
        session.reply, session.follow = items, follow
        session.deadline = time.monotonic() + STALL_TIMEOUT
        self._fill(session)
        self._rewatch(session)
        if follow is not None:
            self._follow_changed()

    def _fill(self, session: _Session) -> None:
        """Build reply items until a chunk is ready or the turn's budget is used."""
        if session.reply is None:
            return
        end = time.monotonic() + TURN_BUDGET
        for _ in range(ITEMS_PER_TURN):
            if len(session.outbuf) >= SEND_CHUNK or time.monotonic() >= end:
                return
            try:
                item = next(session.reply, None)
            except Exception as err:
                item, session.follow = self._failed("reply", err), None
                session.reply = iter(())
                self._follow_changed()
            if item is None:
                session.reply = None
                session.done = session.follow is None
                return
            session.outbuf += encode(item)

    def _write(self, session: _Session) -> None:
        try:
            sent = session.sock.send(session.outbuf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EPIPE, ECONNRESET: the client is gone
            self._drop(session)
            return
        del session.outbuf[:sent]
        if sent:
            session.deadline = time.monotonic() + STALL_TIMEOUT
        self._fill(session)
        if session.done and not session.outbuf:
            self._drop(session)
        else:
            self._rewatch(session)

    # ------------------------------------------------------------------ events and time

    def publish(self, record: dict[str, Any]) -> None:
        """A new event (in `--events` JSON form), for the followers."""
        for session in list(self._sessions.values()):
            if session.follow is None or not session.follow.matches_event(record):
                continue
            was_empty = not session.outbuf
            session.outbuf += encode({"event": record})
            if len(session.outbuf) > MAX_BACKLOG:
                self._log("control socket: dropped a client that does not read its events")
                self._drop(session)
            elif was_empty:
                session.deadline = time.monotonic() + STALL_TIMEOUT
                self._rewatch(session)

    def expire_sessions(self, now: float) -> float | None:
        """Drop clients that sent no request, or read nothing, in time; when this must next run
        (monotonic), if any session can time out."""
        if not self._sessions:  # the daemon asks on every turn of its loop
            return None
        due = None
        for session in list(self._sessions.values()):
            if session.follow is not None and not session.outbuf:
                continue  # an idle follower waits for events as long as it likes
            if now >= session.deadline:
                self._drop(session)
            elif due is None or session.deadline < due:
                due = session.deadline
        return due

    # ------------------------------------------------------------------ bookkeeping

    def _rewatch(self, session: _Session) -> None:
        """Wait for what the session needs next: room to send a pending reply, and (unless the
        client shut down its side) input, which also tells when it hangs up."""
        pending = bool(session.outbuf) or session.reply is not None
        events = (selectors.EVENT_WRITE if pending else 0) | (
            0 if session.eof else selectors.EVENT_READ
        )
        key = self._selector.get_key(session.sock)
        if events != key.events:
            self._selector.modify(session.sock, events, key.data)

    def _drop(self, session: _Session) -> None:
        fd = session.sock.fileno()
        if self._sessions.pop(fd, None) is None:
            return
        self._selector.unregister(session.sock)
        session.sock.close()
        if session.follow is not None:
            self._follow_changed()

    def _follow_changed(self) -> None:
        """Get the reporter's JSON records while some client follows events, and only then."""
        following = any(s.follow is not None for s in self._sessions.values())
        if following and not self._subscribed:
            self._reporter.subscribe(self.publish)
        elif self._subscribed and not following:
            self._reporter.unsubscribe(self.publish)
        self._subscribed = following

    def close(self) -> None:
        """Close every connection and the listener, and remove the socket file if it is still
        ours (a later run may already have replaced it)."""
        for session in list(self._sessions.values()):
            self._drop(session)
        self._selector.close()
        self._listener.close()
        try:
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass


def _listen(path: Path) -> socket.socket:
    if path.parent == CONTROL_DIR:
        CONTROL_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    _replace_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    # 0600 from the start: there is no moment when another user could connect.
    umask = os.umask(0o177)
    try:
        sock.bind(str(path))
        sock.listen(16)
    except OSError as err:
        sock.close()
        reason = err.strerror or str(err)
        if err.errno == errno.ENOENT:
            reason = f"no directory {path.parent}"
        raise ControlError(
            f"cannot create the control socket {path}: {reason}; choose another --control PATH"
        ) from None
    finally:
        os.umask(umask)
    return sock


def _replace_stale(path: Path) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlError(f"{path} exists and is not a socket; choose another --control PATH")
    if is_alive(path):
        raise ControlError(
            f"another fwemu is serving the control socket {path}; stop it or choose another "
            "--control PATH"
        )
    path.unlink()
