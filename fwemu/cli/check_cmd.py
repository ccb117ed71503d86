"""`fwemu check POLICY...`: validate policies and show their effective timers and actions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from enum import StrEnum
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fwemu.errors import FwemuError
from fwemu.policy import (
    PHASE_STATES,
    Match,
    OutOfState,
    Phase,
    Policy,
    PolicyError,
    PortRange,
    Profile,
    format_duration,
    resolve_policy,
)
from fwemu.policy.model import (
    LIFETIME,
    LIMIT_NAMES,
    PROTOCOL_NAME,
    STATE_TIMEOUTS,
    TIMEOUT_CAPS,
    FloodAction,
    FloodCount,
    LimitAction,
    Limits,
    Normalise,
    SackBlocks,
    SynData,
    SynFlood,
    SynProxy,
    Timeouts,
)

ORDER = 40  # place in `fwemu --help`

_EPILOG = """\
POLICY is a TOML file (a path, or any name ending in .toml) or the name of a preset.

examples:
  fwemu check cisco-asa                 show what the Cisco ASA preset does
  fwemu check mine.toml linux           check a file, and compare it with Linux's defaults
  fwemu check --json mine.toml | jq .   the same data as JSON, for scripts

Exit status: 0 when every policy is valid, 2 when any is not (each problem is printed on stderr
as FILE:LINE: KEY: MESSAGE, and the other policies are still checked).
"""


# The UDP timers, as [timeouts] names them: a flow's own, a stream's, and when a flow becomes one.
_UDP_TIMEOUTS = ("udp", "udp_stream", "udp_stream_after")

# Output width when stdout is not a terminal (no width to fit): wide enough that cells rarely
# wrap; tables take only the width they need.
_PIPE_WIDTH = 132


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate policies and show their effective timers and actions",
        description=(
            "Validate policy files and presets, reporting every problem, and show the\n"
            "effective timeout and expiry action of each connection phase, the UDP timers\n"
            "and what late packets and datagrams meet, for every rule and for the default."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("policies", nargs="+", metavar="POLICY", help="a policy file or preset")
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list (one object per valid policy)"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    valid: list[Policy] = []
    for arg in args.policies:
        try:
            valid.append(resolve_policy(arg))
        except PolicyError as err:
            print(err, file=sys.stderr)
        except FwemuError as err:
            print(f"fwemu: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps([policy_to_dict(p) for p in valid], indent=2))
    else:
        console = Console(file=sys.stdout, highlight=False)
        if not console.is_terminal:
            console.width = _PIPE_WIDTH
        for index, policy in enumerate(valid):
            if index:
                console.print()
            _print_policy(console, policy)
    return 0 if len(valid) == len(args.policies) else 2


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The JSON form of a policy: every profile with its effective values, seconds as numbers."""
    return {
        "name": policy.name,
        "origin": policy.origin,
        "description": policy.description,
        "sources": list(policy.sources),
        "profiles": [_profile_to_dict(p, match) for p, match in _profiles(policy)],
        "answer_rate": {
            "per_source": policy.answer_rate.per_source,
            "total": policy.answer_rate.total,
        },
        "limits": _table_to_dict(policy.limits),
        "syn_flood": _table_to_dict(policy.syn_flood),
    }


def _table_to_dict(table: Any) -> dict[str, Any]:
    """Every key of a policy table (a model dataclass), enums as their names, None as null."""
    return {key: _plain(getattr(table, key)) for key in (f.name for f in dataclasses.fields(table))}


def _plain(value: Any) -> Any:
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _profiles(policy: Policy) -> list[tuple[Profile, Match | None]]:
    """Each profile in match order with its rule's match (None for the default)."""
    return [*((rule.profile, rule.match) for rule in policy.rules), (policy.default, None)]


def _profile_to_dict(profile: Profile, match: Match | None) -> dict[str, Any]:
    oos = profile.out_of_state
    return {
        "name": profile.name,
        "match": None if match is None else _match_fields(match),
        # The state timers, the caps on them, the lifetime, then UDP's, as [timeouts] names them.
        "timeouts": {
            key: getattr(profile.timeouts, key)
            for key in (*STATE_TIMEOUTS, *TIMEOUT_CAPS, LIFETIME, *_UDP_TIMEOUTS)
        },
        "on_expire": {key: getattr(profile.on_expire, key).value for key in (*Phase, LIFETIME)},
        "dcd": None
        if profile.dcd is None
        else {"interval": profile.dcd.interval, "retries": profile.dcd.retries},
        "out_of_state": {
            "action": oos.action.value,
            "from_client": oos.for_side(True).value,
            "from_server": oos.for_side(False).value,
            "pickup": oos.pickup,
            "window_check": oos.window_check,
            "remember": oos.remember,
            "udp_from_client": oos.udp_from_client.value,
            "udp_from_server": oos.udp_from_server.value,
        },
        "limits": _table_to_dict(profile.limits),
        "syn_flood": _table_to_dict(profile.syn_flood),
        "syn_proxy": _table_to_dict(profile.syn_proxy),
        "normalise": _table_to_dict(profile.normalise),
    }


