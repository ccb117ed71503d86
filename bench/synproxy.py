"""SYN cookies under a flood, side by side: fwemu's, the kernel's own SYNPROXY, and none.

    sudo .venv/bin/python bench/synproxy.py [--rates 10000,20000,35000,50000] [--seconds 3]
                                            [--modes fwemu,synproxy,forward] [--quick] [--json]

One lab (fwemu.lab), three middleboxes in turn in its fw namespace, each facing the same floods:
`fwemu flood`'s generator (fwemu.lab.flood.run_flood) sends spoofed SYNs to port 80 of the server
at each rate for --seconds, while a legit client connects every 0.1 s and a ping-pong over a
connection opened before the floods measures an established flow's round trips.

  fwemu     `python -m fwemu run --netns FW --policy docs/examples/panos-syn-cookies.toml`:
            every SYN answered with a cookie, the handshake's flows translated
  synproxy  no fwemu: the kernel's SYNPROXY target, as iptables-extensions(8) sets it up for a
            local server, moved to FORWARD for a router (the fw namespace only; synproxy_rules)
  forward   no middlebox: the fw namespace forwards, the server's kernel answers (its own
            syncookies past its backlog of 128)

For each mode and rate it reports the SYNs the middlebox answered (SYN-ACKs reaching the spoofed
sources with TTL 64, counted in the client namespace: the fw's own answers; TTL 63 ones were
forwarded from the server), its own counters (fwemu's status, /proc/net/stat/synproxy), what
reached the server (SYNs counted in its INPUT, its nstat cookies; with fwemu, what fail-open let
past it), the legit client's connects, the established flow's round trips during the flood (and
in a quiet second before the floods, and after the last: has it survived?), and the CPU of
fwemu, of softirq (the kernel's packet path, both CPUs) and of this process (the sender, on the
same 2 CPUs). Progress goes to stderr, a table (or --json) to stdout. Needs root; nothing
outside the lab is touched, and the lab is removed on every way out.

The script is also the programs it runs inside the lab (an argv starting with "_": see ROLES).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from common import (
    ECHO_PORT,
    PING_SIZE,
    READY,
    STARTED,
    BenchError,
    Child,
    listen_on,
    percentile,
    recv_exactly,
    run_bench,
    serve_echo,
)
from inline import Snapshot, snapshot

from fwemu.cli.argtypes import number
from fwemu.lab.flood import (
    MAX_RATE,
    ControlView,
    FloodSpec,
    LegitSpec,
    Progress,
    find_fwemu,
    run_flood,
    spoofed_sources,
)
from fwemu.lab.plan import LabPlan, Side

Mode = Literal["fwemu", "synproxy", "forward"]
MODES: tuple[Mode, ...] = ("fwemu", "synproxy", "forward")
SCRIPT = Path(__file__).resolve()
POLICY = SCRIPT.parent.parent / "docs" / "examples" / "panos-syn-cookies.toml"
PORT = 80  # the flood's and the legit client's
RATES = (10_000, 20_000, 35_000, 50_000)
QUICK_RATES = (10_000, 50_000)
PING_INTERVAL = 0.002  # seconds between the established flow's round trips: a light load
BASELINE = 1.0  # seconds of round trips before the floods
CONNECT_TIMEOUT = 5.0  # the established flow's connect, before any flood
AFTER = 3.0  # seconds of round trips after the last flood: has the flow survived?
# The fw's own packets leave with the default TTL (net.ipv4.ip_default_ttl, and fwemu's
# core.packet); the server's cross one router, the fw, which decrements it.
FW_TTL, SERVER_TTL = 64, 63
# SYNPROXY in FORWARD, after iptables-extensions(8)'s example for INPUT (the fw is a router):
# the client side's SYNs untracked in raw PREROUTING, then UNTRACKED (SYN) and INVALID (the
# handshake's ACK, with nf_conntrack_tcp_loose = 0) to SYNPROXY, the rest of INVALID dropped.
# The echo port is proxied too, as fwemu's policy proxies every SYN: the established flow is a
# translated one under both middleboxes.
SYNPROXY = ("-j", "SYNPROXY", "--sack-perm", "--timestamp", "--wscale", "7", "--mss", "1460")
TCP_LOOSE = "net/netfilter/nf_conntrack_tcp_loose"
# /proc/net/stat/synproxy: per CPU, hex (net/netfilter/nf_synproxy_core.c).
SYNPROXY_STATS = ("syn_received", "cookie_invalid", "cookie_valid", "cookie_retrans")
_TICK = os.sysconf("SC_CLK_TCK")


# --- programs that run inside the lab (argv[1] starts with "_") -----------------------------


def role_echo(argv: Sequence[str]) -> None:
    """_echo ADDRESS: the established flow's echo server on ECHO_PORT, until killed."""
    listener = listen_on(argv[0], ECHO_PORT)
    print(READY, flush=True)
    serve_echo(listener)


