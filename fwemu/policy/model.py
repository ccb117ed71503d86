"""The validated, frozen policy model: what the core enforces.

Only `fwemu.policy.loader` builds these from TOML; everything else reads them. All durations are
float seconds; `None` means "never" (no timer in that state).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Phase(StrEnum):
    """The policy's view of a connection's life; each groups one or more conntrack states
    (PHASE_STATES)."""

    EMBRYONIC = "embryonic"
    ESTABLISHED = "established"
    HALF_CLOSED = "half_closed"
    CLOSING = "closing"
    TIME_WAIT = "time_wait"
    CLOSE = "close"  # after a RST


# The one table of which conntrack states (their Timeouts fields) each phase covers: the loader
# reads a phase name in [timeouts] as all of them, the core derives each state's phase from it,
# `fwemu check` prints by it. SYN_SENT2 (simultaneous open) shares syn_sent's (see Timeouts).
PHASE_STATES: Mapping[Phase, tuple[str, ...]] = {
    Phase.EMBRYONIC: ("syn_sent", "syn_recv"),
    Phase.ESTABLISHED: ("established",),
    Phase.HALF_CLOSED: ("fin_wait", "close_wait"),
    Phase.CLOSING: ("last_ack",),
    Phase.TIME_WAIT: ("time_wait",),
    Phase.CLOSE: ("close",),
}
# The Timeouts fields that are a state's own timer; the rest cap them (Timeouts.max_retrans).
STATE_TIMEOUTS: tuple[str, ...] = tuple(s for states in PHASE_STATES.values() for s in states)
TIMEOUT_CAPS: tuple[str, ...] = ("max_retrans", "unacknowledged")
LIFETIME = "lifetime"  # the Timeouts field and the OnExpire one of the absolute lifetime


class ExpireAction(StrEnum):
    """What happens when a flow's timer runs out."""

    SILENT = "silent"  # forget the flow: later packets are out-of-state
    RESET_BOTH = "reset-both"
    RESET_CLIENT = "reset-client"  # the client is the side that sent the SYN (conntrack ORIGINAL)
    RESET_SERVER = "reset-server"


class UdpAction(StrEnum):
    """What a datagram of an expired UDP flow meets, per side ([out_of_state] udp_from_*)."""

    NEW = "new"  # opens a new flow, its sender the client (Linux conntrack: the packet is NEW)
    DROP = "drop"  # dropped without a word (a NAT whose mapping is gone)
    ICMP_UNREACHABLE = "icmp-unreachable"  # dropped, its sender told port unreachable (REJECT)


