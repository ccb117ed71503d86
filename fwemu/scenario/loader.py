"""Scenario files (TOML) -> `Scenario`, or one ScenarioError listing every problem.

It reads with the policy loader's machinery (key paths with line numbers, converters that
collect every problem, "did you mean" hints), so a broken scenario reads like a broken policy:
one `file:line: key: problem (hint)` line per mistake.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fwemu.errors import FwemuError
from fwemu.lab import flood
from fwemu.lab.plan import MAX_CLIENTS, LabPlan
from fwemu.policy import Policy, PolicyError, load_policy, load_preset, loads_policy
from fwemu.policy.duration import brief, type_name
from fwemu.policy.model import STATE_TIMEOUTS
from fwemu.policy.reading import (
    Converter,
    Invalid,
    KeyPath,
    ProblemsError,
    Reader,
    as_finite_duration,
    as_flag,
    as_line,
    as_name,
    as_text,
    did_you_mean,
    fail,
    read_source,
    read_toml,
)
from fwemu.scenario.model import (
    COUNTED,
    EVENT_FIELDS,
    EVENT_KINDS,
    FLOW_FIELDS,
    SIDES,
    UDP_OUTCOMES,
    Action,
    EventPattern,
    Expected,
    Outcome,
    Scenario,
    Side,
    Step,
    flood_spec,
    show_counts,
)

DEFAULT_PORT = 8080
# Scenario seconds a blocking step waits unless told: twice the policy's longest timer, so any
# of its timers can run out during a step, and at least 10 minutes.
MIN_DEFAULT_TIMEOUT = 600.0
# Wall-clock seconds a step's or an event's time may miss its `after`/`within`: a busy 2-CPU VM
# delays a thread or fwemu's timer by tens of milliseconds, rarely more.
DEFAULT_TOLERANCE = 0.5
_MAX_PORT = 65535
# Filler a send step makes at load time, and a recv step's buffer: far beyond what a scenario
# needs to keep a connection busy, well short of exhausting memory.
MAX_BYTES = 1 << 24
# The largest UDP payload IPv4 carries: 65,535 minus the IP and UDP headers (udp(7)), so a
# send-to's datagram is one datagram in either family.
MAX_DATAGRAM = 65507
# Connections one step opens at once: enough to exhaust a NAT's pool (GCP Cloud NAT's 64 ports
# per VM, Azure's 1,024 by default take one step or two), few enough for a process's descriptors
# and for the SYNs of one step to leave within milliseconds.
MAX_COUNT = 1000
# The policy's timers a step may wait out: every TCP state's and UDP's two.
_TIMERS = (*STATE_TIMEOUTS, "udp", "udp_stream")
# Event fields hold ports, counts and timers: 64 bits holds them all, and a value past that
# (a hex literal of thousands of digits) could not even be printed in a report.
_MAX_FIELD = 1 << 64


class ScenarioError(ProblemsError):
    """Every problem found in one scenario file; str() is one line per problem."""


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """The scenario in the TOML file at `path`; problems name the file as given. A relative
    policy file in it is found next to the scenario file."""
    text = read_source(path, ScenarioError)
    origin = os.fspath(path)
    return loads_scenario(text, origin, base=Path(path).parent)


def loads_scenario(text: str, origin: str = "<string>", *, base: Path | None = None) -> Scenario:
    """The scenario in TOML `text`; `origin` names it in messages, `base` is where relative
    policy files are (default: the current directory)."""
    document, reader = read_toml(text, origin, ScenarioError)
    scenario = _scenario(document, reader, base or Path())
    if reader.problems or scenario is None:
        raise ScenarioError(sorted(reader.problems, key=lambda p: (p.line is None, p.line or 0)))
    return scenario


# --- converters ------------------------------------------------------------------------------


def _number(value: Any, expected: str) -> float:
    """A TOML int or float as a float; an int too large for one is a problem, not an
    OverflowError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        fail(f"expected {expected}, got {type_name(value)}")
    try:
        return float(value)
    except OverflowError:
        fail(f"{brief(value)} is too large")


def _positive(value: Any) -> float:
    number = _number(value, "a number")
    if not number > 0:
        fail(f"must be greater than 0, not {brief(value)}")
    return number


def _seconds(value: Any) -> float:
    number = _number(value, "a number of seconds")
    if number < 0:
        fail(f"must not be negative, not {brief(value)}")
    return number


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"expected a whole number, got {type_name(value)}")
    if value < 1:
        fail(f"must be at least 1, not {brief(value)}")
    return value