def role_ping(argv: Sequence[str]) -> None:
    """_ping ADDRESS INTERVAL: a 64 B round trip to ECHO_PORT every INTERVAL seconds until
    SIGTERM or a socket error; then their start times (wall clock) and durations (µs) as JSON,
    the last one cut short if it was still waiting (`unfinished`), and the error if any."""
    address, interval = argv[0], float(argv[1])
    starts, rtts = array("d"), array("d")
    ping = b"p" * PING_SIZE
    unfinished, error = False, None
    # SIGTERM interrupts even a blocked recv(2): a stalled round trip is reported, not waited on.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with socket.create_connection((address, ECHO_PORT), CONNECT_TIMEOUT) as sock:
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The first round trip, apart: a proxy opens to the server only once the client's
        # handshake is done, so the first data may wait on that (SYNPROXY's SYN-ACK offers a
        # zero window until then). Ready means established end to end.
        t0 = time.perf_counter()
        sock.sendall(ping)
        recv_exactly(sock, PING_SIZE)
        first = (time.perf_counter() - t0) * 1e6
        print(READY, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            try:
                while True:
                    wall, t0 = time.time(), time.perf_counter()
                    unfinished = True
                    try:
                        sock.sendall(ping)
                        recv_exactly(sock, PING_SIZE)
                        unfinished = False
                    finally:
                        starts.append(wall)
                        rtts.append((time.perf_counter() - t0) * 1e6)
                    time.sleep(max(0.0, interval - rtts[-1] / 1e6))
            except OSError as err:  # reset or closed: the flow is broken, and that is a figure
                error = f"{type(err).__name__}: {err}"
    size = min(len(starts), len(rtts))  # the signal may land between the two appends
    result: dict[str, Any] = {"t": starts[:size].tolist(), "rtt_us": rtts[:size].tolist()}
    result |= {"first_us": first, "unfinished": unfinished, "error": error}
    print(json.dumps(result), flush=True)


ROLES: dict[str, Callable[[Sequence[str]], None]] = {"_echo": role_echo, "_ping": role_ping}


def _role(name: str, argv: Sequence[str], workdir: Path, namespace: str) -> Child:
    return Child.start(name, [sys.executable, str(SCRIPT), *argv], workdir, namespace)


# --- the middleboxes ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Middlebox:
    """What runs in the fw namespace during a mode: fwemu's control view and pid, and its own
    counters (fwemu's status, SYNPROXY's statistics) as a reader."""

    mode: Mode
    counters: Callable[[], dict[str, int]]
    view: ControlView | None = None
    pid: int | None = None


def _run(plan: LabPlan, side: Side, argv: Sequence[str]) -> str:
    """`argv`'s stdout, run in one namespace of the lab; BenchError if it fails."""
    from fwemu.lab import run_in

    done = run_in(plan.name, side, argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv)} in {side} failed: {str(done.stderr).strip()}")
    return str(done.stdout)


def _in_fw(plan: LabPlan, fn: Callable[[], str]) -> str:
    from fwemu.lab import call_in_netns

    return call_in_netns(plan.fw_client_side.namespace, fn)


