"""`fwemu reload`: make the running fwemu enforce its edited (or another) policy."""

from __future__ import annotations

import argparse
import os
from typing import Any

from fwemu.ops import client
from fwemu.ops.control import ControlError
from fwemu.ops.protocol import Request

ORDER = 26  # place in `fwemu --help`

_EPILOG = """\
Every tracked flow is kept: it is matched against the new policy's rules and its timer is
re-armed from its last packet under the new timeouts (a flow idle for longer than its new
timeout expires at once). An invalid policy is rejected with its problems and the old one
stays in force. After --policy/--preset, later reloads (and SIGHUP) read the new one.
A preset is part of fwemu and does not change while it runs: reloading it changes nothing.

'kill -HUP <pid of fwemu run>' does the same as 'fwemu reload' without options; its outcome
is in fwemu's log.

With 'fwemu run --workers N', every worker reloads and reports on its own line ([q<queue>]).

examples:
  fwemu reload                          re-read the policy file fwemu was started with
  fwemu reload --policy strict.toml     switch to another file
  fwemu reload --preset aws-nlb         switch to a preset

Exit status: 0 when the policy was applied, 2 when it was rejected or no fwemu could be asked.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reload",
        help="apply an edited (or another) policy to a running fwemu, keeping every flow",
        description="Make the running fwemu re-read its policy file, or switch to another "
        "policy file or preset, without losing any tracked flow.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--policy", metavar="FILE", help="switch to this policy file")
    which.add_argument("--preset", metavar="NAME", help="switch to this preset")
    client.add_control_argument(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    # The daemon's working directory is not ours: send an absolute path.
    policy = None if args.policy is None else os.path.abspath(args.policy)
    req = Request("reload", policy=policy, preset=args.preset)
    # Every worker of a run reloads on its own; each says how it went.
    said, rejected = client.reload_each(client.chosen_run(args), req)
    for line in said:
        print(line)
    if rejected:
        raise ControlError("\n".join(rejected))
    return 0
