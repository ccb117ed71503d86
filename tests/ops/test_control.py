"""The control socket's server and client over a real Unix socket (no root needed, but for
switching to a user without permission): replies, refusals, slow clients, floods, stale sockets
and finding the running daemon."""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwemu.clock import Clock
from fwemu.core.events import Event, FlowId, FlowNew
from fwemu.ops import client
from fwemu.ops import control as control_module
from fwemu.ops.control import MAX_BACKLOG, MAX_SESSIONS, ControlError, ControlServer, Reply
from fwemu.ops.protocol import MAX_REQUEST, Request
from tests.adapters.fakes import CountingReporter

from .conftest import Cli


class Handler:
    """Answers `flows` with `count` numbered items, `events` by following everything; its other
    answers are bugs."""

    def __init__(self) -> None:
        self.count = 3

    def handle(self, request: Request, history: deque[Event]) -> Reply:
        if request.command == "events":
            return Reply(iter([{"ok": True}]), follow=request.selector)
        if request.command == "reload":
            raise RuntimeError("bug in handle")
        if request.command == "status":
            return Reply(self._broken())
        if request.command == "expire":
            return Reply(iter([{"flow": {"tags": {"not", "json"}}}]))
        items = ({"flow": {"n": n}} for n in range(self.count))
        return Reply(itertools.chain(items, [{"ok": True, "count": self.count}]))

    @staticmethod
    def _broken() -> Iterator[dict[str, Any]]:
        yield {"flow": {"n": 0}}
        raise RuntimeError("bug in reply")


class Loop:
    """The daemon's loop, reduced to the control server, in a thread."""

    def __init__(self, path: Path) -> None:
        self.handler = Handler()
        self.output = io.StringIO()
        self.reporter = CountingReporter(Clock.start(), self.output)
        self.server = ControlServer(path, self.handler, self.reporter)
        self.calls: deque[Any] = deque()  # run in the loop thread, as the daemon reports events
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    @property
    def log(self) -> list[str]:
        return self.output.getvalue().splitlines()

    @property
    def messages(self) -> list[str]:
        """The log without its timestamps."""
        return [line.partition(" ")[2] for line in self.log]

    def _run(self) -> None:
        while not self._stop.is_set():
            if select.select([self.server], [], [], 0.01)[0]:
                self.server.serve()
            while self.calls:
                self.calls.popleft()()

    def __enter__(self) -> Loop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.server.close()


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    with Loop(tmp_path / "fw.sock") as running:
        yield running


STATUS = Request("status")


def raw(path: Path, data: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(data)
        return [json.loads(line) for line in sock.makefile("rb")]


def test_a_request_gets_its_items_then_ok(loop: Loop) -> None:
    records = list(client.request(loop.server.path, Request("flows")))
    assert records == [
        {"flow": {"n": 0}},
        {"flow": {"n": 1}},
        {"flow": {"n": 2}},
        {"ok": True, "count": 3},
    ]


def test_a_long_reply_arrives_whole(loop: Loop) -> None:
    loop.handler.count = 50_000  # many turns of the loop and many send chunks
    records = list(client.request(loop.server.path, Request("flows")))
    assert [r["flow"]["n"] for r in records[:-1]] == list(range(50_000))


def test_bad_requests_get_an_error_and_the_server_goes_on(loop: Loop) -> None:
    path = loop.server.path
    [reply] = raw(path, b"hello\n")
    assert reply["ok"] is False and reply["error"].startswith("request is not JSON")
    assert raw(path, b'{"cmd": "flows", "match": "dport=x"}\n')[0]["ok"] is False
    too_long = {"ok": False, "error": f"request too long: more than {MAX_REQUEST} bytes"}
    assert raw(path, b"x" * (MAX_REQUEST + 10)) == [too_long]
    with pytest.raises(ControlError, match=r"^unknown action 'kill'"):
        list(client.request(path, _expire_with_action("kill")))
    assert list(client.request(path, Request("flows")))[-1]["ok"] is True


def _expire_with_action(action: str) -> Request:
    class Raw(Request):
        def encode(self) -> bytes:
            return json.dumps({"cmd": "expire", "all": True, "action": action}).encode() + b"\n"

    return Raw("expire")


def test_a_bug_serving_a_request_fails_that_request_only(loop: Loop) -> None:
    path = loop.server.path
    with pytest.raises(ControlError, match=r"^internal error serving 'reload': RuntimeError"):
        list(client.request(path, Request("reload")))
    with pytest.raises(ControlError, match=r"^internal error serving 'reply': RuntimeError"):
        list(client.request(path, Request("status")))
    assert "bug in reply" in loop.log[-1]
    assert list(client.request(path, Request("flows")))[-1]["ok"] is True


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"[" * 60_000 + b"\n", f"request too long: more than {MAX_REQUEST} bytes"),
        (b"[" * 8000 + b"\n", "request is nested too deeply"),
        (b'{"cmd":"events","history":' + b"9" * 5000 + b"}\n", "request has a number of 5000"),
        (b'{"cmd": ["flows"]}\n', "unknown cmd ['flows']"),
    ],
)
def test_what_stopped_the_firewall_gets_an_error_and_the_server_goes_on(
    loop: Loop, data: bytes, error: str
) -> None:
    # Issue 19: each of these made the daemon's loop raise, and `fwemu run` exit.
    [reply] = raw(loop.server.path, data)
    assert reply["ok"] is False and reply["error"].startswith(error)
    assert list(client.request(loop.server.path, Request("flows")))[-1]["ok"] is True


