"""`fwemu run`: be the firewall, inline, until stopped (the options; fwemu/adapters/runtime.py
does the rest)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

from fwemu.adapters import iptables, runtime
from fwemu.adapters.runtime import MAX_WORKERS, RunConfig
from fwemu.cli.argtypes import number, whole_number
from fwemu.ops.metrics import MetricsError, parse_listen_address
from fwemu.policy import IPNetwork
from fwemu.policy.model import Protocol

ORDER = 20  # place in `fwemu --help`

DESCRIPTION = """\
Track forwarded TCP and UDP flows through Linux conntrack's state machine and enforce a policy's
per-state timers: when a flow's timer runs out, fwemu forgets it (later packets are dropped
as out-of-state) or injects RSTs, as the policy says.

--proto tcp or --proto udp queues one protocol only (default: both). UDP flows run on the
policy's [timeouts] udp (seen one way, or not yet a stream) and udp_stream (replied and older
than udp_stream_after), expire silently, and [out_of_state] udp_from_client/udp_from_server say
what a datagram of a forgotten flow meets.

fwemu adds a chain FWEMU-Q<N> and a jump to it per protocol at the top of FORWARD (iptables and
ip6tables) that sends TCP and UDP to NFQUEUE N with --queue-bypass, and removes exactly those
rules when it stops (SIGINT or SIGTERM). If fwemu is killed (SIGKILL), the rules stay but
traffic keeps flowing unfiltered thanks to --queue-bypass; the next 'fwemu run' on that queue
replaces them.
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
  # only UDP (DNS, QUIC, WireGuard...): TCP is forwarded untouched
  fwemu run --preset gcp-cloud-nat --proto udp
  # watch and steer a running fwemu (see docs/troubleshooting.md)
  fwemu flows; fwemu top; fwemu events --follow; fwemu expire --match dport=5432
  # edit the policy file, then apply it without losing a flow (or: kill -HUP <pid>)
  fwemu reload
  # two workers on queues 0 and 1, for many clients (one address pair stays on one worker)
  fwemu run --netns demo-fw --preset linux --workers 2
  # Prometheus metrics, scraped from inside the namespace
  fwemu run --netns demo-fw --preset linux --metrics :9100 &
  ip netns exec demo-fw curl -s http://127.0.0.1:9100/metrics
  # the flow table as JSON in a file, on SIGUSR1 (sent once fwemu has started)
  fwemu run --preset linux --state-file /run/fwemu.json &
  sleep 1; kill -USR1 $!; sleep 0.2; cat /run/fwemu.json

signals: SIGINT/SIGTERM stop, SIGHUP reloads the policy (like 'fwemu reload'), SIGUSR1 writes
the --state-file. One that comes while fwemu starts is acted on once it serves. With --workers,
send them to the supervisor (the pid that 'fwemu run' has): it passes them on.

exit status: 0 after SIGINT/SIGTERM, 2 when it refuses to start (nothing is changed then),
1 on an internal error or when a worker dies (rules are removed, the other workers stopped and
the queues unbound first).
"""


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
        help="on SIGUSR1, write the flow table to PATH as JSON (its directory must be writable)",
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
        help="accept every packet and inject nothing; log what would happen (after a flow's "
        "expiry, only its first later packet from each side: what it would have met)",
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
        "capture (default: every forwarded TCP and UDP flow)",
        "The selectors (repeatable) describe a flow's first direction (its client's packets); "
        "both directions of a selected flow are queued, also of a flow opened the other way "
        "round.",
    )
    capture.add_argument(
        "--proto",
        type=_protocols,
        default=tuple(Protocol),
        metavar="LIST",
        help="the protocols to queue: tcp, udp or tcp,udp (default: tcp,udp); UDP flows run on "
        "the policy's [timeouts] udp and udp_stream",
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


def _protocols(text: str) -> tuple[Protocol, ...]:
    """ "udp,tcp" -> (Protocol.TCP, Protocol.UDP): in Protocol's order, once each."""
    names = [name.strip().lower() for name in text.split(",")]
    known = [p.value for p in Protocol]
    if bad := [name for name in names if name not in known]:
        raise argparse.ArgumentTypeError(
            f"unknown protocol {bad[0]!r} in {text!r}: use tcp, udp or tcp,udp"
        )
    return tuple(p for p in Protocol if p.value in names)


def _metrics_address(text: str) -> tuple[str, int]:
    try:
        return parse_listen_address(text)
    except MetricsError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("bad --metrics ")) from None


def _run(args: argparse.Namespace) -> int:
    capture = iptables.Capture(
        tuple(args.in_interface),
        tuple(args.out_interface),
        tuple(args.src),
        tuple(args.dst),
        args.proto,
    )
    return runtime.run(
        RunConfig(
            policy=args.policy,
            preset=args.preset,
            queue=args.queue,
            workers=args.workers,
            speed=args.speed,
            netns=args.netns,
            events=args.events,
            state_file=args.state_file,
            control=args.control,
            metrics=args.metrics,
            verbose=args.verbose,
            dry_run=args.dry_run,
            fail_closed=args.fail_closed,
            no_rules=args.no_rules,
            capture=capture,
        )
    )