@contextlib.contextmanager
def fwemu_inline(plan: LabPlan, workdir: Path) -> Iterator[Middlebox]:
    """fwemu under the PAN-OS SYN-cookies example, for the block; it must stop cleanly."""
    control = workdir / "control.sock"
    argv = [sys.executable, "-m", "fwemu", "run", "--netns", plan.fw_client_side.namespace]
    argv += ["--policy", str(POLICY), "--control", str(control)]
    child = Child.start("fwemu", argv, workdir, None)
    try:
        child.wait_for(STARTED)
        view = find_fwemu(plan, control)
        if view is None:
            raise BenchError(f"fwemu's control socket {control} does not answer")

        def counters() -> dict[str, int]:
            status = view.status()
            return {
                key: value
                for key, value in status.items()
                if isinstance(value, int) and key not in ("flows", "version")
            }

        yield Middlebox("fwemu", counters, view, child.pid)
    finally:
        code = child.stop()
    if code != 0:
        raise BenchError(f"fwemu exited with status {code}: {child.tail()}")


def synproxy_rules(plan: LabPlan) -> list[tuple[str, ...]]:
    """The SYNPROXY set-up's rules, each as (table, chain, match and target...)."""
    ifname = plan.fw_client_side.ifname
    proxied = ("-i", ifname, "-p", "tcp", "-m", "multiport", "--dports", f"{PORT},{ECHO_PORT}")
    state = ("-m", "conntrack", "--ctstate")
    return [
        ("raw", "PREROUTING", *proxied, "--syn", "-j", "CT", "--notrack"),
        ("filter", "FORWARD", *proxied, *state, "INVALID,UNTRACKED", *SYNPROXY),
        ("filter", "FORWARD", *proxied, *state, "INVALID", "-j", "DROP"),
    ]


def _synproxy_stats() -> str:
    """/proc/net/stat/synproxy of this thread's namespace: a header, then one row per CPU."""
    return Path("/proc/thread-self/net/stat/synproxy").read_text()


@contextlib.contextmanager
def kernel_synproxy(plan: LabPlan) -> Iterator[Middlebox]:
    """The SYNPROXY rules and nf_conntrack_tcp_loose = 0 in the fw namespace, for the block."""

    def loose(value: str) -> Callable[[], str]:
        def write() -> str:
            path = Path("/proc/sys", TCP_LOOSE)
            before = path.read_text().strip()
            path.write_text(value)
            return before

        return write

    before = _in_fw(plan, loose("0"))
    added: list[tuple[str, ...]] = []
    try:
        for table, chain, *rule in synproxy_rules(plan):
            _run(plan, "fw", ["iptables", "-w", "-t", table, "-A", chain, *rule])
            added.append((table, chain, *rule))

        def counters() -> dict[str, int]:
            header, *rows = _in_fw(plan, _synproxy_stats).split("\n")
            names = header.split()
            sums = dict.fromkeys(SYNPROXY_STATS, 0)
            for row in rows:
                for name, value in zip(names, row.split(), strict=False):
                    if name in sums:
                        sums[name] += int(value, 16)
            return sums

        yield Middlebox("synproxy", counters)
    finally:
        for table, chain, *rule in reversed(added):
            _run(plan, "fw", ["iptables", "-w", "-t", table, "-D", chain, *rule])
        _in_fw(plan, loose(before))


@contextlib.contextmanager
def forwarding() -> Iterator[Middlebox]:
    """No middlebox: the fw namespace only routes."""
    yield Middlebox("forward", dict)


# --- what the client side saw come back -----------------------------------------------------