def test_a_reply_item_that_is_not_json_fails_that_request_only(loop: Loop) -> None:
    path = loop.server.path
    with pytest.raises(ControlError, match=r"^internal error serving 'reply': TypeError"):
        list(client.request(path, Request("expire", all=True)))
    assert list(client.request(path, Request("flows")))[-1]["ok"] is True


def test_a_bug_anywhere_serving_a_client_closes_its_connection_only(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(line: bytes) -> Request:
        raise RuntimeError("bug in parsing")

    monkeypatch.setattr(control_module, "parse_request", broken)
    with pytest.raises(ControlError, match="closed the connection without answering"):
        list(client.request(loop.server.path, Request("flows")))
    monkeypatch.undo()
    assert list(client.request(loop.server.path, Request("flows")))[-1]["ok"] is True
    assert [line for line in loop.messages if "bug in parsing" in line] == [
        "control socket: dropped a client after an internal error: RuntimeError('bug in parsing')"
    ]


@pytest.mark.parametrize("newline", [b"\n", b""], ids=["with its newline", "without"])
def test_a_client_that_shuts_down_its_side_after_asking_gets_the_reply(
    loop: Loop, newline: bytes
) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(loop.server.path))
        sock.sendall(b'{"cmd": "flows"}' + newline)
        sock.shutdown(socket.SHUT_WR)
        assert sock.makefile("rb").readlines()[-1] == b'{"ok":true,"count":3}\n'


def test_a_follower_gets_matching_events_and_is_dropped_when_it_stops_reading(loop: Loop) -> None:
    path = loop.server.path
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(Request("events").encode())
        lines = sock.makefile("rb")
        assert json.loads(lines.readline()) == {"ok": True}
        event = new_flow("web")
        loop.calls.append(lambda: loop.reporter.events([event]))
        assert json.loads(lines.readline()) == {"event": loop.reporter.record(event)}
        # Now it reads nothing while a flood of events comes: it is cut off, not waited for.
        padded = new_flow("x" * 1000)
        flood = MAX_BACKLOG // 1000 + 1000
        loop.calls.append(lambda: loop.reporter.events([padded] * flood))
        received = sum(1 for _ in lines)  # reads what was sent before the drop, then EOF
    assert received < flood
    assert "dropped a client that does not read its events" in loop.log[-1]


def new_flow(rule: str) -> FlowNew:
    return FlowNew(1.0, FlowId("10.0.0.1", 1, "10.0.0.2", 2), state="SYN_SENT", rule=rule)


