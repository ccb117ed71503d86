"""Connection limits: a full table, per-client and per-server caps, handshakes in progress, and
NAT port pools (`Policy.limits` over every flow, a rule's `Limits` over its flows).

Pure counting, kept off the per-packet path: FlowTable asks `admit` before it opens a flow and
says when the flow opens, completes its handshake, becomes assured and is gone. Flows of a
policy without limits are never counted.

Linux's full table (nf_conntrack_core.c, __nf_conntrack_alloc()): a new entry past
nf_conntrack_max first tries early_drop(), which walks the hash buckets from the new tuple's
(NF_CT_EVICTION_RANGE of them) and deletes every entry not yet ASSURED in the first bucket that
has any; if none, the packet is dropped and "nf_conntrack: table full, dropping packet" logged.
fwemu hashes each flow's two tuples into `max_flows` buckets (the kernel's default sizing,
nf_conntrack_buckets = nf_conntrack_max) and keeps only the unassured flows per bucket.
"""

from __future__ import annotations

import heapq
import zlib
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

from fwemu.core import packet as pk
from fwemu.core.addresses import ntop
from fwemu.policy.model import LIMIT_NAMES, LimitAction, Limits, NatPool, Policy

EVICTION_RANGE = 8  # NF_CT_EVICTION_RANGE: buckets early_drop() walks
POLICY_SCOPE = "policy"  # the name of the policy-wide scope, in events


class Refusal(NamedTuple):
    """Why a new flow may not open: the limit, its value, the count that reached it, whose
    count it is, and the action."""

    limit: str  # a Limits field: "max_flows", "per_client", ...
    value: int
    current: int  # the count that reached it
    counted: str  # whose count: "table", "client 10.0.0.1", "the shared pool to 10.0.0.2:80"
    action: LimitAction
    limits: str  # whose [limits]: POLICY_SCOPE or "rule NAME"

    @property
    def detail(self) -> str:
        """For a Decision's detail."""
        return f"{self.limit} {self.value} reached by {self.counted}"


class Usage(NamedTuple):
    """One [limits] table against its counts, for people (`fwemu flows --summary`, `top`)."""

    limits: str  # POLICY_SCOPE or "rule NAME"
    values: dict[str, int]  # each limit set, by its Limits key
    # Per limit: ("table", n) for a whole-table count, else the busiest (who, n), most first.
    counts: dict[str, list[tuple[str, int]]]
    refused: dict[str, int]  # new flows refused so far, per limit


class _Flow(NamedTuple):
    """What a counted flow added to its scopes, to take back when it goes."""

    scopes: tuple[_Scope, ...]
    client: bytes  # the client's packed address
    server: bytes  # the server's packed address, port and IP protocol
    buckets: tuple[int, int]  # its tuples' hash buckets (early drop), else (0, 0)


def _add(counts: dict[bytes, int], key: bytes) -> None:
    counts[key] = counts.get(key, 0) + 1


def _take(counts: dict[bytes, int], key: bytes) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]


