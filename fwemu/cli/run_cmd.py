"""`fwemu run`: be the firewall, inline, until stopped."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import signal
import stat
import sys
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from fwemu.adapters import host, iptables, nfqueue
from fwemu.adapters.bypass import BypassWatch
from fwemu.adapters.daemon import Counters, Daemon, Signals
from fwemu.adapters.inject import Injector
from fwemu.adapters.output import Reporter
from fwemu.adapters.workers import Link, Supervisor, tagged, where
from fwemu.cli.argtypes import number, whole_number
from fwemu.clock import Clock
from fwemu.core.engine import Engine
from fwemu.errors import FwemuError
from fwemu.ops.commands import Commands
from fwemu.ops.control import ControlServer, default_path, is_alive
from fwemu.ops.metrics import Metrics, MetricsError, parse_listen_address
from fwemu.policy import IPNetwork, Policy
from fwemu.policy.source import PolicySource

ORDER = 20  # place in `fwemu --help`
# More workers than CPUs only makes them compete; 64 is far above the machines fwemu runs on.
MAX_WORKERS = 64
LAST_QUEUE = 65535  # NFQUEUE numbers are 16 bits (xt_NFQUEUE's queuenum)

DESCRIPTION = """\
Track forwarded TCP flows through Linux conntrack's state machine and enforce a policy's
per-state timers: when a flow's timer runs out, fwemu forgets it (later packets are dropped
as out-of-state) or injects RSTs, as the policy says.

fwemu adds a chain FWEMU-Q<N> and a jump to it at the top of FORWARD (iptables and ip6tables)
that sends TCP to NFQUEUE N with --queue-bypass, and removes exactly those rules when it stops
(SIGINT or SIGTERM). If fwemu is killed (SIGKILL), the rules stay but traffic keeps flowing
unfiltered thanks to --queue-bypass; the next 'fwemu run' on that queue replaces them.
Needs root. Run it where traffic is forwarded: a router, or the fw namespace of 'fwemu lab'.

--workers N runs N worker processes under one supervisor, on queues Q..Q+N-1 (Q is --queue),
with one rule set that balances flows over them (NFQUEUE --queue-balance). The kernel picks a
flow's queue from a hash of its client and server addresses, the same both ways and blind to
ports: each worker sees whole flows, but every connection between one client address and one
server address lands on the same worker, so one address pair never gets faster with more
workers; many clients do. Each worker logs with a [q<queue>] prefix and has its own control
socket (the default for its queue, or --control PATH with .q<queue> before the suffix);
'fwemu flows/top/events/expire/reload' treat the workers of one run as one firewall.
With N > 1, --events FILE gets every worker's events, interleaved one whole line at a time;
--state-file PATH becomes one file per worker (PATH with .q<queue> before the suffix); and
--metrics HOST:PORT serves the worker of queue Q+i on PORT+i.

It logs to stderr when it starts and stops, and each expiry, injected RST, out-of-state packet
and deleted flow; -v/--verbose adds every new flow and state change (about 6 lines per
connection, which costs CPU under load). --events and 'fwemu events' get every event either way.
"""

EPILOG = """\
examples:
  # in the fw namespace of 'fwemu lab up demo', with Linux's default timers
  fwemu run --netns demo-fw --preset linux
  # a policy file, every timer 60x shorter, events as JSON lines on stdout
  fwemu run --policy my-firewall.toml --speed 60 --events -
  # only flows from the 10.1.0.0/16 side (both directions), on queue 3, logging what it would do
  fwemu run --preset linux --queue 3 --in-interface eth1 --src 10.1.0.0/16 --dry-run
  # watch and steer a running fwemu (see docs/troubleshooting.md)
  fwemu flows; fwemu top; fwemu events --follow; fwemu expire --match dport=5432
  # edit the policy file, then apply it without losing a flow (or: kill -HUP <pid>)
  fwemu reload
  # two workers on queues 0 and 1, for many clients (one address pair stays on one worker)
  fwemu run --netns demo-fw --preset linux --workers 2
  # Prometheus metrics, scraped from inside the namespace
  fwemu run --netns demo-fw --preset linux --metrics :9100 &
  ip netns exec demo-fw curl -s http://127.0.0.1:9100/metrics
  # the flow table as JSON in a file, on SIGUSR1
  fwemu run --preset linux --state-file /run/fwemu.json &  kill -USR1 $!;  cat /run/fwemu.json