def test_events_become_json_only_while_a_client_follows(tmp_path: Path) -> None:
    # Served by hand, turn by turn: a Unix socket's connect and data are ready at once.
    reporter = CountingReporter(Clock.start(), io.StringIO())
    server = ControlServer(tmp_path / "fw.sock", Handler(), reporter)
    try:
        reporter.events([new_flow("before")])
        assert reporter.built == 0
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(server.path))
            sock.sendall(Request("events").encode())
            server.serve()  # accept
            server.serve()  # the request: now following
            reporter.events([new_flow("during")])
            assert reporter.built == 1
        server.serve()  # the hang-up
        reporter.events([new_flow("after")])
        assert reporter.built == 1
    finally:
        server.close()


def test_the_socket_is_private_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "fw.sock"
    with Loop(path):
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert not path.exists()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "fw.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # what a killed fwemu leaves: a socket file nobody listens on
    stale.close()
    with Loop(path):
        assert list(client.request(path, Request("flows")))[-1]["ok"] is True
        with pytest.raises(
            ControlError, match=f"another fwemu is serving the control socket {path}"
        ):
            ControlServer(path, Handler(), print)


def test_a_file_that_is_not_a_socket_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    with pytest.raises(ControlError, match="exists and is not a socket"):
        ControlServer(path, Handler(), print)
    assert path.read_text() == "mine"


def test_find_run_needs_a_live_socket(tmp_path: Path) -> None:
    with pytest.raises(
        ControlError, match=r"^no running fwemu found \(is 'fwemu run' running\?\)$"
    ):
        client.find_run(None, tmp_path / "absent")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "old.q0.sock"))
    stale.close()
    with pytest.raises(ControlError, match="no running fwemu found"):
        client.find_run(None, tmp_path)
    with Loop(tmp_path / "a.q0.sock"):
        assert client.find_run(None, tmp_path) == (client.Target(tmp_path / "a.q0.sock"),)
    given = tmp_path / "given.sock"
    assert client.find_run(given, tmp_path) == (client.Target(given),)


def test_a_flood_of_idle_connections_does_not_lock_out_a_request(loop: Loop) -> None:
    # Issue 19: during a connect flood, a real `fwemu flows` failed. The connections that waited
    # longest without asking anything make room for new ones.
    idle: list[socket.socket] = []
    try:
        for _ in range(300):
            idle.append(sock := socket.socket(socket.AF_UNIX))
            sock.connect(str(loop.server.path))  # blocking: waits while the listen queue is full
        assert list(client.request(loop.server.path, Request("flows")))[-1]["ok"] is True
        dropped = [_closed_by_peer(sock) for sock in idle]
    finally:
        for sock in idle:
            sock.close()
    room = len(idle) + 1 - MAX_SESSIONS  # the request's own connection made room too
    assert dropped == [True] * room + [False] * (len(idle) - room)


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False


def test_when_every_client_is_being_answered_the_oldest_makes_room(loop: Loop) -> None:
    followers: list[socket.socket] = []
    try:
        for _ in range(MAX_SESSIONS):
            followers.append(sock := socket.socket(socket.AF_UNIX))
            sock.settimeout(5)
            sock.connect(str(loop.server.path))
            sock.sendall(Request("events", follow=True).encode())
            assert sock.recv(4096) == b'{"ok":true}\n'
        assert list(client.request(loop.server.path, Request("flows")))[-1]["ok"] is True
        assert followers[0].recv(4096) == b""
    finally:
        for sock in followers:
            sock.close()
    message = f"control socket: {MAX_SESSIONS} clients: dropped the oldest for a new one"
    assert loop.messages.count(message) == 1


def fill_queue(path: Path, most: int = 100) -> list[socket.socket]:
    """Connections to a listener that accepts none, until its queue is full (or `most`)."""
    flood: list[socket.socket] = []
    for _ in range(most):
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        try:
            sock.connect(str(path))
        except BlockingIOError:
            sock.close()
            break
        flood.append(sock)
    return flood


SOMAXCONN = int(Path("/proc/sys/net/core/somaxconn").read_text())