class Answers:
    """Two counting rules in the client namespace's raw PREROUTING: the SYN-ACKs from port PORT
    to the spoofed sources, with the fw's TTL (the middlebox answered) and the server's."""

    def __init__(self, plan: LabPlan) -> None:
        self.plan = plan
        addresses = spoofed_sources(plan, FloodSpec(port=PORT)).addresses  # run_flood's
        spoofed = f"{addresses[0]}-{addresses[-1]}"  # in order, the lab's own left out
        self.tags = {who: f"synproxy-bench-{who}-{os.getpid()}" for who in ("fw", "server")}
        for who, ttl in (("fw", FW_TTL), ("server", SERVER_TTL)):
            rule = ["-i", plan.client.ifname, "-p", "tcp", "--sport", str(PORT)]
            rule += ["--tcp-flags", "SYN,ACK,RST,FIN", "SYN,ACK", "-m", "iprange"]
            rule += ["--dst-range", spoofed, "-m", "ttl", "--ttl-eq", str(ttl)]
            rule += ["-m", "comment", "--comment", self.tags[who]]
            _run(plan, "client", ["iptables", "-w", "-t", "raw", "-A", "PREROUTING", *rule])

    def read(self) -> dict[str, int]:
        listing = _run(self.plan, "client", ["iptables", "-w", "-t", "raw", "-nvxL", "PREROUTING"])
        counts = dict.fromkeys(self.tags, 0)
        for line in listing.splitlines():
            for who, tag in self.tags.items():
                if f"/* {tag} */" in line:
                    counts[who] = int(line.split()[0])
        return counts


# --- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cpu:
    """CPU counters at one moment: inline.snapshot's (time, fwemu's, the machine's), softirq's
    and this process's (the sender's threads)."""

    at: Snapshot
    softirq: float  # seconds, all CPUs
    own: float  # seconds of this process, all threads

    @classmethod
    def now(cls, plan: LabPlan, pid: int | None) -> Cpu:
        with open("/proc/stat") as f:
            ticks = f.readline().split()[1:]
        # proc(5): user nice system idle iowait irq softirq ...
        return cls(
            snapshot(plan.fw_client_side.namespace, pid), int(ticks[6]) / _TICK, time.process_time()
        )

    def since(self, before: Cpu) -> dict[str, float]:
        """Each as % of one CPU (200 % is both)."""
        a, b = self.at, before.at
        seconds = a.time - b.time
        figures = {
            "machine_cpu": 100 * (a.busy - b.busy) / seconds,
            "softirq_cpu": 100 * (self.softirq - before.softirq) / seconds,
            "sender_cpu": 100 * (self.own - before.own) / seconds,
        }
        if a.consumer_cpu is not None and b.consumer_cpu is not None:
            figures["fwemu_cpu"] = 100 * (sum(a.consumer_cpu) - sum(b.consumer_cpu)) / seconds
        return figures


class Window:
    """The flood's window, from run_flood's progress calls: its start (wall clock), and CPU from
    the first call (SAMPLE_INTERVAL in: past the start's transients) to the latest."""

    def __init__(self, plan: LabPlan, pid: int | None) -> None:
        self.plan, self.pid = plan, pid
        self.start: float | None = None
        self.first: Cpu | None = None
        self.last: Cpu | None = None

    def on_progress(self, progress: Progress) -> None:
        if self.start is None:
            self.start = time.time() - progress.elapsed
            self.first = Cpu.now(self.plan, self.pid)
        else:
            self.last = Cpu.now(self.plan, self.pid)

    def cpu(self) -> dict[str, float]:
        return {} if self.first is None or self.last is None else self.last.since(self.first)


@dataclass(frozen=True, slots=True)
class Samples:
    """The established flow's round trips: wall-clock start times and durations (µs); whether
    the last was still waiting when the prober stopped, and the socket error that ended it."""

    starts: list[float]
    rtts: list[float]
    first: float  # µs: the connection's first round trip, before `starts`
    unfinished: bool = False
    error: str | None = None

    def ends(self) -> dict[str, Any]:
        """How the flow began and ended: its first round trip, the one left waiting (ms), the
        error."""
        waiting = self.rtts[-1] / 1000 if self.unfinished and self.rtts else None
        return {"first_rtt_ms": self.first / 1000, "unfinished_ms": waiting, "error": self.error}

    def figures(self, start: float, end: float, prefix: str) -> dict[str, float]:
        """p50, p99, worst (ms) and count of the round trips begun in [start, end]."""
        rtts = sorted(r for t, r in zip(self.starts, self.rtts, strict=True) if start <= t <= end)
        if not rtts:
            return {f"{prefix}_round_trips": 0.0}
        return {
            f"{prefix}_round_trips": float(len(rtts)),
            f"{prefix}_rtt_p50_ms": percentile(rtts, 50) / 1000,
            f"{prefix}_rtt_p99_ms": percentile(rtts, 99) / 1000,
            f"{prefix}_rtt_worst_ms": rtts[-1] / 1000,
        }


