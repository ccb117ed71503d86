"""Whatever bytes a client sends the control socket, it gets an error reply or an answer, and the
daemon serves on (issue 19: a request of nested brackets, or of a 5,000-digit number, stopped the
firewall). The real request handler, over a dry-run daemon that has seen a few connections; its
control server is served turn by turn in this thread, so each exchange is bounded and exact."""

from __future__ import annotations

import io
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fwemu.adapters.daemon import Daemon
from fwemu.adapters.inject import Injector
from fwemu.adapters.output import Reporter
from fwemu.clock import Clock
from fwemu.core.engine import Engine
from fwemu.ops.commands import Commands
from fwemu.ops.control import ControlServer
from fwemu.ops.protocol import FIELDS, MAX_HISTORY, Request
from fwemu.policy import ExpireAction
from fwemu.policy.source import PolicySource
from tests.adapters.fakes import FakePacket, NoInjector
from tests.core.trace import Trace, make_policy

POLICY = make_policy(established=60.0)
EXCHANGE_TIMEOUT = 5.0  # seconds; an exchange takes about a millisecond
FUZZ = settings(max_examples=200, deadline=None)  # about a second for each property

# JSON text may carry what Python strings may not be encoded to: lone surrogates.
TEXT = st.text(st.characters(blacklist_categories=()), max_size=20)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)
# Values a real client might send for each field, and near misses, or any JSON at all.
FIELD_VALUES = {
    "match": st.sampled_from(["", "dport=80", "src=10.0.1.2 state=established", "event=new"])
    | TEXT,
    "follow": st.booleans(),
    "history": st.integers(-2, MAX_HISTORY + 2),
    "all": st.booleans(),
    "action": st.sampled_from([action.value for action in ExpireAction]) | TEXT,
    # Absolute paths of nothing, a directory, or odd names: never a file that reads forever.
    "policy": st.sampled_from(["/nonexistent/fw.toml", "/", "fw.toml"]) | TEXT.map("/x/".__add__),
    "preset": st.sampled_from(["linux", "nope"]) | TEXT,
    "in": st.sampled_from([0, 0.5, 30, -1, 4e7]) | st.floats() | st.integers(),
}


def plausible(command: str) -> st.SearchStrategy[dict[str, Any]]:
    """Requests for `command` with its own fields only: mostly valid, and answered."""
    fields = {key: FIELD_VALUES[key] for key in FIELDS[command]}
    return st.fixed_dictionaries({"cmd": st.just(command)}, optional=fields)


ANYTHING = st.fixed_dictionaries(
    {"cmd": st.sampled_from(sorted(FIELDS)) | JSON},
    optional={key: values | JSON for key, values in FIELD_VALUES.items()} | {"extra": JSON},
)
REQUESTS = st.sampled_from(sorted(FIELDS)).flatmap(plausible) | ANYTHING
LINES = REQUESTS.map(lambda request: json.dumps(request).encode())


@contextmanager
def running(directory: Path) -> Iterator[tuple[ControlServer, io.StringIO]]:
    """A daemon for one example (an expiry or a reload changes it): its control server and its
    log. It has seen three connections, so there are flows to list and events to replay."""
    log = io.StringIO()
    reporter = Reporter(Clock.start(), log)
    injector = cast(Injector, NoInjector())
    source = PolicySource(None, "linux", 1.0)
    daemon = Daemon(Engine(POLICY), reporter, injector, source, dry_run=True)
    server = ControlServer(directory / "fw.sock", Commands(daemon, {"queue": 0}), reporter)
    try:
        for port in (40000, 40001, 40002):
            for data in handshake(port):
                daemon.on_packet(FakePacket(data))
        yield server, log
    finally:
        server.close()


def handshake(port: int) -> list[bytes]:
    packets: list[bytes] = []
    Trace(POLICY, client_port=port, tap=lambda side, data: packets.append(data)).handshake()
    return packets


def exchange(server: ControlServer, data: bytes) -> list[bytes]:
    """Send `data` and hang up (the sending side), serving the server until it closes; the
    lines received."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(server.path))
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.setblocking(False)
        received = bytearray()
        give_up = time.monotonic() + EXCHANGE_TIMEOUT
        while time.monotonic() < give_up:
            server.serve()
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                return bytes(received).splitlines()
            received += chunk
    raise AssertionError(f"no end to the reply to {data!r} in {EXCHANGE_TIMEOUT:g}s")


def assert_answered(lines: list[bytes]) -> dict[str, Any]:
    """Items, then one final {"ok": ...} line (a refusal says why), which is returned."""
    records = [json.loads(line) for line in lines]
    assert records, "no reply"
    *items, last = records
    assert all(item.keys() in ({"flow"}, {"event"}) for item in items), items
    assert last["ok"] is True or (last["ok"] is False and last["error"]), last
    return cast(dict[str, Any], last)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check(directory: Path, data: bytes) -> None:
    """`data` gets an answer (or, if empty, the connection is closed), no bug is logged, the next
    valid request gets its answer, and then no connection is left open."""
    with running(directory) as (server, log):
        open_files = open_file_count()
        lines = exchange(server, data)
        if data:
            assert_answered(lines)
        else:
            assert lines == []
        assert assert_answered(exchange(server, Request("status").encode()))["ok"] is True
        assert "internal error" not in log.getvalue()
        # A client that hangs up before it has sent all it meant to is read to its end first.
        give_up = time.monotonic() + EXCHANGE_TIMEOUT
        while open_file_count() > open_files and time.monotonic() < give_up:
            server.serve()
        assert open_file_count() == open_files


def open_file_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@FUZZ
@given(data=st.binary(max_size=512), newline=st.booleans())
def test_any_bytes_get_an_answer(directory: Path, data: bytes, newline: bool) -> None:
    check(directory, data + b"\n" * newline)


@FUZZ
@given(line=LINES, tail=st.sampled_from([b"", b"\n", b"\ngarbage", b"\n" + b"x" * 5000]))
def test_any_json_request_gets_an_answer(directory: Path, line: bytes, tail: bytes) -> None:
    check(directory, line + tail)


@FUZZ
@given(depth=st.integers(0, 9000), opener=st.sampled_from([b"[", b'{"a":', b'{"cmd":[']))
def test_nesting_of_any_depth_gets_an_answer(directory: Path, depth: int, opener: bytes) -> None:
    check(directory, opener * depth + b"\n")
