"""`fwemu test SCENARIO...`: run policy regression scenarios, each in a lab of its own."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from fwemu.adapters import host
from fwemu.cli.argtypes import whole_number
from fwemu.errors import FwemuError
from fwemu.scenario.junit import junit_xml
from fwemu.scenario.loader import ScenarioError, load_scenario
from fwemu.scenario.model import Scenario
from fwemu.scenario.report import details, headline, timeline, totals
from fwemu.scenario.runner import ScenarioResult, run_scenarios

ORDER = 15  # place in `fwemu --help`: after demo

DESCRIPTION = """\
Run scenario files: each brings up its own lab (client <-> fw <-> server namespaces), runs
fwemu inline with the scenario's policy and speed, plays the client's and the server's steps,
and checks what each observed (ok, reset, refused, timeout, eof; and when) and which fwemu
events happened. A failed scenario prints what was expected, what happened instead, and the
timeline of both endpoints and fwemu's events. The file format is in docs/testing.md. Needs root.
"""

EPILOG = """\
examples:
  fwemu test tests/scenarios/*.toml --jobs 2     the shipped scenarios, two labs at a time
  fwemu test mine.toml -v                        with the timeline even when it passes
  fwemu test *.toml --junit report.xml           a JUnit XML report for CI as well

exit status: 0 when every scenario passed, 1 when one failed (or could not run), 2 when a
scenario file is invalid (every problem is listed, one line each), 130 when interrupted.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "test",
        help="run policy regression scenarios, each in a throwaway lab (needs root)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO", help="scenario files (TOML)")
    parser.add_argument(
        "-j",
        "--jobs",
        type=whole_number("jobs", 1),
        default=1,
        metavar="N",
        help="run N scenarios at a time, each in its own lab (default: 1)",
    )
    parser.add_argument(
        "--junit", type=Path, metavar="FILE", help="also write a JUnit XML report to FILE"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print every scenario's timeline, not only failures'",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    scenarios = _load(args.scenarios)
    if args.junit is not None:
        host.check_writable(args.junit, "the JUnit report")
    host.require_root("fwemu test")
    console = Console(highlight=False, soft_wrap=True)
    began = time.monotonic()
    with _Progress(len(scenarios)) as progress:

        def finished(result: ScenarioResult) -> None:
            progress.done(result.scenario)
            lines = [headline(result), *details(result)]
            if args.verbose and result.passed:
                lines += ["  timeline:", *(f"    {line}" for line in timeline(result))]
            progress.print("\n".join(lines))

        results = run_scenarios(
            scenarios, jobs=args.jobs, started=progress.started, finished=finished
        )
    console.print(totals(results, time.monotonic() - began))
    if args.junit is not None:
        _write(args.junit, junit_xml(results))
    return 0 if all(r.passed for r in results) else 1


def _load(paths: list[str]) -> list[Scenario]:
    """Every scenario, or one error listing the problems of every broken file."""
    scenarios, problems = [], []
    for path in paths:
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as err:
            problems += err.problems
    if problems:
        raise ScenarioError(problems)
    return scenarios


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise FwemuError(f"cannot write the JUnit report {path}: {err.strerror or err}") from None


class _Progress:
    """A live bar of running and finished scenarios on a terminal (stderr); nothing in a pipe.
    Result lines print above it as scenarios finish."""

    def __init__(self, total: int) -> None:
        self.console = Console(stderr=True)
        self.out = Console(highlight=False, soft_wrap=True)
        self.lock = threading.Lock()
        self.running: list[str] = []
        self.live = self.console.is_terminal
        self.bar = Progress(
            TextColumn("[bold]fwemu test"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task("", total=total)

    def __enter__(self) -> _Progress:
        if self.live:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bar.stop()

    def started(self, scenario: Scenario) -> None:
        with self.lock:
            self.running.append(scenario.name)
            self._show()

    def done(self, scenario: Scenario) -> None:
        with self.lock:
            self.running.remove(scenario.name)
            self.bar.advance(self.task)
            self._show()

    def _show(self) -> None:
        self.bar.update(self.task, description=f"running: {', '.join(self.running)}")

    def print(self, text: str) -> None:
        # While the bar is live, rich redirects stdout to print above it.
        with self.lock:
            self.out.print(text, markup=False)
