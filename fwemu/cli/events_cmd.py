"""`fwemu events`: the running fwemu's events, recent and (with --follow) live."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fwemu.cli.argtypes import whole_number
from fwemu.ops import client, views
from fwemu.ops.filters import EVENT_KEYS, parse_selector
from fwemu.ops.protocol import DEFAULT_HISTORY, Request

ORDER = 24  # place in `fwemu --help`

_EPILOG = f"""\
Each event is one JSON object per line, exactly as 'fwemu run --events' writes it: ts (epoch
seconds), event (new, state, expire, reset, unreachable, out_of_state, out_of_state_summary,
delete, limit, limit_summary, probe, syn_flood), flow (src, sport, dst, dport: client first;
proto: tcp or udp), state, phase, action, rule, and the event's own fields. An unreachable event
is an ICMP port unreachable fwemu sent (to, cause: out_of_state or limit).

FILTER is space-separated KEY=VALUE terms, all of which must hold; a term's comma-separated
values are alternatives. Keys: {", ".join(EVENT_KEYS)}.

With 'fwemu run --workers N', the events of every worker come merged in time order.

examples:
  fwemu events                                   the last {DEFAULT_HISTORY} events
  fwemu events --follow --filter 'event=expire,reset'
  fwemu events --filter 'proto=udp event=expire,unreachable'   UDP flows forgotten, late ones told
  fwemu events -f --filter 'port=5432' --history 0 | jq -c '{{event, state, action}}'
  fwemu events -f --lines                        readable lines instead of JSON
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "events",
        help="show a running fwemu's events (recent ones, then live with --follow)",
        description="Print the running fwemu's recent events (it keeps the latest 1000), and "
        "with --follow every new one as it happens, until Ctrl-C or fwemu stops.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--follow", "-f", action="store_true", help="then print live events")
    parser.add_argument("--filter", metavar="FILTER", default="", help="only matching events")
    parser.add_argument(
        "--history",
        type=whole_number("history", 0),
        default=DEFAULT_HISTORY,
        metavar="N",
        help=f"how many recent events to print first (default: {DEFAULT_HISTORY})",
    )
    parser.add_argument(
        "--lines", action="store_true", help="one readable line per event instead of JSON"
    )
    client.add_control_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    selector = parse_selector(args.filter, EVENT_KEYS)
    req = Request("events", selector=selector, follow=args.follow, history=args.history)
    targets = client.chosen_run(args)
    for event in client.merged_events(targets, req):
        print(views.event_line(event) if args.lines else json.dumps(event), flush=True)
    if args.follow:
        where = ", ".join(str(t.path) for t in targets)
        print(f"fwemu: the fwemu at {where} stopped", file=sys.stderr)
    return 0