class OutOfStateAction(StrEnum):
    """What happens to a packet that belongs to no flow, or that the state table calls invalid."""

    DROP = "drop"
    RESET = "reset"  # answer the sender with a RST built from the packet, as a TCP stack would
    ACCEPT = "accept"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Idle timeout per conntrack state, in seconds (None = never expires in that state).

    SYN_SENT2 (simultaneous open) uses `syn_sent`, as Linux does.
    """

    syn_sent: float | None = 120.0  # Linux nf_conntrack_tcp_timeout_syn_sent
    syn_recv: float | None = 60.0  # ..._syn_recv
    established: float | None = 432000.0  # ..._established (5 days)
    fin_wait: float | None = 120.0  # ..._fin_wait
    close_wait: float | None = 60.0  # ..._close_wait
    last_ack: float | None = 30.0  # ..._last_ack
    time_wait: float | None = 120.0  # ..._time_wait
    close: float | None = 10.0  # ..._close
    # Caps on the state's timer (Linux tcp_timeouts[TCP_CONNTRACK_RETRANS] and [..._UNACK]): a
    # flow whose last segment was retransmitted 3+ times or advertised a zero window gets at most
    # `max_retrans`; one with data in flight not yet acknowledged, an ESTABLISHED flow that has
    # seen no reply, or an assured one sent an out-of-window FIN/RST answering the other side's
    # at most `unacknowledged`. None: the product has no such cap.
    max_retrans: float | None = 300.0  # ..._max_retrans
    unacknowledged: float | None = 300.0  # ..._unacknowledged
    # An absolute age at which the connection is cut, however active (Envoy's
    # max_connection_duration); its action is OnExpire.lifetime. Linux has none.
    lifetime: float | None = None
    # UDP (nf_conntrack_proto_udp.c): a flow not yet seen both ways, or seen both ways for less
    # than `udp_stream_after` since its first datagram, gets `udp` (nf_conntrack_udp_timeout);
    # once older, the next datagram makes it a stream (IPS_ASSURED) with `udp_stream`
    # (..._udp_timeout_stream: 120 s since commit 294304e4c522, 180 s before). The 2 s are the
    # kernel's grace for DNS's A/AAAA pairs (stream_ts = 2 * HZ, commit d535c8a69c19).
    udp: float | None = 30.0
    udp_stream: float | None = 120.0
    udp_stream_after: float = 2.0

    def scaled(self, speed: float) -> Timeouts:
        """Every timer `speed` times shorter (for `--speed`)."""
        values: dict[str, Any] = {
            f.name: (None if v is None else v / speed)
            for f in dataclasses.fields(self)
            for v in (getattr(self, f.name),)
        }
        return Timeouts(**values)


@dataclass(frozen=True, slots=True)
class OnExpire:
    """Expiry action per phase."""

    embryonic: ExpireAction = ExpireAction.SILENT
    established: ExpireAction = ExpireAction.SILENT
    half_closed: ExpireAction = ExpireAction.SILENT
    closing: ExpireAction = ExpireAction.SILENT
    time_wait: ExpireAction = ExpireAction.SILENT
    close: ExpireAction = ExpireAction.SILENT
    lifetime: ExpireAction = ExpireAction.SILENT  # at Timeouts.lifetime, in any phase

    def for_phase(self, phase: Phase) -> ExpireAction:
        action: ExpireAction = getattr(self, phase.value)
        return action


@dataclass(frozen=True, slots=True)
class Dcd:
    """Dead connection detection (Cisco ASA `set connection timeout idle ... dcd`): when an
    ESTABLISHED flow's idle timer runs out, probe both ends every `interval` (SEQ = SND.NXT - 1,
    which draws an ACK), up to `retries` times; if both answer, the idle timer restarts, else the
    phase's expiry action applies. Half-closed flows are exempt, as on the ASA."""

    interval: float = 15.0  # ASA default retry_interval
    retries: int = 5  # ASA default max_retries

    def scaled(self, speed: float) -> Dcd:
        return dataclasses.replace(self, interval=self.interval / speed)


@dataclass(frozen=True, slots=True)
class OutOfState:
    """Handling of out-of-state packets.

    The side of a late packet is known from the tombstone of the flow it belonged to (kept for
    `remember` seconds after expiry); a packet with no tombstone uses `action`.
    """

    action: OutOfStateAction = OutOfStateAction.DROP
    from_client: OutOfStateAction | None = None  # None: use `action`
    from_server: OutOfStateAction | None = None
    pickup: bool = False  # a mid-stream ACK creates an ESTABLISHED flow (Linux tcp_loose)
    # Sequence and ACK window checks (tcp_in_window); False is Linux's tcp_be_liberal=1: only
    # RSTs are checked, every other packet is in window.
    window_check: bool = True
    remember: float = 600.0  # tombstone lifetime, seconds
    # A datagram of a remembered (expired) UDP flow, per side. A datagram of no remembered flow
    # always opens one, its sender the client: UDP has no handshake to tell a late packet by.
    udp_from_client: UdpAction = UdpAction.NEW
    udp_from_server: UdpAction = UdpAction.DROP

    def for_side(self, from_client: bool | None) -> OutOfStateAction:
        """The action for a packet from the client side (True), server side (False) or unknown."""
        if from_client is True and self.from_client is not None:
            return self.from_client
        if from_client is False and self.from_server is not None:
            return self.from_server
        return self.action

    def scaled(self, speed: float) -> OutOfState:
        return dataclasses.replace(self, remember=self.remember / speed)