signals: SIGINT/SIGTERM stop, SIGHUP reloads the policy (like 'fwemu reload'), SIGUSR1 writes
the --state-file. With --workers, send them to the supervisor (the pid that 'fwemu run' has):
it passes them on.

exit status: 0 after SIGINT/SIGTERM, 2 when it refuses to start (nothing is changed then),
1 on an internal error or when a worker dies (rules are removed, the other workers stopped and
the queues unbound first).
"""


class InternalError(FwemuError):
    """A bug: fwemu stopped after cleaning up."""

    exit_code = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the firewall emulator inline (NFQUEUE) until stopped",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_argument_group("policy (exactly one)").add_mutually_exclusive_group(
        required=True
    )
    which.add_argument("--policy", metavar="FILE", help="a policy TOML file")
    which.add_argument("--preset", metavar="NAME", help="a shipped preset, e.g. linux")
    parser.add_argument(
        "--queue",
        type=whole_number("queue", 0, 65535),
        default=0,
        metavar="N",
        help="NFQUEUE number to bind (default: 0)",
    )
    parser.add_argument(
        "--workers",
        type=whole_number("workers", 1, MAX_WORKERS),
        default=1,
        metavar="N",
        help="worker processes, on queues Q..Q+N-1 (default: 1); flows are spread by client "
        "and server address, so one address pair always stays on one worker",
    )
    parser.add_argument(
        "--speed",
        type=number("speed", 0),
        default=1.0,
        metavar="F",
        help="run every policy timer F times faster (default: 1)",
    )
    parser.add_argument(
        "--netns",
        metavar="NS",
        help="enter this existing network namespace first (see 'ip netns list')",
    )
    parser.add_argument(
        "--events", metavar="FILE", help="write each event as a JSON line to FILE ('-' = stdout)"
    )
    parser.add_argument(
        "--state-file",
        metavar="PATH",
        type=Path,
        help="on SIGUSR1, write the flow table to PATH as JSON",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        type=Path,
        help="serve 'fwemu flows/top/events/expire/reload' on this Unix socket "
        "(default: /run/fwemu/q<N>.sock, or /run/fwemu/<NS>.q<N>.sock with --netns)",
    )
    parser.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        type=_metrics_address,
        help="serve Prometheus metrics over HTTP at HOST:PORT in fwemu's network namespace "
        "(:PORT = 127.0.0.1:PORT; default: off)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also log each new flow and each state change (default: only expiries, RSTs, "
        "out-of-state packets and deletions)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="accept every packet and inject nothing; log what would happen",
    )
    parser.add_argument(
        "--fail-closed",
        action="store_true",
        help="drop packets when the queue overflows (default: accept them)",
    )
    parser.add_argument(
        "--no-rules",
        action="store_true",
        help="install no iptables rules: you send traffic to the queue yourself",
    )
    capture = parser.add_argument_group(
        "capture (repeatable; default: all forwarded TCP)",
        "Selectors describe a flow's first direction (its client's packets); both directions "
        "of a selected flow are queued, also of a flow opened the other way round.",
    )
    capture.add_argument(
        "--in-interface",
        "-i",
        action="append",
        default=[],
        metavar="IF",
        help='only flows that arrive on IF ("eth+" matches eth0, eth1, ...)',
    )
    capture.add_argument(
        "--out-interface",
        "-o",
        action="append",
        default=[],
        metavar="IF",
        help="only flows leaving on IF",
    )
    capture.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="NET",
        type=_network,
        help="only flows from NET (CIDR)",
    )
    capture.add_argument(
        "--dst",
        action="append",
        default=[],
        metavar="NET",
        type=_network,
        help="only flows to NET (CIDR)",
    )
    parser.set_defaults(func=_run)


def _network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address or CIDR network: {text!r}") from None


def _metrics_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen_address(text)
    except MetricsError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("bad --metrics ")) from None


@dataclass(frozen=True, slots=True)
class Setup:
    """What every queue's loop shares, checked once before anything changes."""

    source: PolicySource
    policy: Policy
    capture: iptables.Capture
    clock: Clock
    run: dict[str, Any]  # who belongs to this run, for `status` (see _run_identity)


