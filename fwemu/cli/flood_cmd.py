"""`fwemu flood`: a SYN flood from a lab's client side, and what the server, fwemu and a legit
client saw (the work is fwemu/lab/flood.py's)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from fwemu.cli.argtypes import duration
from fwemu.lab.flood import (
    DEFAULT_BACKLOG,
    DEFAULT_PORT,
    LEGIT_INTERVAL,
    LEGIT_TIMEOUT,
    MAX_SECONDS,
    FloodSpec,
    LegitSpec,
    Progress,
    find_fwemu,
    lab_plan,
    run_flood,
)
from fwemu.lab.plan import DEFAULT_NAME

ORDER = 32  # place in `fwemu --help`: after lab

_DESCRIPTION = """\
Send COUNT SYNs at RATE a second from spoofed addresses of the lab's client subnet (raw packets
from its client namespace) through its fw namespace to a port of its server, then report what
the server's kernel saw (SYNs received, its half-open connections, SYN cookies sent: nstat's
counters), what the fwemu in the fw namespace did (its counters and events, if one runs there)
and what a legit client measured meanwhile (connect() from the client's own address, timed).

If nothing listens on the port, the flood listens there itself (--backlog). The lab's own
addresses are never spoofed. Ctrl-C (or SIGTERM) stops the flood and still reports; a second
one aborts.

The sender reaches 135,000-175,000 SYN/s on a 2-core VM (docs/flood.md): up to that the rate
asked is the rate sent, and the report says what it achieved.
"""
_EXAMPLES = """\
examples:
  fwemu lab up demo
  fwemu run --netns demo-fw --preset linux &                         # fwemu inline, or not
  fwemu flood demo --count 100000 --rate 10000 --dport 80
  fwemu flood demo --count 20000 --rate 50000 --sources 10.201.1.77    # one source
  fwemu flood demo --sources 16 --duration 30s --rate 2000             # 16 addresses, 30 s
  fwemu flood demo --ipv6 --json | jq .server
"""
_PROGRESS_CLEAR = "\r\x1b[K"
# Signals that stop the flood early, and what the next one of each does.
_STOPPING: dict[signal.Signals, Any] = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "flood",
        help="SYN-flood a lab's server from spoofed sources; report what the server, fwemu "
        "and a legit client saw",
        description=_DESCRIPTION,
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name",
        nargs="?",
        default=DEFAULT_NAME,
        metavar="LAB",
        help="the lab (default: %(default)s)",
    )
    default = FloodSpec()
    parser.add_argument(
        "--count", type=int, default=default.count, help="SYNs to send (default: %(default)s)"
    )
    parser.add_argument(
        "--rate", type=float, default=default.rate, help="SYNs a second (default: %(default)g)"
    )
    parser.add_argument(
        "--duration",
        type=duration("duration", MAX_SECONDS),
        metavar="DURATION",
        help="stop after this long even if COUNT were not all sent (like 30s, 2m)",
    )
    parser.add_argument(
        "--sources",
        metavar="SOURCES",
        help="the spoofed addresses: a network (10.201.1.0/24) or one address inside the client "
        "subnet, or a number of its addresses (default: all of it, /24 or the first /120)",
    )
    parser.add_argument(
        "--dport", type=int, default=DEFAULT_PORT, help="the server's port (default: %(default)s)"
    )
    parser.add_argument(
        "-6", "--ipv6", action="store_true", help="IPv6 (implied by IPv6 --sources)"
    )
    parser.add_argument(
        "--backlog",
        type=int,
        default=DEFAULT_BACKLOG,
        help="the flood's own listener's listen() backlog (default: %(default)s)",
    )
    parser.add_argument(
        "--no-legit", action="store_true", help="no legit client: only the flood's SYNs"
    )
    parser.add_argument(
        "--legit-interval",
        type=float,
        default=LEGIT_INTERVAL,
        metavar="SECONDS",
        help="pause between the legit client's connects (default: %(default)g)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=LEGIT_TIMEOUT,
        metavar="SECONDS",
        help="how long a legit connect may take before it counts as a timeout "
        "(default: %(default)g)",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        type=Path,
        help="the fwemu's control socket, or a directory of one run's sockets (default: the "
        "fwemu whose process runs in the lab's fw namespace, if any)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    spec = FloodSpec(
        count=args.count,
        rate=args.rate,
        seconds=args.duration,
        sources=int(args.sources) if args.sources and args.sources.isdigit() else args.sources,
        port=args.dport,
        ipv6=args.ipv6,
    )
    legit = None if args.no_legit else LegitSpec(args.legit_interval, args.connect_timeout)
    plan = lab_plan(args.name)
    fwemu = find_fwemu(plan, args.control)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, _stopper(stop)) for signum in _STOPPING}
    try:
        report = run_flood(
            plan,
            spec,
            fwemu=fwemu,
            legit=legit,
            backlog=args.backlog,
            stop=stop,
            progress=_show_progress if sys.stderr.isatty() else None,
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if sys.stderr.isatty():
            print(_PROGRESS_CLEAR, end="", file=sys.stderr, flush=True)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return 0


def _stopper(stop: threading.Event) -> Any:
    """A handler for _STOPPING: the first signal stops the flood, which still reports (and
    removes its listener and counting rules); the next one has its usual effect."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()
        signal.signal(signum, _STOPPING[signal.Signals(signum)])

    return handle


def _show_progress(now: Progress) -> None:
    dropped = "" if now.dropped is None else f"  fwemu dropped {now.dropped:,}"
    print(
        f"{_PROGRESS_CLEAR}{now.elapsed:6.1f} s  sent {now.sent:,}/{now.planned:,} "
        f"({now.rate:,.0f}/s)  server: half-open {now.half_open:,}, cookies {now.cookies:,}"
        f"{dropped}  legit: {now.legit_ok:,} ok, {now.legit_failed:,} failed",
        end="",
        file=sys.stderr,
        flush=True,
    )
