"""What a person (and a CI system) reads about a result: built by hand, no lab needed."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from fwemu.scenario.junit import junit_xml
from fwemu.scenario.loader import loads_scenario
from fwemu.scenario.model import Outcome, show_counts
from fwemu.scenario.report import details, headline, totals
from fwemu.scenario.runner import ScenarioResult, StepResult, _judge
from fwemu.scenario.timeline import Entry, describe

from .test_loader import MINIMAL

SCENARIO = loads_scenario(MINIMAL, "nlb.toml")
START = 1_000.0
EXPIRE = {
    "ts": START + 3.5,
    "event": "expire",
    "flow": {"src": "10.9.1.2", "sport": 4000, "dst": "10.9.2.2", "dport": 8080},
    "state": "ESTABLISHED",
    "phase": "established",
    "action": "silent",
    "rule": "default",
    "idle": 3.5,
    "timeout": 3.5,
}
TIMELINE = (
    Entry(START + 0.1, 0, "client", "connected to 10.9.2.2:8080 from 10.9.1.2:4000"),
    Entry(START + 3.5, 0, "fwemu", "expire ESTABLISHED after 3.50s idle: silent", EXPIRE),
    Entry(START + 3.6, 0, "client", "recv: no answer within 0.1s (its socket timeout)"),
)


def result(*, passed: bool) -> ScenarioResult:
    listen, (connect, send, recv) = SCENARIO.server[0], SCENARIO.client
    last = (
        StepResult(recv, Outcome.RESET, "ECONNRESET", 360.0, 0.1)
        if passed
        else StepResult(
            recv, Outcome.TIMEOUT, "timeout", 360.0, 10.0, "expected reset, got timeout after 10s"
        )
    )
    steps = (
        StepResult(connect, Outcome.OK, "connected", 10.0, 1.0),
        StepResult(send, Outcome.OK, "sent", 11.0, 0.0),
        last,
        StepResult(listen, Outcome.OK, "ok", 0.0, 0.5),
    )
    problems = () if passed else (f"{recv.describe()}: {last.problem}",)
    return ScenarioResult(SCENARIO, steps, problems, TIMELINE, START, 4.2)


def test_a_pass_is_one_line() -> None:
    passed = result(passed=True)
    assert headline(passed) == "PASS  nlb  aws-nlb at speed 100, 4.2s  (nlb.toml)"
    assert details(passed) == []


def test_a_failure_shows_what_was_expected_and_what_happened_instead() -> None:
    failed = result(passed=False)
    assert headline(failed).startswith("FAIL  nlb")
    lines = details(failed)
    assert lines[0] == "  client step 3 (recv): expected reset, got timeout after 10s"
    assert (
        "    BAD client  3 recv       at 6m: timeout after 10s  "
        "<- expected reset, got timeout after 10s  (line 13)"
    ) in lines
    # The timeline in the scenario's time: 3.5 s of wall clock at speed 100 is 350 s.
    assert lines[-3:] == [
        "           10s  client  connected to 10.9.2.2:8080 from 10.9.1.2:4000",
        "         5m50s  fwemu   expire ESTABLISHED after 3.50s idle: silent",
        "            6m  client  recv: no answer within 0.1s (its socket timeout)",
    ]


def test_an_error_is_reported_as_such() -> None:
    broken = ScenarioResult(SCENARIO, (), (), (), START, 1.0, error="fwemu exited with status 2")
    assert headline(broken).startswith("ERROR nlb")
    assert details(broken)[0] == "  fwemu exited with status 2"


def test_totals() -> None:
    assert totals([result(passed=True)] * 2, 12.34) == "all 2 scenarios passed in 12.3s"
    assert totals([result(passed=True)], 1.0) == "the scenario passed in 1s"
    assert totals([result(passed=False)], 1.0) == "the scenario FAILED in 1s"
    mixed = [result(passed=True), result(passed=False)]
    assert totals(mixed, 61) == "1 of 2 scenarios FAILED in 1m1s"


def test_junit_counts_failures_and_errors_and_carries_the_report() -> None:
    broken = ScenarioResult(SCENARIO, (), (), (), START, 1.0, error="no lab")
    root = ET.fromstring(junit_xml([result(passed=True), result(passed=False), broken]))
    (suite,) = root
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    passed, failed, errored = suite.findall("testcase")
    assert passed.find("failure") is None and passed.get("file") == "nlb.toml"
    failure = failed.find("failure")
    assert failure is not None
    assert failure.get("message") == "client step 3 (recv): expected reset, got timeout after 10s"
    assert "5m50s  fwemu   expire ESTABLISHED" in (failure.text or "")
    error = errored.find("error")
    assert error is not None and error.get("message") == "no lab"


POOL = loads_scenario(
    '[[client]]\ndo = "connect"\ncount = 100\nexpect = { ok = "60..64", timeout = "36..40" }\n',
    "pool.toml",
)


@pytest.mark.parametrize(
    "counts",
    [{Outcome.OK: 64, Outcome.TIMEOUT: 36}, {Outcome.OK: 60, Outcome.TIMEOUT: 40}],
)
def test_a_count_step_passes_on_counts_in_range(counts: dict[Outcome, int]) -> None:
    (step,) = POOL.client
    assert _judge(POOL, step, Outcome.OK, show_counts(counts), 1.0, counts) is None


@pytest.mark.parametrize(
    ("counts", "got"),
    [
        ({Outcome.OK: 65, Outcome.TIMEOUT: 35}, "ok 65, timeout 35"),
        ({Outcome.OK: 60, Outcome.TIMEOUT: 36, Outcome.REFUSED: 4}, "ok 60, refused 4, timeout 36"),
    ],
)
def test_a_count_step_fails_showing_its_counts_in_one_line(
    counts: dict[Outcome, int], got: str
) -> None:
    (step,) = POOL.client
    problem = _judge(POOL, step, Outcome.OK, show_counts(counts), 1.0, counts)
    assert problem == f"expected ok 60..64, timeout 36..40, got {got} after 1s"
    seen = StepResult(step, Outcome.OK, show_counts(counts), 0.5, 1.0, problem, counts)
    lines = details(ScenarioResult(POOL, (seen,), (f"{step.describe()}: {problem}",), (), 0, 2))
    assert lines[0] == f"  client step 1 (connect x100): {problem}"
    assert lines[2] == (
        f"    BAD client  1 connect x100 at 500ms: {got} after 1s  <- {problem}  (line 1)"
    )


UDP_FLOW = {"proto": "udp", "src": "10.9.1.2", "sport": 4000, "dst": "10.9.2.2", "dport": 53}


@pytest.mark.parametrize(
    ("record", "line"),
    [
        (
            {"event": "new", "state": "UNREPLIED", "rule": "default"},
            "new UDP flow 10.9.1.2:4000 > 10.9.2.2:53: UNREPLIED (rule default)",
        ),
        (
            {
                "event": "expire",
                "state": "REPLIED",
                "phase": "udp",
                "timeout": 30.0,
                "idle": 30.01,
                "action": "silent",
            },
            "expire REPLIED after 30.01s idle (udp timer 30s): silent",
        ),
        (
            {
                "event": "out_of_state",
                "side": "server",
                "reason": "no flow (expired)",
                "action": "drop",
            },
            "out-of-state datagram from server, no flow (expired): dropped",
        ),
        (
            {
                "event": "out_of_state",
                "side": "client",
                "reason": "no flow (expired)",
                "action": "icmp-unreachable",
            },
            "out-of-state datagram from client, no flow (expired): answered with an ICMP port "
            "unreachable",
        ),
        (
            {"event": "unreachable", "to": "client", "cause": "out_of_state", "rule": "default"},
            "ICMP port unreachable to client (for the out-of-state packet)",
        ),
        (
            {"event": "unreachable", "to": "sender", "cause": "limit", "rule": "default"},
            "ICMP port unreachable to sender (refusing a new flow over a limit)",
        ),
    ],
    ids=["new", "expire", "late-dropped", "late-answered", "unreachable", "over-a-limit"],
)
def test_udp_events_read_as_datagrams(record: dict[str, object], line: str) -> None:
    assert describe({**record, "flow": UDP_FLOW}) == line
