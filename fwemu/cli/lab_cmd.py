"""`fwemu lab up|down|list|exec`: a client <-> fw <-> server network-namespace lab."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from fwemu.adapters import peers
from fwemu.lab import netns, plan
from fwemu.lab.plan import DEFAULT_INDEX, DEFAULT_NAME, SIDES, LabPlan, Side, namespace_name

ORDER = 30  # place in `fwemu --help`

_EXAMPLES = """\
examples:
  fwemu lab up                                  # lab "fwemu", index 201
  fwemu lab exec fwemu client -- ping -c1 10.201.2.2
  fwemu run --netns fwemu-fw --preset linux     # fwemu between client and server
  fwemu lab list --json
  fwemu lab down
"""
_PIPE_WIDTH = 200


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="create and remove a client <-> fw <-> server network-namespace lab",
        # The plan module's docstring documents the addressing; its first line is for developers.
        description=(plan.__doc__ or "").split("\n\n", 1)[-1],
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = actions.add_parser("up", help="create the lab (does nothing if it is already up)")
    _add_name(up)
    up.add_argument(
        "--index",
        type=int,
        metavar="N",
        help="the N in 10.N.1.0/24 and fd00:N:1::/64, 1..250 (default: the one the lab is up "
        f"with, else {DEFAULT_INDEX})",
    )
    up.set_defaults(func=_up)

    down = actions.add_parser(
        "down",
        help="stop what runs in the lab (SIGTERM, then SIGKILL after "
        f"{netns.STOP_GRACE:g} s), remove its namespaces and links",
    )
    _add_name(down)
    down.set_defaults(func=_down)

    listing = actions.add_parser(
        "list", help="show the labs on this host, and the fwemu (or other queue) serving each"
    )
    listing.add_argument("--json", action="store_true", help="print a JSON array instead")
    listing.set_defaults(func=_list)

    run = actions.add_parser(
        "exec",
        help="run a command inside one namespace of a lab: it takes this process's place (its "
        "pid, so signals reach it, and its exit status)",
        usage="fwemu lab exec NAME {client,fw,server} -- COMMAND [ARG ...]",
    )
    run.add_argument("name", metavar="NAME", help="the lab's name")
    run.add_argument("side", choices=SIDES, help="which namespace to run in")
    run.add_argument("command", nargs=argparse.REMAINDER, help="the command, after '--'")
    run.set_defaults(func=_exec)


def _add_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", nargs="?", default=DEFAULT_NAME, metavar="NAME", help="default: %(default)s"
    )


def _up(args: argparse.Namespace) -> int:
    index = args.index
    if index is None:  # a lab that is up stays as it is, whatever its index
        index = netns.up_index(args.name)
    lab = LabPlan.create(args.name, DEFAULT_INDEX if index is None else index)
    state = "is up" if netns.up(lab) else "was already up, unchanged"
    print(f"lab {lab.name} {state} (index {lab.index}):")
    for end in lab.endpoints:
        print(f"  {end.namespace:<{len(lab.name) + 8}} {end.ifname:<5} {'  '.join(end.addresses)}")
    print(
        "next steps:\n"
        f"  fwemu lab exec {lab.name} client -- ping -c1 {lab.server.ipv4}\n"
        f"  fwemu run --netns {namespace_name(lab.name, 'fw')} --preset linux"
        "    # fwemu inline between client and server\n"
        f"  fwemu lab down {lab.name}"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    # Stopped first and each one named: left running, they would go on in namespaces with no
    # name (fwemu keeping its control socket), and nothing should vanish unsaid.
    for stop in netns.stop_processes(args.name):
        how = "SIGTERM"
        if stop.signal == signal.SIGKILL:
            how = f"SIGKILL: still running {netns.STOP_GRACE:g} s after SIGTERM"
        print(f"stopped {stop.process.describe()} ({how})")
    if netns.down(args.name):
        print(f"lab {args.name} removed")
    else:
        print(f"nothing to remove: no namespace of lab {args.name} exists")
    return 0


def _list(args: argparse.Namespace) -> int:
    labs = netns.list_labs()
    served = {info.name: _served(info) for info in labs}
    if args.json:
        listed = [
            {
                **info.to_dict(),
                "fwemu": [
                    {"namespace": namespace_name(info.name, side), **peer.to_dict()}
                    for side, peer in served[info.name]
                ],
            }
            for info in labs
        ]
        print(json.dumps(listed, indent=2))
        return 0
    if not labs:
        print("no labs; create one with 'fwemu lab up'")
        return 0
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)  # as fwemu ps's
    for heading in ("lab", "index", "state", *SIDES, "fwemu"):
        table.add_column(heading.upper(), overflow="fold")  # wrap rather than hide part of a name
    for info in labs:
        addresses = info.to_dict()["addresses"]
        table.add_row(
            info.name,
            "?" if info.index is None else str(info.index),
            "up" if info.up else "partial",
            *("\n".join(addresses.get(side, ["(missing)"])) for side in SIDES),
            "\n".join(
                peer.describe() if side == "fw" else f"{side}: {peer.describe()}"
                for side, peer in served[info.name]
            )
            or "-",
        )
    # Rich assumes 80 columns when output is not a terminal; pipes and logs get whole rows.
    Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH).print(table)
    return 0


def _served(info: netns.LabInfo) -> list[tuple[Side, peers.Peer]]:
    """What serves NFQUEUEs in each of the lab's namespaces: a fwemu, or another program."""
    return [
        (side, peer)
        for side in info.namespaces
        for peer in netns.call_in_netns(namespace_name(info.name, side), peers.running)
    ]


def _exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    netns.replace_with(args.name, args.side, command)
