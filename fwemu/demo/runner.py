"""Plays the demo: one lab and one fwemu for all cases, then each case in turn.

Cases run one after the other: each takes a few seconds (its policy timer plus a little), and
a block per case reads more easily than five interleaved conversations.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from fwemu.demo.cases import Case, CaseError, Observed, Stage
from fwemu.lab import DEFAULT_INDEX
from fwemu.policy import (
    ExpireAction,
    OutOfStateAction,
    Policy,
    Profile,
    format_duration,
    loads_policy,
)
from fwemu.scenario.timeline import Entry, Notebook, fwemu_entries, merged
from fwemu.testing import Firewall, inline_firewall

POLICY_ORIGIN = "fwemu/demo/policy.toml"
DEFAULT_LAB = "fwemu-demo"
# fwemu writes an event just after acting on it, so an endpoint may see a RST a moment before
# the event is in the file: wait this long before reading a finished case's events.
_SETTLE = 0.2

_RESET_TO = {
    ExpireAction.RESET_BOTH: ("client", "server"),
    ExpireAction.RESET_CLIENT: ("client",),
    ExpireAction.RESET_SERVER: ("server",),
    ExpireAction.SILENT: (),
}


def policy_text() -> str:
    """The demo policy's TOML, as shipped in the package."""
    return resources.files("fwemu.demo").joinpath("policy.toml").read_text(encoding="utf-8")


def load_policy() -> Policy:
    return loads_policy(policy_text(), POLICY_ORIGIN)


@dataclass(frozen=True, slots=True)
class CaseResult:
    """How a case went: what the policy said, what fwemu and the endpoints did, and whether
    that is what the case expects."""

    case: Case
    policy: str  # e.g. "established 2s: reset-both"
    expected_fwemu: tuple[str, ...]  # e.g. ("expire reset-both", "RST to client", ...)
    fwemu: tuple[str, ...]  # what fwemu did, in the same terms
    observed: Observed
    entries: tuple[Entry, ...]

    @property
    def passed(self) -> bool:
        return set(self.expected_fwemu) <= set(self.fwemu) and all(
            self.observed.get(who) == seen for who, seen in self.case.expect.items()
        )

    def describe_observed(self) -> str:
        """The endpoints' observations, each mismatch with what was expected."""
        parts = []
        for who, expected in self.case.expect.items():
            seen = self.observed.get(who, "no observation")
            parts.append(f"{who} {seen}" + ("" if seen == expected else f" (expected {expected})"))
        missing = [what for what in self.expected_fwemu if what not in self.fwemu]
        if missing:
            parts.append(f"fwemu did not: {', '.join(missing)}")
        return ", ".join(parts)


class Listener(Protocol):
    """Told about the demo as it goes, to print it."""

    def started(self, fw: Firewall, start: float) -> None: ...

    def case_started(self, case: Case, policy: str) -> None: ...

    def case_finished(self, result: CaseResult) -> None: ...


def run_demo(
    cases: Sequence[Case], lab: str, listener: Listener, index: int = DEFAULT_INDEX
) -> list[CaseResult]:
    """Bring the lab (`lab`, addresses 10.`index`.x) and fwemu up, play `cases` in order, tear
    everything down (also on error or Ctrl-C: the harness's context manager does)."""
    policy = load_policy()
    rules = {rule.name: rule for rule in policy.rules}
    for case in cases:
        if case.rule not in rules:
            raise CaseError(f"case {case.number}: no rule named {case.rule!r} in {POLICY_ORIGIN}")
    notebook = Notebook()
    results = []
    with inline_firewall(toml=policy_text(), name=lab, index=index) as fw:
        listener.started(fw, time.time())
        for case in cases:
            stage = Stage(fw, rules[case.rule], case, notebook)
            listener.case_started(case, policy_said(case, stage.profile))
            results.append(_play(stage))
            listener.case_finished(results[-1])
    return results


def _play(stage: Stage) -> CaseResult:
    """Run the case's script, then gather fwemu's events about its connection."""
    case, profile = stage.case, stage.profile
    with stage.sockets:
        begin = time.time()
        observed = case.script(stage)
        end = time.time()
    time.sleep(_SETTLE)
    records = fwemu_entries(stage.fw.events(), case.number, stage.port, begin, end)
    return CaseResult(
        case,
        policy_said(case, profile),
        expected_fwemu(case, profile),
        tuple(filter(None, (did(e.event) for e in records if e.event is not None))),
        observed,
        tuple(merged(stage.notebook.entries(case.number), records)),
    )


def policy_said(case: Case, profile: Profile) -> str:
    """What the policy says for the case's flow, e.g. "established 2s: reset-both"."""
    timer = format_duration(getattr(profile.timeouts, case.state))
    action = profile.on_expire.for_phase(case.phase)
    said = f"{case.phase} {timer}: {action}"
    if action is ExpireAction.SILENT:
        said += f"; client's late packets: {profile.out_of_state.for_side(True)}"
    return said


def expected_fwemu(case: Case, profile: Profile) -> tuple[str, ...]:
    """What fwemu must do in the case, by the policy, in the terms of `did`."""
    action = profile.on_expire.for_phase(case.phase)
    expected = [f"expire {action}", *(f"RST to {side}" for side in _RESET_TO[action])]
    if action is ExpireAction.SILENT:
        late = profile.out_of_state.for_side(True)
        expected.append(f"out-of-state {late}")
        if late is OutOfStateAction.RESET:
            expected.append("RST to client")
    return tuple(expected)


def did(record: Mapping[str, Any]) -> str:
    """An event's action in the terms of `expected_fwemu` ("" for bookkeeping events)."""
    kind = record["event"]
    if kind == "expire":
        return f"expire {record['action']}"
    if kind == "reset":
        return f"RST to {record['to']}"
    if kind == "out_of_state":
        return f"out-of-state {record['action']}"
    return ""


def summary(results: Iterable[CaseResult]) -> list[dict[str, Any]]:
    """One record per case: the `--json` summary and the table's rows."""
    return [
        {
            "case": r.case.number,
            "title": r.case.title,
            "policy": r.policy,
            "observed": r.describe_observed(),
            "result": "PASS" if r.passed else "FAIL",
        }
        for r in results
    ]