@contextlib.contextmanager
def pinging(plan: LabPlan, workdir: Path, name: str) -> Iterator[list[Samples]]:
    """The established flow's prober, connected before the block; its samples once it ends."""
    prober = _role(
        name, ["_ping", plan.server.ipv4, str(PING_INTERVAL)], workdir, plan.client.namespace
    )
    out: list[Samples] = []
    try:
        prober.wait_for(READY)
        yield out
    finally:
        code = prober.stop()
    found = [line for line in prober.log().splitlines() if line.startswith("{")]
    if code != 0 or not found:
        raise BenchError(f"{name} exited with status {code}: {prober.tail()}")
    result = json.loads(found[-1])
    out.append(
        Samples(
            result["t"], result["rtt_us"], result["first_us"], result["unfinished"], result["error"]
        )
    )


@dataclass(frozen=True, slots=True)
class Settings:
    rates: tuple[float, ...]
    seconds: float
    modes: tuple[Mode, ...]


@dataclass(slots=True)
class Run:
    """One flood through one middlebox: its figures, and when it ran (for the round trips)."""

    mode: Mode
    rate: float
    figures: dict[str, float] = field(default_factory=dict)
    window: tuple[float, float] = (0.0, 0.0)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {key: value - before.get(key, 0) for key, value in after.items()}


def flood_once(
    plan: LabPlan, box: Middlebox, answers: Answers, rate: float, settings: Settings
) -> Run:
    """One flood at `rate` through `box`: what each side saw."""
    spec = FloodSpec(count=int(rate * settings.seconds), rate=rate, port=PORT)
    window = Window(plan, box.pid)
    before, answered = box.counters(), answers.read()
    report = run_flood(plan, spec, fwemu=box.view, legit=LegitSpec(), progress=window.on_progress)
    own, answered = _delta(box.counters(), before), _delta(answers.read(), answered)
    sent, server, legit = report.sent, report.server, report.legit_during
    seconds = sent.seconds or settings.seconds
    figures = {
        "sent": float(sent.sent),
        "lost_locally": float(sent.lost),
        "sent_rate": sent.rate,
        "answered_by_fw": float(answered["fw"]),
        "answered_by_fw_rate": answered["fw"] / seconds,
        "answered_by_fw_pct": 100 * answered["fw"] / max(1, sent.sent),
        "answered_by_server": float(answered["server"]),
        **({"server_syns": float(server.syns)} if server.syns is not None else {}),
        "server_cookies": float(server.nstat.get("TcpExtSyncookiesSent", 0)),
        "server_half_open_peak": float(server.half_open_peak),
        **{f"{box.mode}_{key}": float(value) for key, value in own.items()},
        **window.cpu(),
    }
    if legit is not None:
        figures |= {
            "legit_attempts": float(legit.attempts),
            "legit_ok": float(legit.ok),
            **({"legit_p50_ms": legit.p50_ms} if legit.p50_ms is not None else {}),
            **({"legit_p99_ms": legit.p99_ms} if legit.p99_ms is not None else {}),
        }
    start = window.start if window.start is not None else time.time() - seconds
    return Run(box.mode, rate, figures, (start, start + seconds))


