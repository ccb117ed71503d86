"""What `fwemu run` prints: wall-clock times (every time an event holds), JSON lines, dry-run
marks, rate-limited errors."""

from __future__ import annotations

import dataclasses
import io
import json
import time

import pytest

from fwemu.adapters.output import Reporter, counted
from fwemu.clock import Clock
from fwemu.core.events import (
    Event,
    FlowExpired,
    FlowId,
    FlowNew,
    LimitSummary,
    OutOfStateSummary,
    StateChanged,
)
from fwemu.policy.model import OutOfStateAction
from fwemu.scenario import timeline
from tests.core.trace import Trace, make_policy

EVENT = FlowNew(
    ts=5.25, flow=FlowId("10.0.0.1", 40000, "10.0.0.2", 80), state="SYN_SENT", rule="web"
)
# 1_700_000_000 - 5.25 + 5.25 = 2023-11-14 22:13:20.000 UTC
CLOCK = Clock(offset=1_700_000_000.0 - 5.25)


def test_events_are_json_lines_with_wall_clock_time() -> None:
    log, out = io.StringIO(), io.StringIO()
    Reporter(CLOCK, log, out, verbose=True).events([EVENT, EVENT])
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0] == {
        "ts": 1_700_000_000.0,
        "event": "new",
        "flow": {"src": "10.0.0.1", "sport": 40000, "dst": "10.0.0.2", "dport": 80, "proto": "tcp"},
        "state": "SYN_SENT",
        "phase": None,
        "action": None,
        "rule": "web",
    }
    assert len(records) == 2
    [line, _] = log.getvalue().splitlines()
    assert line.endswith(".000 new      10.0.0.1:40000 > 10.0.0.2:80 SYN_SENT (rule web)")


def test_dry_run_marks_events_and_log_lines() -> None:
    log, out = io.StringIO(), io.StringIO()
    Reporter(CLOCK, log, out, dry_run=True, verbose=True).events([EVENT])
    assert json.loads(out.getvalue())["dry_run"] is True
    assert "[dry run] new " in log.getvalue()


def test_a_burst_of_errors_logs_one_line() -> None:
    log = io.StringIO()
    reporter = Reporter(Clock.start(), log)
    for n in range(3):
        reporter.error(f"failure {n}")
    [line] = log.getvalue().splitlines()
    assert line.endswith(" error: failure 0")


STATE = StateChanged(
    ts=5.5,
    flow=EVENT.flow,
    old_state="SYN_SENT",
    state="SYN_RECV",
    phase="embryonic",
    rule="web",
)
EXPIRE = FlowExpired(
    ts=6.0,
    flow=EVENT.flow,
    state="SYN_RECV",
    phase="embryonic",
    action="silent",
    rule="web",
    timeout=0.5,
    idle=0.5,
)


@pytest.mark.parametrize("verbose", [False, True])
def test_new_flows_and_state_changes_are_logged_only_when_verbose(verbose: bool) -> None:
    log, out = io.StringIO(), io.StringIO()
    Reporter(CLOCK, log, out, verbose=verbose).events([EVENT, STATE, EXPIRE])
    kinds = [line.split()[1] for line in log.getvalue().splitlines()]
    assert kinds == (["new", "state", "expire"] if verbose else ["expire"])
    # The events file has them all either way.
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == [
        "new",
        "state",
        "expire",
    ]


def test_every_time_an_event_holds_is_named_in_its_times() -> None:
    """A float field is a core time (mapped to wall-clock time for output) or a duration: a new
    one must be put on one side or the other."""
    durations = {"FlowExpired": {"timeout", "idle"}}
    for kind in _event_classes(Event):
        floats = {
            f.name for f in dataclasses.fields(kind) if "float" in str(f.type) and f.name != "ts"
        }
        assert floats == set(kind.TIMES) | durations.get(kind.__name__, set()), kind.__name__
        assert set(kind.TIMES) <= {f.name for f in dataclasses.fields(kind)}


def _event_classes(base: type[Event]) -> list[type[Event]]:
    return [c for sub in base.__subclasses__() for c in (sub, *_event_classes(sub))]


def test_a_late_packet_names_its_flow_s_expiry_in_wall_clock_time_like_the_expiry_itself() -> None:
    """JSON in epoch seconds, log lines in local time: `expired_at` is the expiry's `ts` in both."""
    policy = make_policy(established=10.0, oos=OutOfStateAction.RESET)
    trace = Trace(policy)
    trace.handshake(at=5.25)
    [expired] = trace.advance(20.0).events
    late = trace.client("PA", 4, at=21.0)
    log, out = io.StringIO(), io.StringIO()
    Reporter(CLOCK, log, out).events([expired, *late.events])
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["event"] for r in records] == ["expire", "out_of_state", "reset"]
    expiry, oos = records[0], records[1]
    assert expiry["ts"] == oos["expired_at"] == 1_700_000_000.0 + 10.0
    expire_line, oos_line, _ = log.getvalue().splitlines()
    stamp = expire_line.split()[0]
    assert f"flow expired at {stamp} by its established timer" in oos_line
    assert stamp == time.strftime("%H:%M:%S.000", time.localtime(1_700_000_010))


def test_a_count_of_one_reads_in_the_singular_in_fwemu_s_lines_and_the_scenario_timeline() -> None:
    one_flow = LimitSummary(
        7.0, EVENT.flow, "10.0.0.1", 1, 1, "max_flows", "reset", "web", "per_source", 100
    )
    one_packet = OutOfStateSummary(
        7.0, EVENT.flow, "10.0.0.1", 1, 1, "drop", "web", "per_source", 100
    )
    assert "1 more new flow from 10.0.0.1 refused" in one_flow.describe()
    assert ": reset, 1 RST withheld " in one_flow.describe()
    assert "1 more out-of-state packet from 10.0.0.1 " in one_packet.describe()
    assert timeline.describe(one_flow.to_dict()).startswith("1 more new flow refused")
    assert timeline.describe(one_packet.to_dict()).startswith("1 more out-of-state packet from")
    assert counted(1, "flow") == "1 flow" and counted(0, "flow") == "0 flows"