@dataclass(frozen=True, slots=True)
class AnswerRate:
    """How many out-of-state packets a second get their own event and, for `reset`, a RST; the
    rest get the verdict alone and are summed up (fwemu/core/ratelimit.py). Policy-wide, as a
    firewall's answer budget is. Wall-clock rates: `--speed` does not scale them."""

    per_source: int = 100  # from one source address
    total: int = 1000  # from all: Linux's icmp_msgs_per_sec and old tcp_challenge_ack_limit


class LimitAction(StrEnum):
    """What a new connection over a limit gets (fwemu/core/limits.py)."""

    DROP = "drop"  # its SYN is dropped: connect() hangs, and a retransmitted SYN may get in
    RESET = "reset"  # a RST answers its SYN: connect() fails with ECONNREFUSED
    # Handshake limits only: the middlebox answers the SYN itself with a SYN cookie and opens
    # to the server after the client's ACK (ASA TCP Intercept; [syn_proxy] says how).
    INTERCEPT = "intercept"


class FloodAction(StrEnum):
    """What a SYN-flood defence does to new SYNs past its `activate` rate."""

    RANDOM_EARLY_DROP = "random-early-drop"  # PAN-OS: drop with a probability rising to 100 %
    BLOCK = "block"  # FortiGate continuous: drop every SYN for the rest of the second
    PERIODICAL = "periodical"  # FortiGate periodical: let `activate` a second through
    SYN_COOKIES = "syn-cookies"  # answer each SYN with a cookie ([syn_proxy])


class FloodCount(StrEnum):
    """Which SYNs a rate counts."""

    DESTINATION = "destination"  # to each server address and port (FortiGate tcp_syn_flood)
    TOTAL = "total"  # all the flows it covers (PAN-OS zone protection)


@dataclass(frozen=True, slots=True)
class SynFlood:
    """A SYN-flood defence ([syn_flood]): rates in new SYNs a second, over fixed one-second
    windows. None: not set (no alarm; no defence)."""

    alarm: int | None = None  # an event the first time a second the rate passes it
    activate: int | None = None  # the defence starts past this rate (0: always, for cookies)
    maximum: int | None = None  # random early drop reaches 100 % here
    action: FloodAction = FloodAction.RANDOM_EARLY_DROP
    count: FloodCount = FloodCount.TOTAL

    @property
    def active(self) -> bool:
        return self.alarm is not None or self.activate is not None


class SynData(StrEnum):
    """What the normaliser does with a SYN that carries data (TCP Fast Open)."""

    DROP = "drop"
    KEEP = "keep"


@dataclass(frozen=True, slots=True)
class SynProxy:
    """The SYN-ACK a middlebox sends when it answers a SYN itself (SYN cookies, TCP Intercept):
    its own options, whatever the server's (Linux SYNPROXY --mss/--wscale/--sack-perm/
    --timestamp; PAN-OS uses its own window and MSS). Data on the SYN it answers (TCP Fast
    Open) is dropped, as PAN-OS drops it: the client sends it again after the handshake."""

    mss: int = 1460
    wscale: int | None = 7  # None: no window scale option
    sack_perm: bool = True
    timestamps: bool = False  # the loader refuses true: timestamps are not translated


class SackBlocks(StrEnum):
    """What sequence randomisation does to the SACK blocks of the other side's ACKs."""

    TRANSLATE = "translate"
    KEEP = "keep"  # left untranslated: wrong for the receiver, as on an ASA (SACK breaks)


class SynOption(StrEnum):
    """TCP options the normaliser can clear from SYNs."""

    SACK = "sack"
    TIMESTAMPS = "timestamps"
    WINDOW_SCALE = "window_scale"


