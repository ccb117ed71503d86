"""The daemon's side of the control socket, served from its one event loop.

Everything is non-blocking and every turn does bounded work, so a client can never stall packet
verdicts: a few accepts, one recv and one send per ready connection, and reply items built within
`TURN_BUDGET` for all of them (a flow listing of a million flows, or `fwemu expire` of 100k flows,
is spread over many loop iterations). A client that sends no request in time, stops reading its
reply, or lets a followed event stream back up past `MAX_BACKLOG` is dropped; so is the one that
waited longest without asking anything when `MAX_SESSIONS` are connected. Whatever a client
sends, and whatever goes wrong serving it, it gets an error reply or its connection is closed:
nothing it does can stop the daemon's loop, and so the firewall.

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
# Connections waiting to be accepted: the kernel's most (net.core.somaxconn, 4096 since Linux 5.4).
# With 16, a flood of 386 connects saw 170 refused with EAGAIN (issue 19).
LISTEN_BACKLOG = socket.SOMAXCONN
# Clients served at once: a few tools and followers are the real load; a flood of idle connections
# must not use up the daemon's file descriptors (1024 by default) or lock out `fwemu flows`.
MAX_SESSIONS = 128
RECV_SIZE = 4096
ITEMS_PER_TURN = 256  # reply items built per connection per turn (a flow record: a few µs)
# Seconds of reply building per turn for all clients, whatever the items cost (an expiry with
# RSTs: ~0.1 ms), as the daemon's TIMER_BUDGET for timers: verdicts wait at most about this long.
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
    """Whether a process listens on the Unix socket at `path`: it accepts the connection, or
    refuses it only for a full backlog (EAGAIN: busy, not gone) or for this user's lack of
    permission (the socket is someone else's, not stale)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONNECT_TIMEOUT)
        try:
            probe.connect(str(path))
        except (BlockingIOError, PermissionError):
            return True
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


class EventFeed(Protocol):
    """Where the server logs and gets events from (fwemu.adapters.output.Reporter): each Event
    as made (`watch`), and their JSON form only while a client follows (`subscribe`)."""

    def line(self, text: str) -> None: ...

    def watch(self, watcher: Callable[[Event], None]) -> None: ...

    def subscribe(self, listener: Callable[[dict[str, Any]], None]) -> None: ...

    def unsubscribe(self, listener: Callable[[dict[str, Any]], None]) -> None: ...


@dataclass(slots=True)
class _Session:
    sock: socket.socket
    deadline: float  # monotonic time by which the session must make progress
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    reply: Iterator[dict[str, Any]] | None = None
    follow: Selector | None = None
    asked: bool = False  # the request is read (later bytes are ignored)
    done: bool = False  # the reply is complete: close once outbuf is sent
    eof: bool = False  # the client sends no more

    @property
    def idle(self) -> bool:
        """Whether dropping the session loses nothing: it has asked nothing yet, or its whole
        reply is sent."""
        return not self.asked or (self.done and not self.outbuf)


class ControlServer:
    """Listens on `path` (mode 0600; a stale socket left by a killed run is replaced) until
    closed, then removes it. Its connections wait in a selector of its own: the daemon's loop
    polls `fileno()` (readable when a connection is ready) and calls `serve()`."""

    def __init__(self, path: Path, handler: Handler, reporter: EventFeed) -> None:
        self.path = path
        self._handler = handler
        self._reporter = reporter
        self._history: deque[Event] = deque(maxlen=HISTORY_SIZE)
        self._sessions: dict[int, _Session] = {}
        self._subscribed = False
        self._turns = 0
        self._turn_end = 0.0  # monotonic time when this turn's reply building stops
        self._listener = _listen(path)
        self._inode = os.stat(path).st_ino
        # Each key's data is its connection's session (None: the listener's).
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        reporter.watch(self._history.append)

    def fileno(self) -> int:
        return self._selector.fileno()

    def serve(self) -> None:
        """One turn: serve every ready connection, with bounded work each and `TURN_BUDGET` in
        all, starting with another one each turn so that every reply makes progress. A bug
        serving a client closes that client's connection; the daemon goes on."""
        ready = self._selector.select(0)
        self._turns += 1
        self._turn_end = time.monotonic() + TURN_BUDGET
        first = self._turns % len(ready) if ready else 0
        for key, mask in ready[first:] + ready[:first]:
            session: _Session | None = key.data
            try:
                if session is None:
                    self._accept()
                else:
                    self._ready(session, mask)
            except Exception as err:
                self._log(f"control socket: dropped a client after an internal error: {err!r}")
                if session is not None:
                    self._drop(session)

    def _log(self, text: str) -> None:
        self._reporter.line(text)

    # ------------------------------------------------------------------ loop callbacks

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and the like: the next turn tries again
                self._log(f"control socket: cannot accept a client: {err}")
                return
            sock.setblocking(False)
            if len(self._sessions) >= MAX_SESSIONS:
                self._make_room()
            session = _Session(sock, time.monotonic() + REQUEST_TIMEOUT)
            self._sessions[sock.fileno()] = session
            self._selector.register(sock, selectors.EVENT_READ, session)

    def _make_room(self) -> None:
        """Drop the oldest idle client (a real client asks as it connects: this is a flood), else
        the oldest, so that a new `fwemu flows` gets through."""
        sessions = self._sessions.values()  # in the order of their accepts
        idle = next((s for s in sessions if s.idle), None)
        if idle is None:
            self._log(f"control socket: {MAX_SESSIONS} clients: dropped the oldest for a new one")
        self._drop(idle or next(iter(sessions)))

    def _ready(self, session: _Session, mask: int) -> None:
        # Reading may drop the session, and so may making room for a client accepted earlier in
        # this turn: a closed socket's fileno() is -1.
        if mask & selectors.EVENT_READ and session.sock.fileno() >= 0:
            self._read(session)
        if mask & selectors.EVENT_WRITE and session.sock.fileno() >= 0:
            self._write(session)

    def _read(self, session: _Session) -> None:
        try:
            data = session.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._hang_up(session)
        elif not session.asked:  # one request per connection; later bytes are ignored
            session.inbuf += data
            line, newline, _ = session.inbuf.partition(b"\n")
            if len(line) > MAX_REQUEST:
                too_long = f"request too long: more than {MAX_REQUEST} bytes"
                self._respond(session, iter([error_reply(too_long)]))
            elif newline:
                self._request(session, bytes(line))

    def _hang_up(self, session: _Session) -> None:
        """The client hung up, or only shut down its sending side: a request without its newline
        is still served, and a reply still being sent goes on; a followed stream ends (the client
        could not say when it is done with it)."""
        if not session.asked and session.inbuf:
            self._request(session, bytes(session.inbuf))
        session.eof = True
        self._unfollow(session)
        if session.outbuf or session.reply is not None:
            self._rewatch(session)
        else:
            self._drop(session)

    def _request(self, session: _Session, line: bytes) -> None:
        try:
            request = parse_request(line)
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
        session.asked = True
        session.reply, session.follow = items, follow
        session.deadline = time.monotonic() + STALL_TIMEOUT
        self._fill(session)
        self._progress(session)
        if follow is not None:
            self._follow_changed()

    def _fill(self, session: _Session) -> None:
        """Build reply items until a chunk is ready or the turn's budget is used."""
        if session.reply is None:
            return
        for _ in range(ITEMS_PER_TURN):
            if len(session.outbuf) >= SEND_CHUNK or time.monotonic() >= self._turn_end:
                return
            try:
                item = next(session.reply, None)
                if item is not None:
                    session.outbuf += encode(item)
                    continue
            except Exception as err:  # in the handler's generator, or an item that is not JSON
                session.outbuf += encode(self._failed("reply", err))
                self._unfollow(session)
            session.reply = None
            session.done = session.follow is None
            return

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
        self._progress(session)

    def _progress(self, session: _Session) -> None:
        """Close the connection once the whole reply is sent, else wait for what it needs."""
        if session.done and not session.outbuf:
            self._sent(session)
        else:
            self._rewatch(session)

    def _sent(self, session: _Session) -> None:
        """The reply is sent: close. A client that may still be sending (a request too long)
        first gets an end of file and is read to its own: closing on unread bytes would reset
        the connection, losing the reply it has not read yet."""
        if session.eof:
            self._drop(session)
            return
        try:
            session.sock.shutdown(socket.SHUT_WR)
        except OSError:  # gone already
            self._drop(session)
            return
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

    def _unfollow(self, session: _Session) -> None:
        """End the session's event stream, if it has one: close once its reply is sent."""
        if session.follow is not None:
            session.follow = None
            session.done = session.reply is None
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
        sock.listen(LISTEN_BACKLOG)
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
