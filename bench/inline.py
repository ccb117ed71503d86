"""Benchmark fwemu inline: kernel forwarding vs bare accept-all queues (Python, C) vs fwemu.

    sudo .venv/bin/python bench/inline.py [--quick] [--reps 3] [--duration 3] [--json]
    sudo .venv/bin/python bench/inline.py --workloads multi,connections --workers 2   (multi-core)
    sudo .venv/bin/python bench/inline.py --baseline-command CMD   (before/after in one run)

In a lab of its own (client <-> fw <-> server namespaces, fwemu.lab), each repetition runs every
mode in turn on the fw namespace and the same four workloads through it:

  modes      (a) kernel: forwarding only, no queue
             (b) accept-all: a Python consumer that accepts every packet, with fwemu's queue
                 settings and iptables rules (fwemu.adapters.nfqueue.bound, iptables.installed),
                 each verdict its own message as netfilterqueue sends it (no batch verdicts)
             (c) fwemu: `python -m fwemu run --netns ... --preset linux` (or --policy FILE)
             (d) C accept-all: bench/accept_all.c, compiled here with the system's cc, the same
                 queue settings and rules, batch verdicts: the cheapest consumer there is
             (e) baseline (only with --baseline-command): another fwemu, e.g. an older tree
  workloads  bulk: one iperf3 TCP stream, Gbit/s
             small: one iperf3 stream of small segments (MSS 88, 64-byte writes, Nagle off,
                    16 KiB buffers), packets/s forwarded by the fw namespace
             connections: short request/response connections from several client processes
             latency: round trips over one TCP connection (ping-pong), p50 and p99
             multi: the connections workload from MULTI_CLIENTS client addresses (added to the
                    lab's client namespace), so that `--workers N` can spread it: the kernel
                    puts all the flows of one client/server address pair on one worker

It prints the median of each figure over the repetitions, the ratios of fwemu to each other mode,
the CPU the queue consumer used (µs per forwarded packet), and issue 18's targets, met or not,
each with both consumers' CPU per packet (ratios move between machines; CPU per packet says why).
Modes alternate within each repetition, in reverse order every other one, so that noise from other
load, and its drift, spread over all of them.
Needs root, iperf3, and for (d) a C compiler and libnetfilter_queue's headers. Everything runs
inside the lab, which is removed on exit, even on Ctrl-C.

The script is also the programs it runs inside the lab (an argv starting with "_": see ROLES).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from common import (
    ECHO_PORT,
    PING_SIZE,
    READY,
    STARTED,
    STOP_TIMEOUT,
    TAIL_LINES,
    BenchError,
    Child,
    fork,
    listen_on,
    percentile,
    recv_exactly,
    run_bench,
    serve_echo,
)

from fwemu.cli.argtypes import whole_number
from fwemu.lab.plan import LabPlan, Side

# The roles below start inside measured windows and need only the standard library, so the
# rest of fwemu (pyroute2, netfilterqueue: ~0.2 s to import) is imported where it is used.

Mode = Literal["kernel", "accept-all", "fwemu", "c-accept-all", "baseline"]
MODES: tuple[Mode, ...] = ("kernel", "accept-all", "fwemu", "c-accept-all", "baseline")
# The default run; "baseline" joins it when --baseline-command is given.
DEFAULT_MODES: tuple[Mode, ...] = ("kernel", "accept-all", "fwemu", "c-accept-all")
MODE_LABELS: dict[Mode, str] = {
    "kernel": "(a) kernel",
    "accept-all": "(b) accept-all",
    "fwemu": "(c) fwemu",
    "c-accept-all": "(d) C accept-all",
    "baseline": "(e) baseline",
}
# What fwemu is compared with, in the table's ratio columns.
BASES: tuple[Mode, ...] = ("kernel", "accept-all", "c-accept-all", "baseline")
QUEUE_MODES: tuple[Mode, ...] = ("accept-all", "fwemu", "c-accept-all", "baseline")
Workload = Literal["bulk", "small", "connections", "latency", "multi"]
WORKLOADS: tuple[Workload, ...] = ("bulk", "small", "connections", "latency", "multi")
# The default run: `multi` is for comparing --workers, and asked for by name.
DEFAULT_WORKLOADS: tuple[Workload, ...] = ("bulk", "small", "connections", "latency")

SCRIPT = Path(__file__).resolve()
C_CONSUMER = SCRIPT.with_name("accept_all.c")
C_BATCH = 255  # verdicts per batch message at most: Suricata's cap (nfq.batchcount)
QUEUE = 0
IPERF_PORT = 5201
RR_PORT = 7000  # request/response: one connection per request, the server closes first
# Small segments: Linux's minimum MSS (TCP_MIN_MSS = 88, include/net/tcp.h), 64-byte writes with
# Nagle off, and socket buffers small enough that the sender cannot merge writes into GSO
# batches while it waits: every segment stays one queued packet (~110 B on the wire, measured).
SMALL_ARGS = ("-N", "-l", "64", "-M", "88", "-w", "16k")
REQUEST_SIZE, RESPONSE_SIZE = 64, 512
CLIENT_PROCS = 4  # connection workers; each waits on one connection at a time
# Client addresses of the multi workload: with 2 queues, all 8 land on one with probability
# 2 / 2**8 (the kernel's queue hash has a per-boot seed: docs/performance.md, "Multi-core").
MULTI_CLIENTS = 8
MULTI_FIRST_HOST = 10  # 10.N.1.10 .. 10.N.1.17, beside the lab's client address 10.N.1.2
SERVER_PROCS = 2  # one per CPU of the 2-core development machine
LATENCY_WARMUP = 50  # round trips not counted: the first ones pay for cold caches
IO_TIMEOUT = 2.0  # seconds a connection may stall before it counts as an error
SLACK = 15.0  # seconds a workload may overrun its nominal duration before it is killed


# --- programs that run inside the lab (argv[1] starts with "_") -----------------------------


def _serve_requests(listener: socket.socket) -> None:
    response = b"r" * RESPONSE_SIZE
    while True:
        conn, _ = listener.accept()
        with contextlib.suppress(OSError), conn:
            recv_exactly(conn, REQUEST_SIZE)
            conn.sendall(response)


def role_serve(argv: Sequence[str]) -> None:
    """_serve ADDRESS: request/response workers on RR_PORT and an echo server on ECHO_PORT."""
    (address,) = argv
    requests, echo = listen_on(address, RR_PORT), listen_on(address, ECHO_PORT)
    pids = [fork(lambda: _serve_requests(requests)) for _ in range(SERVER_PROCS)]
    pids.append(fork(lambda: serve_echo(echo)))
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # sigwait(3) needs them blocked
    print(READY, flush=True)
    signal.sigwait(stops)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _client_socket() -> socket.socket:
    """A blocking socket whose connect, send and recv give up after IO_TIMEOUT (SO_*TIMEO)."""
    sock = socket.socket()
    timeval = struct.pack("ll", int(IO_TIMEOUT), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)  # connect(2) honours it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    return sock


def _connect_loop(
    address: str, start: float, seconds: float, out: int, sources: Sequence[str]
) -> None:
    """Request/response connections until `seconds` are up, each from the next of `sources`
    (or the namespace's default address if there are none)."""
    request = b"q" * REQUEST_SIZE
    done = errors = 0
    while time.monotonic() < start:
        time.sleep(0.001)
    end = start + seconds
    while time.monotonic() < end:
        try:
            with _client_socket() as sock:
                if sources:
                    sock.bind((sources[(done + errors) % len(sources)], 0))
                sock.connect((address, RR_PORT))
                sock.sendall(request)
                while sock.recv(65536):
                    pass
            done += 1
        except OSError:
            errors += 1
    os.write(out, f"{done} {errors}\n".encode())


def role_connect(argv: Sequence[str]) -> None:
    """_connect ADDRESS SECONDS [SOURCE,...]: CLIENT_PROCS processes open request/response
    connections, from the given source addresses in turn (process i starting at the i-th)."""
    address, seconds = argv[0], float(argv[1])
    sources = argv[2].split(",") if len(argv) > 2 else []
    read, write = os.pipe()
    start = time.monotonic() + 0.05  # all workers begin together, once forked
    pids = [
        fork(partial(_connect_loop, address, start, seconds, write, sources[i:] + sources[:i]))
        for i in range(CLIENT_PROCS)
    ]
    os.close(write)
    for pid in pids:
        os.waitpid(pid, 0)
    with os.fdopen(read) as results:
        counts = [tuple(map(int, line.split())) for line in results]
    if len(counts) != CLIENT_PROCS:
        raise SystemExit(f"only {len(counts)} of {CLIENT_PROCS} connection workers reported")
    done, errors = (sum(column) for column in zip(*counts, strict=True))
    print(json.dumps({"connections": done, "errors": errors, "seconds": seconds}))


def role_pingpong(argv: Sequence[str]) -> None:
    """_pingpong ADDRESS COUNT: time COUNT round trips over one connection, in µs."""
    address, count = argv[0], int(argv[1])
    ping = b"p" * PING_SIZE
    rtts: list[float] = []
    with _client_socket() as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((address, ECHO_PORT))
        for i in range(LATENCY_WARMUP + count):
            t0 = time.perf_counter_ns()
            sock.sendall(ping)
            recv_exactly(sock, PING_SIZE)
            if i >= LATENCY_WARMUP:
                rtts.append((time.perf_counter_ns() - t0) / 1000)
    print(json.dumps({"rtt_us": rtts}))


def role_accept_all(argv: Sequence[str]) -> None:
    """_accept-all QUEUE: bind QUEUE as fwemu does, install its rules, accept all, one verdict
    per packet in netfilterqueue's blocking loop: what a first Python consumer looks like.

    Prints READY once serving and, on SIGTERM/SIGINT, the number of packets it accepted.
    """
    from fwemu.adapters import iptables, nfqueue
    from fwemu.adapters.queue import QueuedPacket

    queue = int(argv[0])
    seen = 0

    def accept(packet: QueuedPacket) -> None:
        nonlocal seen
        seen += 1
        packet.accept()

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        with (
            nfqueue.bound(queue, accept, fail_open=True, batch_verdicts=False) as binding,
            iptables.installed(queue, iptables.Capture()),
        ):
            print(READY, flush=True)
            # recv(2) returns EINTR on a signal; netfilterqueue then runs the handler (§4.1).
            binding.nfq.run()
    except (SystemExit, KeyboardInterrupt):
        pass
    print(f"accepted {seen} packets", flush=True)


def role_c_accept_all(argv: Sequence[str]) -> None:
    """_c-accept-all QUEUE BINARY BATCH: the compiled accept_all.c on QUEUE, with fwemu's rules.

    The rules go in once the program has bound the queue, as `role_accept_all` installs them
    after binding; prints READY, and on SIGTERM/SIGINT removes them, stops the program and
    passes on its count. The bench counts the program's CPU with this process's (its children
    are summed), and this one only waits.
    """
    from fwemu.adapters import iptables

    queue, binary, batch = argv
    consumer = subprocess.Popen([binary, queue, batch], stdout=subprocess.PIPE, text=True)
    stops = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # after Popen: the program must not inherit it
    assert consumer.stdout is not None
    if consumer.stdout.readline().strip() != "bound":
        raise SystemExit(f"the C consumer exited with status {consumer.wait()} before binding")
    with iptables.installed(int(queue), iptables.Capture()):
        print(READY, flush=True)
        signal.sigwait(stops)
    consumer.terminate()
    out, _ = consumer.communicate(timeout=STOP_TIMEOUT)
    print(out.strip(), flush=True)
    raise SystemExit(consumer.returncode)


ROLES: dict[str, Callable[[Sequence[str]], None]] = {
    "_serve": role_serve,
    "_connect": role_connect,
    "_pingpong": role_pingpong,
    "_accept-all": role_accept_all,
    "_c-accept-all": role_c_accept_all,
}


# --- processes and measurements from the bench's side ---------------------------------------


def run_role(plan: LabPlan, side: Side, argv: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run one of this script's roles in the lab to completion; the JSON it prints."""
    result: dict[str, Any] = json.loads(
        run_tool(plan, side, [sys.executable, str(SCRIPT), *argv], timeout)
    )
    return result


def run_tool(plan: LabPlan, side: Side, argv: Sequence[str], timeout: float) -> str:
    """`argv`'s stdout, run in one side of the lab; BenchError if it fails or overruns."""
    from fwemu.lab import run_in

    try:
        # A session of its own: Ctrl-C reaches only the bench, which then stops everything in
        # order (a terminal's SIGINT would otherwise also kill the servers mid-workload).
        result = run_in(
            plan.name,
            side,
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} did not finish within {timeout:g}s") from None
    if result.returncode != 0:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()[-TAIL_LINES:]
        raise BenchError(
            f"{' '.join(argv[:3])}... failed with status {result.returncode}: {' | '.join(why)}"
        )
    return str(result.stdout)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counters read before and after a workload."""

    time: float
    packets: int  # received by the fw namespace's lab interfaces, i.e. forwarded
    consumer_cpu: tuple[float, float] | None  # seconds of user and system CPU of the consumer
    busy: float  # seconds of CPU all CPUs spent not idle
    total: float  # seconds of CPU time elapsed on all CPUs


_TICK = os.sysconf("SC_CLK_TCK")


def _forwarded_packets(fw_namespace: str) -> int:
    from fwemu.lab import call_in_netns

    # /proc/thread-self/net follows the reading thread's namespace (fwemu.adapters.nfqueue).
    text = call_in_netns(fw_namespace, lambda: Path("/proc/thread-self/net/dev").read_text())
    lines = [line.split(":", 1) for line in text.splitlines() if ":" in line]
    # /proc/net/dev columns after "ifname:": rx bytes, rx packets, ...
    return sum(int(stats.split()[1]) for name, stats in lines if name.strip() != "lo")


def _process_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of `pid` and of its live children (fwemu's workers)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(child) for child in f.read().split()]
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # proc(5): utime and stime are fields 14 and 15; fields[0] here is field 3 (state).
    own = (int(fields[11]) / _TICK, int(fields[12]) / _TICK)
    theirs = [_process_cpu(child) for child in children]
    return (own[0] + sum(t[0] for t in theirs), own[1] + sum(t[1] for t in theirs))


def _machine_cpu() -> tuple[float, float]:
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait (proc(5))
    return ((sum(ticks) - idle) / _TICK, sum(ticks) / _TICK)


def snapshot(fw_namespace: str, consumer: int | None) -> Snapshot:
    busy, total = _machine_cpu()
    return Snapshot(
        time.monotonic(),
        _forwarded_packets(fw_namespace),
        None if consumer is None else _process_cpu(consumer),
        busy,
        total,
    )


def usage(before: Snapshot, after: Snapshot, prefix: str) -> dict[str, float]:
    """Packets/s forwarded, machine CPU busy %, and the consumer's CPU % and µs per packet
    (all, and the part spent in the kernel: recv(2), the verdict's sendmsg(2) and the forwarding
    it triggers)."""
    seconds = after.time - before.time
    packets = max(after.packets - before.packets, 1)
    figures = {
        f"{prefix}_pps": packets / seconds,
        f"{prefix}_machine_cpu": 100 * (after.busy - before.busy) / (after.total - before.total),
    }
    if before.consumer_cpu is not None and after.consumer_cpu is not None:
        user, system = (a - b for a, b in zip(after.consumer_cpu, before.consumer_cpu, strict=True))
        figures[f"{prefix}_consumer_cpu"] = 100 * (user + system) / seconds
        figures[f"{prefix}_us_per_packet"] = 1e6 * (user + system) / packets
        figures[f"{prefix}_sys_us_per_packet"] = 1e6 * system / packets
    return figures


# --- workloads ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    reps: int
    duration: int  # seconds per throughput workload
    round_trips: int
    policy_args: tuple[str, ...]
    fwemu_command: tuple[str, ...]
    baseline_command: tuple[str, ...]  # mode (e)'s fwemu; () without one
    c_batch: int  # mode (d)'s verdicts per batch message at most (1: one verdict per packet)
    workers: int  # fwemu run --workers
    modes: tuple[Mode, ...]
    workloads: tuple[Workload, ...]


def iperf(plan: LabPlan, seconds: int, extra: Sequence[str]) -> float:
    """One iperf3 run from client to server; received bits/s."""
    argv = ["iperf3", "-c", plan.server.ipv4, "-p", str(IPERF_PORT), "-t", str(seconds)]
    argv += ["-J", "--connect-timeout", str(int(IO_TIMEOUT * 1000)), *extra]
    try:
        report = json.loads(run_tool(plan, "client", argv, seconds + SLACK))
    except json.JSONDecodeError:
        raise BenchError("iperf3 printed no JSON report") from None
    if "error" in report:
        raise BenchError(f"iperf3: {report['error']}")
    return float(report["end"]["sum_received"]["bits_per_second"])


def measure(
    workload: Workload, plan: LabPlan, settings: Settings, consumer: int | None
) -> dict[str, float]:
    """Run one workload through the fw namespace; its figures."""
    fw = plan.fw_client_side.namespace
    before = snapshot(fw, consumer)
    if workload == "bulk":
        figures = {"bulk_gbps": iperf(plan, settings.duration, ()) / 1e9}
    elif workload == "small":
        figures = {"small_mbps": iperf(plan, settings.duration, SMALL_ARGS) / 1e6}
    elif workload in ("connections", "multi"):
        argv = ["_connect", plan.server.ipv4, str(settings.duration)]
        if workload == "multi":
            argv.append(",".join(multi_clients(plan)))
        result = run_role(plan, "client", argv, settings.duration + SLACK)
        figures = {
            f"{workload}_per_s": result["connections"] / result["seconds"],
            f"{workload}_errors": float(result["errors"]),
        }
    else:
        result = run_role(
            plan, "client", ["_pingpong", plan.server.ipv4, str(settings.round_trips)], 60 + SLACK
        )
        rtts = sorted(result["rtt_us"])
        figures = {"rtt_p50_us": percentile(rtts, 50), "rtt_p99_us": percentile(rtts, 99)}
    return figures | usage(before, snapshot(fw, consumer), workload)


# --- modes ----------------------------------------------------------------------------------


def _queued_packets(plan: LabPlan) -> int:
    """Packets fwemu's NFQUEUE rules sent to the queue so far (their iptables counters)."""
    from fwemu.adapters import iptables
    from fwemu.lab import call_in_netns

    counted = call_in_netns(plan.fw_client_side.namespace, lambda: iptables.queued_packets(QUEUE))
    return counted or 0


@contextlib.contextmanager
def running(
    mode: Mode, plan: LabPlan, settings: Settings, workdir: Path, bypassed: dict[str, int]
) -> Iterator[int | None]:
    """The fw namespace in `mode` for the block's duration; the queue consumer's pid, if any.

    On the way out, `bypassed[mode]` grows by the packets the queue rule saw but the consumer
    did not: with F_FAIL_OPEN a full queue accepts packets unseen, and counts them nowhere
    (docs/tcp-rst-and-nfqueue.md §3.3), which would flatter the figures.
    """
    if mode == "kernel":
        yield None
        return
    fw = plan.fw_client_side.namespace
    if mode == "accept-all":
        child = Child.start(
            mode, [sys.executable, str(SCRIPT), "_accept-all", str(QUEUE)], workdir, fw
        )
        ready = READY
    elif mode == "c-accept-all":
        argv = ["_c-accept-all", str(QUEUE), str(workdir / C_CONSUMER.stem), str(settings.c_batch)]
        child = Child.start(mode, [sys.executable, str(SCRIPT), *argv], workdir, fw)
        ready = READY
    else:
        command = settings.fwemu_command if mode == "fwemu" else settings.baseline_command
        argv = [*command, "run", "--netns", fw, "--queue", str(QUEUE)]
        argv += ["--workers", str(settings.workers)]
        child = Child.start(mode, [*argv, *settings.policy_args], workdir, None)
        ready = STARTED
    try:
        child.wait_for(ready)
        yield child.pid
        queued = _queued_packets(plan)
    finally:
        code = child.stop()
    if code != 0:
        raise BenchError(f"{mode} exited with status {code}: {child.tail()}")
    bypassed[mode] = bypassed.get(mode, 0) + queued - _seen_packets(child)


# The consumer's last words: "accepted N packets" (accept-all), "fwemu stopped (SIGTERM): N
# packets, ..." (fwemu run's stop line).
_SEEN = re.compile(r"(?:accepted|stopped \(\w+\):) (\d+) packets")


def _seen_packets(child: Child) -> int:
    found = _SEEN.findall(child.log())
    if not found:
        raise BenchError(f"{child.name} did not say how many packets it saw: {child.tail()}")
    return int(found[-1])


# --- the whole run --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    rep: int
    mode: Mode
    figures: dict[str, float]


def multi_clients(plan: LabPlan) -> list[str]:
    """The client addresses of the multi workload, in the client's subnet."""
    prefix = plan.client.ipv4.rsplit(".", 1)[0]
    return [
        f"{prefix}.{host}" for host in range(MULTI_FIRST_HOST, MULTI_FIRST_HOST + MULTI_CLIENTS)
    ]


def widen_port_range(plan: LabPlan) -> None:
    """Client ports for many connections: the whole range, not the default 28k (a per-namespace
    sysctl: the root namespace's stays as it is)."""
    from fwemu.lab import call_in_netns

    call_in_netns(
        plan.client.namespace,
        lambda: Path("/proc/sys/net/ipv4/ip_local_port_range").write_text("1024 65535"),
    )


def prepare(plan: LabPlan) -> None:
    """The connection workloads' client ports, and the multi workload's client addresses."""
    widen_port_range(plan)
    for address in multi_clients(plan):
        run_tool(plan, "client", ["ip", "addr", "add", f"{address}/24", "dev", "eth0"], 10)


def _on_path(tool: str) -> bool:
    return any(os.access(Path(d, tool), os.X_OK) for d in os.get_exec_path())


def compile_c_consumer(workdir: Path) -> None:
    """accept_all.c built into `workdir` with the system's C compiler (`cc`)."""
    if not _on_path("cc"):
        raise BenchError(
            "mode c-accept-all needs a C compiler (cc) and libnetfilter_queue's headers "
            "(scripts/setup.sh installs gcc and libnetfilter-queue-dev); or leave it out with "
            "--modes"
        )
    argv = ["cc", "-O2", "-Wall", "-o", str(workdir / C_CONSUMER.stem), str(C_CONSUMER)]
    built = subprocess.run(
        [*argv, "-lnetfilter_queue"], capture_output=True, text=True, timeout=60, check=False
    )
    if built.returncode != 0:
        why = built.stderr.strip().splitlines()[-TAIL_LINES:]
        raise BenchError(f"cannot compile {C_CONSUMER.name}: {' | '.join(why)}")


def bench(settings: Settings, progress: Callable[[str], None]) -> tuple[list[Run], dict[str, int]]:
    """Every repetition of every mode and workload, in a lab removed on every way out."""
    from fwemu.lab import lab, require_root

    require_root()
    for tool in ("iperf3", "iptables"):
        if not _on_path(tool):
            raise BenchError(f"{tool} not found in PATH (scripts/setup.sh installs it)")
    runs: list[Run] = []
    bypassed: dict[str, int] = {}
    pid = os.getpid()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fwemu-bench-")))
        if "c-accept-all" in settings.modes:
            compile_c_consumer(workdir)
        plan = stack.enter_context(lab(f"fwemu-bench-{pid}", 1 + pid % 250))
        prepare(plan)
        for name, argv in (
            ("iperf3-server", ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"]),
            ("server", [sys.executable, str(SCRIPT), "_serve", plan.server.ipv4]),
        ):
            server = Child.start(name, argv, workdir, plan.server.namespace)
            stack.callback(server.stop)
            server.wait_for("listening" if name == "iperf3-server" else READY)
        for rep in range(1, settings.reps + 1):
            for mode in settings.modes[:: 1 if rep % 2 else -1]:
                with running(mode, plan, settings, workdir, bypassed) as consumer:
                    where = f" (pid {consumer})" if consumer else ""
                    progress(f"rep {rep}/{settings.reps}: {MODE_LABELS[mode]}{where}")
                    figures: dict[str, float] = {}
                    for workload in settings.workloads:
                        figures |= measure(workload, plan, settings, consumer)
                        progress(f"  {workload}: {_brief(workload, figures)}")
                runs.append(Run(rep, mode, figures))
    return runs, bypassed


# --- reporting ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    key: str
    label: str
    unit: str
    digits: int
    ratios: bool = True  # whether fwemu/(a), fwemu/(b), ... mean something for it


FIGURES: dict[Workload, tuple[Figure, ...]] = {
    "bulk": (
        Figure("bulk_gbps", "bulk throughput", "Gbit/s", 2),
        Figure("bulk_pps", "bulk packets forwarded", "pkt/s", 0),
    ),
    "small": (
        Figure("small_pps", "small-segment packets forwarded", "pkt/s", 0),
        Figure("small_mbps", "small-segment throughput", "Mbit/s", 1),
    ),
    "connections": (
        Figure("connections_per_s", "new connections", "conn/s", 0),
        Figure("connections_errors", "connection errors", "", 0, ratios=False),
    ),
    "multi": (
        Figure("multi_per_s", f"new connections, {MULTI_CLIENTS} clients", "conn/s", 0),
        Figure("multi_pps", f"packets forwarded, {MULTI_CLIENTS} clients", "pkt/s", 0),
        Figure("multi_errors", f"connection errors, {MULTI_CLIENTS} clients", "", 0, ratios=False),
    ),
    "latency": (
        Figure("rtt_p50_us", "round trip p50", "µs", 0),
        Figure("rtt_p99_us", "round trip p99", "µs", 0),
        Figure("rtt_p50_added_us", "round trip p50 added vs (a)", "µs", 0, ratios=False),
        Figure("rtt_p99_added_us", "round trip p99 added vs (a)", "µs", 0, ratios=False),
    ),
}
# Per workload, prefixed with its name (see `usage`).
CPU_FIGURES = (
    Figure("consumer_cpu", "consumer CPU", "%", 0, ratios=False),
    Figure("us_per_packet", "consumer CPU per packet", "µs", 2),
    Figure("sys_us_per_packet", "  of which in the kernel", "µs", 2),
    Figure("machine_cpu", "machine CPU busy", "%", 0, ratios=False),
)
LABEL_WIDTH = 46


def _brief(workload: Workload, figures: dict[str, float]) -> str:
    shown = [*FIGURES[workload], Figure(f"{workload}_us_per_packet", "", "µs/pkt (consumer)", 2)]
    return ", ".join(
        f"{_number(figures[f.key], f.digits)} {f.unit or f.label}".strip()
        for f in shown
        if f.key in figures
    )


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def medians(runs: Sequence[Run]) -> dict[Mode, dict[str, float]]:
    """Per mode, the median of each figure over the repetitions, plus the latency added."""
    out: dict[Mode, dict[str, float]] = {}
    for mode in dict.fromkeys(run.mode for run in runs):
        mine = [run.figures for run in runs if run.mode == mode]
        out[mode] = {key: statistics.median(f[key] for f in mine) for key in mine[0]}
    kernel = out.get("kernel", {})
    for mode in QUEUE_MODES:
        for pct in ("p50", "p99"):
            key = f"rtt_{pct}_us"
            if key in kernel and key in out.get(mode, {}):
                out[mode][f"rtt_{pct}_added_us"] = out[mode][key] - kernel[key]
    return out


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


@dataclass(frozen=True, slots=True)
class Target:
    text: str
    value: float | None  # a ratio, or µs for latency; None: a mode or workload it needs did not run
    met: bool | None
    # CPU µs per packet of fwemu and of the consumer it is held against, in the workload's run:
    # a ratio on another machine differs, and this says by how much each side's cost moved.
    cpu: tuple[float, float] | None = None


def targets(med: dict[Mode, dict[str, float]]) -> list[Target]:
    """Issue 18's targets for one queue on the 2-core machine."""
    fwemu = med.get("fwemu", {})

    def at_least(text: str, workload: str, key: str, base: Mode, floor: float) -> Target:
        other = med.get(base, {})
        ratio = _ratio(fwemu.get(key), other.get(key))
        cpu_key = f"{workload}_us_per_packet"
        cpu = (fwemu[cpu_key], other[cpu_key]) if cpu_key in fwemu and cpu_key in other else None
        return Target(text, ratio, None if ratio is None else ratio >= floor, cpu)

    added = fwemu.get("rtt_p99_added_us")
    return [
        at_least("bulk throughput >= 90 % of (b)", "bulk", "bulk_gbps", "accept-all", 0.9),
        at_least("bulk throughput >= 80 % of (d)", "bulk", "bulk_gbps", "c-accept-all", 0.8),
        at_least(
            "connections/s >= 85 % of (b)", "connections", "connections_per_s", "accept-all", 0.85
        ),
        Target("added round-trip p99 < 0.2 ms", added, None if added is None else added < 200),
    ]


def table(settings: Settings, med: dict[Mode, dict[str, float]], bypassed: dict[str, int]) -> str:
    """The human-readable report."""
    modes = [m for m in MODES if m in med]
    bases = [m for m in BASES if m in med and "fwemu" in med]
    widths = {m: max(16, len(MODE_LABELS[m]) + 2) for m in modes}
    head = f"{'':{LABEL_WIDTH}}" + "".join(f"{MODE_LABELS[m]:>{widths[m]}}" for m in modes)
    head += "".join(f"{'fwemu/' + MODE_LABELS[m][:3]:>12}" for m in bases)

    def row(figure: Figure, key: str, label: str) -> str:
        cells = "".join(f"{_number(med[m].get(key), figure.digits):>{widths[m]}}" for m in modes)
        if figure.ratios:
            ratios = (_ratio(med["fwemu"].get(key), med[m].get(key)) for m in bases)
            cells += "".join(f"{_number(r, 2):>12}" for r in ratios)
        return f"{(label + ' ' + figure.unit).strip():{LABEL_WIDTH}}{cells}".rstrip()

    lines = [
        f"fwemu inline bench: median of {settings.reps} repetition(s), {settings.duration} s per "
        f"throughput workload, {settings.round_trips} round trips; fwemu "
        f"{' '.join(settings.policy_args)}; "
        + ("one queue" if settings.workers == 1 else f"--workers {settings.workers}"),
        "",
        head,
        *(row(f, f.key, f.label) for w in settings.workloads for f in FIGURES[w]),
        "",
        "CPU per workload (consumer = the queue reader; 100 % = one CPU, machine: of both)",
        *(
            row(f, f"{w}_{f.key}", f"{w}: {f.label}")
            for w in settings.workloads
            for f in CPU_FIGURES
        ),
        "",
        "targets (issue 18)",
    ]
    for t in targets(med):
        verdict = "n/a" if t.met is None else "met" if t.met else "NOT MET"
        value = "" if t.value is None else f"  ({_target_value(t)})"
        lines.append(f"  {verdict:8} {t.text}{value}")
    if settings.baseline_command:
        lines.append(f"(e) baseline: {shlex.join(settings.baseline_command)}")
    lines += [
        f"note: {count} packets bypassed the {mode} consumer (queue full, fail-open): "
        "its figures are flattered"
        for mode, count in sorted(bypassed.items())
        if count > 0
    ]
    return "\n".join(lines)


def _target_value(t: Target) -> str:
    assert t.value is not None
    if "ms" in t.text:
        return f"{t.value:.0f} µs"
    cpu = "" if t.cpu is None else f"; CPU per packet {t.cpu[0]:.2f} vs {t.cpu[1]:.2f} µs"
    return f"{100 * t.value:.0f} %{cpu}"


def report_json(
    settings: Settings, runs: Sequence[Run], bypassed: dict[str, int]
) -> dict[str, Any]:
    med = medians(runs)
    keys = dict.fromkeys(k for figures in med.values() for k in figures)
    fwemu = med.get("fwemu", {})
    return {
        "settings": asdict(settings),
        "runs": [asdict(run) for run in runs],
        "medians": med,
        "ratios": {
            key: {
                f"fwemu/{mode}": _ratio(fwemu.get(key), med[mode].get(key))
                for mode in BASES
                if mode in med
            }
            for key in keys
        },
        "targets": [asdict(t) for t in targets(med)],
        "bypassed_packets": bypassed,
    }


# --- command line ---------------------------------------------------------------------------


def _choices(allowed: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(part.strip() for part in text.split(",") if part.strip())
        unknown = [c for c in chosen if c not in allowed]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a comma-separated subset of {','.join(allowed)}"
            )
        return tuple(c for c in allowed if c in chosen)  # canonical order

    return parse


def parse_args(argv: Sequence[str]) -> tuple[Settings, bool]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 rep, 1 s workloads")
    parser.add_argument(
        "--reps", type=whole_number("--reps", 1), help="repetitions (default 3; --quick: 1)"
    )
    parser.add_argument(
        "--duration",
        type=whole_number("--duration", 1),
        help="seconds per throughput workload (default 3; quick: 1)",
    )
    parser.add_argument(
        "--round-trips",
        type=whole_number("--round-trips", 1),
        help="timed round trips (default 5000; quick: 300)",
    )
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--preset", default="linux", help="fwemu's preset (default: linux)")
    policy.add_argument("--policy", metavar="FILE", help="a policy file for fwemu instead")
    parser.add_argument(
        "--fwemu-command",
        default=shlex.join([sys.executable, "-m", "fwemu"]),
        metavar="CMD",
        help="how to run fwemu, e.g. a wrapper to compare a variant (default: %(default)s)",
    )
    parser.add_argument(
        "--baseline-command",
        metavar="CMD",
        help="run another fwemu as mode (e) in every repetition, e.g. an older tree: "
        "'env PYTHONPATH=/tmp/perf-base .venv/bin/python -P -m fwemu' (before/after in one run)",
    )
    parser.add_argument(
        "--c-batch",
        type=whole_number("--c-batch", 1),
        default=C_BATCH,
        help="mode (d)'s verdicts per batch message at most, up to 255 "
        "(default %(default)s; 1: a verdict per packet)",
    )
    parser.add_argument(
        "--workers",
        type=whole_number("--workers", 1),
        default=1,
        help="fwemu's worker processes (fwemu run --workers; default 1)",
    )
    parser.add_argument(
        "--modes",
        type=_choices(MODES),
        help=f"{','.join(MODES)} (default: {','.join(DEFAULT_MODES)}, and baseline when "
        "--baseline-command is given)",
    )
    parser.add_argument(
        "--workloads",
        type=_choices(WORKLOADS),
        default=DEFAULT_WORKLOADS,
        help=f"{','.join(WORKLOADS)} (default: {','.join(DEFAULT_WORKLOADS)})",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    quick = args.quick
    baseline = tuple(shlex.split(args.baseline_command or ""))
    modes = args.modes or (*DEFAULT_MODES, *(("baseline",) if baseline else ()))
    if "baseline" in modes and not baseline:
        parser.error("mode baseline needs --baseline-command")
    if args.c_batch > C_BATCH:
        parser.error(f"--c-batch: at most {C_BATCH}, as Suricata caps its batches")

    def pick(value: int | None, normal: int, smoke: int) -> int:
        return value if value is not None else smoke if quick else normal

    settings = Settings(
        reps=pick(args.reps, 3, 1),
        duration=pick(args.duration, 3, 1),
        round_trips=pick(args.round_trips, 5000, 300),
        policy_args=("--policy", args.policy) if args.policy else ("--preset", args.preset),
        fwemu_command=tuple(shlex.split(args.fwemu_command)),
        baseline_command=baseline,
        c_batch=args.c_batch,
        workers=args.workers,
        modes=modes,
        workloads=args.workloads,
    )
    return settings, args.json


def report(argv: Sequence[str], progress: Callable[[str], None]) -> str:
    """Parse the options, run the bench, render its table (or JSON)."""
    settings, as_json = parse_args(argv)
    runs, bypassed = bench(settings, progress)
    if as_json:
        return json.dumps(report_json(settings, runs, bypassed), indent=2)
    return table(settings, medians(runs), bypassed)


if __name__ == "__main__":
    sys.exit(run_bench("inline bench", sys.argv[1:], ROLES, report))