@dataclass(frozen=True, slots=True)
class Seat:
    """One queue's place in the run: where its loop serves and writes."""

    queue: int
    control: Path
    state_file: Path | None
    metrics: tuple[str, int] | None


def _run(args: argparse.Namespace) -> int:
    host.require_root("fwemu run")
    seats = _seats(args)
    if args.netns:
        host.enter_netns(args.netns)
    source = PolicySource(args.policy, args.preset, args.speed)
    policy = source.load()
    capture = iptables.Capture(
        tuple(args.in_interface), tuple(args.out_interface), tuple(args.src), tuple(args.dst)
    )
    if not args.no_rules:
        iptables.check_available(args.queue, args.workers)
        if missing := iptables.missing_interfaces(capture):
            where = f"network namespace {args.netns}" if args.netns else "this network namespace"
            raise FwemuError(
                f"no interface {', '.join(missing)} in {where}; see 'ip link' "
                "(a trailing '+' matches any interface with that prefix)"
            )
    for seat in seats:
        nfqueue.ensure_free(seat.queue)
    clock = Clock.start()
    setup = Setup(source, policy, capture, clock, _run_identity(seats, clock))
    if args.workers == 1:
        return _serve(args, setup, seats[0])
    return _supervise(args, setup, seats)


def _seats(args: argparse.Namespace) -> tuple[Seat, ...]:
    """Each worker's queue, control socket, state file and metrics address; FwemuError if the
    queues or ports run past their range."""
    count = args.workers
    if args.queue + count - 1 > LAST_QUEUE:
        raise FwemuError(
            f"--queue {args.queue} with --workers {count} needs queues up to "
            f"{args.queue + count - 1}, but NFQUEUE numbers end at {LAST_QUEUE}"
        )
    if args.metrics and args.metrics[1] and args.metrics[1] + count - 1 > 65535:
        raise FwemuError(
            f"--metrics port {args.metrics[1]} with --workers {count} needs ports up to "
            f"{args.metrics[1] + count - 1}, past 65535"
        )
    several = count > 1
    seats = []
    for i in range(count):
        queue = args.queue + i
        control = args.control or default_path(queue, args.netns)
        state = args.state_file
        if several:
            control = per_queue(control, queue) if args.control else control
            state = state and per_queue(state, queue)
        metrics = args.metrics
        if metrics and metrics[1]:  # port 0 (the kernel picks one) stays 0 for each
            metrics = (metrics[0], metrics[1] + i)
        seats.append(Seat(queue, control, state, metrics))
    return tuple(seats)


def per_queue(path: Path, queue: int) -> Path:
    """A worker's own file next to `path`: /run/fw.sock -> /run/fw.q1.sock."""
    return path.with_name(f"{path.stem}.q{queue}{path.suffix}")


def _run_identity(seats: tuple[Seat, ...], clock: Clock) -> dict[str, Any]:
    """What tells the control sockets of one run apart from another's: the supervisor's pid
    and start, and every worker's queue and socket (a lone fwemu is its own supervisor)."""
    pid = os.getpid()
    return {
        "run": f"{pid}@{clock.wall(Clock.now()):.6f}",
        "supervisor": pid,
        "workers": [{"queue": s.queue, "control": str(s.control)} for s in seats],
    }