def run_mode(
    plan: LabPlan,
    workdir: Path,
    mode: Mode,
    answers: Answers,
    settings: Settings,
    progress: Callable[[str], None],
) -> tuple[list[Run], dict[str, Any]]:
    """Every rate through one middlebox, the established flow pinging throughout; the runs, and
    the flow before the floods, after them, and how it ended."""
    boxes: dict[Mode, Callable[[], contextlib.AbstractContextManager[Middlebox]]] = {
        "fwemu": lambda: fwemu_inline(plan, workdir),
        "synproxy": lambda: kernel_synproxy(plan),
        "forward": forwarding,
    }
    runs: list[Run] = []
    with boxes[mode]() as box, pinging(plan, workdir, f"ping-{mode}") as samples:
        quiet = (time.time(), time.time() + BASELINE)
        time.sleep(BASELINE)
        for rate in settings.rates:
            run = flood_once(plan, box, answers, rate, settings)
            f = run.figures
            progress(
                f"  {mode} {rate:,.0f}/s: sent {f['sent']:,.0f} at {f['sent_rate']:,.0f}/s, fw "
                f"answered {f['answered_by_fw']:,.0f}, server got {f.get('server_syns', 0):,.0f}"
                + (f", bypassed {f['fwemu_bypassed']:,.0f}" if "fwemu_bypassed" in f else "")
            )
            runs.append(run)
        after = (time.time(), time.time() + AFTER)
        time.sleep(AFTER)
    flow = samples[0]
    for run in runs:
        run.figures |= flow.figures(*run.window, "flood")
    return runs, {**flow.figures(*quiet, "quiet"), **flow.figures(*after, "after"), **flow.ends()}


def bench(settings: Settings, progress: Callable[[str], None]) -> dict[str, Any]:
    """Every mode at every rate in one lab, removed on every way out."""
    from fwemu.lab import lab, require_root

    require_root()
    pid = os.getpid()
    runs: list[Run] = []
    flows: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fwemu-syn-")))
        plan = stack.enter_context(lab(f"fwemu-syn-{pid}", 1 + pid % 250))
        echo = _role("echo", ["_echo", plan.server.ipv4], workdir, plan.server.namespace)
        stack.callback(echo.stop)
        echo.wait_for(READY)
        answers = Answers(plan)
        progress(f"lab {plan.name} up")
        for mode in settings.modes:
            progress(f"{mode}:")
            mode_runs, flows[mode] = run_mode(plan, workdir, mode, answers, settings, progress)
            runs += mode_runs
    return {
        "settings": asdict(settings),
        "flow": flows,
        "runs": [{"mode": r.mode, "rate": r.rate, **r.figures} for r in runs],
    }


# --- reporting and command line -------------------------------------------------------------

LABELS: dict[Mode, str] = {
    "fwemu": "(a) fwemu, SYN cookies",
    "synproxy": "(b) kernel SYNPROXY",
    "forward": "(c) forwarding only",
}
# (heading, width, the figure or a function of the row)
Cell = Callable[[dict[str, Any]], str]


def _num(key: str, digits: int = 0, scale: float = 1.0) -> Cell:
    def cell(row: dict[str, Any]) -> str:
        value = row.get(key)
        return "-" if value is None else f"{value * scale:,.{digits}f}"

    return cell


def _passed(row: dict[str, Any]) -> str:
    """What let the flood past the middlebox: fwemu's fail-open, or nothing counted."""
    bypassed = row.get("fwemu_bypassed")
    return "-" if bypassed is None else f"{bypassed:,.0f}"


def _legit(row: dict[str, Any]) -> str:
    return f"{row.get('legit_ok', 0):.0f}/{row.get('legit_attempts', 0):.0f}"


def _own(row: dict[str, Any]) -> str:
    """The middlebox's own count of SYNs answered: fwemu's injected packets, SYNPROXY's SYNs."""
    for key in ("fwemu_resets", "synproxy_syn_received"):
        if key in row:
            return f"{row[key]:,.0f}"
    return "-"


COLUMNS: tuple[tuple[str, int, Cell], ...] = (
    ("offered", 8, _num("rate")),
    ("sent/s", 8, _num("sent_rate")),
    ("fw ans/s", 9, _num("answered_by_fw_rate")),
    ("ans%", 5, _num("answered_by_fw_pct")),
    ("fw own", 9, _own),
    ("bypassed", 9, _passed),
    ("srv SYNs", 9, _num("server_syns")),
    ("legit", 6, _legit),
    ("con p50", 9, _num("legit_p50_ms", 1)),
    ("con p99", 9, _num("legit_p99_ms", 1)),
    ("rtts", 6, _num("flood_round_trips")),
    ("rtt p50", 9, _num("flood_rtt_p50_ms", 2)),
    ("rtt p99", 9, _num("flood_rtt_p99_ms", 2)),
    ("worst", 8, _num("flood_rtt_worst_ms", 1)),
    ("fwemu%", 7, _num("fwemu_cpu")),
    ("softirq%", 9, _num("softirq_cpu")),
    ("sender%", 8, _num("sender_cpu")),
    ("busy%", 6, _num("machine_cpu")),
)


