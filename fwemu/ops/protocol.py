"""The control socket's protocol: one JSON request line in, JSON lines out.

A request is one object with `cmd` and that command's fields (see `FIELDS`):

    {"cmd": "flows", "match": "dport=80"}
    {"cmd": "events", "match": "event=expire", "follow": true, "history": 100}
    {"cmd": "expire", "match": "dport=80", "action": "reset-both"}      (or "all": true)
    {"cmd": "expire", "match": "dport=80", "in": 30}     (their timers run out in 30 s instead)
    {"cmd": "reload", "policy": "/etc/fwemu/fw.toml"}                  (or "preset", or neither)
    {"cmd": "status"}

The `status` reply carries `version`, `PROTOCOL_VERSION`: docs/control-protocol.md says what
changes it and what may change without it.

A request line is at most `MAX_REQUEST` bytes; its newline may be left out by a client that then
shuts down its sending side. The reply is zero or more item lines ({"flow": {...}} or
{"event": {...}}) and then one final line with "ok": {"ok": true, ...summary} or {"ok": false,
"error": "..."}, the answer to anything that is not a valid request. `events` with `follow` then
streams live event lines until the client hangs up (or shuts down its sending side).
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

# Raised when a request or reply changes so that a client or daemon of the previous version
# would misread it (a field removed, renamed or meaning something else); new fields in replies
# and new commands or request fields do not change it (docs/control-protocol.md, "Versions").
PROTOCOL_VERSION = 1
# A request is a few hundred bytes: a filter of a few dozen terms, or a policy path (PATH_MAX is
# 4096). The bound is also one on the daemon's work per request: parsing a filter of 8 KiB (of
# addresses) takes 5.6 ms, one of 54 KiB 40 ms, time during which no packet gets its verdict.
MAX_REQUEST = 8 * 1024
# Recent events sent before live ones for `fwemu events`, by default and at most (far more than a
# daemon keeps, control.HISTORY_SIZE: any larger number means the same, all of them).
DEFAULT_HISTORY = 100
MAX_HISTORY = 1_000_000
# Digits in a JSON integer: no field takes more than MAX_HISTORY's (and Python converts at most
# 4300, sys.get_int_max_str_digits, raising a bare ValueError beyond).
MAX_DIGITS = 20
# The longest timer `expire` may set: a year, far beyond any product's idle timer.
MAX_IN = 365 * 86400.0

# The fields each command takes (besides `cmd`).
FIELDS: dict[str, frozenset[str]] = {
    "status": frozenset(),
    "flows": frozenset({"match"}),
    "events": frozenset({"match", "follow", "history"}),
    "expire": frozenset({"match", "all", "action", "in"}),
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
    seconds: float | None = None  # expire: re-time the flows to run out then, not expire them

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
            "in": self.seconds,
        }
        fields = {k: v for k, v in values.items() if k in FIELDS[self.command] and v is not None}
        return encode({"cmd": self.command, **fields})


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, separators=(",", ":")) + "\n").encode()


def error_reply(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def parse_request(line: bytes) -> Request:
    """The Request in one line (without its newline); ProtocolError saying what is wrong, whatever
    the bytes."""
    try:
        data = json.loads(line, parse_int=_integer)
    except RecursionError:  # [[[[...: the C decoder recurses once per level
        raise ProtocolError("request is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ProtocolError(f"request is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ProtocolError("request must be a JSON object with a 'cmd'")
    command = data.pop("cmd", None)
    if not isinstance(command, str) or command not in FIELDS:
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
            action=parse_action(_typed(data, "action", str, None)),
            policy=_typed(data, "policy", str, None),
            preset=_typed(data, "preset", str, None),
            seconds=_seconds(data.get("in")),
        )
    except FilterError as err:
        raise ProtocolError(str(err)) from None
    _check(request)
    return request


def _integer(digits: str) -> int:
    """A JSON integer, refused before the conversion if it has more digits than any field's."""
    if len(digits) > MAX_DIGITS:
        raise ProtocolError(f"request has a number of {len(digits)} digits: too long for any field")
    return int(digits)


def _typed(data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    # bool is an int in Python; a history of `true` is still a mistake.
    if value is not default and (type(value) is not kind):
        raise ProtocolError(f"field {key!r} must be a {kind.__name__}, not {value!r}")
    return value


def _seconds(value: Any) -> float | None:
    """`in`: seconds, a JSON number (not a bool) in 0..MAX_IN."""
    if value is None:
        return None
    if type(value) not in (int, float) or not 0 <= value <= MAX_IN:
        raise ProtocolError(f"field 'in' must be seconds, 0 to {MAX_IN:.0f}, not {value!r}")
    return float(value)


def parse_action(value: str | None) -> ExpireAction | None:
    """An expiry action by its name; ProtocolError naming the choices."""
    if value is None:
        return None
    try:
        return ExpireAction(value)
    except ValueError:
        choices = ", ".join(a.value for a in ExpireAction)
        raise ProtocolError(f"unknown action {value!r}: use {choices}") from None


def _check(request: Request) -> None:
    if not 0 <= request.history <= MAX_HISTORY:
        raise ProtocolError(f"history must be 0..{MAX_HISTORY}, not {request.history}")
    if request.command == "expire" and request.all == (request.selector != EVERYTHING):
        raise ProtocolError("expire needs a match or all, not both or neither")
    if request.seconds is not None and request.action is not None:
        raise ProtocolError(
            "expire takes 'in' or 'action', not both: when a timer set with 'in' runs out, the "
            "policy's on_expire applies"
        )
    if request.policy is not None and request.preset is not None:
        raise ProtocolError("reload takes a policy or a preset, not both")
    if request.policy is not None and not _is_path(request.policy):
        raise ProtocolError(f"policy must be an absolute path in UTF-8, not {request.policy!r}")


def _is_path(text: str) -> bool:
    """Whether `text` names a file the daemon can open and name in its log: absolute, UTF-8 (JSON
    carries lone surrogates, which are not), without NUL."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return os.path.isabs(text) and "\0" not in text


def flow_record(info: FlowInfo) -> dict[str, Any]:
    """A flow's JSON form (`fwemu flows --json`): flat, client first, times in seconds."""
    flow = info.flow
    return {
        "src": flow.src,
        "sport": flow.sport,
        "dst": flow.dst,
        "dport": flow.dport,
        "proto": flow.proto,
        "state": info.state,
        "phase": info.phase,
        "expires_in": None if info.expires_in is None else round(info.expires_in, 3),
        "rule": info.rule,
        "age": round(info.age, 3),
        "idle": round(info.idle, 3),
        "packets": list(info.packets),
        "bytes": list(info.bytes),
    }