class _Scope:
    """One [limits] table's counters."""

    __slots__ = (
        "buckets",
        "client_embryonic",
        "clients",
        "destinations",
        "embryonic",
        "flows",
        "held",
        "limits",
        "name",
        "pools",
        "refused",
        "servers",
        "unassured",
    )

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.flows = 0
        self.embryonic = 0
        self.clients: dict[bytes, int] = {}
        self.servers: dict[bytes, int] = {}
        self.client_embryonic: dict[bytes, int] = {}
        # Ports in use per pool: a protocol's (NATs pool TCP's and UDP's ports apart) of a
        # client, or of all (shared); the pool's byte string is the protocol, then the client.
        self.pools: dict[bytes, int] = {}
        self.destinations: dict[bytes, int] = {}  # ... per pool and server address:port
        self.held: deque[tuple[float, bytes, bytes]] = deque()  # (until, pool, destination)
        self.buckets = limits.max_flows if limits.early_drop and limits.max_flows else 0
        self.unassured: dict[int, set[int]] = {}  # bucket -> slots not yet assured
        self.refused: Counter[str] = Counter()  # per limit

    def usage(self, now: float, busiest: int) -> Usage:
        self.release(now)
        limits = self.limits
        shared = limits.nat_pool == NatPool.SHARED
        per: dict[str, tuple[dict[bytes, int], Callable[[bytes], str]]] = {
            "per_client": (self.clients, ntop),
            "per_server": (self.servers, _hostport),
            "per_client_embryonic": (self.client_embryonic, ntop),
            "ports_per_client": (self.pools, lambda pool: _pool(pool, shared)),
            "ports_per_destination": (self.destinations, lambda key: _destination(key, shared)),
        }
        values = {k: v for k in LIMIT_NAMES if (v := getattr(limits, k)) is not None}
        counts: dict[str, list[tuple[str, int]]] = {}
        for key in values:
            if key == "max_flows":
                counts[key] = [("table", self.flows)]
            elif key == "embryonic":
                counts[key] = [("table", self.embryonic)]
            else:
                found, name = per[key]
                top = heapq.nlargest(busiest, found.items(), key=lambda item: item[1])
                counts[key] = [(name(who), n) for who, n in top]
        return Usage(self.name, values, counts, dict(self.refused))

    def pool(self, client: bytes, server: bytes) -> bytes:
        """The NAT pool a flow from `client` to `server` takes its port from."""
        proto = server[-1:]
        return proto + client if self.limits.nat_pool == NatPool.CLIENT else proto

    def release(self, now: float) -> None:
        """Give back the ports whose `port_reuse` is over."""
        held = self.held
        while held and held[0][0] <= now:
            _, pool, destination = held.popleft()
            _take(self.pools, pool)
            _take(self.destinations, destination)