LEGEND = (
    "fw ans/s  SYN-ACKs from the fw (TTL 64) reaching the spoofed sources, per second of flood",
    "ans%      ... of the SYNs sent",
    "fw own    the middlebox's own count: fwemu's injected packets, SYNPROXY's syn_received",
    "bypassed  packets fail-open let past fwemu unseen (its queue was full)",
    "srv SYNs  the flood's SYNs that reached the server",
    "legit     the legit client's connects that succeeded, of those tried; con: their times (ms)",
    "rtts      the established flow's round trips during the flood; rtt: their times (ms)",
    "CPU       % of one CPU (200 = both): fwemu, softirq, this process (the sender), all",
)


def _flow(flow: dict[str, Any]) -> str:
    """The established flow before and after the floods, and whether it broke."""
    text = (
        f"first rtt {flow['first_rtt_ms']:.2f} ms; before the floods: rtt p50 "
        f"{flow.get('quiet_rtt_p50_ms', 0):.2f} ms, p99 {flow.get('quiet_rtt_p99_ms', 0):.2f} "
        f"ms; {AFTER:g} s after: "
        f"{flow['after_round_trips']:,.0f} round trips"
    )
    if flow["unfinished_ms"] is not None and flow["unfinished_ms"] > 1000 * AFTER:
        text += f"; STALLED: a round trip unanswered for {flow['unfinished_ms'] / 1000:.1f} s"
    if flow["error"]:
        text += f"; BROKEN: {flow['error']}"
    return text


def table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"SYN flood to port {PORT}, {s['seconds']:g} s per rate, spoofed sources of the client "
        f"subnet; established flow: 64 B ping-pong every {PING_INTERVAL * 1000:g} ms",
        *(f"  {line}" for line in LEGEND),
        "",
        "".join(f"{title:>{width}}" for title, width, _ in COLUMNS),
    ]
    for mode in s["modes"]:
        lines.append(f"{LABELS[mode]}: the established flow {_flow(result['flow'][mode])}")
        for row in (r for r in result["runs"] if r["mode"] == mode):
            lines.append("".join(f"{cell(row):>{width}}" for _, width, cell in COLUMNS))
    return "\n".join(lines)


def _rates(text: str) -> tuple[float, ...]:
    parse = number("a rate", 1, MAX_RATE, unit=" SYNs a second")
    return tuple(parse(part) for part in text.split(","))


def _modes(text: str) -> tuple[Mode, ...]:
    chosen = tuple(part.strip() for part in text.split(","))
    unknown = [m for m in chosen if m not in MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode {unknown[0]!r}: {', '.join(MODES)}")
    return chosen  # type: ignore[return-value]  # checked above


def parse_args(argv: Sequence[str]) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rates", type=_rates, help="offered SYN/s, comma-separated (default 10k,20k,35k,50k)"
    )
    parser.add_argument(
        "--seconds", type=number("--seconds", 0, 60, unit=" seconds"), help="per rate (3)"
    )
    parser.add_argument("--modes", type=_modes, default=MODES, help="default: all, in order")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 10k and 50k SYN/s, 2 s each"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    settings = Settings(
        rates=args.rates or (QUICK_RATES if args.quick else RATES),
        seconds=args.seconds or (2.0 if args.quick else 3.0),
        modes=args.modes,
    )
    return settings, args.json


def report(argv: Sequence[str], progress: Callable[[str], None]) -> str:
    settings, as_json = parse_args(argv)
    result = bench(settings, progress)
    return json.dumps(result, indent=2) if as_json else table(result)


if __name__ == "__main__":
    sys.exit(run_bench("synproxy bench", sys.argv[1:], ROLES, report))
