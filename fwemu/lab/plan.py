"""A lab as data: namespaces, veth pairs, addresses, routes and sysctls; no I/O.

A lab named NAME with index N (1..250, default 201) is three network namespaces joined by
two veth pairs, with no link to the root namespace:

  NAME-client            NAME-fw                              NAME-server
  eth0 10.N.1.2/24  <->  cli0 10.N.1.1/24   srv0 10.N.2.1/24  <->  eth0 10.N.2.2/24
       fd00:N:1::2/64         fd00:N:1::1/64     fd00:N:2::1/64         fd00:N:2::2/64

A lab of C clients (1..MAX_CLIENTS, default 1) gives the client's eth0 C address pairs,
10.N.1.2 .. 10.N.1.(C+1) and fd00:N:1::2 .. fd00:N:1::(C+1), so one namespace can play several
client hosts (a per-client limit shown against one while another is unaffected). A socket that
binds to none of them gets the first, in both families.

Client and server route everything via NAME-fw, which forwards IPv4 and IPv6; fwemu runs
there. Loopback is up everywhere and IPv6 duplicate address detection is off, so the lab is
usable as soon as it is up. The index only helps a person tell labs apart by their addresses:
namespaces isolate labs, so two labs may even share an index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from fwemu.errors import FwemuError

Side = Literal["client", "fw", "server"]
SIDES: tuple[Side, ...] = ("client", "fw", "server")

DEFAULT_NAME = "fwemu"
DEFAULT_INDEX = 201
# The index is the second octet of 10.N.x.x, and 0/255 read as network/broadcast-ish: keep 1..250.
MIN_INDEX, MAX_INDEX = 1, 250
# Client addresses are hosts 2.. of 10.N.1.0/24, whose .1 is fw's and .255 the broadcast.
MAX_CLIENTS = 253

# A namespace name is a file name under /run/netns: at most NAME_MAX = 255 bytes (limits.h).
_NAME_MAX = 255
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MAX_NAME_LEN = _NAME_MAX - len("-server")


class LabError(FwemuError):
    """A lab cannot be planned, created, inspected or removed."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One lab interface and its addresses (strings, as users type them)."""

    namespace: str
    ifname: str
    ipv4: str
    ipv6: str
    prefixlen4: int = 24
    prefixlen6: int = 64
    aliases: tuple[tuple[str, str], ...] = ()  # further (IPv4, IPv6) pairs: the extra clients

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every (IPv4, IPv6) pair on the interface, the main one first."""
        return ((self.ipv4, self.ipv6), *self.aliases)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every address in CIDR form, each pair v4 first: the form `ip addr` and `fwemu lab
        list` show."""
        return tuple(
            address
            for ipv4, ipv6 in self.pairs
            for address in (f"{ipv4}/{self.prefixlen4}", f"{ipv6}/{self.prefixlen6}")
        )


@dataclass(frozen=True, slots=True)
class VethPair:
    """A veth pair; `fw_end` lives in the fw namespace, `peer` in the client or server one."""

    fw_end: Endpoint
    peer: Endpoint


@dataclass(frozen=True, slots=True)
class Route:
    """A default route of one family (4 or 6) in `namespace`, via `gateway` on `ifname`."""

    namespace: str
    ifname: str
    family: Literal[4, 6]
    gateway: str


@dataclass(frozen=True, slots=True)
class Sysctl:
    """A value written to /proc/sys/`key` as seen from inside `namespace`."""

    namespace: str
    key: str
    value: str


def validate_name(name: str) -> str:
    """Return `name` if it can name a lab, else raise LabError saying why."""
    if not _NAME_RE.fullmatch(name):
        raise LabError(
            f"lab name {name!r} is invalid: use letters, digits, '-' and '_', "
            "starting with a letter or digit"
        )
    if len(name) > _MAX_NAME_LEN:
        raise LabError(
            f"lab name {name[:20]!r}... is {len(name)} characters long; the limit is "
            f"{_MAX_NAME_LEN} so that NAME-server fits in a namespace name"
        )
    return name


