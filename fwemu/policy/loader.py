"""TOML policy files -> the frozen model of `model.py`, or one PolicyError listing every problem.

The only code that sees raw TOML. It reads the whole file before failing, so a user fixes every
mistake in one round, and each problem names the file, line (when known) and key path.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fwemu.policy.duration import brief, shorten, type_name
from fwemu.policy.model import (
    LIFETIME,
    LIMIT_NAMES,
    PHASE_STATES,
    PROTOCOL_NUMBER,
    AnswerRate,
    Dcd,
    ExpireAction,
    FloodAction,
    FloodCount,
    IPNetwork,
    LimitAction,
    Limits,
    Match,
    NatPool,
    OnExpire,
    OutOfState,
    OutOfStateAction,
    Phase,
    Policy,
    PortRange,
    Profile,
    Protocol,
    Rule,
    SackBlocks,
    SynData,
    SynFlood,
    SynOption,
    Timeouts,
    UdpAction,
)
from fwemu.policy.reading import (
    Converter,
    KeyPath,
    ProblemsError,
    Reader,
    as_duration,
    as_finite_duration,
    as_flag,
    as_line,
    as_lines,
    as_name,
    choice_of,
    fail,
    one_or_many,
    read_source,
    read_toml,
    show_path,
)

# A phase name in `[timeouts]` sets all of its states' timers (model.PHASE_STATES).
_SHORTCUTS = {p.value: s for p, s in PHASE_STATES.items() if s != (p.value,)}
_STATES = tuple(f.name for f in dataclasses.fields(Timeouts))  # the timers, caps and lifetime


class PolicyError(ProblemsError):
    """Every problem found in one policy; str() is one line per problem."""


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """The policy in the TOML file at `path`; problems name the file as given."""
    text = read_source(path, PolicyError)
    origin = os.fspath(path)
    return loads_policy(text, origin)


def loads_policy(text: str, origin: str = "<string>", *, default_name: str | None = None) -> Policy:
    """The policy in TOML `text`. `origin` names it in messages; `[policy] name` defaults to
    `default_name`, else to the stem of `origin`."""
    document, reader = read_toml(text, origin, PolicyError)
    policy = _policy(document, reader, default_name or Path(origin).stem)
    if reader.problems:
        raise PolicyError(sorted(reader.problems, key=lambda p: (p.line is None, p.line or 0)))
    return policy


_expire_action = choice_of(ExpireAction, "action")
_oos_action = choice_of(OutOfStateAction, "action")


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        fail(f'expected an IP network like "10.0.0.0/24", got {type_name(value)}')
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        fail(
            f"{brief(value)} is not an IP network",
            'use CIDR like "10.0.0.0/24" or "2001:db8::/32"',
        )
    fail(f"{brief(value)} has host bits set", f"did you mean '{loose}'?")


# ASCII digits only: \d (and int()) would read "\u0668\u0660" (Arabic-Indic) as port 80.
_PORT_TEXT = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?", re.ASCII)
_MAX_PORT = 65535


def _port_range(value: Any) -> PortRange:
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = _port(value)
    elif isinstance(value, str) and (found := _PORT_TEXT.fullmatch(value)):
        low, high = _port(found[1]), _port(found[2] or found[1])
    else:
        shown = brief(value) if isinstance(value, str) else type_name(value)
        fail(f'expected a port or a range like "8000-8100", got {shown}')
    if low > high:
        fail(f"port range {brief(value)} is reversed", f"did you mean '{high}-{low}'?")
    return PortRange(low, high)


def _port(number: int | str) -> int:
    """A port from an int or a string of digits, range-checked; digits too many to be a port
    are not converted (int() refuses more than 4300)."""
    digits = number.lstrip("0") if isinstance(number, str) else ""
    if len(digits) > len(str(_MAX_PORT)) or not 0 <= int(number) <= _MAX_PORT:
        shown = shorten(number) if isinstance(number, str) else brief(number)
        fail(f"port {shown} is out of range 0-{_MAX_PORT}")
    return int(number)


_protocol = choice_of(Protocol, "protocol")


# --- the schema -----------------------------------------------------------------------------

_DEFENCES = ("syn_flood", "syn_proxy", "normalise")
_TOP_LEVEL = ("policy", "timeouts", "on_expire", "out_of_state", "limits", *_DEFENCES, "rule")
_RULE_KEYS = ("name", "match", "timeouts", "on_expire", "out_of_state", "limits", *_DEFENCES)
_META: Mapping[str, Converter] = {"name": as_name, "description": as_line, "sources": as_lines}
_MAX_RETRIES = 100


def _dcd(value: Any) -> Dcd | None:
    """`dcd = { interval = "15s", retries = 5 }` (either key may be left out for the ASA's
    default), or false for none."""
    if value is False:
        return None
    if not isinstance(value, dict):
        example = '{ interval = "15s", retries = 5 }'
        fail(f"expected a table like {example} or false, got {type_name(value)}")
    unknown = sorted(set(value) - {"interval", "retries"})
    if unknown:
        fail(f"unknown key {brief(unknown[0])} in dcd", "dcd has interval and retries")
    dcd = Dcd()
    interval = as_finite_duration(value.get("interval", dcd.interval))
    retries = value.get("retries", dcd.retries)
    if interval <= 0:
        fail("dcd interval must be longer than 0s")
    if isinstance(retries, bool) or not isinstance(retries, int):
        fail(f"expected dcd retries as a whole number, got {type_name(retries)}")
    if not 1 <= retries <= _MAX_RETRIES:
        fail(f"dcd retries {brief(retries)} is out of range 1-{_MAX_RETRIES}")
    return Dcd(interval, retries)


_TIMEOUTS: Mapping[str, Converter] = {
    **dict.fromkeys((*_SHORTCUTS, *_STATES), as_duration),
    "udp_stream_after": as_finite_duration,  # a grace, not a timer: never "never"
    "dcd": _dcd,
}
_ON_EXPIRE: Mapping[str, Converter] = dict.fromkeys(("default", *Phase, LIFETIME), _expire_action)
_ON_EXPIRE_HINTS = {
    state: f"on_expire is per phase: did you mean {phase.value!r}?"
    for phase, states in PHASE_STATES.items()
    for state in states
    if state != phase.value
}
_OUT_OF_STATE: Mapping[str, Converter] = {
    "action": _oos_action,
    "from_client": _oos_action,
    "from_server": _oos_action,
    "pickup": as_flag,
    "window_check": as_flag,
    "remember": as_finite_duration,
    "udp_from_client": choice_of(UdpAction, "action"),
    "udp_from_server": choice_of(UdpAction, "action"),
}
# The answer rate is policy-wide: read from the top-level [out_of_state] by _policy, refused in
# a rule's. _profile lets it pass there unconverted (the identity), so it is checked once.
_MAX_RATE = 1_000_000
_ANSWER_RATE = {"rate_per_source": "per_source", "rate_total": "total"}
_RATE_HINTS = {
    key: "the answer rate is policy-wide: set it in the top-level [out_of_state]"
    for key in _ANSWER_RATE
}


def _same(value: Any) -> Any:
    return value


def _rate(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"expected a whole number of packets a second, got {type_name(value)}")
    if not 1 <= value <= _MAX_RATE:
        fail(f"{brief(value)} is out of range 1-{_MAX_RATE} (packets a second)")
    return value


_MAX_COUNT = 100_000_000  # flows: far beyond any product's table


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"expected a whole number of flows, got {type_name(value)}")
    if value == 0:
        fail("0 would refuse every flow", "leave the key out for no limit, as an ASA's 0 means")
    if not 1 <= value <= _MAX_COUNT:
        fail(f"{brief(value)} is out of range 1-{_MAX_COUNT} (flows)")
    return value


_limit_action = choice_of(LimitAction, "action")
_LIMITS: Mapping[str, Converter] = {
    **dict.fromkeys(LIMIT_NAMES, _count),
    "on_full": _limit_action,
    "on_embryonic": _limit_action,
    "on_exhausted": _limit_action,
    "early_drop": as_flag,
    "port_reuse": as_finite_duration,
    "nat_pool": choice_of(NatPool, "NAT pool"),
}


# Keys that qualify a limit, and the limits they need.
_NEEDS: Mapping[str, tuple[str, ...]] = {
    "early_drop": ("max_flows",),
    "on_full": ("max_flows", "per_client", "per_server"),
    "on_embryonic": ("embryonic", "per_client_embryonic"),
    **dict.fromkeys(
        ("on_exhausted", "port_reuse", "nat_pool"), ("ports_per_client", "ports_per_destination")
    ),
}


def _syn_rate(value: Any) -> int:
    """A SYN rate; 0 only means "always" (for activate)."""
    return 0 if value == 0 and not isinstance(value, bool) else _rate(value)


def _in_range(low: int, high: int, noun: str) -> Converter:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(f"expected a whole number ({noun}), got {type_name(value)}")
        if not low <= value <= high:
            fail(f"{brief(value)} is out of range {low}-{high} ({noun})")
        return value

    return convert


_mss = _in_range(88, 65535, "bytes")  # Linux's TCP_MIN_MSS


def _wscale(value: Any) -> int | None:
    return None if value is False else _in_range(0, 14, "a window scale shift")(value)


def _timestamps(value: Any) -> bool:
    if as_flag(value):
        fail(
            "not emulated: the middlebox would have to translate every timestamp",
            "answer without them, the default; SYNPROXY's --timestamp is not emulated",
        )
    return False


_SYN_FLOOD: Mapping[str, Converter] = {
    "alarm": _rate,
    "activate": _syn_rate,
    "maximum": _rate,
    "action": choice_of(FloodAction, "action"),
    "count": choice_of(FloodCount, "way of counting"),
}
_SYN_PROXY: Mapping[str, Converter] = {
    "mss": _mss,
    "wscale": _wscale,
    "sack_perm": as_flag,
    "timestamps": _timestamps,
}
_NORMALISE: Mapping[str, Converter] = {
    "isn_randomisation": as_flag,
    "sack_blocks": choice_of(SackBlocks, "choice"),
    "clear": one_or_many(choice_of(SynOption, "option")),
    "mss": _mss,
    "syn_data": choice_of(SynData, "choice"),
}


_MATCH: Mapping[str, Converter] = {
    "src": one_or_many(_network),
    "dst": one_or_many(_network),
    "src_port": one_or_many(_port_range),
    "dst_port": one_or_many(_port_range),
    "proto": one_or_many(lambda value: PROTOCOL_NUMBER[_protocol(value)]),
}


def _policy(document: dict[str, Any], reader: Reader, default_name: str) -> Policy:
    reader.known_keys(document, (), _TOP_LEVEL)
    meta = reader.read(reader.section(document, "policy", ()), ("policy",), _META)
    linux = Profile("default", Timeouts(), OnExpire(), OutOfState())
    default = _profile("default", document, (), linux, reader)
    top = reader.section(document, "out_of_state", ())
    rates = {key: top[key] for key in _ANSWER_RATE if key in top}
    converted = reader.read(rates, ("out_of_state",), dict.fromkeys(rates, _rate))
    return Policy(
        name=meta.get("name", default_name),
        default=default,
        rules=_rules(document.get("rule"), default, reader),
        description=meta.get("description", ""),
        sources=meta.get("sources", ()),
        origin=reader.origin,
        answer_rate=AnswerRate(**{_ANSWER_RATE[key]: v for key, v in converted.items()}),
        limits=_limits(document, (), reader),
        syn_flood=_syn_flood(document, (), reader),
    )


def _syn_flood(tables: Mapping[str, Any], path: KeyPath, reader: Reader) -> SynFlood:
    where = (*path, "syn_flood")
    rates = reader.read(reader.section(tables, "syn_flood", path), where, _SYN_FLOOD)
    flood = SynFlood(**rates)
    activate, maximum = flood.activate, flood.maximum
    if "action" in rates and activate is None:
        reader.problem((*where, "action"), "no effect without activate")
    if activate == 0 and flood.action != FloodAction.SYN_COOKIES:
        reader.problem((*where, "activate"), "0 (always) is for syn-cookies only")
    if flood.action == FloodAction.RANDOM_EARLY_DROP and activate is not None:
        if maximum is None:
            reader.problem(where, "random-early-drop needs maximum (where it reaches 100 %)")
        elif maximum <= activate:
            reader.problem((*where, "maximum"), f"must be above activate ({activate})")
    return flood


def _limits(tables: Mapping[str, Any], path: KeyPath, reader: Reader) -> Limits:
    table = reader.section(tables, "limits", path)
    limits = reader.read(table, (*path, "limits"), _LIMITS)
    for key in ("on_full", "on_exhausted"):
        if limits.get(key) == LimitAction.INTERCEPT:
            reader.problem(
                (*path, "limits", key), "intercept answers handshakes: on_embryonic only"
            )
    for key, needs in _NEEDS.items():
        if key in limits and not any(name in limits for name in needs):
            reader.problem((*path, "limits", key), f"no effect without {' or '.join(needs)}")
    return Limits(**limits)


def _profile(
    name: str, tables: Mapping[str, Any], path: KeyPath, base: Profile, reader: Reader
) -> Profile:
    """`base` with the `timeouts`, `on_expire` and `out_of_state` tables in `tables` over it."""

    def read(key: str, converters: Mapping[str, Converter], **hints: str) -> dict[str, Any]:
        table = reader.section(tables, key, path)
        return reader.read(table, (*path, key), converters, hints)

    timeouts = read("timeouts", _TIMEOUTS)
    dcd = timeouts.pop("dcd", base.dcd)
    states = {s: timeouts[p] for p, ss in _SHORTCUTS.items() if p in timeouts for s in ss}
    states.update((s, timeouts[s]) for s in _STATES if s in timeouts)  # exact names win

    on_expire = read("on_expire", _ON_EXPIRE, **_ON_EXPIRE_HINTS)
    fallback = on_expire.get("default")
    phases = {
        key: on_expire.get(key, getattr(base.on_expire, key) if fallback is None else fallback)
        for key in (*Phase, LIFETIME)
    }
    if path:  # a rule's
        out_of_state = read("out_of_state", _OUT_OF_STATE, **_RATE_HINTS)
    else:
        out_of_state = read("out_of_state", {**_OUT_OF_STATE, **dict.fromkeys(_ANSWER_RATE, _same)})
        for key in _ANSWER_RATE:
            out_of_state.pop(key, None)
    proxy = read("syn_proxy", _SYN_PROXY)
    normalise = read("normalise", _NORMALISE)
    return Profile(
        name=name,
        timeouts=dataclasses.replace(base.timeouts, **states),
        on_expire=OnExpire(**phases),
        out_of_state=dataclasses.replace(base.out_of_state, **out_of_state),
        dcd=dcd,
        syn_proxy=dataclasses.replace(base.syn_proxy, **proxy),
        normalise=dataclasses.replace(base.normalise, **normalise),
    )


def _rules(value: Any, default: Profile, reader: Reader) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        reader.problem(("rule",), f"expected an array of tables ([[rule]]), got {type_name(value)}")
        return ()
    first_index: dict[str, int] = {}
    rules = []
    for index, table in enumerate(value):
        path: KeyPath = ("rule", index)
        reader.known_keys(table, path, _RULE_KEYS)
        name = _rule_name(table, index, first_index, reader)
        if "match" not in table:
            reader.problem(path, "missing 'match'", "use match = {} to match every flow")
        match = reader.read(reader.section(table, "match", path), (*path, "match"), _MATCH)
        profile = _profile(name, table, path, default, reader)
        own = dataclasses.replace(
            profile, limits=_limits(table, path, reader), syn_flood=_syn_flood(table, path, reader)
        )
        rules.append(Rule(Match(**match), own))
    return tuple(rules)


def _rule_name(
    table: Mapping[str, Any], index: int, first_index: dict[str, int], reader: Reader
) -> str:
    """The rule's name, checked for presence and uniqueness (a stand-in when it is bad)."""
    path: KeyPath = ("rule", index)
    if "name" not in table:
        reader.problem(path, "missing 'name'", 'every rule needs a unique name, like name = "web"')
        return show_path(path)
    name: str | None = reader.read({"name": table["name"]}, path, {"name": as_name}).get("name")
    if name is None:
        return show_path(path)
    if name == "default":
        reader.problem((*path, "name"), "'default' is the name of the policy's own profile")
    elif name in first_index:
        first = show_path(("rule", first_index[name]))
        reader.problem((*path, "name"), f"duplicate rule name {brief(name)}", f"{first} has it too")
    else:
        first_index[name] = index
    return name