def _match_fields(match: Match) -> dict[str, list[str | int]]:
    """The match as policy TOML would write it; absent keys match anything."""
    fields: dict[str, list[str | int]] = {}
    if match.proto:
        fields["proto"] = [PROTOCOL_NAME[number].value for number in match.proto]
    for key in ("src", "dst"):
        if nets := getattr(match, key):
            fields[key] = [str(net) for net in nets]
    for key in ("src_port", "dst_port"):
        if ranges := getattr(match, key):
            fields[key] = [_port_text(r) for r in ranges]
    return fields


def _port_text(ports: PortRange) -> str | int:
    return ports.low if ports.low == ports.high else f"{ports.low}-{ports.high}"


# --- the readable table ---------------------------------------------------------------------


def _print_policy(console: Console, policy: Policy) -> None:
    heading = Text(policy.name, style="bold")
    if policy.description:
        heading.append(f": {policy.description}")
    console.print(heading, soft_wrap=True)
    console.print(Text(f"from {policy.origin}", style="dim"), soft_wrap=True)
    for source in policy.sources:
        console.print(Text(f"source: {source}", style="dim"), soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for column in ("profile", "phase", "timeout", "on expire"):
        table.add_column(column)
    for profile, match in _profiles(policy):
        _add_profile(table, profile, match)
    console.print(table)
    for line in _defence_lines(policy):
        console.print(line, soft_wrap=True)
    rate = policy.answer_rate
    console.print(
        f"out-of-state answers (event, RST): at most {rate.per_source}/s from one source, "
        f"{rate.total}/s in all; past that, the verdict alone",
        soft_wrap=True,
    )


def _add_profile(table: Table, profile: Profile, match: Match | None) -> None:
    """One row per phase, one per timer cap, the UDP timers, then the out-of-state rows; the
    first column names the profile."""
    labels = [Text(profile.name, style="bold"), *_match_lines(match)]
    for phase in Phase:
        states = PHASE_STATES[phase]
        table.add_row(
            labels.pop(0) if labels else "",
            phase.value,
            _timeouts_text(profile, states),
            profile.on_expire.for_phase(phase).value,
        )
    # A cap shortens whichever state's timer runs, whose phase's action applies at expiry.
    for cap in TIMEOUT_CAPS:
        seconds = getattr(profile.timeouts, cap)
        limit = "no cap" if seconds is None else f"at most {format_duration(seconds)}"
        table.add_row(labels.pop(0) if labels else "", cap, limit, "")
    lifetime = profile.timeouts.lifetime
    if lifetime is not None:
        action = profile.on_expire.lifetime.value
        table.add_row(labels.pop(0) if labels else "", LIFETIME, format_duration(lifetime), action)
    if (dcd := profile.dcd) is not None:
        probes = f"probe every {format_duration(dcd.interval)}, {dcd.retries} times"
        table.add_row(labels.pop(0) if labels else "", "dcd", probes, "then the established action")
    # UDP expiry is always silent: there is nothing to send at expiry (late datagrams are below).
    for name, text in _udp_timer_texts(profile.timeouts):
        table.add_row(labels.pop(0) if labels else "", name, text, "silent")
    oos = profile.out_of_state
    table.add_row(
        labels.pop(0) if labels else "",
        "out of state",
        f"remember {format_duration(oos.remember)}",
        _out_of_state_text(oos),
    )
    table.add_row(
        Text("\n").join(labels),
        "udp out of state",
        "",
        f"from client: {oos.udp_from_client.value}, from server: {oos.udp_from_server.value}",
        end_section=True,
    )


def _match_lines(match: Match | None) -> list[Text]:
    if match is None:
        return [Text("(everything else)", style="dim")]
    fields = _match_fields(match)
    if not fields:
        return [Text("match: any", style="dim")]
    return [
        Text(f"{key} {', '.join(map(str, values))}", style="dim") for key, values in fields.items()
    ]


def _timeouts_text(profile: Profile, states: tuple[str, ...]) -> str:
    """One duration when the phase's states share it, else "syn_sent 2m, syn_recv 1m"."""
    values = [getattr(profile.timeouts, state) for state in states]
    if len(set(values)) == 1:
        return format_duration(values[0])
    return ", ".join(f"{s} {format_duration(v)}" for s, v in zip(states, values, strict=True))


def _udp_timer_texts(timeouts: Timeouts) -> list[tuple[str, str]]:
    """The `udp` and `udp_stream` rows: a flow's timer, and a stream's with when one becomes."""
    after = timeouts.udp_stream_after
    once = "once seen both ways" + (f" for {format_duration(after)}" if after else "")
    return [
        ("udp", format_duration(timeouts.udp)),
        ("udp_stream", f"{format_duration(timeouts.udp_stream)}, {once}"),
    ]


def _out_of_state_text(oos: OutOfState) -> str:
    sides = {"from client": oos.for_side(True), "from server": oos.for_side(False)}
    parts = [oos.action.value]
    parts += [f"{side}: {action.value}" for side, action in sides.items() if action != oos.action]
    parts.append("pickup" if oos.pickup else "no pickup")
    parts.append(f"window check {'on' if oos.window_check else 'off'}")
    return ", ".join(parts)


def _defence_lines(policy: Policy) -> list[str]:
    """The limits, SYN-flood defences, normaliser and proxy, one line each where set."""
    lines: list[str] = []
    for whose, limits in (
        ("every flow", policy.limits),
        *((f"rule {r.name}'s flows", r.profile.limits) for r in policy.rules),
    ):
        if limits.counted:
            lines.append(f"limits on {whose}: {limits_text(limits)}")
    for whose, flood in (
        ("every flow", policy.syn_flood),
        *((f"rule {r.name}'s flows", r.profile.syn_flood) for r in policy.rules),
    ):
        if flood.active:
            lines.append(f"SYN-flood defence on {whose}: {_flood_text(flood)}")
    for profile, _ in _profiles(policy):
        if text := _normalise_text(profile.normalise):
            lines.append(f"normaliser for {profile.name}: {text}")
    for profile, _ in _profiles(policy):
        if _answers_syns(policy, profile):
            lines.append(
                f"{profile.name} answers SYNs itself with {_proxy_text(profile.syn_proxy)}"
            )
    if policy.rewrites:
        lines.append("fwemu rewrites packets: the queue copies them whole")
    return lines


def _flood_text(flood: SynFlood) -> str:
    parts = []
    if flood.alarm is not None:
        parts.append(f"alarm past {flood.alarm:,} SYN/s")
    if flood.activate is not None:
        start = "always" if flood.activate == 0 else f"past {flood.activate:,} SYN/s"
        action = flood.action.value
        if flood.action == FloodAction.RANDOM_EARLY_DROP and flood.maximum is not None:
            action += f" (100 % at {flood.maximum:,} SYN/s)"
        parts.append(f"{start}: {action}")
    counted = "per destination" if flood.count == FloodCount.DESTINATION else "in total"
    return f"{'; '.join(parts)} (counted {counted})"


def _answers_syns(policy: Policy, profile: Profile) -> bool:
    """Whether the profile's flows may meet the SYN proxy (cookies or TCP Intercept)."""
    floods = (policy.syn_flood, profile.syn_flood)
    limits = (policy.limits, profile.limits)
    return any(f.active and f.action == FloodAction.SYN_COOKIES for f in floods) or any(
        lim.on_embryonic == LimitAction.INTERCEPT for lim in limits
    )


def _proxy_text(proxy: SynProxy) -> str:
    wscale = "no window scale" if proxy.wscale is None else f"window scale {proxy.wscale}"
    return f"MSS {proxy.mss}, {wscale}, {'SACK' if proxy.sack_perm else 'no SACK'}, no timestamps"


def _normalise_text(normalise: Normalise) -> str:
    parts = []
    if normalise.isn_randomisation:
        kept = ", SACK blocks left untranslated" if normalise.sack_blocks == SackBlocks.KEEP else ""
        parts.append(f"sequence numbers randomised{kept}")
    if normalise.clear:
        parts.append("SYN options cleared: " + ", ".join(o.value for o in normalise.clear))
    if normalise.mss is not None:
        parts.append(f"MSS clamped to {normalise.mss}")
    if normalise.syn_data == SynData.DROP:
        parts.append("SYNs with data dropped")
    return "; ".join(parts)


def limits_text(limits: Limits) -> str:
    """A [limits] table in one line: each limit set, with its action."""
    parts = []
    for key in LIMIT_NAMES:
        value = getattr(limits, key)
        if value is not None:
            parts.append(f"{key} {value:,}")
    actions = []
    if limits.max_flows or limits.per_client or limits.per_server:
        early = ", early drop" if limits.early_drop else ""
        actions.append(f"full: {limits.on_full.value}{early}")
    if limits.embryonic or limits.per_client_embryonic:
        actions.append(f"handshakes: {limits.on_embryonic.value}")
    if limits.ports_per_client or limits.ports_per_destination:
        reuse = (
            f"reused {format_duration(limits.port_reuse)} after"
            if limits.port_reuse
            else "free when"
        )
        actions.append(
            f"ports ({limits.nat_pool.value} pool, {reuse} the flow ends): "
            f"{limits.on_exhausted.value}"
        )
    return f"{', '.join(parts)} ({'; '.join(actions)})"
