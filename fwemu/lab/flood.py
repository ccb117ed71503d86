"""A SYN flood from a lab's client side, and what it did: `fwemu flood` and the scenario step
`do = "syn-flood"`.

The flood sends `count` SYNs at `rate` a second from spoofed addresses of the client's subnet
(raw packets from the client namespace, `fwemu.lab.sender`), through the fw namespace and whatever
runs there, to a port of the server. Meanwhile it watches three things:

- the server, from inside its namespace: the kernel's counters (what `nstat` reads:
  TcpExtSyncookiesSent, ListenOverflows, ...), the half-open (SYN_RECV) connections and the accept
  queue of the port, and how many SYNs arrived (two counting iptables rules in its INPUT chain,
  removed after); if nothing listens on the port, the flood listens there itself;
- fwemu, when one runs in the fw namespace: its status counters before and after, its flow count,
  and its events counted by kind (all but the per-flow `new` and `state`, one of each per SYN);
- a legitimate client: a connect() loop from the client's own address, timed.

The spoofed addresses stay inside the client's subnet so that the server's SYN-ACKs to them take
the fw's route back (and cross fwemu, as a firewall sees the replies of a real flood); there
nobody answers the fw's neighbour solicitations, so they die on the wire as they would on the
internet. The lab's own addresses are never spoofed: the legit client stays the only one of its
address.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import math
import os
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, closing, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from fwemu.errors import FwemuError
from fwemu.lab.netns import call_in_netns, list_labs, run_in, socket_in
from fwemu.lab.plan import LabPlan, validate_name
from fwemu.lab.sender import RawSender, Sent, SynFactory, pace
from fwemu.ops.client import Target, find_run, request
from fwemu.ops.control import CONTROL_DIR, CONTROL_SUFFIX, ControlError, is_alive
from fwemu.ops.filters import EVENT_KEYS, EVENT_KINDS, parse_selector
from fwemu.ops.protocol import Request

# Bounds on what a flood may ask: beyond them a value is a typo, not a test.
MAX_COUNT = 10_000_000
MAX_RATE = 1_000_000  # SYNs a second; the sender peaks near 175,000 on a 2-core VM
MAX_SECONDS = 600.0
MAX_SOURCES = 65536
MAX_BACKLOG = 65535  # the kernel caps a listen() backlog at net.core.somaxconn (4096 by default)
DEFAULT_BACKLOG = 128  # the classic listen() backlog: the server's SYN queue fills quickly
DEFAULT_PORT = 80
# The legit client: one connect() this often, each given this long.
LEGIT_INTERVAL = 0.1
LEGIT_TIMEOUT = 3.0  # a SYN and its retransmission 1 s later (RFC 6298 initial RTO) fit
LEGIT_BEFORE = 5  # connects timed before the flood: what connecting costs unflooded
SAMPLE_INTERVAL = 0.5  # seconds between looks at the server and fwemu during the flood
# After the last SYN left, what is still queued on the way (fwemu's queue, the veths' backlogs)
# arrives within milliseconds; the counters are read once they stop moving, or after this.
SETTLE_LIMIT = 2.0
SETTLE_STEP = 0.1
# The server's kernel counters worth a flood's report, by the names `nstat` gives them.
NSTAT = (
    "TcpInSegs",
    "TcpPassiveOpens",
    "TcpOutRsts",
    "TcpRetransSegs",
    "TcpExtSyncookiesSent",
    "TcpExtSyncookiesRecv",
    "TcpExtSyncookiesFailed",
    "TcpExtTCPReqQFullDoCookies",
    "TcpExtTCPReqQFullDrop",
    "TcpExtListenOverflows",
    "TcpExtListenDrops",
)
SYSCTLS = (
    "net/ipv4/tcp_syncookies",
    "net/ipv4/tcp_max_syn_backlog",
    "net/ipv4/tcp_synack_retries",
    "net/core/somaxconn",
)
# Event kinds fwemu makes for every flow (a flood's SYNs make one each): left out of the counts,
# for what following them would cost fwemu; its flow count says as much.
PER_FLOW_EVENTS = frozenset({"new", "state"})
# /proc/net/tcp states (include/net/tcp_states.h): TCP_SYN_RECV, TCP_LISTEN.
_SYN_RECV, _LISTEN = "03", "0A"
# Status fields that are not counters to sum over workers, and those that are not counters of
# what fwemu did (the flow count is a level, shown before, at its peak and after).
_OWN = frozenset({"pid", "queue", "supervisor"})
_IDENTITY = _OWN | {"flows"}


class FloodError(FwemuError):
    """A flood that cannot be run as asked: its values, its sources, or the lab."""


@dataclass(frozen=True, slots=True)
class FloodSpec:
    """What to send. `sources`: a network or one address inside the client's subnet, a number of
    its addresses, or None for all of them (the default range). `seconds` stops it early."""

    count: int = 10_000
    rate: float = 1000.0
    seconds: float | None = None
    sources: str | int | None = None
    port: int = DEFAULT_PORT
    ipv6: bool = False

    def __post_init__(self) -> None:
        _within("count", self.count, 1, MAX_COUNT)
        _within("rate", self.rate, 1, MAX_RATE, " SYNs a second")
        _within("port", self.port, 1, 65535, grouped=False)
        if self.seconds is not None:
            _within("duration", self.seconds, 0.001, MAX_SECONDS, " seconds")
        takes = self.count / self.rate
        if self.seconds is None and takes > MAX_SECONDS:
            raise FloodError(
                f"{self.count:,} SYNs at {_number(self.rate)}/s would take {_how_long(takes)}: "
                f"more than {_how_long(MAX_SECONDS)}; send fewer, faster, or set a duration"
            )
        if isinstance(self.sources, int):
            _within("sources", self.sources, 1, MAX_SOURCES, grouped=False)

    @property
    def takes(self) -> float:
        """Seconds the flood lasts if it keeps its rate."""
        return min(self.count / self.rate, math.inf if self.seconds is None else self.seconds)


@dataclass(frozen=True, slots=True)
class LegitSpec:
    """The legit client's connect() loop: one every `interval` seconds, each given `timeout`."""

    interval: float = LEGIT_INTERVAL
    timeout: float = LEGIT_TIMEOUT

    def __post_init__(self) -> None:
        _within("legit interval", self.interval, 0.001, 60, " seconds")
        _within("connect timeout", self.timeout, 0.01, 60, " seconds")


