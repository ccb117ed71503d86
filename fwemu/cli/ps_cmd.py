"""`fwemu ps`: the fwemus running on this host, one line per run, and how to choose one."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fwemu.cli.argtypes import whole_number
from fwemu.ops import client, views
from fwemu.ops.control import CONTROL_DIR

ORDER = 21  # place in `fwemu --help`: after run

_EPILOG = f"""\
One line per 'fwemu run': the workers of a 'fwemu run --workers N' are one line, with their
queues as a range. NETNS is the network namespace it runs in ('fwemu run --netns NS', or
started inside it; - for the host's own). The other ops commands (flows, top, events, expire,
reload) choose among them with --netns NS, and --queue N when one namespace has several, or
with ${client.ENV_NETNS} and ${client.ENV_QUEUE} set once in a shell.

examples:
  fwemu ps
  fwemu ps --json | jq -r '.[].netns'
  fwemu flows --netns lab1-fw                   the flows of the one in lab1-fw
  export {client.ENV_NETNS}=lab1-fw; fwemu top          the same, for every command after it

In --json, each run is {{"netns", "queues", "protocols" (what its rules queue: ["tcp", "udp"],
as 'fwemu run --proto' chose; [] with --no-rules), "policy", "origin", "flows", "uptime"
(seconds), "started" (epoch seconds), "pid" (the supervisor's with --workers), "speed",
"dry_run", "choose" (the options that choose it), "workers": [{{"queue", "pid", "control"}}]}}.
Exit status: 0 (also when none is running), 2 when the control sockets cannot be read.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ps",
        help="list the fwemus running on this host: netns, queues, policy, flows, uptime",
        description="List the running fwemus, found by their control sockets in "
        f"{CONTROL_DIR}: network namespace, queue(s), policy, flows tracked, uptime, "
        "pid and control socket.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--netns", metavar="NS", help="only the one in this network namespace")
    parser.add_argument(
        "--queue",
        metavar="N",
        type=whole_number("--queue", 0, client.LAST_QUEUE),
        help="only the one serving this queue",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list of runs")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    runs = client.running()
    records = [_record(run, runs) for run in runs if run.selected(args.netns, args.queue)]
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    console = views.stdout_console()
    if records:
        console.print(views.runs_table(records, console.width))
    else:
        console.print("no fwemu is running" + (" that matches" if runs else ""))
    return 0


def _record(run: client.Run, runs: list[client.Run]) -> dict[str, Any]:
    status = run.status
    return {
        "netns": run.netns,
        "queues": list(run.queues),
        # A fwemu from before --proto queued TCP only.
        "protocols": status.get("protocols", ["tcp"]),
        "policy": status["policy"],
        "origin": status["origin"],
        "flows": status["flows"],
        "uptime": round(max(time.time() - float(status["started"]), 0.0), 3),
        "started": status["started"],
        "pid": status["pid"],
        "speed": status["speed"],
        "dry_run": status["dry_run"],
        "choose": run.choice(runs),
        "workers": [
            {"queue": s["queue"], "pid": s["pid"], "control": str(t.path)}
            for t, s in zip(run.targets, run.statuses, strict=True)
        ],
    }
