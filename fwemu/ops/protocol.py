"""The control socket's protocol: one JSON request line in, JSON lines out.

A request is one object with `cmd` and that command's fields (see `FIELDS`):

    {"cmd": "flows", "match": "dport=80"}
    {"cmd": "events", "match": "event=expire", "follow": true, "history": 100}
    {"cmd": "expire", "match": "dport=80", "action": "reset-both"}      (or "all": true)
    {"cmd": "reload", "policy": "/etc/fwemu/fw.toml"}                  (or "preset", or neither)
    {"cmd": "status"}

The reply is zero or more item lines ({"flow": {...}} or {"event": {...}}) and then one final
line with "ok": {"ok": true, ...summary} or {"ok": false, "error": "..."}. `events` with
`follow` never sends the final line: it streams events until the client hangs up.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from fwemu.core.conntrack import FlowInfo
from fwemu.errors import FwemuError
from fwemu.ops.filters import (
    EVENT_KEYS,
    EVERYTHING,
    FLOW_KEYS,
    FilterError,
    Selector,
    parse_selector,
)
from fwemu.policy import ExpireAction

# A request is a few hundred bytes; anything near this is not one of ours.
MAX_REQUEST = 64 * 1024
# Recent events kept by the daemon for `fwemu events` (and sent before live ones).
DEFAULT_HISTORY = 100

# The fields each command takes (besides `cmd`).
FIELDS: dict[str, frozenset[str]] = {
    "status": frozenset(),
    "flows": frozenset({"match"}),
    "events": frozenset({"match", "follow", "history"}),
    "expire": frozenset({"match", "all", "action"}),
    "reload": frozenset({"policy", "preset"}),
}


class ProtocolError(FwemuError):
    """A request the daemon cannot serve, or a reply the client cannot read."""


@dataclass(frozen=True, slots=True)
class Request:
    command: str
    selector: Selector = EVERYTHING
    follow: bool = False
    history: int = DEFAULT_HISTORY
    all: bool = False
    action: ExpireAction | None = None
    policy: str | None = None  # an absolute path: the daemon's working directory is not ours
    preset: str | None = None

    def encode(self) -> bytes:
        """The request line, with only the fields its command takes."""
        values: dict[str, Any] = {
            "match": self.selector.text,
            "follow": self.follow,
            "history": self.history,
            "all": self.all,
            "action": None if self.action is None else self.action.value,
            "policy": self.policy,
            "preset": self.preset,
        }
        fields = {k: v for k, v in values.items() if k in FIELDS[self.command] and v is not None}
        return encode({"cmd": self.command, **fields})


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def error_reply(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def parse_request(line: bytes) -> Request:
    """The Request in one line (without its newline); ProtocolError saying what is wrong."""
    try:
        data = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"request is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ProtocolError("request must be a JSON object with a 'cmd'")
    command = data.pop("cmd", None)
    if command not in FIELDS:
        raise ProtocolError(f"unknown cmd {command!r}: use {', '.join(FIELDS)}")
    unknown = sorted(set(data) - FIELDS[command])
    if unknown:
        raise ProtocolError(f"{command} takes no field {', '.join(unknown)}")
    keys = EVENT_KEYS if command == "events" else FLOW_KEYS
    try:
        request = Request(
            command,
            selector=parse_selector(_typed(data, "match", str, ""), keys),
            follow=_typed(data, "follow", bool, False),
            history=_typed(data, "history", int, DEFAULT_HISTORY),
            all=_typed(data, "all", bool, False),
            action=_action(_typed(data, "action", str, None)),
            policy=_typed(data, "policy", str, None),
            preset=_typed(data, "preset", str, None),
        )
    except FilterError as err:
        raise ProtocolError(str(err)) from None
    _check(request)
    return request


def _typed(data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    # bool is an int in Python; a history of `true` is still a mistake.
    if value is not default and (type(value) is not kind):
        raise ProtocolError(f"field {key!r} must be a {kind.__name__}, not {value!r}")
    return value


def _action(value: str | None) -> ExpireAction | None:
    if value is None:
        return None
    try:
        return ExpireAction(value)
    except ValueError:
        choices = ", ".join(a.value for a in ExpireAction)
        raise ProtocolError(f"unknown action {value!r}: use {choices}") from None


def _check(request: Request) -> None:
    if request.history < 0:
        raise ProtocolError(f"history must be >= 0, not {request.history}")
    if request.command == "expire" and request.all == (request.selector != EVERYTHING):
        raise ProtocolError("expire needs a match or all, not both or neither")
    if request.policy is not None and request.preset is not None:
        raise ProtocolError("reload takes a policy or a preset, not both")
    if request.policy is not None and not os.path.isabs(request.policy):
        raise ProtocolError(f"policy must be an absolute path, not {request.policy!r}")


def flow_record(info: FlowInfo) -> dict[str, Any]:
    """A flow's JSON form (`fwemu flows --json`): flat, client first, times in seconds."""
    flow = info.flow
    return {
        "src": flow.src,
        "sport": flow.sport,
        "dst": flow.dst,
        "dport": flow.dport,
        "state": info.state,
        "phase": info.phase,
        "expires_in": None if info.expires_in is None else round(info.expires_in, 3),
        "rule": info.rule,
        "age": round(info.age, 3),
        "idle": round(info.idle, 3),
        "packets": list(info.packets),
        "bytes": list(info.bytes),
    }
