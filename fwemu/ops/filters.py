"""Which flows or events an operator means: `--match`/`--filter` expressions and FLOW arguments.

An expression is whitespace-separated `KEY=VALUE[,VALUE...]` terms; every term must hold (AND),
any value of a term may (OR). Addresses are seen as the firewall sees the flow: `src` is the
client (the SYN's sender), `dst` the server; `host` and `port` take either side.

    dport=5432                       flows to port 5432
    src=10.1.0.0/16 port=80,443      from that network, to or from port 80 or 443
    state=established,time_wait      in either state (the kernel's names, any case)
    proto=udp state=unreplied        UDP flows seen one way only (a record without "proto" is TCP)
    event=expire,reset rule=db       events of those kinds, for flows of rule "db" (events only)

The same text is parsed by the client (to report mistakes early) and by the daemon (it never
trusts a request), so the wire carries the expression, not a parsed form.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fwemu.core.events import Event
from fwemu.core.states import PHASE_NAME
from fwemu.errors import FwemuError
from fwemu.policy import IPNetwork, Match, PortRange
from fwemu.policy.model import Protocol

TRACKED_STATES = frozenset(state.name for state in PHASE_NAME)
EVENT_KINDS = frozenset(kind.kind for kind in Event.__subclasses__())
PROTOCOLS = frozenset(p.value for p in Protocol)
# What a record without "proto" is: an older fwemu's, or a capture's from before UDP.
DEFAULT_PROTO = Protocol.TCP.value
_ADDRESS_KEYS = ("src", "dst", "host")
_PORT_KEYS = ("sport", "dport", "port")
FLOW_KEYS = (*_ADDRESS_KEYS, *_PORT_KEYS, "proto", "state", "rule")
EVENT_KEYS = (*FLOW_KEYS, "event")
# FLOW as `fwemu flows` prints it: 10.0.0.1:40000>10.0.0.2:80, [fd00::1]:40000 > [fd00::2]:80,
# or with its protocol first as UDP flows print: udp 10.0.0.1:5353 > 10.0.0.2:53
_FLOW = re.compile(
    r"^\s*(?:([A-Za-z]+)\s+)?(\[[^\]]+\]|[^\s:\[\]>]+):(\d+)\s*>\s*(\[[^\]]+\]|[^\s:\[\]>]+):(\d+)\s*$"
)


_ANY = Match()  # matches every flow


class FilterError(FwemuError):
    """A --match/--filter expression or FLOW argument that cannot be understood."""


@dataclass(frozen=True, slots=True)
class Selector:
    """A parsed expression; empty fields match anything.

    Address and port terms are policy `Match`es (the same matching as a rule's); `host` and
    `port` are alternatives (the client's side or the server's), any of which must match.
    """

    match: Match = _ANY
    host: tuple[Match, ...] = ()
    port: tuple[Match, ...] = ()
    proto: frozenset[str] = frozenset()
    state: frozenset[str] = frozenset()
    rule: frozenset[str] = frozenset()
    event: frozenset[str] = frozenset()
    text: str = field(default="", compare=False)

    def matches(
        self,
        flow: Mapping[str, Any],
        *,
        state: str | None = None,
        rule: str | None = None,
        event: str | None = None,
    ) -> bool:
        """Whether a flow ({src, sport, dst, dport, proto}) in `state` under `rule` (and, for
        an event, of kind `event`) is selected."""
        if self.event and event not in self.event:
            return False
        if self.proto and flow.get("proto", DEFAULT_PROTO) not in self.proto:
            return False
        if self.state and (state is None or state.upper() not in self.state):
            return False
        if self.rule and rule not in self.rule:
            return False
        if self.match == _ANY and not self.host and not self.port:
            return True
        endpoints = (
            ipaddress.ip_address(flow["src"]),
            flow["sport"],
            ipaddress.ip_address(flow["dst"]),
            flow["dport"],
        )
        return (
            self.match.matches(*endpoints)
            and _any_matches(self.host, endpoints)
            and _any_matches(self.port, endpoints)
        )

    def matches_event(self, record: Mapping[str, Any]) -> bool:
        """For an event's JSON form (as `fwemu run --events` writes it)."""
        return self.matches(
            record["flow"],
            state=record.get("state"),
            rule=record.get("rule"),
            event=record["event"],
        )


def _any_matches(alternatives: tuple[Match, ...], endpoints: tuple[Any, ...]) -> bool:
    return not alternatives or any(m.matches(*endpoints) for m in alternatives)


EVERYTHING = Selector()


def parse_selector(text: str, keys: tuple[str, ...] = FLOW_KEYS) -> Selector:
    """The Selector for `text`; FilterError naming the bad term otherwise."""
    values: dict[str, Any] = {}
    for term in text.split():
        key, sep, raw = term.partition("=")
        key = key.lower()
        if not sep or not raw:
            raise FilterError(f"bad term {term!r} in {text!r}: expected KEY=VALUE, e.g. dport=80")
        if key not in keys:
            raise FilterError(f"unknown key {key!r} in {text!r}: use {', '.join(keys)}")
        if key in values:
            raise FilterError(f"{key} given twice in {text!r}: list the values, e.g. {key}=a,b")
        try:
            values[key] = _PARSERS[key](raw.split(","))
        except ValueError as err:
            raise FilterError(f"bad {key} in {text!r}: {err}") from None
    nets, ports = values.pop("host", ()), values.pop("port", ())
    return Selector(
        match=Match(
            src=values.pop("src", ()),
            dst=values.pop("dst", ()),
            src_port=values.pop("sport", ()),
            dst_port=values.pop("dport", ()),
        ),
        host=(Match(src=nets), Match(dst=nets)) if nets else (),
        port=(Match(src_port=ports), Match(dst_port=ports)) if ports else (),
        **values,
        text=" ".join(text.split()),
    )


def parse_flow(text: str) -> Selector:
    """FLOW as `fwemu flows` prints it (client first): the Selector for exactly that flow. Without
    a protocol it names the TCP or UDP flow with those ends (only one has them, but for a
    client that reuses its port for both)."""
    found = _FLOW.match(text)
    if found is None:
        raise FilterError(
            f"bad flow {text!r}: expected [PROTO] CLIENT:PORT>SERVER:PORT, e.g. "
            "10.0.0.1:40000>10.0.0.2:80 or 'udp 10.0.0.1:5353>10.0.0.2:53'"
        )
    proto, src, sport, dst, dport = found.groups()
    term = f"src={src.strip('[]')} sport={sport} dst={dst.strip('[]')} dport={dport}"
    if proto is not None:
        term += f" proto={proto}"
    return parse_selector(term)


def _networks(items: list[str]) -> tuple[IPNetwork, ...]:
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)
    except ValueError:
        raise ValueError("expected IP addresses or CIDR networks, e.g. 10.0.0.0/8") from None


