"""Scale bench: 100,000 concurrent connections tracked by fwemu inline, held, then expired; or
held in a full table while a SYN stream is refused (--full-table).

    sudo .venv/bin/python bench/scale.py [--connections 100000] [--hold 120] [--action rst]
                                         [--quick] [--json]
    sudo .venv/bin/python bench/scale.py --full-table [--connections 100000] [--syn-rate 10000]
                                         [--syn-seconds 10] [--quick] [--json]

In a lab of its own (client <-> fw <-> server namespaces, fwemu.lab; CLIENTS client addresses;
the endpoints' limits raised inside the endpoints only), with `python -m fwemu run` inline in the
fw namespace under a generated policy whose established timeout is --hold:

  round 1 (hold)  N idle connections are opened from the client addresses and held; fwemu's RSS
                  before and after gives its memory per flow. A prober (64 B ping-pong, back to
                  back, on a flow of its own that never expires) measures a quiet baseline, then
                  the round trips while the N timers run out naturally, spread as the opening
                  was: timer lateness (idle - timeout of each expire event), and with --action
                  rst how many connections each endpoint saw reset.
  round 2 (mass)  N more connections, idle longer than MASS_TIMEOUT; `fwemu reload` to a policy
                  with that established timeout re-times every flow from its last packet, so all
                  N are due at the same moment: the prober's worst round trip through the reload
                  and through that mass expiry is the stall issue 6 caps at a few milliseconds.

With --full-table, instead (issue 13 item 6: a full table must not hold up established flows):

  N idle connections and the prober's fill fwemu's table, and a reload sets [limits] max_flows
  to that count with on_full = "drop". Then, once with early_drop = false and once (after another
  reload) with early_drop = true: a quiet baseline of the prober, then --syn-rate raw SYNs a
  second (new flows from SPOOFED client addresses bound nowhere, random ports) for --syn-seconds,
  each one a flow fwemu refuses, while the prober measures round trips. Both phases report the
  round trips, the refusals fwemu counted (its status, and its limit and limit_summary events),
  fwemu's CPU, and whether a held connection was lost (an event of its flow: delete, expire,
  state...; a flow gone from the table; a reset or close its client saw).

Progress goes to stderr, a table of figures (or --json) to stdout. Needs root; everything runs
inside the lab, which is removed on every way out, Ctrl-C and SIGTERM included.

The script is also the programs it runs inside the lab (an argv starting with "_": see ROLES).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from common import (
    ECHO_PORT,
    PING_SIZE,
    READY,
    STARTED,
    BenchError,
    Child,
    fork,
    listen_on,
    percentile,
    recv_exactly,
    run_bench,
    serve_echo,
)
from inline import snapshot, usage, widen_port_range

from fwemu.cli.argtypes import number, whole_number
from fwemu.core import packet as pk
from fwemu.core.ratelimit import WINDOW
from fwemu.lab.plan import LabPlan

Action = Literal["forget", "rst"]
# --action -> the policy's [on_expire] established value (fwemu/presets/README.md).
ON_EXPIRE: dict[Action, str] = {"forget": "silent", "rst": "reset-both"}

SCRIPT = Path(__file__).resolve()
QUEUE = 0
CLIENTS = 4  # client addresses, one holder process each
HOLD_PORTS = (7100, 7101)  # one server port per round: each round gets a fresh 4-tuple space
IN_FLIGHT = 256  # connects a holder keeps pending: well under the server's SYN backlog
BACKLOG = 65535  # listen(2) backlog, and somaxconn / tcp_max_syn_backlog in the server namespace
FD_SLACK = 64  # descriptors beyond the sockets: stdio, epoll, listeners
MASS_TIMEOUT = 2.0  # seconds: round 2's established timeout, shorter than the idle time
MASS_IDLE = MASS_TIMEOUT + 1.0  # idle time of the last round-2 connection before the reload
PROBER_RULE = "prober"
BULK_RULE = "default"  # the policy's own profile, which the held connections use
# A holder opens at least this many connections a second (fwemu opened ~5k/s: performance.md);
# below it, the bench gives up rather than wait on SYN retransmissions.
MIN_OPEN_RATE = 500
MIN_WAIT = 30.0  # seconds, the least any waiting step is allowed
POLL = 0.05  # seconds between looks at a holder's stop flag or at fwemu's events
SETTLE = 0.5  # seconds the prober keeps going after the last expiry
LEAD = 1.0  # seconds the prober runs before the first expiry (round 1) or the reload (round 2)
IP_BIND_ADDRESS_NO_PORT = 24  # <linux/in.h>: pick the port at connect(2), by the whole 4-tuple
# --full-table
FULL_HOLD = 3600.0  # seconds: the held connections' established timeout, longer than any run
ON_FULL = "drop"  # the table's action: Linux's ("nf_conntrack: table full, dropping packet")
SYN_RATE = 10_000  # SYNs a second, issue 13 item 6's stream
SPOOF_FIRST_HOST = 100  # the SYN stream's client addresses: 10.N.1.100 ..., clear of the holders'
SPOOFED = 100  # ... that many, so the answer rate's per-source budget is not what limits events
SYN_POOL = 16384  # distinct SYNs the stream cycles through: a refused one leaves no flow behind
SYN_TICK = 0.001  # seconds the stream sleeps between sends of what is due
SYN_MSS = 1460  # the SYNs' options, as a Linux client's on Ethernet (less its timestamps)
SYN_WSCALE = 7
SUMMARY_WAIT = WINDOW + 0.5  # the answer rate writes a window's limit_summary once it closes
# Events that would mean a held connection (or the prober's) was touched: evicted (delete),
# expired, moved to another state (a RST or FIN), reset, or its packets out of state.
DISTURBED = ("delete", "expire", "state", "reset", "out_of_state", "out_of_state_summary")


# --- programs that run inside the lab (argv[1] starts with "_") -----------------------------


def per_process() -> int:
    """Sockets one endpoint process may hold: its RLIMIT_NOFILE hard limit, less FD_SLACK.

    Raising the hard limit needs CAP_SYS_RESOURCE, which a container's root may lack (the
    development VM's does): the bench spreads the sockets over as many processes as it takes.
    """
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FD_SLACK


def _raise_nofile() -> None:
    """The soft descriptor limit up to the hard one, in this process only."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# What the peers did to one port's connections: [resets, first reset, last reset] (wall clock).
