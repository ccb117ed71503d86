"""`fwemu top`: a live view of the running fwemu (flows, counts per state, recent events)."""

from __future__ import annotations

import argparse
import os
import select
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import RenderableType
from rich.live import Live

from fwemu.cli.argtypes import number
from fwemu.ops import client, views
from fwemu.ops.filters import EVERYTHING
from fwemu.ops.protocol import Request

ORDER = 23  # place in `fwemu --help`

RECENT_EVENTS = 8
# Lines of the screen that are not flow rows: header, counts, table head, events, footer.
_CHROME = 8 + RECENT_EVENTS


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "top",
        help="live view of a running fwemu: flows, counts per state, recent events",
        description="A refreshing view of the running fwemu: its counters, how many flows are "
        "in each state, the flows whose timers run out soonest, and the latest events. "
        "q or Ctrl-C quits.",
    )
    parser.add_argument(
        "--interval",
        type=number("interval", 0.05, 3600, unit=" seconds"),
        default=1.0,
        metavar="SECONDS",
        help="refresh period (default: 1)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one screen and exit (for scripts and logs)"
    )
    client.add_control_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    targets = client.find_run(args.control)
    console = views.stdout_console()
    events_req = Request("events", selector=EVERYTHING, history=RECENT_EVENTS)

    def screen() -> RenderableType:
        # The workers of one run, summed up as one firewall.
        statuses = [r for _, r in client.request_all(targets, Request("status"))]
        flows = [r["flow"] for _, r in client.request_all(targets, Request("flows")) if "flow" in r]
        events = list(client.merged_events(targets, events_req))
        return views.top_view(
            views.merged_status(statuses), flows, events, console.height - _CHROME
        )

    if args.once:
        console.print(screen())
        return 0
    with _keys() as pressed, Live(screen(), console=console, auto_refresh=False) as live:
        while pressed(args.interval) != "q":
            live.update(screen(), refresh=True)
    return 0


@contextmanager
def _keys() -> Iterator[Any]:
    """A function waiting up to N seconds for a key press (the key, or "" if none): in cbreak
    mode when stdin is a terminal, so `q` needs no Enter; otherwise it only sleeps."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None

    def pressed(timeout: float) -> str:
        if fd is None:
            select.select([], [], [], timeout)
            return ""
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode(errors="replace").lower() if ready else ""

    if fd is None:
        yield pressed
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