def _serve(args: argparse.Namespace, setup: Setup, seat: Seat, link: Link | None = None) -> int:
    """One queue's loop until SIGINT/SIGTERM: the whole of a lone `fwemu run` (with its rules),
    or one worker of several (no rules: the supervisor's; it reports to `link`)."""
    worker = link is not None
    with ExitStack() as stack:
        events = _open_events(args.events, stack, shared=worker)
        log = tagged(sys.stderr, seat.queue) if worker else sys.stderr
        reporter = Reporter(setup.clock, log, events, dry_run=args.dry_run, verbose=args.verbose)
        engine, counters = Engine(setup.policy), Counters()
        metrics = None
        if seat.metrics:
            metrics = Metrics(counters, engine, partial(nfqueue.read_queue_counters, seat.queue))
            reporter.watch(metrics.on_event)
        signals = stack.enter_context(Signals())
        if worker:
            # A terminal's Ctrl-C reaches the whole process group: the supervisor alone decides.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        injector = stack.enter_context(Injector(reporter.error))
        # Only the process that owns the rules can compare their counters with what it took.
        bypass = None
        if not (worker or args.no_rules):
            bypass = BypassWatch(seat.queue, lambda: counters.packets)
        daemon = Daemon(
            engine,
            reporter,
            injector,
            setup.source,
            dry_run=args.dry_run,
            state_file=seat.state_file,
            counters=counters,
            metrics=metrics,
            bypass=bypass,
        )
        control = ControlServer(
            seat.control, Commands(daemon, _status(args, seat, setup)), reporter
        )
        stack.callback(control.close)
        served = ""
        if metrics is not None and seat.metrics is not None:
            # After enter_netns: the server's threads live in fwemu's namespace.
            served = _metrics_line(args, seat.metrics[0], metrics.serve(*seat.metrics))
            stack.callback(metrics.close)
        nfq = stack.enter_context(
            nfqueue.bound(seat.queue, daemon.on_packet, fail_open=not args.fail_closed)
        )
        if link is not None:
            link.ready()
            reporter.line(f"worker bound queue {seat.queue}; control socket {seat.control}{served}")
        else:
            rules = (
                ()
                if args.no_rules
                else stack.enter_context(iptables.installed(seat.queue, setup.capture))
            )
            reporter.line(_start_line(args, setup, rules))
            reporter.line(f"control socket {seat.control}{served}")
            if bypass is not None:
                bypass.start()
                stack.callback(bypass.close)
        # Everything made so far (modules, the policy, the flow table's containers) leaves the
        # cyclic GC's view: a full collection then walks only what came later, e.g. 3.5 instead
        # of 12 ms with 100k expired flows remembered (docs/performance.md, "Scale").
        gc.freeze()
        try:
            daemon.run(nfq, signals, control)
        except Exception as err:
            stack.close()
            raise InternalError(
                f"internal error, stopped after removing the rules: {where(err)}"
            ) from err
    totals = {**daemon.counters.as_dict(), "flows": daemon.flow_count()}
    cause = signals.stop.name if signals.stop else "stop"
    if link is not None:
        link.stopped(totals)
    reporter.line(
        _stop_line("worker" if worker else "fwemu", cause, totals, args, rules=not worker)
    )
    return 0


def _supervise(args: argparse.Namespace, setup: Setup, seats: tuple[Seat, ...]) -> int:
    """Fork a worker per seat, install the balancing rules once all are bound, and supervise
    them until SIGINT/SIGTERM; everything is undone on every way out."""
    if args.events not in (None, "-"):
        with ExitStack() as stack:  # start the shared file empty, as a lone fwemu does
            _open_events(args.events, stack, shared=False)
    by_queue = {seat.queue: seat for seat in seats}

    def work(queue: int, link: Link) -> int:
        return _serve(args, setup, by_queue[queue], link)

    reporter = Reporter(setup.clock, sys.stderr)
    with ExitStack() as stack:
        stack.callback(_remove_dead_sockets, seats)
        signals = stack.enter_context(Signals())
        supervisor = stack.enter_context(Supervisor((s.queue for s in seats), work, signals))
        started = supervisor.wait_ready()  # False: stopped by a signal before that
        if started:
            rules = (
                ()
                if args.no_rules
                else stack.enter_context(
                    iptables.installed(args.queue, setup.capture, args.workers)
                )
            )
            pids = ", ".join(str(w.pid) for w in supervisor.workers)
            reporter.line(_start_line(args, setup, rules, f" (worker pids {pids})"))
            reporter.line(f"control sockets {', '.join(str(s.control) for s in seats)}")
            try:
                supervisor.run()
            except FwemuError:
                raise
            except Exception as err:
                stack.close()
                raise InternalError(
                    f"internal error, stopped after removing the rules: {where(err)}"
                ) from err
        stack.close()  # rules first, then the workers, whose totals the last line sums
        cause = signals.stop.name if signals.stop else "stop"
        reporter.line(_stop_line("fwemu", cause, supervisor.totals(), args, rules=started))
    return 0