Resets = list[float]


class Held:
    """Idle connections in one epoll, and what their peers did to them: reset, or closed."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.sockets: dict[int, tuple[socket.socket, int]] = {}  # fd -> (socket, server port)
        self.resets: dict[int, Resets] = {}  # by server port
        self.closed = 0

    def hold(self, sock: socket.socket, port: int) -> None:
        self.sockets[sock.fileno()] = (sock, port)
        self.epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def on_event(self, fd: int) -> None:
        """A held connection became readable: the peer reset or closed it; forget it."""
        sock, port = self.sockets.pop(fd)
        self.epoll.unregister(fd)
        try:
            sock.recv(1)
            self.closed += 1
        except ConnectionResetError:
            now = time.time()
            count, first, _ = self.resets.get(port, [0, now, now])
            self.resets[port] = [count + 1, first, now]
        except OSError:
            self.closed += 1
        sock.close()

    def summary(self) -> dict[str, Any]:
        """Small enough for one atomic write to a pipe (PIPE_BUF, pipe(7))."""
        return {"held": len(self.sockets), "closed": self.closed, "resets": self.resets}


def merge(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several processes' `Held.summary()` (JSON round-tripped: ports are strings) as one."""
    resets: dict[str, Resets] = {}
    for summary in summaries:
        for port, (count, first, last) in summary["resets"].items():
            seen = resets.get(port, [0, first, last])
            resets[port] = [seen[0] + count, min(seen[1], first), max(seen[2], last)]
    return {
        "held": sum(s["held"] for s in summaries),
        "closed": sum(s["closed"] for s in summaries),
        "resets": resets,
    }


def _until_stopped(held: Held, on_other: Callable[[int], None] = lambda fd: None) -> None:
    """Watch `held` (and hand any other fd to `on_other`) until SIGTERM/SIGINT."""
    stop = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    while not stop:
        for fd, _ in held.epoll.poll(POLL):
            if fd in held.sockets:
                held.on_event(fd)
            else:
                on_other(fd)


