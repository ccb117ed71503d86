"""Scenario results as text for people: one line per scenario, and for a failure what was
expected, what happened instead, and the timeline of both endpoints and fwemu's events.

Times in a timeline are scenario time (wall-clock seconds since the steps began, times the
speed), the clock the scenario file is written in.
"""

from __future__ import annotations

from collections.abc import Iterable

from fwemu.scenario.model import show_counts
from fwemu.scenario.runner import ScenarioResult, StepResult, format_time

_INDENT = "    "


def verdict(result: ScenarioResult) -> str:
    if result.error is not None:
        return "ERROR"
    return "PASS" if result.passed else "FAIL"


def headline(result: ScenarioResult) -> str:
    """e.g. "PASS  aws-nlb-idle-pool  aws-nlb at speed 100, 4.4s  (tests/scenarios/...)"."""
    scenario = result.scenario
    return (
        f"{verdict(result):<5} {scenario.name}  {scenario.policy.name} at speed "
        f"{scenario.speed:g}, {format_time(result.seconds)}  ({scenario.origin})"
    )


def details(result: ScenarioResult) -> list[str]:
    """What a person needs to see why it failed (empty for a pass)."""
    if result.passed:
        return []
    lines = [f"  {result.error}"] if result.error is not None else []
    lines += [f"  {problem}" for problem in result.problems]
    lines += ["  steps:", *(_INDENT + _step_line(r) for r in result.steps)]
    lines += [f"  timeline (scenario time, speed {result.scenario.speed:g}):"]
    lines += [_INDENT + line for line in timeline(result)] or [f"{_INDENT}(nothing happened)"]
    return lines


def timeline(result: ScenarioResult) -> list[str]:
    """The merged timeline, one line per entry: time, who, what."""
    speed = result.scenario.speed
    return [
        f"{format_time((entry.ts - result.start) * speed):>10}  {entry.who:<7} {entry.what}"
        for entry in result.timeline
    ]


def _step_line(result: StepResult) -> str:
    step = result.step
    where = f"line {step.line}: " if step.line is not None else ""
    wanted = f"expect {step.expect if step.counts is None else show_counts(step.counts)}"
    if result.outcome is None:
        return f"{step.side} {step.number:>2} {step.label:<10} {wanted}: not run  ({where[:-2]})"
    mark = "ok " if result.problem is None else "BAD"
    seen = f"{result.outcome} ({result.detail})" if result.detail != result.outcome else ""
    if result.counts is not None:  # a count step: how many connections ended how
        seen = result.detail
    return (
        f"{mark} {step.side} {step.number:>2} {step.label:<10} at {format_time(result.began)}: "
        f"{seen or result.outcome} after {format_time(result.took)}"
        + ("" if result.problem is None else f"  <- {result.problem}")
        + (f"  ({where[:-2]})" if where else "")
    )


def totals(results: Iterable[ScenarioResult], seconds: float) -> str:
    results = list(results)
    failed = sum(not r.passed for r in results)
    took = format_time(seconds)
    if len(results) == 1:
        return f"the scenario {'FAILED' if failed else 'passed'} in {took}"
    if not failed:
        return f"all {len(results)} scenarios passed in {took}"
    return f"{failed} of {len(results)} scenarios FAILED in {took}"