def _remove_dead_sockets(seats: tuple[Seat, ...]) -> None:
    """A killed worker cannot remove its control socket; once all are stopped, nobody serves it."""
    for seat in seats:
        with suppress(FileNotFoundError):
            if stat.S_ISSOCK(seat.control.lstat().st_mode) and not is_alive(seat.control):
                seat.control.unlink()


def _status(args: argparse.Namespace, seat: Seat, setup: Setup) -> dict[str, Any]:
    """What `fwemu top` and `status` show about this queue's loop that never changes."""
    return {
        "queue": seat.queue,
        "netns": args.netns,
        "speed": args.speed,
        "dry_run": args.dry_run,
        "control": str(seat.control),
        "started": round(setup.clock.wall(Clock.now()), 3),
        **setup.run,
    }


def _metrics_line(args: argparse.Namespace, host: str, port: int) -> str:
    where = f" in netns {args.netns}" if args.netns else ""
    return f"; metrics on http://{f'[{host}]' if ':' in host else host}:{port}/metrics{where}"


def _open_events(path: str | None, stack: ExitStack, *, shared: bool) -> TextIO | None:
    """The events output. `shared` (a worker's): every worker appends whole lines, each in one
    write(2), so that lines from several processes never mix (O_APPEND; a pipe below PIPE_BUF)."""
    if path is None:
        return None
    if path == "-":
        if shared:
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        return sys.stdout
    try:
        if shared:
            return stack.enter_context(open(path, "a", encoding="utf-8", buffering=1))
        return stack.enter_context(open(path, "w", encoding="utf-8"))
    except OSError as err:
        raise FwemuError(f"cannot open the events file {path}: {err.strerror}") from None


def _start_line(
    args: argparse.Namespace, setup: Setup, rules: tuple[iptables.Family, ...], workers: str = ""
) -> str:
    where = f" in netns {args.netns}" if args.netns else ""
    if args.no_rules:
        installed = "no rules installed (--no-rules)"
    elif rules:
        binaries = " and ".join("iptables" if f == 4 else "ip6tables" for f in rules)
        installed = (
            f"rules in {binaries} chain {iptables.chain_name(args.queue)} "
            f"({setup.capture.describe()})"
        )
    else:
        installed = "no rules installed: the capture selectors match neither IPv4 nor IPv6"
    queues = (
        f"queue {args.queue}"
        if args.workers == 1
        else f"{args.workers} workers on queues {args.queue}-{args.queue + args.workers - 1}"
        f"{workers}, balanced by address pair"
    )
    mode = ", fail-closed" if args.fail_closed else ""
    dry = ", DRY RUN (accepting everything, injecting nothing)" if args.dry_run else ""
    policy = setup.policy
    return (
        f"fwemu started{where}: {queues}, policy {policy.name} ({policy.origin}), "
        f"speed x{args.speed:g}{mode}{dry}; {installed}"
    )


def _stop_line(
    who: str, cause: str, totals: dict[str, int], args: argparse.Namespace, *, rules: bool
) -> str:
    """The last log line: what was counted (summed over the workers) and what was undone."""
    c = Counters(**{k: v for k, v in totals.items() if k != "flows"})
    verb = "would have " if args.dry_run else ""
    removed = "rules removed, " if rules and not args.no_rules else ""
    errors = f", {c.errors} engine errors" if c.errors else ""
    errors += f", {c.bypassed} BYPASSED fwemu unseen" if c.bypassed else ""
    unbound = "queue unbound" if args.workers == 1 or who == "worker" else "queues unbound"
    return (
        f"{who} stopped ({cause}): {c.packets} packets, {c.accepted} accepted, "
        f"{verb}dropped {c.dropped}, {verb}injected {c.resets} RSTs{errors}, "
        f"{totals.get('flows', 0)} flows tracked; {removed}{unbound}"
    )