class LimitBook:
    """The counters of every scope that has limits, and the flows counted in them."""

    def __init__(self, policy: Policy) -> None:
        profiles = policy.profiles
        top = _Scope(POLICY_SCOPE, policy.limits) if policy.limits.counted else None
        own = [_Scope(f"rule {p.name}", p.limits) if p.limits.counted else None for p in profiles]
        # The scopes a new flow of each profile counts in: its rule's, then the policy's.
        self._scopes: list[tuple[_Scope, ...]] = [
            tuple(s for s in (mine, top) if s is not None) for mine in own
        ]
        self.scopes: tuple[_Scope, ...] = tuple(s for s in (*own, top) if s is not None)
        self.active = bool(self.scopes)
        self._flows: dict[int, _Flow] = {}
        self._embryonic: set[int] = set()

    def carry(self, old: LimitBook) -> None:
        """Keep the ports `old` held for port_reuse, in the scopes of the same name."""
        by_name = {s.name: s for s in self.scopes}
        for scope in old.scopes:
            mine = by_name.get(scope.name)
            if mine is None or not scope.held:
                continue
            for until, pool, destination in scope.held:
                if mine.limits.nat_pool == scope.limits.nat_pool:
                    _add(mine.pools, pool)
                    _add(mine.destinations, destination)
                    mine.held.append((until, pool, destination))

    def admit(
        self, key: bytes, forward: bool, profile: int, handshake: bool, now: float
    ) -> Refusal | list[int] | None:
        """May a flow of `profile` open for this packet (`forward`: the client is the key's
        first endpoint; `handshake`: it opens with a SYN)? None if so; a Refusal if a limit
        refuses it; else the slots to evict first (early drop) to make room for it."""
        client, server = _ends(key, forward)
        evict: list[int] = []
        for scope in self._scopes[profile]:
            refusal = self._check(scope, client, server, handshake, now)
            if refusal is not None:
                return refusal
            limits = scope.limits
            if limits.max_flows is not None and scope.flows >= limits.max_flows:
                victims = self._early_drop(scope, key, forward) if scope.buckets else []
                if not victims:
                    return _refuse(
                        scope, "max_flows", limits.max_flows, scope.flows, client, server
                    )
                evict += victims
        return evict or None

    def _check(
        self, scope: _Scope, client: bytes, server: bytes, handshake: bool, now: float
    ) -> Refusal | None:
        """The first limit of `scope` but max_flows that refuses the flow, if any."""
        limits = scope.limits
        counts: list[tuple[str, int | None, int]] = [
            ("per_client", limits.per_client, scope.clients.get(client, 0)),
            ("per_server", limits.per_server, scope.servers.get(server, 0)),
        ]
        if handshake:
            counts += [
                ("embryonic", limits.embryonic, scope.embryonic),
                (
                    "per_client_embryonic",
                    limits.per_client_embryonic,
                    scope.client_embryonic.get(client, 0),
                ),
            ]
        if limits.ports_per_client is not None or limits.ports_per_destination is not None:
            scope.release(now)
            pool = scope.pool(client, server)
            counts += [
                ("ports_per_client", limits.ports_per_client, scope.pools.get(pool, 0)),
                (
                    "ports_per_destination",
                    limits.ports_per_destination,
                    scope.destinations.get(pool + server, 0),
                ),
            ]
        for limit, value, count in counts:
            if value is not None and count >= value:
                return _refuse(scope, limit, value, count, client, server)
        return None

    def refused(self, refusal: Refusal) -> None:
        """Count a refusal (for `usage`)."""
        for scope in self.scopes:
            if scope.name == refusal.limits:
                scope.refused[refusal.limit] += 1

    def usage(self, now: float, busiest: int = 5) -> list[Usage]:
        """Each scope's limits against its counts (the `busiest` clients, servers, pools)."""
        return [scope.usage(now, busiest) for scope in self.scopes]

    def _early_drop(self, scope: _Scope, key: bytes, forward: bool) -> list[int]:
        """early_drop(): the unassured flows of the first bucket that has any, walking
        EVICTION_RANGE buckets from the new tuple's."""
        first = _bucket(key, forward, scope.buckets)
        for i in range(EVICTION_RANGE):
            found = scope.unassured.get((first + i) % scope.buckets)
            if found:
                return sorted(found)
        return []

    def opened(self, slot: int, key: bytes, forward: bool, profile: int, handshake: bool) -> None:
        """A flow `admit` let in is now in the table at `slot`."""
        scopes = self._scopes[profile]
        if not scopes:
            return
        client, server = _ends(key, forward)
        buckets = (0, 0)
        for scope in scopes:
            scope.flows += 1
            _add(scope.clients, client)
            _add(scope.servers, server)
            if handshake:
                scope.embryonic += 1
                _add(scope.client_embryonic, client)
            if scope.limits.ports_per_client or scope.limits.ports_per_destination:
                pool = scope.pool(client, server)
                _add(scope.pools, pool)
                _add(scope.destinations, pool + server)
            if scope.buckets:
                buckets = (
                    _bucket(key, forward, scope.buckets),
                    _bucket(key, not forward, scope.buckets),
                )
                for bucket in buckets:
                    scope.unassured.setdefault(bucket, set()).add(slot)
        self._flows[slot] = _Flow(scopes, client, server, buckets)
        if handshake:
            self._embryonic.add(slot)

    def established(self, slot: int) -> None:
        """The flow's handshake is over (or it is gone before it ended)."""
        if slot not in self._embryonic:
            return
        self._embryonic.discard(slot)
        flow = self._flows[slot]
        for scope in flow.scopes:
            scope.embryonic -= 1
            _take(scope.client_embryonic, flow.client)

    def assured(self, slot: int) -> None:
        """The flow is ASSURED: early drop no longer evicts it."""
        flow = self._flows.get(slot)
        if flow is not None:
            self._forget_bucket(slot, flow)

    def closed(self, slot: int, now: float) -> None:
        """The flow is gone; its NAT port stays in use for the scope's port_reuse."""
        self.established(slot)
        flow = self._flows.pop(slot, None)
        if flow is None:
            return
        self._forget_bucket(slot, flow)
        for scope in flow.scopes:
            scope.flows -= 1
            _take(scope.clients, flow.client)
            _take(scope.servers, flow.server)
            limits = scope.limits
            if limits.ports_per_client or limits.ports_per_destination:
                pool = scope.pool(flow.client, flow.server)
                if limits.port_reuse > 0:
                    scope.held.append((now + limits.port_reuse, pool, pool + flow.server))
                else:
                    _take(scope.pools, pool)
                    _take(scope.destinations, pool + flow.server)

    def _forget_bucket(self, slot: int, flow: _Flow) -> None:
        for scope in flow.scopes:
            if scope.buckets:
                for bucket in flow.buckets:
                    found = scope.unassured.get(bucket)
                    if found is not None:
                        found.discard(slot)
                        if not found:
                            del scope.unassured[bucket]