@pytest.mark.skipif(SOMAXCONN < 400, reason="net.core.somaxconn caps every listen queue below 400")
def test_the_listen_queue_holds_a_flood(tmp_path: Path) -> None:
    # Issue 19: with a queue of 16, 170 of 386 connects were refused (EAGAIN) while the daemon
    # was busy elsewhere, as it is here: nothing accepts.
    reporter = CountingReporter(Clock.start(), io.StringIO())
    server = ControlServer(tmp_path / "fw.sock", Handler(), reporter)
    flood = fill_queue(server.path, most=400)
    try:
        assert len(flood) == 400
    finally:
        for sock in flood:
            sock.close()
        server.close()


def answer_status(listener: socket.socket) -> None:
    """Accept connections until one brings a request (the flood's bring nothing), answer it."""
    while True:
        conn, _ = listener.accept()  # the listener's timeout bounds the wait
        with conn:
            conn.settimeout(5)
            if conn.recv(4096):
                conn.sendall(b'{"ok":true}\n')
                return


def test_a_client_waits_while_the_daemon_s_queue_is_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "busy.sock"
    refused, room = threading.Event(), threading.Event()

    def pause(seconds: float) -> None:  # the client's, between two tries
        refused.set()
        room.wait(5)

    monkeypatch.setattr(client, "sleep", pause)
    replies: list[list[dict[str, Any]]] = []
    asker = threading.Thread(target=lambda: replies.append(list(client.request(path, STATUS))))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(0)
        listener.settimeout(5)
        flood = fill_queue(path)
        asker.start()
        try:
            assert refused.wait(5)
            for sock in flood:  # the flood ends: its connections wait to be accepted, closed
                sock.close()
            room.set()
            answer_status(listener)
        finally:
            room.set()
            asker.join(5)
    assert replies == [[{"ok": True}]]


def test_a_daemon_with_a_full_queue_is_busy_not_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "busy.sock"
    monkeypatch.setattr(client, "CONNECT_PATIENCE", 0.0)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(0)
        flood = fill_queue(path)
        try:
            assert client.find_run(None, tmp_path) == (client.Target(path),)
            with pytest.raises(ControlError, match="another fwemu is serving"):
                ControlServer(path, Handler(), print)
            busy = f"the fwemu at {path} is too busy: no room to connect for 0s"
            with pytest.raises(ControlError, match=f"^{re.escape(busy)}$"):
                list(client.request(path, STATUS))
        finally:
            for sock in flood:
                sock.close()


@pytest.fixture
def public() -> Iterator[Path]:
    """A directory anybody may enter, holding a daemon's socket (mode 0600, as always) and a
    directory only root may enter, holding another."""
    top = Path(tempfile.mkdtemp(prefix="fwemu-test-"))
    try:
        top.chmod(0o755)
        (top / "private").mkdir(mode=0o700)
        with Loop(top / "fw.sock"), Loop(top / "private" / "fw.sock"):
            yield top
    finally:
        shutil.rmtree(top)


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
DENIED = "no permission to use {top}/fw.sock: the control socket is root's; run this with sudo"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (
            "private/fw.sock",
            "no permission to use {top}/private/fw.sock: it is root's; run this with sudo",
        ),
        ("private", "cannot read {top}/private: it is root's; run this with sudo"),
        ("fw.sock", DENIED),
        ("", DENIED),
    ],
)
def test_a_user_without_permission_gets_one_line(public: Path, given: str, problem: str) -> None:
    # Issue 19: `fwemu flows --control SOCKET` as a user printed a PermissionError traceback.
    argv = [*NOBODY, sys.executable, "-m", "fwemu", "flows", "--control", str(public / given)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"fwemu: {problem.format(top=public)}\n"


def test_connecting_to_nothing_says_so(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match=r"no control socket .* \(is 'fwemu run' running\?\)"):
        list(client.request(tmp_path / "none.sock", Request("status")))


def test_an_unforeseen_os_error_is_one_line_not_a_traceback(
    fwemu: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(control: Path | None, **choice: object) -> tuple[client.Target, ...]:
        raise OSError(errno.EIO, "Input/output error", "/run/fwemu")

    monkeypatch.setattr(client, "find_run", broken)
    result = fwemu("flows")
    assert (result.code, result.out, result.err) == (
        2,
        "",
        "fwemu: Input/output error: /run/fwemu\n",
    )
