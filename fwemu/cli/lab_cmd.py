"""`fwemu lab up|down|list|exec`: a client <-> fw <-> server network-namespace lab."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from fwemu.lab import netns, plan
from fwemu.lab.plan import DEFAULT_INDEX, DEFAULT_NAME, SIDES, LabPlan, namespace_name

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
        default=DEFAULT_INDEX,
        metavar="N",
        help=f"the N in 10.N.1.0/24 and fd00:N:1::/64, 1..250 (default {DEFAULT_INDEX})",
    )
    up.set_defaults(func=_up)

    down = actions.add_parser("down", help="remove the lab's namespaces and links")
    _add_name(down)
    down.set_defaults(func=_down)

    listing = actions.add_parser("list", help="show the labs on this host")
    listing.add_argument("--json", action="store_true", help="print a JSON array instead")
    listing.set_defaults(func=_list)

    run = actions.add_parser(
        "exec",
        help="run a command inside one namespace of a lab, exiting with its status",
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
    lab = LabPlan.create(args.name, args.index)
    netns.up(lab)
    print(f"lab {lab.name} is up (index {lab.index}):")
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
    if netns.down(args.name):
        print(f"lab {args.name} removed")
    else:
        print(f"nothing to remove: no namespace of lab {args.name} exists")
    return 0


def _list(args: argparse.Namespace) -> int:
    labs = netns.list_labs()
    if args.json:
        print(json.dumps([info.to_dict() for info in labs], indent=2))
        return 0
    if not labs:
        print("no labs; create one with 'fwemu lab up'")
        return 0
    table = Table()
    for heading in ("lab", "index", "state", *SIDES):
        table.add_column(heading, overflow="fold")  # wrap rather than hide part of a name
    for info in labs:
        addresses = info.to_dict()["addresses"]
        table.add_row(
            info.name,
            "?" if info.index is None else str(info.index),
            "up" if info.up else "partial",
            *("\n".join(addresses.get(side, ["(missing)"])) for side in SIDES),
        )
    # Rich assumes 80 columns when output is not a terminal; pipes and logs get whole rows.
    Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH).print(table)
    return 0


def _exec(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    returncode = netns.run_in(args.name, args.side, command).returncode
    # A command killed by signal N reports -N; shells report that as 128 + N.
    return 128 - returncode if returncode < 0 else returncode