@dataclass(frozen=True, slots=True)
class Normalise:
    """The ASA's TCP normaliser and sequence randomisation ([normalise])."""

    isn_randomisation: bool = False  # offset both sides' sequence numbers (ASA default: on)
    sack_blocks: SackBlocks = SackBlocks.TRANSLATE
    clear: tuple[SynOption, ...] = ()  # options removed from SYNs
    mss: int | None = None  # clamp the MSS option of SYNs to this
    syn_data: SynData = SynData.KEEP  # DROP: drop SYNs that carry data

    @property
    def rewrites(self) -> bool:
        return (
            self.isn_randomisation
            or bool(self.clear)
            or self.mss is not None
            or self.syn_data == SynData.DROP
        )


class NatPool(StrEnum):
    """Whose ports a NAT's `ports_per_client` and `ports_per_destination` count."""

    CLIENT = "client"  # each client address has its own ports (a VM's allocation)
    SHARED = "shared"  # every client shares one public address's ports


@dataclass(frozen=True, slots=True)
class Limits:
    """How many flows may exist at once (None = no limit). The policy's [limits] count all its
    flows; a rule's count the flows of that rule, in addition: they are never merged.

    `on_full` is the action of the table's limits (max_flows, per_client, per_server),
    `on_embryonic` of the handshake limits, `on_exhausted` of the NAT port pools.
    """

    max_flows: int | None = None  # the table size (Linux nf_conntrack_max, ASA conn-max)
    on_full: LimitAction = LimitAction.DROP
    early_drop: bool = False  # make room by evicting a flow not yet assured (Linux)
    per_client: int | None = None  # flows per client address (ASA per-client-max)
    per_server: int | None = None  # flows per server address and port
    embryonic: int | None = None  # handshakes not yet complete (ASA embryonic-conn-max)
    per_client_embryonic: int | None = None  # ... per client address
    on_embryonic: LimitAction = LimitAction.DROP
    ports_per_client: int | None = None  # a pool's ports in use at once, all destinations
    ports_per_destination: int | None = None  # ... to one server address and port
    port_reuse: float = 0.0  # seconds a port stays in use after its flow is gone
    nat_pool: NatPool = NatPool.CLIENT
    on_exhausted: LimitAction = LimitAction.DROP

    @property
    def counted(self) -> bool:
        """Whether any limit is set (else nothing is counted for these flows)."""
        return any(getattr(self, name) is not None for name in LIMIT_NAMES)

    def scaled(self, speed: float) -> Limits:
        return dataclasses.replace(self, port_reuse=self.port_reuse / speed)


# The Limits fields that are limits (counts), in the order they are checked.
LIMIT_NAMES: tuple[str, ...] = (
    "max_flows",
    "per_client",
    "per_server",
    "embryonic",
    "per_client_embryonic",
    "ports_per_client",
    "ports_per_destination",
)


@dataclass(frozen=True, slots=True)
class PortRange:
    low: int
    high: int

    def __contains__(self, port: int) -> bool:
        return self.low <= port <= self.high


class Protocol(StrEnum):
    """The protocols fwemu tracks, by the names policies, filters and events use."""

    TCP = "tcp"
    UDP = "udp"


PROTOCOL_NUMBER: Mapping[Protocol, int] = {Protocol.TCP: 6, Protocol.UDP: 17}
PROTOCOL_NAME: Mapping[int, Protocol] = {n: p for p, n in PROTOCOL_NUMBER.items()}


@dataclass(frozen=True, slots=True)
class Match:
    """Which flows a rule applies to, seen from the client (src) to the server (dst).

    Empty tuples match anything. Addresses are given to `matches` as ipaddress objects; this runs
    once per new flow, never per packet.
    """

    src: tuple[IPNetwork, ...] = ()
    dst: tuple[IPNetwork, ...] = ()
    src_port: tuple[PortRange, ...] = ()
    dst_port: tuple[PortRange, ...] = ()
    proto: tuple[int, ...] = ()  # IP protocol numbers (PROTOCOL_NAME names them)

    def matches(
        self,
        src: ipaddress.IPv4Address | ipaddress.IPv6Address,
        sport: int,
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
        dport: int,
        proto: int = 6,
    ) -> bool:
        return (
            (not self.proto or proto in self.proto)
            and _in_nets(src, self.src)
            and _in_nets(dst, self.dst)
            and _in_ports(sport, self.src_port)
            and _in_ports(dport, self.dst_port)
        )