def _sink_worker(listeners: dict[int, socket.socket], out: int) -> None:
    """Accept from the shared listeners until this process holds per_process() sockets."""
    _raise_nofile()
    room = per_process()
    held = Held()
    for fd in listeners:
        held.epoll.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)  # no thundering herd

    def accept(fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while len(held.sockets) < room:
                conn, _ = listeners[fd].accept()
                held.hold(conn, listeners[fd].getsockname()[1])
        if len(held.sockets) >= room:
            for listener in listeners:
                with contextlib.suppress(FileNotFoundError):
                    held.epoll.unregister(listener)

    _until_stopped(held, accept)
    os.write(out, json.dumps(held.summary()).encode() + b"\n")


def role_sink(argv: Sequence[str]) -> None:
    """_sink ADDRESS PROCESSES: PROCESSES workers accept and hold connections on HOLD_PORTS;
    an echo server for the prober on ECHO_PORT. On SIGTERM, prints what the peers did (JSON)."""
    address, processes = argv[0], int(argv[1])
    echo = listen_on(address, ECHO_PORT)
    pids = [fork(lambda: serve_echo(echo))]
    listeners: dict[int, socket.socket] = {}
    for port in HOLD_PORTS:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(BACKLOG)
        listener.setblocking(False)
        listeners[listener.fileno()] = listener
    read, write = os.pipe()
    workers = [fork(lambda: _sink_worker(listeners, write)) for _ in range(processes)]
    os.close(write)
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # sigwait(3) needs them blocked
    print(READY, flush=True)
    signal.sigwait(stops)
    for pid in workers:
        os.kill(pid, signal.SIGTERM)
    with os.fdopen(read) as results:
        summaries = [json.loads(line) for line in results]
    for pid in [*workers, *pids]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(json.dumps(merge(summaries)), flush=True)


def role_hold(argv: Sequence[str]) -> None:
    """_hold SOURCE SERVER PORT COUNT: open COUNT connections from SOURCE (non-blocking,
    IN_FLIGHT at a time), print how the opening went (JSON), hold them idle; on SIGTERM, print
    which the peer reset (JSON)."""
    source, server, port, count = argv[0], argv[1], int(argv[2]), int(argv[3])
    _raise_nofile()
    held = Held()
    connecting: dict[int, socket.socket] = {}
    started = opened = errors = 0
    first = time.time()
    last = first
    while opened + errors < count:
        while len(connecting) < IN_FLIGHT and started < count:
            sock = socket.socket()
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            code = sock.connect_ex((server, port))
            if code not in (0, errno.EINPROGRESS):
                sock.close()
                errors += 1
            else:
                connecting[sock.fileno()] = sock
                held.epoll.register(sock.fileno(), select.EPOLLOUT)
            started += 1
        for fd, _ in held.epoll.poll():
            if fd in held.sockets:  # reset while the rest were still opening
                held.on_event(fd)
                continue
            sock = connecting.pop(fd)
            held.epoll.unregister(fd)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                sock.close()
                errors += 1
            else:
                held.hold(sock, port)
                opened += 1
                last = time.time()
    print(
        json.dumps({"opened": opened, "errors": errors, "first": first, "last": last}), flush=True
    )
    _until_stopped(held)
    print(json.dumps(held.summary()), flush=True)


def role_probe(argv: Sequence[str]) -> None:
    """_probe ADDRESS: 64 B round trips to ECHO_PORT, back to back, until SIGTERM; then their
    start times (wall clock) and durations (µs) as JSON."""
    (address,) = argv
    starts, rtts = array("d"), array("d")
    ping = b"p" * PING_SIZE
    # SIGTERM interrupts even a blocked recv(2): a stalled round trip must not hang the prober.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with socket.create_connection((address, ECHO_PORT)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(READY, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                wall, t0 = time.time(), time.perf_counter_ns()
                sock.sendall(ping)
                recv_exactly(sock, PING_SIZE)
                rtt = (time.perf_counter_ns() - t0) / 1000
                starts.append(wall)
                rtts.append(rtt)
    size = min(len(starts), len(rtts))  # the signal may land between the two appends
    print(json.dumps({"t": starts[:size].tolist(), "rtt_us": rtts[:size].tolist()}), flush=True)


def role_syns(argv: Sequence[str]) -> None:
    """_syns SERVER PORT RATE SECONDS SOURCE...: SYNs of new flows to SERVER:PORT from the
    SOURCE addresses (raw packets: bound nowhere) and random ports, RATE a second for SECONDS;
    then how many were sent and lost locally, and when the stream began and ended (JSON, wall
    clock). Prints READY just before the first."""
    server, port, rate, seconds = argv[0], int(argv[1]), float(argv[2]), float(argv[3])
    sources = [socket.inet_aton(source) for source in argv[4:]]
    dst = socket.inet_aton(server)
    rng = random.Random(13)
    options = pk.encode_options(mss=SYN_MSS, sack_perm=True, wscale=SYN_WSCALE)
    pool = [
        pk.build_segment(
            sources[i % len(sources)],
            rng.randrange(1024, 65536),
            dst,
            port,
            flags=pk.TCP_SYN,
            seq=rng.getrandbits(32),
            ack=0,
            options=options,
        )
        for i in range(SYN_POOL)
    ]
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    target = (server, 0)
    print(READY, flush=True)
    first, start = time.time(), time.monotonic()
    end, sent, lost = start + seconds, 0, 0
    # Paced by the clock as tests/e2e/flood.py is: what is due is sent, then a short sleep.
    while (now := time.monotonic()) < end:
        for _ in range(int((now - start) * rate) - sent - lost):
            try:
                sock.sendto(pool[(sent + lost) % SYN_POOL], target)
                sent += 1
            except OSError:  # ENOBUFS: the local queue is full; that one is lost
                lost += 1
        time.sleep(SYN_TICK)
    last = first + time.monotonic() - start
    print(json.dumps({"sent": sent, "lost": lost, "first": first, "last": last}), flush=True)


ROLES: dict[str, Callable[[Sequence[str]], None]] = {
    "_sink": role_sink,
    "_hold": role_hold,
    "_probe": role_probe,
    "_syns": role_syns,
}


# --- the bench's side: the lab, fwemu, and what they report ---------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    connections: int
    hold: float  # seconds: round 1's established timeout
    action: Action
    baseline: float  # seconds of quiet prober round trips
    full_table: bool = False  # the full-table bench instead of the two rounds
    syn_rate: float = SYN_RATE  # --full-table: SYNs a second
    syn_seconds: float = 10.0  # --full-table: how long each phase's SYN stream lasts


def _json_lines(child: Child) -> list[dict[str, Any]]:
    """The JSON objects a role printed, in order."""
    return [json.loads(line) for line in child.log().splitlines() if line.startswith("{")]


def _last_json(child: Child) -> dict[str, Any]:
    found = _json_lines(child)
    if not found:
        raise BenchError(f"{child.name} printed no result: {child.tail()}")
    return found[-1]


def _role(name: str, argv: Sequence[str], workdir: Path, namespace: str) -> Child:
    return Child.start(name, [sys.executable, str(SCRIPT), *argv], workdir, namespace)


def _stopped(child: Child) -> dict[str, Any]:
    """Stop a role; the JSON it printed last."""
    code = child.stop()
    if code != 0:
        raise BenchError(f"{child.name} exited with status {code}: {child.tail()}")
    return _last_json(child)


def write_policy(
    path: Path,
    established: float,
    action: Action,
    max_flows: int | None = None,
    early_drop: bool = False,
) -> Path:
    """A policy: held connections expire after `established` s; the prober's flow never does;
    with `max_flows`, the table holds that many flows (ON_FULL past them)."""
    limits = (
        ""
        if max_flows is None
        else f"""
[limits]
max_flows = {max_flows}
on_full = "{ON_FULL}"
early_drop = {str(early_drop).lower()}
"""
    )
    path.write_text(
        f"""[policy]
name = "scale-bench"
description = "bench/scale.py: idle connections expire after {established:g} s"

[timeouts]
established = {established}

[on_expire]
established = "{ON_EXPIRE[action]}"
{limits}
[[rule]]
name = "{PROBER_RULE}"
match = {{ dst_port = {ECHO_PORT} }}
timeouts = {{ established = "never" }}
"""
    )
    return path


def _in_netns(namespace: str, fn: Callable[[], str]) -> str:
    from fwemu.lab import call_in_netns

    return call_in_netns(namespace, fn)


def _write_sysctls(namespace: str, values: dict[str, str]) -> None:
    def write() -> str:
        for key, value in values.items():
            Path("/proc/sys", key).write_text(value)
        return ""

    _in_netns(namespace, write)


def _sysctl(namespace: str, key: str) -> int | None:
    """A numeric sysctl as seen in `namespace`; None if the kernel has no such key."""
    text = _in_netns(
        namespace,
        lambda: Path("/proc/sys", key).read_text() if Path("/proc/sys", key).exists() else "",
    )
    return int(text) if text.strip() else None


def client_addresses(plan: LabPlan) -> list[str]:
    """The lab's client address and CLIENTS - 1 more in its subnet (10.N.1.3, ...)."""
    base = plan.client.ipv4.rsplit(".", 1)
    return [f"{base[0]}.{int(base[1]) + i}" for i in range(CLIENTS)]


def spoofed_addresses(plan: LabPlan) -> list[str]:
    """The SYN stream's SPOOFED source addresses in the client's subnet, on no interface: the
    fw namespace routes them back to the client side, so they pass its reverse-path filter."""
    prefix = plan.client.ipv4.rsplit(".", 1)[0]
    return [f"{prefix}.{SPOOF_FIRST_HOST + i}" for i in range(SPOOFED)]


def prepare_endpoints(plan: LabPlan) -> list[str]:
    """Extra client addresses, and the endpoints' limits raised inside their namespaces only
    (RLIMIT_NOFILE is raised by the roles themselves); the client addresses."""
    from pyroute2 import IPRoute

    addresses = client_addresses(plan)
    end = plan.client

    def add_addresses() -> str:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=end.ifname)[0]
            for address in addresses[1:]:
                ipr.addr("add", index=index, address=address, prefixlen=end.prefixlen4)
        return ""

    _in_netns(end.namespace, add_addresses)
    widen_port_range(plan)
    # Both are per network namespace; the SYN backlog is also capped by listen(2)'s backlog.
    _write_sysctls(
        plan.server.namespace,
        {"net/core/somaxconn": str(BACKLOG), "net/ipv4/tcp_max_syn_backlog": str(BACKLOG)},
    )
    return addresses