# Per limit: whose count it is ("table", the client, the server, the NAT pool) and which action.
_COUNTED = {
    "max_flows": ("table", "on_full"),
    "per_client": ("client", "on_full"),
    "per_server": ("server", "on_full"),
    "embryonic": ("table", "on_embryonic"),
    "per_client_embryonic": ("client", "on_embryonic"),
    "ports_per_client": ("pool", "on_exhausted"),
    "ports_per_destination": ("destination", "on_exhausted"),
}


def _refuse(
    scope: _Scope, limit: str, value: int, count: int, client: bytes, server: bytes
) -> Refusal:
    """The refusal by `limit`: only its own count is named (a flood makes many)."""
    limits = scope.limits
    counted, action_key = _COUNTED[limit]
    if counted in ("pool", "destination"):
        proto = _PROTO_SUFFIX.get(server[-1], "") if counted == "pool" else ""  # else the server's
        shared = limits.nat_pool == NatPool.SHARED
        pool = f"the shared pool{proto}" if shared else f"client {ntop(client)}{proto}"
        whose = pool if counted == "pool" else f"{pool} to {_hostport(server)}"
    elif counted == "client":
        whose = f"client {ntop(client)}"
    elif counted == "server":
        whose = f"server {_hostport(server)}"
    else:
        whose = "table"
    action: LimitAction = getattr(limits, action_key)
    return Refusal(limit, value, count, whose, action, scope.name)


def _ends(key: bytes, forward: bool) -> tuple[bytes, bytes]:
    """The client's packed address and the server's packed address, port and IP protocol (a
    UDP server and a TCP one on the same port are two)."""
    size = 4 if len(key) == pk.KEY4_LEN else 16
    ports = size + size
    proto = key[-1:]
    if forward:
        return key[:size], key[size:ports] + key[ports + 2 : ports + 4] + proto
    return key[size:ports], key[:size] + key[ports : ports + 2] + proto


def _bucket(key: bytes, forward: bool, buckets: int) -> int:
    """The hash bucket of one of the flow's tuples (the kernel's is seeded at random)."""
    return zlib.crc32(key, 1 + forward) % buckets


# How people read a pool's or a server's protocol: TCP's goes unsaid, as before UDP.
_PROTO_SUFFIX = {17: " (udp)"}
_SERVER4, _SERVER6 = 4 + 3, 16 + 3  # a server's bytes: address, port, protocol


def _pool(pool: bytes, shared: bool, said: bool = True) -> str:
    """A pool key for people: "10.0.1.2", "shared pool", "10.0.1.2 (udp)" (`said`: with its
    protocol)."""
    proto = _PROTO_SUFFIX.get(pool[0], "") if said else ""
    return f"shared pool{proto}" if shared else f"{ntop(pool[1:])}{proto}"


def _destination(key: bytes, shared: bool) -> str:
    """A pool-and-destination key for people: "10.0.1.2 to 10.0.2.2:53 (udp)"."""
    server = key[-_SERVER4:] if len(key) in (1 + _SERVER4, 5 + _SERVER4) else key[-_SERVER6:]
    return f"{_pool(key[: len(key) - len(server)], shared, False)} to {_hostport(server)}"


def _hostport(packed: bytes) -> str:
    """A server's address, port and (UDP's) protocol: "10.0.2.2:53 (udp)"."""
    host, port = ntop(packed[:-3]), int.from_bytes(packed[-3:-1])
    proto = _PROTO_SUFFIX.get(packed[-1], "")
    return f"[{host}]:{port}{proto}" if ":" in host else f"{host}:{port}{proto}"