def _up_to(limit: int) -> Converter:
    """A whole number from 1 to `limit`."""

    def convert(value: Any) -> int:
        number = _count(value)
        if number > limit:
            fail(f"must be at most {limit}, not {brief(number)}")
        return number

    return convert


def _rate(value: Any) -> float:
    rate = _positive(value)
    if not 1 <= rate <= flood.MAX_RATE:
        fail(f"must be 1..{flood.MAX_RATE} SYNs a second, not {brief(value)}")
    return rate


def _port(value: Any) -> int:
    port = _count(value)
    if port > _MAX_PORT:
        fail(f"port {port} is out of range 1-{_MAX_PORT}")
    return port


def choice_of(choices: Sequence[str], noun: str) -> Callable[[Any], str]:
    listing = "choose from " + ", ".join(choices)

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            fail(f"expected one of {', '.join(choices)}, got {type_name(value)}")
        if value not in choices:
            fail(f"unknown {noun} {value!r}", did_you_mean(value, choices) or listing)
        return value

    return convert


def _command(value: Any) -> tuple[str, ...] | str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    fail(
        "expected a command: a list of arguments or a shell command line",
        'like command = ["curl", "-s", "http://10.201.2.2:8080/"]',
    )


def _field_value(value: Any) -> str | int:
    if isinstance(value, bool) or not isinstance(value, str | int):
        fail(f"expected a string or a number to compare with, got {type_name(value)}")
    if isinstance(value, int) and not -_MAX_FIELD < value < _MAX_FIELD:
        fail(f"{brief(value)} is too large to compare with")
    return value


def _data(value: Any) -> bytes:
    return as_text(value).encode()


_RANGE = re.compile(r"([0-9]{1,9})\.\.([0-9]{1,9})")  # within what int() converts
_COUNTS_EXAMPLE = "like expect = { ok = 64, timeout = 36 }"


def _expectation(value: Any) -> Outcome | Expected:
    """An outcome, or a count step's table of outcome = connections (a number or "60..64")."""
    if not isinstance(value, dict):
        return Outcome(_outcome(value))
    if not value:
        fail("no counts", _COUNTS_EXAMPLE)
    expected: dict[Outcome, tuple[int, int]] = {}
    issues = []
    for key, number in value.items():
        try:
            expected[Outcome(_counted(key))] = _tally(number)
        except Invalid as bad:
            issues += [dataclasses.replace(i, at=(key, *i.at)) for i in bad.issues]
    if issues:
        raise Invalid(*issues)
    return expected


