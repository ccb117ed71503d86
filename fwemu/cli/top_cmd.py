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

from rich.console import Console, RenderableType
from rich.live import Live

from fwemu.cli.argtypes import number
from fwemu.ops import client, views
from fwemu.ops.control import ControlError
from fwemu.ops.filters import EVERYTHING
from fwemu.ops.protocol import Request

ORDER = 23  # place in `fwemu --help`


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "top",
        help="live view of a running fwemu: flows, counts per state, recent events",
        description="A refreshing view of the running fwemu: its counters (packets, verdicts, "
        "injected packets, expiries, out-of-state packets), how many flows are in each state, "
        "the flows whose timers run out soonest, and the latest events. When fwemu stops or "
        "restarts, it waits and reconnects. q or Ctrl-C quits.",
        epilog="The flow table keeps STATE, TIMER, LEFT and RULE whole: in a narrow terminal "
        "its BYTES, PKTS and AGE columns go first (fwemu flows --json has them all).",
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
    console = views.stdout_console()
    targets = client.chosen_run(args)
    if args.once:
        # A line fewer: the shell's prompt comes after it, and must not scroll the header away.
        console.print(_screen(targets, console, console.height - 1))
        return 0
    with (
        _keys() as pressed,
        Live(_screen(targets, console), console=console, auto_refresh=False) as live,
    ):
        while pressed(args.interval) != "q":
            try:
                # After a fwemu went away: find it again, as it was chosen (it may come back
                # with other workers, or another may have started beside it).
                targets = targets or client.chosen_run(args)
                screen = _screen(targets, console)
            except ControlError as err:
                targets, screen = (), views.waiting_view(str(err))
            live.update(screen, refresh=True)
    return 0


def _screen(
    targets: tuple[client.Target, ...], console: Console, height: int | None = None
) -> RenderableType:
    """One screen (of `height` lines, the terminal's by default) of the workers of one run,
    summed up as one firewall."""
    statuses = [r for _, r in client.request_all(targets, Request("status"))]
    flows = [r["flow"] for _, r in client.request_all(targets, Request("flows")) if "flow" in r]
    events_req = Request("events", selector=EVERYTHING, history=views.RECENT_EVENTS)
    events = list(client.merged_events(targets, events_req))
    status = client.merged_status(statuses)
    return views.top_view(status, flows, events, console.width, height or console.height)


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
