"""The control socket's requests: what a client sends and what the daemon refuses."""

from __future__ import annotations

import json

import pytest

from fwemu.ops.filters import EVERYTHING, parse_flow, parse_selector
from fwemu.ops.protocol import ProtocolError, Request, parse_request
from fwemu.policy import ExpireAction


@pytest.mark.parametrize(
    "request_",
    [
        Request("status"),
        Request("flows", selector=parse_selector("dport=80 state=established")),
        Request("events", selector=parse_selector("event=expire", ("event",)), follow=True),
        Request("events", history=0),
        Request("expire", selector=parse_flow("10.0.0.1:1>10.0.0.2:2")),
        Request("expire", all=True, action=ExpireAction.RESET_CLIENT),
        Request("expire", all=True, seconds=30.0),
        Request("expire", selector=parse_flow("10.0.0.1:1>10.0.0.2:2"), seconds=0.0),
        Request("reload"),
        Request("reload", policy="/etc/fwemu/fw.toml"),
        Request("reload", preset="linux"),
    ],
)
def test_what_a_client_sends_the_daemon_reads_back(request_: Request) -> None:
    line = request_.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert parse_request(line.rstrip(b"\n")) == request_


def test_a_request_carries_only_its_command_s_fields() -> None:
    assert json.loads(Request("flows", history=5, all=True).encode()) == {
        "cmd": "flows",
        "match": "",
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"flows", "request is not JSON"),
        (b"\xff", "request is not JSON"),
        (b"[1]", "request must be a JSON object with a 'cmd'"),
        (b"{}", "unknown cmd None: use status, flows, events, expire, reload"),
        (b'{"cmd": "drop"}', "unknown cmd 'drop'"),
        (b'{"cmd": "flows", "all": true}', "flows takes no field all"),
        (b'{"cmd": "flows", "match": 80}', "field 'match' must be a str, not 80"),
        (b'{"cmd": "flows", "match": "dport=x"}', "bad dport in 'dport=x'"),
        (b'{"cmd": "events", "history": true}', "field 'history' must be a int, not True"),
        (b'{"cmd": "events", "history": -1}', "history must be 0..1000000, not -1"),
        (b'{"cmd": "events", "history": 1000001}', "history must be 0..1000000, not 1000001"),
        # What a stress run sent (issue 19): each made the daemon's loop raise and fwemu exit.
        (b"[" * 8000, "request is nested too deeply"),
        (b'{"cmd":"events","history":' + b"9" * 5000 + b"}", "request has a number of 5000 digits"),
        (b'{"cmd": ["flows"]}', "unknown cmd ['flows']"),
        (b'{"cmd": {}}', "unknown cmd {}"),
        (b'{"cmd": "expire"}', "expire needs a match or all, not both or neither"),
        (b'{"cmd": "expire", "all": true, "match": "dport=1"}', "expire needs a match or all"),
        (b'{"cmd": "expire", "all": true, "action": "kill"}', "unknown action 'kill': use silent"),
        (b'{"cmd": "expire", "all": true, "in": "30s"}', "field 'in' must be seconds"),
        (b'{"cmd": "expire", "all": true, "in": true}', "field 'in' must be seconds"),
        (b'{"cmd": "expire", "all": true, "in": -1}', "field 'in' must be seconds, 0 to 31536000"),
        (b'{"cmd": "expire", "all": true, "in": 1e400}', "field 'in' must be seconds"),
        (
            b'{"cmd": "expire", "all": true, "in": 5, "action": "silent"}',
            "expire takes 'in' or 'action', not both",
        ),
        (b'{"cmd": "reload", "policy": "fw.toml"}', "policy must be an absolute path"),
        (b'{"cmd": "reload", "policy": "/fw\\u0000.toml"}', "policy must be an absolute path"),
        (b'{"cmd": "reload", "policy": "/fw\\udc80.toml"}', "policy must be an absolute path"),
        (
            b'{"cmd": "reload", "policy": "/a.toml", "preset": "linux"}',
            "reload takes a policy or a preset",
        ),
    ],
)
def test_bad_requests_are_refused_with_a_reason(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as err:
        parse_request(line)
    assert str(err.value).startswith(message)


def test_expire_all_means_every_flow() -> None:
    assert parse_request(b'{"cmd": "expire", "all": true}').selector == EVERYTHING
