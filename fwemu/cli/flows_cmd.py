"""`fwemu flows`: the running fwemu's flow table, like `conntrack -L`."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from fwemu.ops import client, views
from fwemu.ops.filters import parse_selector
from fwemu.ops.protocol import Request

ORDER = 22  # place in `fwemu --help`

_EPILOG = """\
MATCH is space-separated KEY=VALUE terms, all of which must hold; a term's comma-separated
values are alternatives. Keys: src, dst, host (address or CIDR; src is the client, dst the
server, host either), sport, dport, port (port or LOW-HIGH), proto (tcp, udp), state, rule.

examples:
  fwemu flows                                   every flow, with the time left on its timer
  fwemu flows --state established,time_wait
  fwemu flows --match 'dst=10.0.2.0/24 dport=5432'
  fwemu flows --match 'proto=udp dport=53'      DNS flows
  fwemu flows --json | jq '.[] | select(.expires_in < 10)'
  fwemu flows --summary                         counts per state and protocol, and per limit
                                                of [limits]: the table's, or the busiest
                                                clients and destinations, against the limit

With 'fwemu run --workers N', the flows of every worker are listed together; in --json each
flow's "queue" says which worker holds it.

A UDP flow's name starts with "udp" (its client sent the first datagram); its states are
UNREPLIED (seen one way), REPLIED (both ways) and STREAM (both ways, past udp_stream_after).
The TIMER column is the phase whose timer runs (embryonic, established, half_closed, closing,
time_wait, close; udp, udp_stream) and LEFT the seconds before it expires, unless a packet
refreshes it.
Exit status: 0, or 2 when no fwemu can be asked (one line on stderr says why).
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "flows",
        help="list the flows a running fwemu tracks, with their timers",
        description="List the flows the running fwemu tracks: client and server, conntrack "
        "state, the timer that runs and the time left on it, the rule that matched, packets "
        "and bytes each way, and age. Soonest expiry first.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--state", metavar="S[,S]", help="only flows in these states")
    parser.add_argument("--match", metavar="MATCH", default="", help="only flows matching MATCH")
    parser.add_argument("--json", action="store_true", help="print a JSON list of flows")
    parser.add_argument(
        "--summary",
        action="store_true",
        help="counts only: flows per state and protocol, and the policy's limits against their "
        "counts",
    )
    client.add_control_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    text = args.match + (f" state={args.state}" if args.state else "")
    req = Request("flows", selector=parse_selector(text))
    targets = client.chosen_run(args)
    records = client.request_all(targets, req)
    flows = views.by_deadline(r["flow"] for _, r in records if "flow" in r)
    if args.summary:
        return _summary(flows, targets, args.json)
    if args.json:
        print(json.dumps(flows, indent=2))
        return 0
    console = views.stdout_console()
    if not flows:
        console.print("no flows match" if text.strip() else "no flows")
        return 0
    console.print(views.flows_table(flows, console.width))
    console.print(views.flows_line(flows))
    return 0


# Clients, servers or pools shown per limit in the summary.
_BUSIEST = 5


def _summary(flows: list[dict[str, Any]], targets: tuple[client.Target, ...], as_json: bool) -> int:
    """Flows per state and protocol, and each worker's limits against their counts (with
    --workers, each worker counts the flows of its own queue)."""
    limits = [
        usage
        for _, status in client.request_all(targets, Request("status"))
        for usage in status.get("limits", [])
    ]
    states = dict(Counter(flow["state"] for flow in flows))
    if as_json:
        protocols = views.protocol_counts(flows)
        summary = {"flows": len(flows), "states": states, "protocols": protocols, "limits": limits}
        print(json.dumps(summary, indent=2))
        return 0
    console = views.stdout_console()
    console.print(views.flows_line(flows))
    if limits:
        console.print(views.limits_table(limits, _BUSIEST, console.width))
    else:
        console.print("no limits in the policy")
    return 0