@dataclass(frozen=True, slots=True)
class Conntrack:
    """The kernel's own conntrack in the fw namespace."""

    count: int | None  # entries after a test connection; None: nf_conntrack is not loaded
    limit: int | None
    notrack: bool  # whether the bench exempted the lab's traffic from it


def check_conntrack(plan: LabPlan, needed: int) -> Conntrack:
    """Whether the kernel tracks the lab's connections in the fw namespace too (a test
    connection through it is counted) and would drop entries beyond nf_conntrack_max: if so, a
    NOTRACK rule in the fw namespace's raw table exempts the lab's TCP from it."""
    from fwemu.lab import run_in, socket_in

    fw = plan.fw_client_side.namespace
    with socket_in(plan.client.namespace) as sock:
        sock.settimeout(MIN_WAIT)
        sock.connect((plan.server.ipv4, ECHO_PORT))
        count = _sysctl(fw, "net/netfilter/nf_conntrack_count")
    limit = _sysctl(fw, "net/netfilter/nf_conntrack_max")
    notrack = count is not None and count > 0 and limit is not None and count + needed > limit
    if notrack:
        rule = ["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-p", "tcp"]
        result = run_in(plan.name, "fw", [*rule, "-j", "CT", "--notrack"], capture_output=True)
        if result.returncode != 0:
            raise BenchError(f"cannot add the NOTRACK rule in {fw}: {result.stderr.strip()}")
    return Conntrack(count, limit, notrack)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB (proc(5))."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


class Fwemu:
    """`fwemu run` in the fw namespace, its control socket and its events file."""

    def __init__(self, child: Child, control: Path, events: Path) -> None:
        self.child = child
        self.control = control
        self._events = events.open("rb")
        self._partial = b""

    @classmethod
    def start(cls, plan: LabPlan, policy: Path, workdir: Path) -> Fwemu:
        control, events = workdir / "control.sock", workdir / "events.jsonl"
        argv = [sys.executable, "-m", "fwemu", "run", "--netns", plan.fw_client_side.namespace]
        argv += ["--queue", str(QUEUE), "--policy", str(policy), "--events", str(events)]
        child = Child.start("fwemu", [*argv, "--control", str(control)], workdir, None)
        child.wait_for(STARTED)
        return cls(child, control, events)

    def status(self) -> dict[str, Any]:
        from fwemu.ops import client
        from fwemu.ops.protocol import Request

        return next(iter(client.request(self.control, Request("status"))))

    def reload(self, policy: Path) -> str:
        from fwemu.ops import client
        from fwemu.ops.protocol import Request

        reply = next(iter(client.request(self.control, Request("reload", policy=str(policy)))))
        return str(reply.get("message", ""))

    def new_events(self, kinds: Sequence[str]) -> list[dict[str, Any]]:
        """The events of these kinds written since the last call (which read every kind's)."""
        data = self._partial + self._events.read()
        *lines, self._partial = data.split(b"\n")
        marks = [f'"event": "{kind}"'.encode() for kind in kinds]
        return [json.loads(line) for line in lines if any(mark in line for mark in marks)]

    def new_expiries(self) -> list[dict[str, Any]]:
        """The expire events of the held connections written since the last call."""
        return [event for event in self.new_events(["expire"]) if event["rule"] == BULK_RULE]

    def expiries(self, count: int, deadline: float) -> list[dict[str, Any]]:
        """Wait for `count` expiries of held connections, or BenchError after `deadline`."""
        found: list[dict[str, Any]] = []
        while len(found) < count:
            if self.child.process.poll() is not None:
                raise BenchError(f"fwemu exited during the expiries: {self.child.tail()}")
            if time.time() > deadline:
                raise BenchError(
                    f"only {len(found)} of {count} connections expired in time: {self.child.tail()}"
                )
            time.sleep(POLL)
            found += self.new_expiries()
        return found


@dataclass(frozen=True, slots=True)
class Opened:
    """One round's connections, once every holder has opened its share."""

    holders: list[Child]
    count: int
    errors: int
    first: float  # wall clock: the first connect(2)
    last: float  # wall clock: the last connection established


