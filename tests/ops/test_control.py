"""The control socket's server and client over a real Unix socket (no root needed): replies,
refusals, slow clients, stale sockets and finding the running daemon."""

from __future__ import annotations

import io
import itertools
import json
import os
import select
import socket
import stat
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwemu.adapters.output import Clock
from fwemu.core.events import Event, FlowId, FlowNew
from fwemu.ops import client
from fwemu.ops.control import MAX_BACKLOG, ControlError, ControlServer, Reply
from fwemu.ops.protocol import MAX_REQUEST, Request
from tests.adapters.fakes import CountingReporter


class Handler:
    """Answers `flows` with `count` numbered items, `events` by following everything."""

    def __init__(self) -> None:
        self.count = 3

    def handle(self, request: Request, history: deque[Event]) -> Reply:
        if request.command == "events":
            return Reply(iter([{"ok": True}]), follow=request.selector)
        if request.command == "reload":
            raise RuntimeError("bug in handle")
        if request.command == "status":
            return Reply(self._broken())
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
    assert raw(path, b"x" * (MAX_REQUEST + 10)) == [{"ok": False, "error": "request too long"}]
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


def test_a_client_that_shuts_down_its_side_still_gets_the_reply(loop: Loop) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(loop.server.path))
        sock.sendall(b'{"cmd": "flows"}\n')
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


def test_connecting_to_nothing_says_so(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match=r"no control socket .* \(is 'fwemu run' running\?\)"):
        list(client.request(tmp_path / "none.sock", Request("status")))