def _within(
    what: str, value: float, low: float, high: float, unit: str = "", *, grouped: bool = True
) -> None:
    if not (low <= value <= high) or isinstance(value, bool):
        low_, high_, value_ = (_number(v, grouped) for v in (low, high, value))
        raise FloodError(f"{what} must be {low_}..{high_}{unit}, not {value_}")


def _number(value: float, grouped: bool = True) -> str:
    """1000000 -> "1,000,000" (grouped), 0.25 -> "0.25": as people type numbers."""
    if not math.isfinite(value) or value != int(value):
        return f"{value:.6g}"
    return f"{value:,.0f}" if grouped else f"{value:.0f}"


def _how_long(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:,.0f} {unit}"
    return f"{seconds:,.0f} s"


# --- the lab and the spoofed sources ----------------------------------------------------------


def lab_plan(name: str) -> LabPlan:
    """The plan of lab `name` as it is up on this host (its index and clients read back)."""
    validate_name(name)
    info = next((lab for lab in list_labs() if lab.name == name), None)
    if info is None:
        raise FloodError(f"no lab {name}; create it with 'fwemu lab up {name}'")
    if info.index is None or not info.up:
        raise FloodError(f"lab {name} is not completely up; run 'fwemu lab up {name}' again")
    clients = sum(side == "client" and "." in address for side, _, address in info.addresses)
    return LabPlan.create(name, info.index, clients=max(1, clients))


@dataclass(frozen=True, slots=True)
class Sources:
    """The addresses a flood spoofs, of `network`: all its free ones, or (`part`) some."""

    network: str
    addresses: tuple[str, ...]
    part: bool = False

    def describe(self) -> str:
        """e.g. "10.201.1.0/24 (252 addresses)", "16 addresses of 10.201.1.0/24", "10.201.1.77"."""
        count = len(self.addresses)
        if count == 1:
            return self.addresses[0]
        if self.part:
            return f"{count:,} addresses of {self.network}"
        return f"{self.network} ({count:,} addresses)"


def spoofed_sources(plan: LabPlan, spec: FloodSpec) -> Sources:
    """The addresses `spec` spoofs in lab `plan` (FloodError, one line, if none can be)."""
    named = None if not isinstance(spec.sources, str) else _network(spec.sources)
    ipv6 = spec.ipv6 if named is None else named.version == 6
    if named is not None and spec.ipv6 and not ipv6:
        raise FloodError(f"sources {spec.sources} are IPv4, but IPv6 was asked for")
    client = plan.client
    subnet = ipaddress.ip_network(
        f"{client.ipv6}/{client.prefixlen6}" if ipv6 else f"{client.ipv4}/{client.prefixlen4}",
        strict=False,
    )
    # IPv4: the whole /24; IPv6: as many (a /120), since a /64 could never be listed.
    default = subnet if not ipv6 else ipaddress.ip_network(f"{subnet.network_address}/120")
    network = named or default
    if not network.subnet_of(subnet):  # type: ignore[arg-type]  # same version, checked above
        raise FloodError(
            f"sources {network} are outside the lab's client subnet {subnet}: the fw would have "
            "no route for the server's replies"
        )
    if network.num_addresses > MAX_SOURCES:
        raise FloodError(
            f"sources {network} have {network.num_addresses:,} addresses; at most "
            f"{MAX_SOURCES:,} (a /{network.max_prefixlen - 16})"
        )
    taken = {ipaddress.ip_address(a) for end in plan.endpoints for pair in end.pairs for a in pair}
    hosts = _hosts(network)
    free = [a for a in hosts if a not in taken]
    if isinstance(spec.sources, int):
        if spec.sources > len(free):
            raise FloodError(
                f"{spec.sources:,} sources asked for, but {network} has "
                f"{len(free):,} free addresses"
            )
        free = free[len(free) - spec.sources :]
    if not free:
        raise FloodError(
            f"sources {network} leave no address to spoof: the lab's own addresses "
            f"({', '.join(str(a) for a in hosts if a in taken)}) are never spoofed"
        )
    return Sources(str(network), tuple(str(a) for a in free), part=isinstance(spec.sources, int))


