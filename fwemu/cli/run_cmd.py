"""`fwemu run`: be the firewall, inline, until stopped."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from fwemu.adapters import host, iptables, nfqueue
from fwemu.adapters.daemon import Counters, Daemon, Signals
from fwemu.adapters.inject import Injector
from fwemu.adapters.output import Clock, Reporter
from fwemu.cli.argtypes import number, whole_number
from fwemu.core.engine import Engine
from fwemu.errors import FwemuError
from fwemu.ops.commands import Commands, PolicySource
from fwemu.ops.control import ControlServer, default_path
from fwemu.ops.metrics import Metrics, MetricsError, parse_listen_address
from fwemu.policy import IPNetwork, Policy

ORDER = 20  # place in `fwemu --help`

DESCRIPTION = """\
Track forwarded TCP flows through Linux conntrack's state machine and enforce a policy's
per-state timers: when a flow's timer runs out, fwemu forgets it (later packets are dropped
as out-of-state) or injects RSTs, as the policy says.

fwemu adds a chain FWEMU-Q<N> and a jump to it at the top of FORWARD (iptables and ip6tables)
that sends TCP to NFQUEUE N with --queue-bypass, and removes exactly those rules when it stops
(SIGINT or SIGTERM). If fwemu is killed (SIGKILL), the rules stay but traffic keeps flowing
unfiltered thanks to --queue-bypass; the next 'fwemu run' on that queue replaces them.
Needs root. Run it where traffic is forwarded: a router, or the fw namespace of 'fwemu lab'.

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
  # only traffic from the 10.1.0.0/16 side, on queue 3, logging what it would do
  fwemu run --preset linux --queue 3 --in-interface eth1 --src 10.1.0.0/16 --dry-run
  # watch and steer a running fwemu (see docs/troubleshooting.md)
  fwemu flows; fwemu top; fwemu events --follow; fwemu expire --match dport=5432
  # edit the policy file, then apply it without losing a flow (or: kill -HUP <pid>)
  fwemu reload
  # Prometheus metrics, scraped from inside the namespace
  fwemu run --netns demo-fw --preset linux --metrics :9100 &
  ip netns exec demo-fw curl -s http://127.0.0.1:9100/metrics
  # the flow table as JSON in a file, on SIGUSR1
  fwemu run --preset linux --state-file /run/fwemu.json &  kill -USR1 $!;  cat /run/fwemu.json

signals: SIGINT/SIGTERM stop, SIGHUP reloads the policy (like 'fwemu reload'), SIGUSR1 writes
the --state-file.