def _ports(items: list[str]) -> tuple[PortRange, ...]:
    ranges = []
    for item in items:
        low, _, high = item.partition("-")
        if not (low.isdigit() and (high or low).isdigit()):
            raise ValueError(f"expected ports or ranges LOW-HIGH, not {item!r}")
        port_range = PortRange(int(low), int(high or low))
        if not 0 <= port_range.low <= port_range.high <= 65535:
            raise ValueError(f"port range {item!r} is not within 0..65535, low first")
        ranges.append(port_range)
    return tuple(ranges)


def _names(allowed: frozenset[str], upper: bool) -> Any:
    def parse(items: list[str]) -> frozenset[str]:
        names = frozenset(item.upper() if upper else item.lower() for item in items)
        unknown = sorted(names - allowed)
        if unknown:
            raise ValueError(f"unknown {', '.join(unknown)}: use {', '.join(sorted(allowed))}")
        return names

    return parse


_PARSERS: dict[str, Any] = {
    **dict.fromkeys(_ADDRESS_KEYS, _networks),
    **dict.fromkeys(_PORT_KEYS, _ports),
    "proto": _names(PROTOCOLS, upper=False),
    "state": _names(TRACKED_STATES, upper=True),
    "event": _names(EVENT_KINDS, upper=False),
    "rule": frozenset,
}