def open_round(
    plan: LabPlan, addresses: Sequence[str], port: int, count: int, workdir: Path
) -> Opened:
    processes = max(len(addresses), -(-count // per_process()))
    shares = [count // processes + (i < count % processes) for i in range(processes)]
    holders = [
        _role(
            f"hold-{port}-{i}",
            ["_hold", addresses[i % len(addresses)], plan.server.ipv4, str(port), str(share)],
            workdir,
            plan.client.namespace,
        )
        for i, share in enumerate(shares)
        if share
    ]
    for holder in holders:
        holder.wait_for('"opened"', max(MIN_WAIT, count / MIN_OPEN_RATE))
    reports = [_json_lines(holder)[0] for holder in holders]
    return Opened(
        holders,
        sum(r["opened"] for r in reports),
        sum(r["errors"] for r in reports),
        min(r["first"] for r in reports),
        max(r["last"] for r in reports),
    )


@dataclass(frozen=True, slots=True)
class Samples:
    """The prober's round trips: wall-clock start times and durations (µs)."""

    starts: list[float]
    rtts: list[float]

    def overlapping(self, start: float, end: float) -> list[float]:
        """Round trips in flight at some moment of [start, end], sorted."""
        return sorted(
            rtt
            for t, rtt in zip(self.starts, self.rtts, strict=True)
            if t <= end and t + rtt / 1e6 >= start
        )

    def starting(self, start: float, end: float) -> list[float]:
        """Round trips begun in (start, end], sorted."""
        return sorted(
            rtt for t, rtt in zip(self.starts, self.rtts, strict=True) if start < t <= end
        )


@contextlib.contextmanager
def probing(plan: LabPlan, workdir: Path, name: str) -> Iterator[list[Samples]]:
    """A prober running for the block; its samples are in the list once the block ends."""
    prober = _role(name, ["_probe", plan.server.ipv4], workdir, plan.client.namespace)
    out: list[Samples] = []
    try:
        prober.wait_for(READY)
        yield out
    finally:
        result = _stopped(prober)
    out.append(Samples(result["t"], result["rtt_us"]))


def _sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


def _rtt_figures(prefix: str, rtts: Sequence[float]) -> dict[str, float]:
    """p50, p99 and worst round trip (ms) of a window; its round-trip count."""
    if not rtts:
        raise BenchError(f"the prober completed no round trip in the {prefix} window")
    return {
        f"{prefix}_round_trips": float(len(rtts)),
        f"{prefix}_rtt_p50_ms": percentile(rtts, 50) / 1000,
        f"{prefix}_rtt_p99_ms": percentile(rtts, 99) / 1000,
        f"{prefix}_rtt_worst_ms": rtts[-1] / 1000,
    }


def _expiry_figures(
    prefix: str, events: Sequence[dict[str, Any]], due: float | None = None
) -> dict[str, float]:
    """How long the expiries took, and how late they were: past each flow's own deadline
    (idle - timeout), or past `due`, when they were all due at once (ms)."""
    stamps = [e["ts"] for e in events]
    late = sorted(
        1000 * (e["idle"] - e["timeout"] if due is None else e["ts"] - due) for e in events
    )
    return {
        f"{prefix}_expired": float(len(events)),
        f"{prefix}_expiry_span_s": max(stamps) - min(stamps),
        f"{prefix}_lateness_p50_ms": statistics.median(late),
        f"{prefix}_lateness_p99_ms": percentile(late, 99),
        f"{prefix}_lateness_worst_ms": late[-1],
    }


def _reset_figures(
    prefix: str, port: int, holders: Sequence[dict[str, Any]], sink: dict[str, Any], end: float
) -> dict[str, float]:
    """How many connections each side saw reset, and the last reset after the last expiry."""
    client = merge(holders)["resets"].get(str(port), [0, end, end])
    server = sink["resets"].get(str(port), [0, end, end])
    return {
        f"{prefix}_resets_client": float(client[0]),
        f"{prefix}_resets_server": float(server[0]),
        f"{prefix}_last_reset_after_last_expiry_ms": 1000 * (max(client[2], server[2]) - end),
    }


@dataclass(frozen=True, slots=True)
class Setup:
    """What both benches run in: the lab, its endpoints ready, the sink serving, fwemu inline."""

    plan: LabPlan
    workdir: Path
    addresses: list[str]  # the holders' client addresses
    sink: Child
    fwemu: Fwemu
    rss_before: int  # kB: fwemu's, before any connection
    figures: dict[str, float]  # the kernel's conntrack in the fw namespace


def set_up(
    stack: contextlib.ExitStack[Any],
    held: int,
    established: float,
    action: Action,
    progress: Callable[[str], None],
) -> Setup:
    """A lab, removed when `stack` closes, whose sink may hold `held` connections at once, and
    fwemu in it under write_policy(established, action)."""
    from fwemu.lab import lab, require_root

    require_root()
    pid = os.getpid()
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fwemu-scale-")))
    plan = stack.enter_context(lab(f"fwemu-scale-{pid}", 1 + pid % 250))
    addresses = prepare_endpoints(plan)
    processes = str(1 + -(-held // per_process()))  # one process of room
    sink = _role("sink", ["_sink", plan.server.ipv4, processes], workdir, plan.server.namespace)
    stack.callback(sink.stop)
    sink.wait_for(READY)
    conntrack = check_conntrack(plan, held)
    progress(
        f"lab {plan.name} up, client addresses {', '.join(addresses)}; kernel conntrack in "
        f"the fw namespace: "
        + (
            "not loaded"
            if conntrack.count is None
            else f"{conntrack.count} entries of max {conntrack.limit}"
            + ("; NOTRACK rule added" if conntrack.notrack else "")
        )
    )
    policy = write_policy(workdir / "hold.toml", established, action)
    fwemu = Fwemu.start(plan, policy, workdir)
    stack.callback(fwemu.child.stop)
    before = memory(fwemu.child.pid)["VmRSS"]
    progress(f"fwemu running (pid {fwemu.child.pid}), RSS {before} kB")
    figures = {
        "kernel_conntrack_entries": float(conntrack.count or 0),
        "kernel_conntrack_notrack": float(conntrack.notrack),
    }
    return Setup(plan, workdir, addresses, sink, fwemu, before, figures)


def stop_fwemu(fwemu: Fwemu) -> None:
    """Stop fwemu before the endpoints: their sockets then close without crossing the queue."""
    code = fwemu.child.stop()
    if code != 0:
        raise BenchError(f"fwemu exited with status {code}: {fwemu.child.tail()}")


# The benchmark's script, step by step in the order it runs: read top to bottom.
def bench(settings: Settings, progress: Callable[[str], None]) -> dict[str, float]:  # noqa: PLR0915
    """Both rounds in a lab removed on every way out; the figures."""
    n = settings.connections
    figures: dict[str, float] = {"connections": float(n), "hold_s": settings.hold}
    with contextlib.ExitStack() as stack:
        # Both rounds' connections may be held at once (--action forget).
        setup = set_up(stack, 2 * n, settings.hold, settings.action, progress)
        plan, workdir, addresses, fwemu = setup.plan, setup.workdir, setup.addresses, setup.fwemu
        figures |= setup.figures
        mass_policy = write_policy(workdir / "mass.toml", MASS_TIMEOUT, settings.action)

        # Round 1: open, measure memory and a quiet baseline, then the natural expiry.
        progress(f"round 1: opening {n} connections to port {HOLD_PORTS[0]}")
        hold = open_round(plan, addresses, HOLD_PORTS[0], n, workdir)
        for holder in hold.holders:
            stack.callback(holder.stop)
        seconds = hold.last - hold.first
        held = memory(fwemu.child.pid)
        tracked = fwemu.status()["flows"]
        progress(
            f"  opened {hold.count} ({hold.errors} errors) in {seconds:.1f} s; fwemu tracks "
            f"{tracked} flows, RSS {held['VmRSS']} kB"
        )
        if hold.last > hold.first + settings.hold:
            progress("  note: the hold is shorter than the opening: early flows already expired")
        figures |= {
            "opened": float(hold.count),
            "open_errors": float(hold.errors),
            "open_seconds": seconds,
            "open_rate": hold.count / seconds,
            "tracked_flows": float(tracked),
            "rss_before_kb": float(setup.rss_before),
            "rss_held_kb": float(held["VmRSS"]),
            "bytes_per_flow": 1024 * (held["VmRSS"] - setup.rss_before) / max(tracked, 1),
        }
        progress(f"  baseline: {settings.baseline:g} s of round trips")
        with probing(plan, workdir, "probe-baseline") as baseline:
            time.sleep(settings.baseline)
        figures |= _rtt_figures("baseline", sorted(baseline[0].rtts))
        first_due = hold.first + settings.hold
        progress(f"  waiting {first_due - time.time():.0f} s for the first expiry")
        _sleep_until(first_due - LEAD)
        with probing(plan, workdir, "probe-hold") as probe:
            limit = hold.last + settings.hold + max(MIN_WAIT, n / MIN_OPEN_RATE)
            events = fwemu.expiries(hold.count, limit)
            done = time.time()
            time.sleep(SETTLE)
        hold_first, hold_last = min(e["ts"] for e in events), max(e["ts"] for e in events)
        figures |= _expiry_figures("hold", events)
        figures |= _rtt_figures("hold", probe[0].overlapping(hold_first, done))
        progress(f"  {len(events)} expired over {hold_last - hold_first:.1f} s")

        # Round 2: N more, idle past MASS_TIMEOUT, then all due at once through a reload.
        progress(f"round 2: opening {n} connections to port {HOLD_PORTS[1]}")
        mass = open_round(plan, addresses, HOLD_PORTS[1], n, workdir)
        for holder in mass.holders:
            stack.callback(holder.stop)
        progress(f"  opened {mass.count}; reload to established = {MASS_TIMEOUT:g} s")
        _sleep_until(mass.last + MASS_IDLE - LEAD)
        with probing(plan, workdir, "probe-mass") as probe:
            time.sleep(LEAD)
            asked = time.time()
            progress(f"  {fwemu.reload(mass_policy)}")
            answered = time.time()
            events = fwemu.expiries(mass.count, answered + max(MIN_WAIT, n / MIN_OPEN_RATE))
            done = time.time()
            time.sleep(SETTLE)
        mass_last = max(e["ts"] for e in events)
        figures |= _expiry_figures("mass", events, due=asked)
        figures["reload_seconds"] = answered - asked
        # fwemu re-times every flow, answers, then turns to the timers: round trips in flight
        # during the call were held up by the reload; those begun after the reply, until the
        # bench saw the last expiry, by the mass expiry only.
        figures |= _rtt_figures("reload", probe[0].overlapping(asked, answered))
        figures |= _rtt_figures("mass", probe[0].starting(answered, done))
        figures["rss_peak_kb"] = float(memory(fwemu.child.pid)["VmHWM"])
        progress(f"  {len(events)} expired over {figures['mass_expiry_span_s']:.1f} s")

        stop_fwemu(fwemu)
        sink_report = _stopped(setup.sink)
        if settings.action == "rst":
            for prefix, port, opened, end in (
                ("hold", HOLD_PORTS[0], hold, hold_last),
                ("mass", HOLD_PORTS[1], mass, mass_last),
            ):
                reports = [_stopped(holder) for holder in opened.holders]
                figures |= _reset_figures(prefix, port, reports, sink_report, end)
    return figures


@dataclass(frozen=True, slots=True)
class Phase:
    """One early_drop setting under the SYN stream: its windows (wall clock) and the figures
    that are not the prober's."""

    prefix: str
    quiet: tuple[float, float]  # the prober's baseline, before the stream
    stream: tuple[float, float]  # the stream's first and last SYN
    figures: dict[str, float]


def _refused(status: dict[str, Any]) -> int:
    """New flows the table's size refused, by fwemu's status (since the last reload)."""
    return sum(scope["refused"].get("max_flows", 0) for scope in status["limits"])


def syn_phase(
    setup: Setup, settings: Settings, table: int, early_drop: bool, progress: Callable[[str], None]
) -> Phase:
    """Reload to a full table (max_flows = `table`) with this early_drop; a quiet baseline,
    then the SYN stream; what fwemu and the stream reported."""
    prefix = "early" if early_drop else "full"
    plan, fwemu = setup.plan, setup.fwemu
    fw, pid = plan.fw_client_side.namespace, fwemu.child.pid
    path = setup.workdir / f"{prefix}.toml"
    policy = write_policy(path, FULL_HOLD, "forget", max_flows=table, early_drop=early_drop)
    progress(f"early_drop = {str(early_drop).lower()}: {fwemu.reload(policy)}")
    fwemu.new_events(())  # what came before this phase is not its own
    progress(f"  baseline: {settings.baseline:g} s of round trips")
    quiet_start, before = time.time(), snapshot(fw, pid)
    time.sleep(settings.baseline)
    quiet_end, quiet = time.time(), snapshot(fw, pid)
    status = fwemu.status()
    progress(f"  {settings.syn_rate:g} SYN/s for {settings.syn_seconds:g} s")
    argv = [plan.server.ipv4, str(HOLD_PORTS[0]), str(settings.syn_rate), str(settings.syn_seconds)]
    streamer = _role(
        f"syns-{prefix}",
        ["_syns", *argv, *spoofed_addresses(plan)],
        setup.workdir,
        plan.client.namespace,
    )
    streamer.wait_for(READY)
    start = snapshot(fw, pid)
    try:
        streamer.process.wait(settings.syn_seconds + MIN_WAIT)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the SYN stream did not end in time: {streamer.tail()}") from None
    end = snapshot(fw, pid)
    stream = _stopped(streamer)
    time.sleep(SUMMARY_WAIT)
    after = fwemu.status()
    events = fwemu.new_events(("limit", "limit_summary", *DISTURBED))
    kinds = Counter(event["event"] for event in events)
    refused = _refused(after) - _refused(status)
    progress(
        f"  {stream['sent']} sent, fwemu refused {refused}; {after['flows']} flows in the table"
    )
    figures = {
        f"{prefix}_syns_sent": float(stream["sent"]),
        f"{prefix}_syns_lost_locally": float(stream["lost"]),
        f"{prefix}_syn_rate": stream["sent"] / (stream["last"] - stream["first"]),
        f"{prefix}_bypassed": float(after["bypassed"] - status["bypassed"]),
        f"{prefix}_refused": float(refused),
        f"{prefix}_refusal_events": float(kinds["limit"]),
        f"{prefix}_refusals_summed": float(
            sum(event["packets"] for event in events if event["event"] == "limit_summary")
        ),
        f"{prefix}_disturbed_events": float(sum(kinds[kind] for kind in DISTURBED)),
        f"{prefix}_flows_after": float(after["flows"]),
        **usage(before, quiet, f"{prefix}_quiet"),
        **usage(start, end, f"{prefix}_syn"),
    }
    return Phase(prefix, (quiet_start, quiet_end), (stream["first"], stream["last"]), figures)


def full_table(settings: Settings, progress: Callable[[str], None]) -> dict[str, float]:
    """--full-table: N connections held in a full table, a SYN stream at it with early_drop off,
    then on, in a lab removed on every way out; the figures."""
    n = settings.connections
    figures: dict[str, float] = {"connections": float(n)}
    with contextlib.ExitStack() as stack:
        setup = set_up(stack, n, FULL_HOLD, "forget", progress)
        plan, workdir, fwemu = setup.plan, setup.workdir, setup.fwemu
        figures |= setup.figures
        progress(f"opening {n} connections to port {HOLD_PORTS[0]}")
        held = open_round(plan, setup.addresses, HOLD_PORTS[0], n, workdir)
        for holder in held.holders:
            stack.callback(holder.stop)
        figures |= {"opened": float(held.count), "open_errors": float(held.errors)}
        with probing(plan, workdir, "probe-full") as probe:
            table = fwemu.status()["flows"]  # the held connections and the prober's
            progress(f"  opened {held.count} ({held.errors} errors); max_flows = {table}")
            phases = [syn_phase(setup, settings, table, on, progress) for on in (False, True)]
        figures["max_flows"] = float(table)
        for phase in phases:
            figures |= phase.figures
            for window, (start, end) in (("quiet", phase.quiet), ("syn", phase.stream)):
                prefix = f"{phase.prefix}_{window}"
                rtts = probe[0].starting(start, end)
                figures |= _rtt_figures(prefix, rtts)
                figures[f"{prefix}_round_trip_rate"] = len(rtts) / (end - start)

        stop_fwemu(fwemu)
        # The clients' view, before the sink's exit closes their connections.
        clients = merge([_stopped(holder) for holder in held.holders])
        _stopped(setup.sink)
    figures |= {
        "held_at_end": float(clients["held"]),
        "held_reset_or_closed": float(
            clients["closed"] + sum(count for count, _, _ in clients["resets"].values())
        ),
    }
    return figures


# --- reporting and command line -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    label: str
    unit: str
    digits: int


ROWS: tuple[tuple[str, tuple[Row, ...]], ...] = (
    (
        "opening (round 1)",
        (
            Row("opened", "connections opened", "", 0),
            Row("open_errors", "connect errors", "", 0),
            Row("open_seconds", "time to open them", "s", 1),
            Row("open_rate", "opening rate", "conn/s", 0),
            Row("kernel_conntrack_entries", "kernel conntrack entries (fw netns, test)", "", 0),
        ),
    ),
    (
        "memory (fwemu's RSS)",
        (
            Row("tracked_flows", "flows in fwemu's table (control socket)", "", 0),
            Row("rss_before_kb", "RSS before opening", "kB", 0),
            Row("rss_held_kb", "RSS with the flows tracked", "kB", 0),
            Row("bytes_per_flow", "memory per flow", "B", 0),
            Row("rss_peak_kb", "peak RSS (VmHWM, end of run)", "kB", 0),
        ),
    ),
    *(
        (
            title,
            (
                Row(f"{p}_expired", "connections expired", "", 0),
                Row(f"{p}_expiry_span_s", "first to last expiry", "s", 2),
                Row(f"{p}_lateness_p50_ms", f"{late} p50", "ms", 2),
                Row(f"{p}_lateness_p99_ms", f"{late} p99", "ms", 2),
                Row(f"{p}_lateness_worst_ms", f"{late} worst", "ms", 2),
                Row(f"{p}_resets_client", "connections the clients saw reset", "", 0),
                Row(f"{p}_resets_server", "connections the server saw reset", "", 0),
                Row(
                    f"{p}_last_reset_after_last_expiry_ms", "last reset after last expiry", "ms", 1
                ),
            ),
        )
        for p, title, late in (
            ("hold", "natural expiry after the hold (round 1)", "timer lateness"),
            (
                "mass",
                f"mass expiry: all due at once after a reload to {MASS_TIMEOUT:g} s (round 2)",
                "expiry after the reload request",
            ),
        )
    ),
    (
        "prober round trips through fwemu (64 B ping-pong, back to back)",
        (
            *(
                Row(f"{p}_rtt_{stat}_ms", f"{what}: {stat}", "ms", 2)
                for p, what in (
                    ("baseline", "quiet baseline"),
                    ("hold", "during the natural expiry"),
                    ("reload", "during the reload call"),
                    ("mass", "after the reload: the mass expiry"),
                )
                for stat in ("p50", "p99", "worst")
            ),
            Row("reload_seconds", "reload call (re-times every flow)", "s", 3),
        ),
    ),
)


def _phase_rows(prefix: str, early_drop: str) -> tuple[str, tuple[Row, ...]]:
    """--full-table: one phase's rows."""
    return (
        f"full table, early_drop = {early_drop}: a quiet baseline, then the SYN stream",
        (
            Row(f"{prefix}_syns_sent", "SYNs sent (new flows)", "", 0),
            Row(f"{prefix}_syn_rate", "SYN rate", "SYN/s", 0),
            Row(f"{prefix}_syns_lost_locally", "SYNs the client's kernel dropped (ENOBUFS)", "", 0),
            Row(f"{prefix}_bypassed", "packets let past fwemu unseen (fail-open)", "", 0),
            Row(f"{prefix}_refused", "new flows refused by max_flows (status)", "", 0),
            Row(f"{prefix}_refusal_events", "... each in a limit event (answer rate)", "", 0),
            Row(f"{prefix}_refusals_summed", "... summed in limit_summary events", "", 0),
            Row(f"{prefix}_disturbed_events", "events of held flows (delete, expire...)", "", 0),
            Row(f"{prefix}_flows_after", "flows in the table afterwards", "", 0),
            *(
                Row(f"{prefix}_{window}_rtt_{stat}_ms", f"prober, {what}: {stat}", "ms", 2)
                for window, what in (("quiet", "baseline"), ("syn", "SYNs"))
                for stat in ("p50", "p99", "worst")
            ),
            Row(f"{prefix}_quiet_round_trip_rate", "prober round trips, baseline", "/s", 0),
            Row(f"{prefix}_syn_round_trip_rate", "prober round trips, SYN stream", "/s", 0),
            *(
                Row(f"{prefix}_{window}_{key}", f"{label}, {what}", unit, digits)
                for key, label, unit, digits in (
                    ("consumer_cpu", "fwemu CPU", "%", 0),
                    ("us_per_packet", "fwemu CPU per packet", "µs", 1),
                    ("machine_cpu", "machine CPU busy (both CPUs)", "%", 0),
                )
                for window, what in (("quiet", "baseline"), ("syn", "SYN stream"))
            ),
        ),
    )


FULL_ROWS: tuple[tuple[str, tuple[Row, ...]], ...] = (
    (
        "the table",
        (
            Row("opened", "connections opened and held", "", 0),
            Row("open_errors", "connect errors", "", 0),
            Row("max_flows", "max_flows (the held connections and the prober's)", "", 0),
            Row("kernel_conntrack_entries", "kernel conntrack entries (fw netns, test)", "", 0),
            Row("held_at_end", "held connections open at the end (clients)", "", 0),
            Row("held_reset_or_closed", "held connections reset or closed (clients)", "", 0),
        ),
    ),
    _phase_rows("full", "false"),
    _phase_rows("early", "true"),
)
LABEL_WIDTH = 56


def table(settings: Settings, figures: dict[str, float]) -> str:
    if settings.full_table:
        head = (
            f"fwemu scale bench, full table: {settings.connections:,} connections held from "
            f"{CLIENTS} client addresses, max_flows = them + the prober's, on_full = {ON_FULL}; "
            f"{settings.syn_rate:g} SYN/s from {SPOOFED} other addresses for "
            f"{settings.syn_seconds:g} s per phase; one queue"
        )
    else:
        head = (
            f"fwemu scale bench: {settings.connections:,} connections from {CLIENTS} client "
            f"addresses, hold {settings.hold:g} s, on expiry {settings.action} "
            f"({ON_EXPIRE[settings.action]}); one queue"
        )
    lines = [head]
    for title, rows in FULL_ROWS if settings.full_table else ROWS:
        shown = [row for row in rows if row.key in figures]
        lines += ["", title] if shown else []
        lines += [
            f"  {(row.label + (' ' + row.unit if row.unit else '')):{LABEL_WIDTH}}"
            f"{figures[row.key]:>14,.{row.digits}f}"
            for row in shown
        ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 5,000 connections, hold 10 s (--full-table: 10,000, 5 s of SYNs)",
    )
    parser.add_argument(
        "--connections",
        type=whole_number("--connections", CLIENTS),
        help="connections per round, or held (default 100000; --quick: 5000, --full-table 10000)",
    )
    parser.add_argument(
        "--hold",
        type=number("--hold", 0, unit=" seconds"),
        help="seconds idle before the first round expires (default 120; --quick: 10)",
    )
    parser.add_argument(
        "--action",
        choices=tuple(ON_EXPIRE),
        help="on expiry: forget the flow, or reset both ends (default: rst)",
    )
    parser.add_argument(
        "--full-table",
        action="store_true",
        help="hold the connections in a full table and send it a SYN stream instead (issue 13)",
    )
    parser.add_argument(
        "--syn-rate",
        type=number("--syn-rate", 0, unit=" SYNs a second"),
        help=f"--full-table: SYNs a second (default {SYN_RATE})",
    )
    parser.add_argument(
        "--syn-seconds",
        type=number("--syn-seconds", 0, unit=" seconds"),
        help="--full-table: seconds of SYNs per phase (default 10; --quick: 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    quick, full = args.quick, args.full_table
    given = {"--hold": args.hold, "--action": args.action}
    if not full:
        given = {"--syn-rate": args.syn_rate, "--syn-seconds": args.syn_seconds}
    for option, value in given.items():
        if value is not None:
            parser.error(f"{option} is {'not ' if full else ''}for --full-table")
    small = 10_000 if full else 5000
    settings = Settings(
        connections=args.connections or (small if quick else 100_000),
        hold=args.hold or (10.0 if quick else 120.0),
        action=args.action or "rst",
        baseline=2.0 if quick else 5.0,
        full_table=full,
        syn_rate=args.syn_rate or SYN_RATE,
        syn_seconds=args.syn_seconds or (5.0 if quick else 10.0),
    )
    return settings, args.json


def report(argv: Sequence[str], progress: Callable[[str], None]) -> str:
    """Parse the options, run the bench, render its table (or JSON)."""
    settings, as_json = parse_args(argv)
    figures = (full_table if settings.full_table else bench)(settings, progress)
    if as_json:
        return json.dumps({"settings": asdict(settings), "figures": figures}, indent=2)
    return table(settings, figures)


if __name__ == "__main__":
    sys.exit(run_bench("scale bench", sys.argv[1:], ROLES, report))