def _hosts(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """A network's usable addresses: all but its network and broadcast ones (which the fw drops
    as martians), or the one address of a /32 or /128."""
    return [network.network_address] if network.num_addresses == 1 else list(network.hosts())


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise FloodError(
            f"sources {text!r} is not an address or network, like 10.201.1.0/24 or 10.201.1.77"
        ) from None


# --- what fwemu did ---------------------------------------------------------------------------


class FwemuView(Protocol):
    """What the flood asks of the fwemu in the lab's fw namespace."""

    where: str  # e.g. "demo-fw (2 workers)"
    cut: str | None  # why counting its events stopped early, if it did

    def status(self) -> Mapping[str, Any]:
        """Its status (summed over workers): counters, `flows`, `policy`."""
        ...

    def follow(self) -> None:
        """Start counting its events; return once every one from now on will be counted."""
        ...

    def events(self) -> Mapping[str, int]:
        """The events counted so far, by kind (PER_FLOW_EVENTS left out)."""
        ...


class ControlView:
    """A fwemu seen through its control socket(s): one per worker."""

    def __init__(self, targets: Sequence[Target], where: str) -> None:
        self.targets = tuple(targets)
        workers = len(self.targets)
        self.where = where + (f" ({workers} workers)" if workers > 1 else "")
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.cut: str | None = None

    def status(self) -> Mapping[str, Any]:
        replies = [list(request(t.path, Request("status")))[-1] for t in self.targets]
        summed: dict[str, Any] = {"policy": replies[0].get("policy")}
        for reply in replies:
            for key, value in reply.items():
                if isinstance(value, int) and not isinstance(value, bool) and key not in _OWN:
                    summed[key] = summed.get(key, 0) + value
        return summed

    def follow(self) -> None:
        kinds = ",".join(sorted(EVENT_KINDS - PER_FLOW_EVENTS))
        req = Request(
            "events", selector=parse_selector(f"event={kinds}", EVENT_KEYS), follow=True, history=0
        )
        ready = [threading.Event() for _ in self.targets]
        for target, flag in zip(self.targets, ready, strict=True):
            # A daemon thread: it ends when fwemu stops or this process exits, as `fwemu
            # events -f` does; request() cannot be interrupted from another thread.
            threading.Thread(target=self._count, args=(target.path, req, flag), daemon=True).start()
        for flag in ready:
            flag.wait(SETTLE_LIMIT)

    def _count(self, path: Path, req: Request, ready: threading.Event) -> None:
        try:
            for record in request(path, req):
                if "event" in record:
                    with self._lock:
                        self._counts[str(record["event"].get("event"))] += 1
                else:
                    ready.set()
        except ControlError as err:
            self.cut = str(err)
        finally:
            ready.set()

    def events(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._counts)


def find_fwemu(plan: LabPlan, control: Path | None = None) -> ControlView | None:
    """The fwemu serving lab `plan`'s fw namespace: the one at `control` if given, else every
    live control socket in CONTROL_DIR whose daemon runs in that namespace; None if there is none.
    """
    fw = plan.fw_client_side.namespace
    if control is not None:
        return ControlView(find_run(control), f"{control}")
    try:
        wanted = os.stat(f"/run/netns/{fw}")
        paths = sorted(p for p in CONTROL_DIR.iterdir() if p.name.endswith(CONTROL_SUFFIX))
    except FileNotFoundError:
        return None
    targets = []
    for path in paths:
        if not is_alive(path):
            continue
        with suppress(FwemuError, OSError):  # gone meanwhile, or not a fwemu we understand
            status = list(request(path, Request("status")))[-1]
            seen = os.stat(f"/proc/{status.get('pid')}/ns/net")
            if (seen.st_dev, seen.st_ino) == (wanted.st_dev, wanted.st_ino):
                targets.append(Target(path, status.get("queue")))
    return ControlView(targets, fw) if targets else None


# --- the server -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sockets:
    half_open: int  # SYN_RECV connections to the port
    accept_queue: int | None  # connections waiting to be accepted; None: nothing listens


def _sockets_here(port: int) -> _Sockets:
    """The port's half-open connections and its listeners' accept queues, in this thread's
    namespace, as /proc/net/tcp{,6} list them (request sockets included since Linux 4.4)."""
    suffix = f":{port:04X}"
    half_open, queue = 0, None
    for table in ("tcp", "tcp6"):
        with suppress(FileNotFoundError), open(f"/proc/thread-self/net/{table}") as lines:
            next(lines)
            for line in lines:
                # sl local_address rem_address st tx_queue:rx_queue ...
                fields = line.split(None, 5)
                if not fields[1].endswith(suffix):
                    continue
                if fields[3] == _SYN_RECV:
                    half_open += 1
                elif fields[3] == _LISTEN:  # a listener's rx_queue is its accept queue
                    queue = (queue or 0) + int(fields[4].partition(":")[2], 16)
    return _Sockets(half_open, queue)


def _counters_here() -> dict[str, int]:
    """This thread's namespace's TCP counters, named as `nstat` names them (TcpInSegs,
    TcpExtSyncookiesSent): /proc/net/snmp and netstat hold them as pairs of lines, names then
    values, per group."""
    counters: dict[str, int] = {}
    for table in ("snmp", "netstat"):
        with open(f"/proc/thread-self/net/{table}") as f:
            rows = f.read().splitlines()
        for names, values in zip(rows[::2], rows[1::2], strict=False):
            group, _, keys = names.partition(": ")
            if group in ("Tcp", "TcpExt"):
                numbers = values.partition(": ")[2].split()
                counters.update(
                    {group + k: int(v) for k, v in zip(keys.split(), numbers, strict=False)}
                )
    return counters


def _sysctls_here() -> dict[str, str]:
    """SYSCTLS as this thread's namespace has them, named with dots as sysctl(8) does."""
    out = {}
    for key in SYSCTLS:
        with suppress(OSError), open(f"/proc/sys/{key}") as f:
            out[key.replace("/", ".")] = f.read().strip()
    return out


class _SynCount:
    """Two iptables rules at the top of the server's INPUT chain that count SYNs to the port:
    from the range of the flood's addresses, and from the legit client's address (which the
    range may hold: those are taken off the flood's count). Where iptables does not work the
    counts are None."""

    def __init__(self, lab: str, port: int, client: str, sources: Sources) -> None:
        self.lab = lab
        self.tool = "ip6tables" if ":" in client else "iptables"
        spoofed = sorted(ipaddress.ip_address(a) for a in sources.addresses)
        first, last = spoofed[0], spoofed[-1]
        self.overlap = first <= ipaddress.ip_address(client) <= last  # type: ignore[operator]
        tag = f"fwemu-flood-{os.getpid()}-{threading.get_ident()}"
        syn = ["-p", "tcp", "--syn", "--dport", str(port), "-m", "comment", "--comment"]
        self.rules = {
            "flood": ["-m", "iprange", "--src-range", f"{first}-{last}", *syn, f"{tag}-flood"],
            "legit": ["-s", client, *syn, f"{tag}-legit"],
        }
        self.added: list[list[str]] = []

    def _iptables(self, *args: str) -> str | None:
        """What the command printed, or None if it failed (or there is no iptables)."""
        try:
            done = run_in(
                self.lab, "server", [self.tool, "-w", *args], capture_output=True, text=True
            )
        except OSError:
            return None
        return str(done.stdout) if done.returncode == 0 else None

    def add(self) -> None:
        for rule in self.rules.values():
            if self._iptables("-I", "INPUT", *rule) is not None:
                self.added.append(rule)

    def read(self) -> tuple[int | None, int | None]:
        """SYNs from the flood's sources, and from the legit client, so far."""
        counts: dict[str, int | None] = dict.fromkeys(self.rules)
        listing = self._iptables("-nvxL", "INPUT") if self.added else None
        for line in (listing or "").splitlines():
            for name, rule in self.rules.items():
                if rule in self.added and f"/* {rule[-1]} */" in line:
                    counts[name] = int(line.split()[0])
        flood, legit = counts["flood"], counts["legit"]
        if flood is not None and self.overlap:
            flood = None if legit is None else flood - legit
        return flood, legit

    def remove(self) -> None:
        for rule in self.added:
            self._iptables("-D", "INPUT", *rule)
        self.added.clear()


class _Neighbours:
    """The fw namespace's neighbour entries for the spoofed sources, pointing at the client's
    interface: packets to them (the server's SYN-ACKs, a firewall's own answers) then leave at
    once, as they would towards a router, instead of each waiting for an ARP or neighbour
    solicitation nobody answers (packets so held fill an injecting socket's send buffer, and a
    firewall answering SYNs itself would stall on its real clients' answers)."""

    def __init__(self, plan: LabPlan, sources: Sources) -> None:
        self._fw = plan.fw_client_side
        link = subprocess.run(
            ["ip", "-j", "-n", plan.client.namespace, "link", "show", plan.client.ifname],
            capture_output=True,
            text=True,
            check=True,
        )
        mac = json.loads(link.stdout)[0]["address"]
        self._addresses = sources.addresses
        self._batch("replace", f"lladdr {mac} nud permanent")

    def _batch(self, verb: str, rest: str = "") -> None:
        lines = "".join(
            f"neigh {verb} {address} {rest} dev {self._fw.ifname}\n" for address in self._addresses
        )
        subprocess.run(
            ["ip", "-n", self._fw.namespace, "-force", "-batch", "-"],
            input=lines,
            text=True,
            capture_output=True,
            check=False,
        )

    def close(self) -> None:
        self._batch("del")


class _Listener:
    """The flood's own listening socket in the server namespace, for a port nothing listens on:
    it accepts what the legit client opens, and closes it."""

    def __init__(self, namespace: str, address: str, port: int, backlog: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock = socket_in(namespace, family)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(backlog)
        self._thread = threading.Thread(target=self._accept, name="flood-listener", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # shut down: the flood is over
                return
            conn.close()

    def close(self) -> None:
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() with EINVAL
        self.sock.close()
        self._thread.join(SETTLE_LIMIT)


class _Server:
    """The server side of a flood: a listener if none is there, SYN counting, and looks at its
    sockets and counters (the peaks are kept). Close it to remove what it added."""

    def __init__(
        self, plan: LabPlan, port: int, sources: Sources, listen: bool, backlog: int
    ) -> None:
        ipv6 = ":" in sources.network
        self.plan, self.port = plan, port
        self.address = plan.server.ipv6 if ipv6 else plan.server.ipv4
        self._in = partial(call_in_netns, plan.server.namespace)
        self._cleanup = ExitStack()
        self.listener = "already there"
        if self.sockets().accept_queue is None and listen:
            own = _Listener(plan.server.namespace, self.address, port, backlog)
            self._cleanup.callback(own.close)
            self.listener = "the flood's own"
        neighbours = _Neighbours(plan, sources)
        self._cleanup.callback(neighbours.close)
        client = plan.client.ipv6 if ipv6 else plan.client.ipv4
        self._count = _SynCount(plan.name, port, client, sources)
        self._cleanup.callback(self._count.remove)
        self.sysctls = self._in(_sysctls_here)
        self.backlog = _backlog_of(plan.name, port)
        self.half_open_peak = self.accept_queue_peak = 0
        self.before: dict[str, int] = {}

    def start(self) -> None:
        """Count from now on: the SYNs, and the counters' changes."""
        self._count.add()
        self.before = self.counters()

    def close(self) -> None:
        self._cleanup.close()

    def sockets(self) -> _Sockets:
        return self._in(partial(_sockets_here, self.port))

    def counters(self) -> dict[str, int]:
        return self._in(_counters_here)

    def look(self) -> _Sockets:
        """The port's sockets now, kept in the peaks."""
        now = self.sockets()
        self.half_open_peak = max(self.half_open_peak, now.half_open)
        self.accept_queue_peak = max(self.accept_queue_peak, now.accept_queue or 0)
        return now

    def seen(self) -> ServerSeen:
        """What the server saw, once the SYNs still on their way have arrived: when TcpInSegs
        stops moving between two reads SETTLE_STEP apart, or after SETTLE_LIMIT."""
        latest = self.counters()
        deadline = time.monotonic() + SETTLE_LIMIT
        while time.monotonic() < deadline:
            time.sleep(SETTLE_STEP)
            again = self.counters()
            settled = again.get("TcpInSegs") == latest.get("TcpInSegs")
            latest = again
            if settled:
                break
        end = self.look()
        syns, legit_syns = self._count.read()
        return ServerSeen(
            address=self.address,
            port=self.port,
            listener=self.listener,
            backlog=self.backlog,
            sysctls=self.sysctls,
            syns=syns,
            legit_syns=legit_syns,
            half_open_peak=self.half_open_peak,
            half_open_end=end.half_open,
            accept_queue_peak=self.accept_queue_peak,
            nstat={k: latest.get(k, 0) - self.before.get(k, 0) for k in NSTAT},
        )


def _backlog_of(lab: str, port: int) -> int | None:
    """The listen backlog on `port` in the server, as `ss -l` shows it (Send-Q): what listen()
    asked, capped at net.core.somaxconn."""
    try:
        done = run_in(
            lab, "server", ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
        )
    except OSError:
        return None
    rows = [line.split() for line in str(done.stdout).splitlines()]
    backlogs = [int(row[2]) for row in rows if len(row) > 2 and row[2].isdigit()]
    return max(backlogs) if done.returncode == 0 and backlogs else None


# --- the legit client -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connects:
    """Timed connect()s: how many, how many connected, why the others failed (errno names, or
    "timeout"), and the connect times of those that connected, in milliseconds."""

    attempts: int = 0
    ok: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None

    @classmethod
    def of(cls, results: Sequence[tuple[float, str | None]]) -> Connects:
        times = sorted(took * 1000 for took, failure in results if failure is None)
        failures = Counter(failure for _, failure in results if failure is not None)
        return cls(
            attempts=len(results),
            ok=len(times),
            failures=dict(failures.most_common()),
            p50_ms=_percentile(times, 0.50),
            p99_ms=_percentile(times, 0.99),
            max_ms=times[-1] if times else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "ok": self.ok,
            "failures": dict(self.failures),
            "connect_ms": {
                "p50": _round(self.p50_ms),
                "p99": _round(self.p99_ms),
                "max": _round(self.max_ms),
            },
        }

    def describe(self) -> str:
        """e.g. "98 of 100 connected, p50 0.4 ms, p99 1003.1 ms; failed: timeout 2"."""
        text = f"{self.ok:,} of {self.attempts:,} connected"
        if self.p50_ms is not None:
            text += f", connect p50 {_ms(self.p50_ms)}, p99 {_ms(self.p99_ms)}"
        if self.failures:
            text += "; failed: " + ", ".join(f"{k} {v:,}" for k, v in self.failures.items())
        return text


def _percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted values (None for none)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f} ms" if value >= 10 else f"{value:.2f} ms"


class _Legit:
    """connect() after connect() to the server from the client's own address, each timed."""

    def __init__(self, spec: LegitSpec, family: int, address: tuple[str, int]) -> None:
        self.spec, self.family, self.address = spec, family, address
        self.results: list[tuple[float, str | None]] = []  # (seconds, failure or None)
        self.stop = threading.Event()

    def once(self) -> tuple[float, str | None]:
        """One connect() and close(): (seconds it took, None or why it failed)."""
        with socket.socket(self.family, socket.SOCK_STREAM) as sock:
            sock.settimeout(self.spec.timeout)
            began = time.perf_counter()
            try:
                sock.connect(self.address)
                failure = None
            except TimeoutError:
                failure = "timeout"
            except OSError as err:
                failure = errno.errorcode.get(err.errno or 0, str(err))
            return time.perf_counter() - began, failure

    def times(self, count: int) -> list[tuple[float, str | None]]:
        return [self.once() for _ in range(count)]

    def loop(self) -> None:
        while not self.stop.is_set():
            self.results.append(self.once())
            self.stop.wait(self.spec.interval)

    def tally(self) -> tuple[int, int]:
        """Connects so far: (connected, failed)."""
        results = list(self.results)  # the loop appends meanwhile
        failed = sum(failure is not None for _, failure in results)
        return len(results) - failed, failed


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """How the flood is going, for a progress line."""

    elapsed: float
    sent: int
    planned: int
    rate: float
    half_open: int
    cookies: int
    legit_ok: int
    legit_failed: int
    dropped: int | None  # by fwemu; None without one


@dataclass(frozen=True, slots=True)
class ServerSeen:
    address: str
    port: int
    listener: str  # "the flood's own" or "already there"
    backlog: int | None
    sysctls: Mapping[str, str]
    syns: int | None  # SYNs that reached the port from the spoofed sources (None: not counted)
    legit_syns: int | None  # ... and from the legit client
    half_open_peak: int
    half_open_end: int
    accept_queue_peak: int
    nstat: Mapping[str, int]  # what the flood changed of NSTAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "port": self.port,
            "listener": self.listener,
            "backlog": self.backlog,
            "sysctl": dict(self.sysctls),
            "syns_received": {"flood": self.syns, "legit": self.legit_syns},
            "half_open": {"peak": self.half_open_peak, "end": self.half_open_end},
            "accept_queue_peak": self.accept_queue_peak,
            "nstat": dict(self.nstat),
        }


@dataclass(frozen=True, slots=True)
class FwemuSeen:
    where: str
    policy: str | None
    counters: Mapping[str, int]  # what the flood added to each of its status counters
    flows: tuple[int, int, int]  # before, peak, after
    events: Mapping[str, int]  # by kind, PER_FLOW_EVENTS left out
    note: str | None = None  # e.g. the event stream was cut

    def to_dict(self) -> dict[str, Any]:
        before, peak, after = self.flows
        return {
            "where": self.where,
            "policy": self.policy,
            "counters": dict(self.counters),
            "flows": {"before": before, "peak": peak, "after": after},
            "events": dict(self.events),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class FloodReport:
    """What a flood sent and what the server, fwemu and the legit client saw."""

    lab: str
    spec: FloodSpec
    sources: Sources
    sent: Sent
    server: ServerSeen
    fwemu: FwemuSeen | None
    legit_before: Connects | None
    legit_during: Connects | None
    legit_source: str

    def to_dict(self) -> dict[str, Any]:
        """The `fwemu flood --json` form."""
        spec, sent = self.spec, self.sent
        return {
            "lab": self.lab,
            "target": {"address": self.server.address, "port": self.server.port},
            "sources": {"network": self.sources.network, "addresses": len(self.sources.addresses)},
            "asked": {"count": spec.count, "rate": spec.rate, "seconds": spec.seconds},
            "sent": {
                "syns": sent.sent,
                "lost": sent.lost,
                "seconds": round(sent.seconds, 3),
                "rate": round(sent.rate, 1),
                "stopped": sent.stopped,
            },
            "server": self.server.to_dict(),
            "fwemu": None if self.fwemu is None else self.fwemu.to_dict(),
            "legit": None
            if self.legit_during is None or self.legit_before is None
            else {
                "source": self.legit_source,
                "before": self.legit_before.to_dict(),
                "during": self.legit_during.to_dict(),
            },
        }

    def summary(self) -> str:
        """One line: sent, and what the server and fwemu made of it (a scenario's timeline)."""
        server = self.server
        stopped = ", stopped early" if self.sent.stopped else ""
        parts = [
            f"{self.sent.sent:,} SYNs in {self.sent.seconds:.2f} s ({self.sent.rate:,.0f}/s"
            f"{stopped}) from {self.sources.describe()}",
            f"server: {_count(server.syns, 'received')}, half-open peak {server.half_open_peak:,}, "
            f"{server.nstat.get('TcpExtSyncookiesSent', 0):,} SYN cookies sent",
        ]
        if self.fwemu is not None:
            parts.append(f"fwemu: {_fwemu_line(self.fwemu)}")
        return "; ".join(parts)

    def lines(self) -> list[str]:
        """The readable report."""
        spec, sent, server = self.spec, self.sent, self.server
        lost = f", {sent.lost:,} lost on the way out (ENOBUFS)" if sent.lost else ""
        stopped = " (stopped early)" if sent.stopped else ""
        nstat = server.nstat
        out = [
            f"SYN flood in lab {self.lab}: {server.address}:{server.port} from "
            f"{self.sources.describe()}",
            f"  sent     {sent.sent:,} SYNs in {sent.seconds:.2f} s: {sent.rate:,.0f}/s "
            f"(asked {spec.count:,} at {_number(spec.rate)}/s){lost}{stopped}",
            f"  server   listener: {server.listener}, backlog "
            f"{'?' if server.backlog is None else f'{server.backlog:,}'}; "
            + ", ".join(f"{k.rpartition('.')[2]} {v}" for k, v in server.sysctls.items()),
            f"           SYNs received: {_count(server.syns, 'from the flood')}, "
            f"{_count(server.legit_syns, 'from the legit client')}",
            f"           half-open (SYN_RECV) peak {server.half_open_peak:,}, at the end "
            f"{server.half_open_end:,}; accept queue peak {server.accept_queue_peak:,}",
            "           nstat: "
            + (", ".join(f"{k} {v:,}" for k, v in nstat.items() if v) or "nothing changed"),
        ]
        if self.fwemu is None:
            out.append("  fwemu    none in the fw namespace: the kernel forwarded alone")
        else:
            fw = self.fwemu
            out.append(f"  fwemu    in {fw.where}, policy {fw.policy}: {_fwemu_line(fw)}")
            before, peak, after = fw.flows
            out.append(f"           flows {before:,} before, peak {peak:,}, {after:,} after")
            if fw.counters.get("bypassed"):
                out.append(
                    "           (bypassed: its queue overflowed and the kernel let those packets "
                    "past it unseen)"
                )
            if fw.note:
                out.append(f"           ({fw.note})")
        if self.legit_during is not None and self.legit_before is not None:
            out.append(
                f"  legit    from {self.legit_source}, before: {self.legit_before.describe()}"
            )
            out.append(f"           during: {self.legit_during.describe()}")
        return out


def _count(value: int | None, what: str) -> str:
    return f"? {what} (no iptables)" if value is None else f"{value:,} {what}"


def _fwemu_line(fw: FwemuSeen) -> str:
    counters = ", ".join(f"{k} {v:,}" for k, v in fw.counters.items() if v) or "no packets"
    events = ", ".join(f"{k} {v:,}" for k, v in sorted(fw.events.items())) or "none"
    return f"{counters}; events: {events}"


# --- running it -------------------------------------------------------------------------------


class _Watch:
    """fwemu during the flood: its status before, the most flows it held, what it dropped."""

    def __init__(self, fwemu: FwemuView) -> None:
        self.fwemu = fwemu
        self.before = fwemu.status()
        self.flows_peak = int(self.before.get("flows", 0))
        self.dropped = 0
        fwemu.follow()

    def look(self) -> None:
        with suppress(ControlError):
            status = self.fwemu.status()
            self.flows_peak = max(self.flows_peak, int(status.get("flows", 0)))
            self.dropped = int(status.get("dropped", 0)) - int(self.before.get("dropped", 0))

    def seen(self) -> FwemuSeen:
        after = self.fwemu.status()
        counters = {
            key: value - int(self.before.get(key, 0))
            for key, value in after.items()
            if key not in _IDENTITY and isinstance(value, int) and not isinstance(value, bool)
        }
        flows = int(after.get("flows", 0))
        policy = after.get("policy")
        return FwemuSeen(
            where=self.fwemu.where,
            policy=None if policy is None else str(policy),
            counters=counters,
            flows=(int(self.before.get("flows", 0)), max(self.flows_peak, flows), flows),
            events=self.fwemu.events(),
            note=self.fwemu.cut,
        )


def run_flood(
    plan: LabPlan,
    spec: FloodSpec,
    *,
    fwemu: FwemuView | None = None,
    legit: LegitSpec | None = None,
    listen: bool = True,
    backlog: int = DEFAULT_BACKLOG,
    stop: threading.Event | None = None,
    progress: Callable[[Progress], None] | None = None,
    seed: int | None = None,
) -> FloodReport:
    """Flood lab `plan`'s server as `spec` says and report what happened (needs root).

    `fwemu`: the fwemu in the fw namespace to watch. `legit`: time a legit client's connects
    meanwhile. `listen`: listen on the port (with `backlog`) if nothing does. `stop` ends the
    flood early, and what was sent is still reported; `progress` is called every
    SAMPLE_INTERVAL; `seed` makes the SYNs' ports and sequence numbers repeatable.
    """
    _within("backlog", backlog, 1, MAX_BACKLOG, grouped=False)
    sources = spoofed_sources(plan, spec)
    ipv6 = ":" in sources.addresses[0]
    client_ns = plan.client.namespace
    stop = stop or threading.Event()
    server = _Server(plan, spec.port, sources, listen, backlog)
    with closing(server), ThreadPoolExecutor(2, thread_name_prefix="flood") as pool:
        family = socket.AF_INET6 if ipv6 else socket.AF_INET
        prober = None if legit is None else _Legit(legit, family, (server.address, spec.port))
        before = None
        if prober is not None:
            before = Connects.of(call_in_netns(client_ns, partial(prober.times, LEGIT_BEFORE)))
        server.start()
        watch = None if fwemu is None else _Watch(fwemu)
        probing = None if prober is None else pool.submit(call_in_netns, client_ns, prober.loop)
        sent = Sent()
        send = partial(_send, sources, server.address, spec, stop, sent, seed)
        sending = pool.submit(call_in_netns, client_ns, send)
        began = time.monotonic()
        try:
            while not sending.done():
                stop.wait(SAMPLE_INTERVAL)
                sockets = server.look()
                if watch is not None:
                    watch.look()
                if progress is not None:
                    elapsed = time.monotonic() - began
                    progress(_progress(elapsed, spec, sent, sockets, server, watch, prober))
        except BaseException:
            stop.set()  # the sender must not run on without us
            raise
        finally:
            if prober is not None:
                prober.stop.set()
        sending.result()
        if probing is not None:
            probing.result()
        server_seen = server.seen()
        fwemu_seen = None if watch is None else watch.seen()
    return FloodReport(
        lab=plan.name,
        spec=spec,
        sources=sources,
        sent=sent,
        server=server_seen,
        fwemu=fwemu_seen,
        legit_before=before,
        legit_during=None if prober is None else Connects.of(prober.results),
        legit_source=plan.client.ipv6 if ipv6 else plan.client.ipv4,
    )


def _progress(
    elapsed: float,
    spec: FloodSpec,
    sent: Sent,
    sockets: _Sockets,
    server: _Server,
    watch: _Watch | None,
    prober: _Legit | None,
) -> Progress:
    cookies = "TcpExtSyncookiesSent"
    legit_ok, legit_failed = prober.tally() if prober else (0, 0)
    return Progress(
        elapsed=elapsed,
        sent=sent.sent,
        planned=min(spec.count, math.ceil(spec.takes * spec.rate)),
        rate=sent.rate,
        half_open=sockets.half_open,
        cookies=server.counters().get(cookies, 0) - server.before.get(cookies, 0),
        legit_ok=legit_ok,
        legit_failed=legit_failed,
        dropped=None if watch is None else watch.dropped,
    )


def _send(
    sources: Sources,
    destination: str,
    spec: FloodSpec,
    stop: threading.Event,
    progress: Sent,
    seed: int | None,
) -> Sent:
    """The flood itself, from this thread's namespace (the client's)."""
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    packed = [socket.inet_pton(family, address) for address in sources.addresses]
    factory = SynFactory(packed, socket.inet_pton(family, destination), spec.port, seed=seed)
    sender = RawSender(destination, factory.size)
    sender.buffer[:] = factory.template * sender.slots

    def send(count: int) -> tuple[int, int]:
        factory.fill(sender.buffer, count)
        return sender.send(count)

    with closing(sender):
        return pace(
            send,
            count=spec.count,
            rate=spec.rate,
            seconds=spec.seconds,
            stop=stop,
            progress=progress,
        )