def namespace_name(name: str, side: Side) -> str:
    """The network namespace of one side of lab `name`, e.g. "fwemu-client"."""
    return f"{name}-{side}"


@dataclass(frozen=True, slots=True)
class LabPlan:
    """The complete, validated description of one lab; build it with `LabPlan.create`."""

    name: str
    index: int
    client: Endpoint
    fw_client_side: Endpoint
    fw_server_side: Endpoint
    server: Endpoint

    @classmethod
    def create(
        cls, name: str = DEFAULT_NAME, index: int = DEFAULT_INDEX, clients: int = 1
    ) -> LabPlan:
        validate_name(name)
        if not MIN_INDEX <= index <= MAX_INDEX:
            raise LabError(
                f"lab index {index} is out of range: use {MIN_INDEX}..{MAX_INDEX} "
                "(it becomes the N in 10.N.1.0/24 and fd00:N:1::/64)"
            )
        if not 1 <= clients <= MAX_CLIENTS:
            raise LabError(
                f"{clients} clients is out of range: use 1..{MAX_CLIENTS} "
                "(hosts 2.. of 10.N.1.0/24)"
            )

        def pair(subnet: int, host: int) -> tuple[str, str]:
            return (f"10.{index}.{subnet}.{host}", f"fd00:{index}:{subnet}::{host}")

        def endpoint(side: Side, ifname: str, subnet: int, host: int, hosts: int = 1) -> Endpoint:
            """`hosts` address pairs from `host` on, the first the main one."""
            (ipv4, ipv6), *aliases = (pair(subnet, h) for h in range(host, host + hosts))
            return Endpoint(namespace_name(name, side), ifname, ipv4, ipv6, aliases=tuple(aliases))

        return cls(
            name=name,
            index=index,
            client=endpoint("client", "eth0", 1, 2, hosts=clients),
            fw_client_side=endpoint("fw", "cli0", 1, 1),
            fw_server_side=endpoint("fw", "srv0", 2, 1),
            server=endpoint("server", "eth0", 2, 2),
        )

    @property
    def namespaces(self) -> tuple[str, str, str]:
        """Client, fw and server namespace names, in creation order."""
        client, fw, server = (namespace_name(self.name, side) for side in SIDES)
        return (client, fw, server)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.client, self.fw_client_side, self.fw_server_side, self.server)

    @property
    def links(self) -> tuple[VethPair, VethPair]:
        return (
            VethPair(fw_end=self.fw_client_side, peer=self.client),
            VethPair(fw_end=self.fw_server_side, peer=self.server),
        )

    @property
    def routes(self) -> tuple[Route, ...]:
        return tuple(
            route
            for pair in self.links
            for route in (
                Route(pair.peer.namespace, pair.peer.ifname, 4, pair.fw_end.ipv4),
                Route(pair.peer.namespace, pair.peer.ifname, 6, pair.fw_end.ipv6),
            )
        )

    @property
    def sysctls(self) -> tuple[Sysctl, ...]:
        """Forwarding in fw and nowhere else; no IPv6 duplicate address detection on lab
        interfaces.

        A new namespace inherits the root namespace's IPv4 forwarding (devconf_inherit_init_net
        0, the default): on a host that routes (libvirt, Docker) client and server would forward
        too, unless it is turned off for them. Without accept_dad=0 new IPv6 addresses stay
        "tentative" for about a second (RFC 4862 §5.4, Linux default dad_transmits=1 and
        retrans_timer=1s), and pings fail.
        """
        fw = namespace_name(self.name, "fw")
        forwarding = (
            Sysctl(fw, "net/ipv4/ip_forward", "1"),
            Sysctl(fw, "net/ipv6/conf/all/forwarding", "1"),
        )
        hosts = sorted({end.namespace for end in self.endpoints} - {fw})
        not_routers = tuple(Sysctl(host, "net/ipv4/ip_forward", "0") for host in hosts)
        no_dad = tuple(
            Sysctl(end.namespace, f"net/ipv6/conf/{end.ifname}/accept_dad", "0")
            for end in self.endpoints
        )
        return forwarding + not_routers + no_dad
