"""`fwemu expire`: expire flows of the running fwemu now, as if their timers ran out, or set
their timers to run out later (`--in`)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from fwemu.cli.argtypes import duration
from fwemu.ops import client, views
from fwemu.ops.filters import EVERYTHING, FilterError, parse_flow, parse_selector
from fwemu.ops.protocol import MAX_IN, Request
from fwemu.policy import ExpireAction
from fwemu.policy.duration import format_duration

ORDER = 25  # place in `fwemu --help`

_EPILOG = """\
FLOW is a flow as 'fwemu flows' prints it, client first: 10.0.0.1:40000>10.0.0.2:80 (spaces
around > are allowed; IPv6 as [fd00::1]:40000; 'udp 10.0.0.1:5353>10.0.0.2:53' for a UDP flow
only, without a protocol either). MATCH is as in 'fwemu flows --match'.

The flows are expired exactly as their timer would have: forgotten (later packets are
out-of-state), with RSTs injected if the policy's on_expire says so for their phase, or as
--action says. It answers "what does my application do if the firewall kills this connection
right now?". A UDP flow is forgotten silently whatever --action says: there is nothing to reset
(its late datagrams meet [out_of_state] udp_from_client and udp_from_server).

With --in DURATION the flows are not expired now: their timers are set to run out DURATION from
now (as 'conntrack -U --timeout' does), and then the policy's on_expire applies. Each flow keeps
that timer until its next packet, which arms the policy's timer again, so only a flow that
stays idle expires at the set time: "what if this idle connection were 30 s from its timeout?".

examples:
  fwemu expire '10.201.1.2:40000>10.201.2.2:5432'
  fwemu expire --match 'dport=5432' --action reset-client
  fwemu expire --all --action silent           a black hole for every connection
  fwemu expire --match 'dport=5432' --in 30s   their timers run out in 30 s unless traffic comes

Exit status: 0 when flows were expired (or re-timed), 1 when none matched, 2 on errors.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "expire",
        help="expire flows of a running fwemu now, as if their timers ran out",
        description="Expire flows now, as if their timers ran out, and report what was done: "
        "which flows, and which RSTs were injected to whom.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("flow", nargs="?", metavar="FLOW", help="one flow: CLIENT:PORT>SERVER:PORT")
    which.add_argument("--match", metavar="MATCH", help="every flow matching MATCH")
    which.add_argument("--all", action="store_true", help="every flow")
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--action",
        choices=[a.value for a in ExpireAction],
        help="what to do instead of the policy's on_expire for each flow's phase",
    )
    when.add_argument(
        "--in",
        dest="seconds",
        metavar="DURATION",
        type=duration("--in", MAX_IN),
        help="set the flows' timers to run out DURATION from now (e.g. 30s, 2m) instead",
    )
    parser.add_argument("--json", action="store_true", help="print the events as JSON lines")
    client.add_control_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.all:
        selector = EVERYTHING
    elif args.flow is not None:
        selector = parse_flow(args.flow)
    else:
        selector = parse_selector(args.match)
        if selector == EVERYTHING:
            raise FilterError("--match needs at least one KEY=VALUE term (or use --all)")
    action = None if args.action is None else ExpireAction(args.action)
    req = Request("expire", selector=selector, all=args.all, action=action, seconds=args.seconds)
    summary: Counter[str] = Counter()
    # Every worker of a run: each expires (or re-times) the matching flows it holds.
    for _, record in client.request_all(client.chosen_run(args), req):
        if "event" in record:
            event = record["event"]
            print(json.dumps(event) if args.json else views.event_line(event), flush=True)
        elif "flow" in record:
            flow = record["flow"]
            print(json.dumps(flow) if args.json else _retimed_line(flow), flush=True)
        else:
            summary.update({k: record.get(k, 0) for k in ("expired", "injected", "retimed")})
    if not args.json:
        print(_summary(summary, args.seconds))
    return 0 if summary["expired"] or summary["retimed"] else 1


def _retimed_line(flow: dict[str, Any]) -> str:
    left = views.seconds(flow["expires_in"])
    return f"retimed  {views.flow_name(flow)} {flow['state']}: expires in {left}"


def _summary(summary: Counter[str], seconds: float | None) -> str:
    if seconds is not None:
        if not summary["retimed"]:
            return "no flow matched: no timer set"
        return (
            f"set the timers of {views.flow_count(summary['retimed'])} to run out in "
            f"{format_duration(seconds)}, unless a packet comes first"
        )
    expired, injected = summary["expired"], summary["injected"]
    if not expired:
        return "no flow matched: nothing expired"
    rsts = f"{injected} RST" + ("" if injected == 1 else "s")
    return f"expired {views.flow_count(expired)}, injected {rsts}"
