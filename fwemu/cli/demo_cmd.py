"""`fwemu demo`: watch an emulated firewall forget and reset connections, in about 15 seconds."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fwemu.adapters import host
from fwemu.cli.argtypes import whole_number
from fwemu.demo.cases import CASES, CLIENT_TIMEOUT, Case
from fwemu.demo.runner import DEFAULT_LAB, CaseResult, policy_text, run_demo, summary
from fwemu.lab import DEFAULT_INDEX
from fwemu.lab.plan import MAX_INDEX, MIN_INDEX
from fwemu.policy import format_duration
from fwemu.scenario.timeline import Entry
from fwemu.testing import Firewall

ORDER = 10  # place in `fwemu --help`

DESCRIPTION = f"""\
Bring up a lab (client <-> fw <-> server network namespaces), run fwemu inline in the fw
namespace with a built-in policy whose timers are a second or two, and script a client and a
server through five connections, one per case:

  1  handshake abandoned: the server never answers the SYN; at the embryonic timer fwemu resets
     the client, whose connect() fails with ECONNREFUSED
  2  idle connection reset: connect, exchange, go idle; at the established timer fwemu resets
     both sides, and both get ECONNRESET
  3  half-closed connection reset: the client shuts down its sending side, the server keeps the
     connection half-open; at the half-closed timer fwemu resets both
  4  silent expiry, the black hole: fwemu forgets the flow without a word; the client's next
     write is dropped, and it waits for a reply until its own {CLIENT_TIMEOUT:g} s socket timeout
  5  late packet answered by a RST: the flow is forgotten silently, but the client's next
     packet gets a RST (like an AWS NAT gateway): ECONNRESET at once

It prints a timeline of what each endpoint saw and what fwemu did (from its JSON events), then a
summary. Everything (namespaces, rules, fwemu) is removed at the end, on error and on Ctrl-C.
Needs root.
"""

EPILOG = """\
examples:
  fwemu demo                   all five cases (about 15 s)
  fwemu demo --case 4 --case 5 only the silent-expiry cases
  fwemu demo --lab x --index 7 in lab x, up already with index 7 (its addresses 10.7.x.x)
  fwemu demo --json | jq .     the timeline as JSON lines: {"t", "case", "who", "what", "event"}
                               (fwemu's event record), then one {"case", "result", ...} per case
  fwemu demo --show-policy     the policy it runs; a starting point for your own

exit status: 0 when every case behaved as expected, 1 when one did not (so the demo doubles as
a smoke test), 2 when it could not run, 130 when interrupted.
"""

# Output width when stdout is not a terminal (no width to fit), as for `fwemu check`: wide enough
# that timeline lines and summary cells rarely wrap.
_PIPE_WIDTH = 120
_WHO_STYLE = {"client": "cyan", "server": "magenta", "fwemu": "bold yellow"}
_RESULT_STYLE = {"PASS": "bold green", "FAIL": "bold red"}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="watch fwemu forget and reset connections in a throwaway lab (needs root)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--lab",
        default=DEFAULT_LAB,
        metavar="NAME",
        help=f"name of the lab to create and remove (default: {DEFAULT_LAB})",
    )
    parser.add_argument(
        "--index",
        type=whole_number("index", MIN_INDEX, MAX_INDEX),
        default=DEFAULT_INDEX,
        metavar="N",
        help=f"the lab's addresses, 10.N.1.0/24 and fd00:N:1::/64, as 'fwemu lab up --index' "
        f"(default: {DEFAULT_INDEX})",
    )
    parser.add_argument(
        "--case",
        dest="cases",
        action="append",
        type=int,
        choices=[case.number for case in CASES],
        metavar="N",
        help="run only case N (repeatable; default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print the timeline as JSON lines")
    parser.add_argument(
        "--show-policy", action="store_true", help="print the demo's policy (TOML) and exit"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.show_policy:
        sys.stdout.write(policy_text())
        return 0
    host.require_root("fwemu demo")
    cases = [case for case in CASES if args.cases is None or case.number in args.cases]
    printer: JsonPrinter | TextPrinter = JsonPrinter() if args.json else TextPrinter()
    began = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_demo(cases, args.lab, printer, args.index)
        printer.finish(results, time.monotonic() - began)
    except KeyboardInterrupt:
        print("fwemu demo: interrupted; the lab and fwemu are gone", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader left (`fwemu demo --json | head`): stop quietly, as the lab is gone by now.
        # Python would report the failed flush of stdout at exit, so point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if all(r.passed for r in results) else 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the lab and fwemu are removed."""
    raise KeyboardInterrupt


class JsonPrinter:
    """Timeline entries as JSON lines as each case ends, then one summary line per case."""

    def __init__(self) -> None:
        self.start = 0.0

    def started(self, fw: Firewall, start: float) -> None:
        self.start = start

    def case_started(self, case: Case, policy: str) -> None:
        pass

    def case_finished(self, result: CaseResult) -> None:
        for entry in result.entries:
            print(json.dumps(entry.to_dict(self.start)), flush=True)

    def finish(self, results: list[CaseResult], seconds: float) -> None:
        for record in summary(results):
            print(json.dumps(record), flush=True)


class TextPrinter:
    """The timeline for people: colour on a terminal, plain text in a pipe."""

    def __init__(self) -> None:
        self.console = Console(highlight=False, soft_wrap=True)
        if not self.console.is_terminal:
            self.console.width = _PIPE_WIDTH
        self.start = 0.0
        self.lab = ""

    def started(self, fw: Firewall, start: float) -> None:
        self.start = start
        plan = fw.plan
        self.lab = plan.name
        self.console.print(
            f"fwemu demo: lab {plan.name} up: client {fw.client_address()} <-> fwemu in "
            f"{plan.name}-fw <-> server {fw.server_address()}; the policy: fwemu demo --show-policy"
        )

    def case_started(self, case: Case, policy: str) -> None:
        expect = ", ".join(f"{who} {seen}" for who, seen in case.expect.items())
        self.console.print()
        self.console.print(Text(f"case {case.number}: {case.title}", style="bold"))
        self.console.print(Text(f"  policy: {policy}; expected: {expect}", style="dim"))

    def case_finished(self, result: CaseResult) -> None:
        for entry in result.entries:
            self.console.print(self._line(entry))

    def _line(self, entry: Entry) -> Text:
        line = Text(f"  {entry.ts - self.start:+6.2f}  case {entry.case}  ")
        line.append(f"{entry.who:<7}", style=_WHO_STYLE[entry.who])
        line.append(f" {entry.what}")
        return line

    def finish(self, results: list[CaseResult], seconds: float) -> None:
        table = Table(box=None, title="summary", title_justify="left", padding=(0, 2, 0, 0))
        for column in ("", "case", "policy said", "endpoints observed"):
            table.add_column(column)
        for row in summary(results):
            result = Text(row["result"], style=_RESULT_STYLE[row["result"]])
            table.add_row(result, str(row["case"]), row["policy"], row["observed"])
        self.console.print()
        self.console.print(table)
        failed = sum(not r.passed for r in results)
        verdict = f"{failed} of {len(results)} cases FAILED" if failed else "all cases passed"
        took = format_duration(seconds, resolution=0.1)
        self.console.print(f"{verdict} in {took}; lab {self.lab} and fwemu removed")