def _tally(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        low = high = value
    elif isinstance(value, str) and (found := _RANGE.fullmatch(value)):
        low, high = int(found[1]), int(found[2])
        if low > high:
            fail(f"empty range {brief(value)}", f'write it low first: "{high}..{low}"')
    else:
        fail(
            f"expected a number of connections or a range, got {brief(value)}",
            'like ok = 64 or ok = "60..64"',
        )
    if high > MAX_COUNT:
        fail(f"must be at most {MAX_COUNT}, not {brief(value)}")
    return (low, high)


_outcome = choice_of([o.value for o in Outcome], "outcome")
_counted = choice_of([o.value for o in COUNTED], "outcome")
_action = choice_of([a.value for a in Action], "action")
_event_kind = choice_of(EVENT_KINDS, "event")

_SCENARIO: Mapping[str, Converter] = {
    "name": as_name,
    "description": as_line,
    "policy": as_name,
    "policy_toml": as_text,
    "speed": _positive,
    "port": _port,
    "ipv6": as_flag,
    "clients": _up_to(MAX_CLIENTS),
    "timeout": as_finite_duration,
    "tolerance": _seconds,
}
_FIELDS: Mapping[str, Converter] = dict.fromkeys((*EVENT_FIELDS, *FLOW_FIELDS), _field_value)
_TIMING: Mapping[str, Converter] = {"after": as_finite_duration, "within": as_finite_duration}
_EVENT: Mapping[str, Converter] = {"event": _event_kind, **_FIELDS, **_TIMING}
_STEP: Mapping[str, Converter] = {
    "do": _action,
    "expect": _expectation,
    **_TIMING,
    "timeout": as_finite_duration,
    "for": as_finite_duration,
    "data": _data,
    "bytes": _up_to(MAX_BYTES),
    "keepalive": as_finite_duration,
    "count": _up_to(MAX_COUNT),
    "source": _count,
    "all": as_flag,
    "command": _command,
    "background": as_flag,
    "rate": _rate,
    "sources": _up_to(flood.MAX_SOURCES),
    **_EVENT,
}
# Where an action reads a key its own way: a syn-flood's count is SYNs, not connections held
# open; a send-to's bytes are one datagram.
_CONVERTERS: Mapping[str, Mapping[str, Converter]] = {
    Action.SYN_FLOOD: {**_STEP, "count": _up_to(flood.MAX_COUNT)},
    Action.SEND_TO: {**_STEP, "bytes": _up_to(MAX_DATAGRAM)},
}
_COMMON = ("do", "expect", "after", "within")
# The keys each action takes besides _COMMON; (required ones first in the message).
_ACTION_KEYS: Mapping[Action, tuple[str, ...]] = {
    Action.LISTEN: (),
    Action.ACCEPT: ("timeout", "count"),
    Action.CONNECT: ("timeout", "keepalive", "count", "source"),
    Action.SEND: ("data", "bytes"),
    Action.RECV: ("bytes", "timeout"),
    Action.SLEEP: ("for",),
    Action.IDLE: ("for",),
    Action.HALF_CLOSE: (),
    Action.CLOSE: ("all",),
    Action.ABORT: ("all",),
    Action.RUN: ("command", "background", "timeout"),
    Action.WAIT: ("event", *_FIELDS, "timeout"),
    Action.SYN_FLOOD: ("count", "rate", "sources", "for", "background"),
    Action.BIND: (),
    Action.SEND_TO: ("data", "bytes"),
    Action.RECV_FROM: ("timeout",),
    Action.ECHO: ("for",),
}
_REQUIRED: Mapping[Action, tuple[str, ...]] = {
    Action.SLEEP: ("for",),
    Action.IDLE: ("for",),
    Action.RUN: ("command",),
    Action.WAIT: ("event",),
    Action.ECHO: ("for",),
}
_ONLY_ON: Mapping[Action, Side] = {
    Action.LISTEN: "server",
    Action.ACCEPT: "server",
    Action.CONNECT: "client",
    Action.SYN_FLOOD: "client",
    Action.BIND: "server",
    Action.ECHO: "server",
}
_TOP_LEVEL = ("scenario", *SIDES, "event", "no_event")


# --- the schema ------------------------------------------------------------------------------


def _scenario(document: dict[str, Any], reader: Reader, base: Path) -> Scenario | None:
    reader.known_keys(document, (), _TOP_LEVEL)
    meta = reader.read(reader.section(document, "scenario", ()), ("scenario",), _SCENARIO)
    policy = _policy(meta, reader, base)
    clients = meta.get("clients", 1)
    steps = {side: _steps(document.get(side), side, reader, meta) for side in SIDES}
    if not any(side in document for side in SIDES):
        reader.problem((), "no steps", "add [[client]] and [[server]] steps")
    events = _events(document.get("event"), "event", reader, timed=True)
    no_events = _events(document.get("no_event"), "no_event", reader, timed=False)
    if policy is None:
        return None
    return Scenario(
        name=meta.get("name", Path(reader.origin).stem),
        description=meta.get("description", ""),
        origin=reader.origin,
        policy=policy[0],
        policy_ref=policy[1],
        policy_toml=meta.get("policy_toml"),
        speed=meta.get("speed", 1.0),
        port=meta.get("port", DEFAULT_PORT),
        ipv6=meta.get("ipv6", False),
        clients=clients,
        timeout=meta.get("timeout", _default_timeout(policy[0])),
        tolerance=meta.get("tolerance", DEFAULT_TOLERANCE),
        client=steps["client"],
        server=steps["server"],
        events=events,
        no_events=no_events,
    )


def _default_timeout(policy: Policy) -> float:
    profiles = [policy.default, *(rule.profile for rule in policy.rules)]
    timers = [
        seconds
        for profile in profiles
        for state in _TIMERS
        if (seconds := getattr(profile.timeouts, state)) is not None
    ]
    return max(MIN_DEFAULT_TIMEOUT, 2 * max(timers, default=0.0))


def _policy(
    meta: Mapping[str, Any], reader: Reader, base: Path
) -> tuple[Policy, str | Path | None] | None:
    """The policy and how `fwemu run` is to be given it; None (with a problem) if it is bad."""
    path: KeyPath = ("scenario", "policy")
    try:
        if "policy_toml" in meta:
            if "policy" in meta:
                reader.problem(path, "give either policy or policy_toml, not both")
                return None
            origin = f"{reader.origin}: scenario.policy_toml"
            return loads_policy(meta["policy_toml"], origin, default_name="inline"), None
        ref: str = meta.get("policy", "linux")
        if ref.endswith(".toml") or "/" in ref:
            file = base / ref
            return load_policy(file), file
        return load_preset(ref), ref
    except PolicyError as err:
        reader.problems.extend(err.problems)
    except FwemuError as err:  # an unknown preset: say where it was named
        reader.problem(path, str(err))
    return None


def _array(value: Any, key: str, reader: Reader) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        reader.problem((key,), f"expected an array of tables ([[{key}]]), got {type_name(value)}")
        return []
    return value


def _steps(value: Any, side: Side, reader: Reader, meta: Mapping[str, Any]) -> tuple[Step, ...]:
    """`side`'s steps; `meta` is the scenario's [scenario] table as read (clients, speed, ...)."""
    clients = meta.get("clients", 1)
    steps = []
    for index, table in enumerate(_array(value, side, reader)):
        path: KeyPath = (side, index)
        do = table.get("do")
        flooding = do == Action.SYN_FLOOD
        values = reader.read(
            table, path, _CONVERTERS.get(do, _STEP) if isinstance(do, str) else _STEP
        )
        if "do" not in table:
            reader.problem(path, "missing 'do'", f"what the step does: {', '.join(Action)}")
        if "do" not in values:
            continue
        action = Action(values["do"])
        if not (
            _fits(action, side, table, values, path, reader)
            and _outcome_fits(action, values, path, reader)
            and (_flood_fits(values, path, reader, meta) if flooding
                 else _counts_fit(values, path, reader, clients))
        ):  # fmt: skip
            continue
        counts = None if flooding else _expected(values)
        steps.append(
            Step(
                side=side,
                number=index + 1,
                action=action,
                expect=Outcome.OK if counts else values.get("expect", Outcome.OK),
                after=values.get("after"),
                within=values.get("within"),
                timeout=values.get("timeout"),
                duration=values.get("for"),
                data=_payload(values, side, index + 1) if action in _SENDS else None,
                size=values.get("bytes") if action is Action.RECV else None,
                keepalive=values.get("keepalive"),
                count=values.get("count"),
                counts=counts,
                source=values.get("source"),
                every=values.get("all", False),
                command=values.get("command"),
                background=values.get("background", False),
                rate=values.get("rate"),
                sources=values.get("sources"),
                wait_for=_pattern(values, reader, path) if action is Action.WAIT else None,
                line=reader.lines.get(path),
            )
        )
    return tuple(steps)


_SENDS = (Action.SEND, Action.SEND_TO)


def _payload(values: Mapping[str, Any], side: Side, number: int) -> bytes:
    """What a send or send-to step sends: its `data`, or `bytes` filler bytes; a send-to that
    gives neither sends its own name ("client step 3"), so the timeline tells its datagrams
    apart."""
    if "data" in values:
        data: bytes = values["data"]
    elif "bytes" in values:
        data = b"x" * values["bytes"]
    else:
        data = f"{side} step {number}".encode()
    return data


def _outcome_fits(action: Action, values: Mapping[str, Any], path: KeyPath, reader: Reader) -> bool:
    """Whether the step can come to the outcome it expects: a UDP step to one of its own, any
    other step to anything but unreachable (a count step's outcomes are _counts_fit's)."""
    expect = values.get("expect", Outcome.OK)
    if "count" in values or isinstance(expect, Mapping):
        return True
    can = UDP_OUTCOMES.get(action)
    if can is None and expect is Outcome.UNREACHABLE:
        udp = ", ".join(a for a, ends in UDP_OUTCOMES.items() if Outcome.UNREACHABLE in ends)
        hint = f"only a UDP socket's {udp} can"
    elif can is not None and expect not in can:
        hint = f"expect {', '.join(can)}"
    else:
        return True
    reader.problem((*path, "expect"), f"{action} cannot end in {expect}", hint)
    return False


def _expected(values: Mapping[str, Any]) -> Expected | None:
    """What a count step expects of its connections: its table of counts, or all of them the
    one outcome it names; None for a step without `count`."""
    count: int | None = values.get("count")
    if count is None:
        return None
    expect = values.get("expect", Outcome.OK)
    return expect if isinstance(expect, Mapping) else {expect: (count, count)}


def _counts_fit(values: Mapping[str, Any], path: KeyPath, reader: Reader, clients: int) -> bool:
    """Whether the step's `source`, `count` and counts fit together (each misfit a problem)."""
    fits = True
    source = values.get("source", 1)
    if source > clients:
        reader.problem(
            (*path, "source"),
            f"there is no client {brief(source)}: the scenario has clients = {clients}",
            f"set clients = {brief(source)} in [scenario]" if source <= MAX_CLIENTS else None,
        )
        fits = False
    expect, count = values.get("expect", Outcome.OK), values.get("count")
    if count is None:
        if isinstance(expect, Mapping):
            reader.problem((*path, "expect"), "a table of counts needs count", "count = 100")
            return False
        return fits
    if expect not in COUNTED and not isinstance(expect, Mapping):
        reader.problem(
            (*path, "expect"),
            f"a connection of a count step cannot end in {expect}",
            f"expect {', '.join(COUNTED)}, or a table of counts",
        )
        return False
    expected = _expected(values)
    assert expected is not None  # it has a count
    low, high = (sum(ends) for ends in zip(*expected.values(), strict=True))
    if not low <= count <= high:
        makes = f"{low}" if low == high else f"{low}..{high}"
        reader.problem(
            (*path, "expect"),
            f"{show_counts(expected)} makes {makes} connections, not count = {count}",
            "an outcome not named must have none",
        )
        fits = False
    return fits


def _flood_fits(
    values: Mapping[str, Any], path: KeyPath, reader: Reader, meta: Mapping[str, Any]
) -> bool:
    """Whether a syn-flood's values make a flood the scenario's lab can send (its count, rate
    and time together, its sources among the client subnet's free addresses)."""
    if "expect" in values and values["expect"] is not Outcome.OK:
        reader.problem((*path, "expect"), "a syn-flood's outcome is ok", "leave expect out")
        return False
    step = Step(
        "client",
        0,
        Action.SYN_FLOOD,
        count=values.get("count"),
        rate=values.get("rate"),
        duration=values.get("for"),
        sources=values.get("sources"),
    )
    try:
        spec = flood_spec(step, DEFAULT_PORT, meta.get("ipv6", False), meta.get("speed", 1.0))
        flood.spoofed_sources(LabPlan.create(clients=meta.get("clients", 1)), spec)
    except flood.FloodError as err:
        reader.problem(path, str(err))
        return False
    return True


def _fits(
    action: Action,
    side: Side,
    table: Mapping[str, Any],
    values: Mapping[str, Any],
    path: KeyPath,
    reader: Reader,
) -> bool:
    """Whether the step's keys suit its action and side (each misfit is a problem)."""
    fits = True
    only = _ONLY_ON.get(action)
    if only is not None and only != side:
        reader.problem((*path, "do"), f"only the {only} can {action}")
        fits = False
    allowed = (*_COMMON, *_ACTION_KEYS[action])
    for key in table:
        if key in _STEP and key not in allowed:
            takes = ", ".join(_ACTION_KEYS[action]) or "nothing but do, expect, after, within"
            reader.problem((*path, key), f"{action} does not take {key!r}", f"it takes {takes}")
            fits = False
    for key in _REQUIRED.get(action, ()):
        if key not in table:
            reader.problem(path, f"{action} needs {key!r}")
            fits = False
    if action is Action.SEND and ("data" in table) == ("bytes" in table):
        reader.problem(path, "send needs either data or bytes", 'data = "GET /" or bytes = 100')
        fits = False
    if action is Action.SEND_TO and "data" in table and "bytes" in table:
        reader.problem(path, "send-to takes data or bytes, not both")
        fits = False
    return fits and all(key in values for key in table if key in _STEP)


def _pattern(
    values: Mapping[str, Any], reader: Reader, path: KeyPath, *, timed: bool = False
) -> EventPattern:
    return EventPattern(
        event=values["event"],
        fields={k: v for k, v in values.items() if k in _FIELDS},
        after=values.get("after") if timed else None,
        within=values.get("within") if timed else None,
        line=reader.lines.get(path),
    )


def _events(value: Any, key: str, reader: Reader, *, timed: bool) -> tuple[EventPattern, ...]:
    converters = _EVENT if timed else {"event": _event_kind, **_FIELDS}
    patterns = []
    for index, table in enumerate(_array(value, key, reader)):
        path: KeyPath = (key, index)
        values = reader.read(table, path, converters)
        if "event" not in table:
            reader.problem(path, "missing 'event'", f"one of {', '.join(EVENT_KINDS)}")
        elif "event" in values:
            patterns.append(_pattern(values, reader, path, timed=timed))
    return tuple(patterns)