def _in_nets(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address, nets: tuple[IPNetwork, ...]
) -> bool:
    return not nets or any(addr.version == n.version and addr in n for n in nets)


def _in_ports(port: int, ranges: tuple[PortRange, ...]) -> bool:
    return not ranges or any(port in r for r in ranges)


@dataclass(frozen=True, slots=True)
class Profile:
    """The effective timers and actions for a set of flows: the policy's own, or a rule's merged
    over them. `name` is the rule's name, or "default"."""

    name: str
    timeouts: Timeouts
    on_expire: OnExpire
    out_of_state: OutOfState
    limits: Limits = Limits()  # a rule's own; none for the default (Policy.limits covers all)
    dcd: Dcd | None = None  # off unless set
    syn_flood: SynFlood = SynFlood()  # a rule's own; none for the default (Policy.syn_flood)
    syn_proxy: SynProxy = SynProxy()
    normalise: Normalise = Normalise()

    @property
    def rewrites(self) -> bool:
        """Whether fwemu rewrites packets of these flows (answering SYNs itself, translating
        sequence numbers, normalising options): it then needs whole packets from the queue."""
        return (
            self.normalise.rewrites
            or (self.syn_flood.action == FloodAction.SYN_COOKIES and self.syn_flood.active)
            or self.limits.on_embryonic == LimitAction.INTERCEPT
        )

    def scaled(self, speed: float) -> Profile:
        return dataclasses.replace(
            self,
            timeouts=self.timeouts.scaled(speed),
            out_of_state=self.out_of_state.scaled(speed),
            limits=self.limits.scaled(speed),
            dcd=None if self.dcd is None else self.dcd.scaled(speed),
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """A `[[rule]]`: first match wins; its profile is already merged over the policy's tables."""

    match: Match
    profile: Profile

    @property
    def name(self) -> str:
        return self.profile.name


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    default: Profile
    rules: tuple[Rule, ...] = ()
    description: str = ""
    sources: tuple[str, ...] = ()
    origin: str = "<policy>"  # the file (or preset) it came from, for messages
    answer_rate: AnswerRate = AnswerRate()
    limits: Limits = Limits()  # over all flows
    syn_flood: SynFlood = SynFlood()  # over all new SYNs

    @property
    def rewrites(self) -> bool:
        """Whether any flow's packets may be rewritten (see Profile.rewrites)."""
        top = dataclasses.replace(self.default, limits=self.limits, syn_flood=self.syn_flood)
        return top.rewrites or any(p.rewrites for p in self.profiles)

    @property
    def profiles(self) -> tuple[Profile, ...]:
        """Every profile, rules first (in match order), the default last."""
        return (*(r.profile for r in self.rules), self.default)

    def profile_for(
        self,
        src: ipaddress.IPv4Address | ipaddress.IPv6Address,
        sport: int,
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address,
        dport: int,
        proto: int = 6,
    ) -> Profile:
        """The first matching rule's profile, else the default."""
        for rule in self.rules:
            if rule.match.matches(src, sport, dst, dport, proto):
                return rule.profile
        return self.default

    def scaled(self, speed: float) -> Policy:
        """The same policy with every timer `speed` times shorter (`fwemu run --speed`)."""
        if speed == 1:
            return self
        return dataclasses.replace(
            self,
            limits=self.limits.scaled(speed),
            default=self.default.scaled(speed),
            rules=tuple(
                dataclasses.replace(r, profile=r.profile.scaled(speed)) for r in self.rules
            ),
        )