exit status: 0 after SIGINT/SIGTERM, 2 when it refuses to start (nothing is changed then),
1 on an internal error (rules are removed and the queue unbound first).
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
    capture = parser.add_argument_group("capture (repeatable; default: all forwarded TCP)")
    capture.add_argument(
        "--in-interface",
        "-i",
        action="append",
        default=[],
        metavar="IF",
        help="only packets arriving on IF",
    )
    capture.add_argument(
        "--out-interface",
        "-o",
        action="append",
        default=[],
        metavar="IF",
        help="only packets leaving on IF",
    )
    capture.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="NET",
        type=_network,
        help="only packets from NET (CIDR)",
    )
    capture.add_argument(
        "--dst",
        action="append",
        default=[],
        metavar="NET",
        type=_network,
        help="only packets to NET (CIDR)",
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


def _run(args: argparse.Namespace) -> int:
    host.require_root("fwemu run")
    if args.netns:
        host.enter_netns(args.netns)
    source = PolicySource(args.policy, args.preset, args.speed)
    policy = source.load()
    capture = iptables.Capture(
        tuple(args.in_interface), tuple(args.out_interface), tuple(args.src), tuple(args.dst)
    )
    if not args.no_rules:
        iptables.check_available(args.queue)
    nfqueue.ensure_free(args.queue)
    clock = Clock.start()
    with ExitStack() as stack:
        events = _open_events(args.events, stack)
        reporter = Reporter(clock, sys.stderr, events, dry_run=args.dry_run, verbose=args.verbose)
        engine, counters = Engine(policy), Counters()
        metrics = None
        if args.metrics:
            metrics = Metrics(args.queue, counters, engine)
            reporter.watch(metrics.on_event)
        signals = stack.enter_context(Signals())
        injector = stack.enter_context(Injector(reporter.error))
        daemon = Daemon(
            engine,
            reporter,
            injector,
            source,
            dry_run=args.dry_run,
            state_file=args.state_file,
            counters=counters,
            metrics=metrics,
        )
        control_path = args.control or default_path(args.queue, args.netns)
        control = ControlServer(
            control_path, Commands(daemon, _status(args, control_path, clock)), reporter
        )
        stack.callback(control.close)
        served = ""
        if metrics is not None:
            # After enter_netns: the server's threads live in fwemu's namespace.
            served = _metrics_line(args, metrics.serve(*args.metrics))
            stack.callback(metrics.close)
        nfq = stack.enter_context(
            nfqueue.bound(args.queue, daemon.on_packet, fail_open=not args.fail_closed)
        )
        rules = (
            () if args.no_rules else stack.enter_context(iptables.installed(args.queue, capture))
        )
        reporter.line(_start_line(args, policy, rules, capture))
        reporter.line(f"control socket {control_path}{served}")
        try:
            daemon.run(nfq, signals, control)
        except Exception as err:
            stack.close()
            raise InternalError(
                f"internal error, stopped after removing the rules: {_where(err)}"
            ) from err
    reporter.line(_stop_line(daemon, signals, args))
    return 0


def _status(args: argparse.Namespace, control: Path, clock: Clock) -> dict[str, Any]:
    """What `fwemu top` and `status` show about this run that never changes."""
    return {
        "queue": args.queue,
        "netns": args.netns,
        "speed": args.speed,
        "dry_run": args.dry_run,
        "control": str(control),
        "started": round(clock.wall(Clock.now()), 3),
    }


def _metrics_line(args: argparse.Namespace, port: int) -> str:
    host = args.metrics[0]
    where = f" in netns {args.netns}" if args.netns else ""
    return f"; metrics on http://{f'[{host}]' if ':' in host else host}:{port}/metrics{where}"


def _open_events(path: str | None, stack: ExitStack) -> TextIO | None:
    if path is None:
        return None
    if path == "-":
        return sys.stdout
    try:
        return stack.enter_context(open(path, "w", encoding="utf-8"))
    except OSError as err:
        raise FwemuError(f"cannot open the events file {path}: {err.strerror}") from None


def _start_line(
    args: argparse.Namespace,
    policy: Policy,
    rules: tuple[iptables.Family, ...],
    capture: iptables.Capture,
) -> str:
    where = f" in netns {args.netns}" if args.netns else ""
    if args.no_rules:
        installed = "no rules installed (--no-rules)"
    elif rules:
        binaries = " and ".join("iptables" if f == 4 else "ip6tables" for f in rules)
        installed = (
            f"rules in {binaries} chain {iptables.chain_name(args.queue)} ({capture.describe()})"
        )
    else:
        installed = "no rules installed: the capture selectors match neither IPv4 nor IPv6"
    mode = ", fail-closed" if args.fail_closed else ""
    dry = ", DRY RUN (accepting everything, injecting nothing)" if args.dry_run else ""
    return (
        f"fwemu started{where}: queue {args.queue}, policy {policy.name} ({policy.origin}), "
        f"speed x{args.speed:g}{mode}{dry}; {installed}"
    )


def _stop_line(daemon: Daemon, signals: Signals, args: argparse.Namespace) -> str:
    c = daemon.counters
    cause = signals.stop.name if signals.stop else "stop"
    verb = "would have " if args.dry_run else ""
    removed = "" if args.no_rules else "rules removed, "
    errors = f", {c.errors} engine errors" if c.errors else ""
    return (
        f"fwemu stopped ({cause}): {c.packets} packets, {c.accepted} accepted, "
        f"{verb}dropped {c.dropped}, {verb}injected {c.resets} RSTs{errors}, "
        f"{daemon.flow_count()} flows tracked; {removed}queue unbound"
    )


def _where(err: BaseException) -> str:
    """The error and the innermost frame it came from: enough for a bug report, in one line."""
    frames = traceback.extract_tb(err.__traceback__)
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}: {err}{at}"
