"""How flows and events look to the person at the terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from fwemu.ops import views


def flow(sport: int, state: str = "ESTABLISHED", expires_in: float | None = 12.34) -> dict:
    return {
        "src": "10.0.1.2",
        "sport": sport,
        "dst": "fd00::2" if sport == 3 else "10.0.2.2",
        "dport": 443,
        "state": state,
        "phase": "established",
        "expires_in": expires_in,
        "rule": "web",
        "age": 3725.0,
        "idle": 1.0,
        "packets": [12, 1500],
        "bytes": [2048, 1_234_567],
    }


def render(renderable: object) -> str:
    out = io.StringIO()
    Console(file=out, width=160, highlight=False).print(renderable)
    return out.getvalue()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "never"),
        (-0.2, "0.0s"),
        (4.25, "4.2s"),
        (59.94, "59.9s"),
        (185, "3m05s"),
        (7620, "2h07m"),
        (432000, "5d00h"),
    ],
)
def test_seconds(value: float | None, text: str) -> None:
    assert views.seconds(value) == text


@pytest.mark.parametrize(("value", "text"), [(512, "512"), (1500, "1.5k"), (23_000_000, "23M")])
def test_amounts(value: int, text: str) -> None:
    assert views.amount(value) == text


def test_the_flows_table_has_one_row_per_flow_with_its_timer() -> None:
    lines = render(views.flows_table([flow(1), flow(3, "TIME_WAIT", None)])).splitlines()
    assert lines[0].split() == [
        "FLOW", "(client", ">", "server)", "STATE", "TIMER", "LEFT", "RULE", "PKTS", "c/s",
        "BYTES", "c/s", "AGE",
    ]  # fmt: skip
    assert lines[2].split() == [
        "10.0.1.2:1", ">", "10.0.2.2:443", "ESTABLISHED", "established", "12.3s", "web",
        "12/1.5k", "2.0k/1.2M", "1h02m",
    ]  # fmt: skip
    assert "10.0.1.2:3 > [fd00::2]:443" in lines[3] and "never" in lines[3]


def test_flows_are_listed_soonest_expiry_first() -> None:
    ordered = views.by_deadline(
        [flow(1, expires_in=None), flow(2, expires_in=9), flow(3, expires_in=1)]
    )
    assert [f["sport"] for f in ordered] == [3, 2, 1]


def test_state_counts_follow_a_connection_s_life() -> None:
    records = [flow(1, "TIME_WAIT"), flow(2), flow(4, "SYN_SENT"), flow(5)]
    assert str(views.state_counts(records)) == "SYN_SENT 1  ESTABLISHED 2  TIME_WAIT 1"
    assert str(views.state_counts([])) == "no flows"


def test_event_lines() -> None:
    base = {"ts": 0.5, "flow": {"src": "10.0.1.2", "sport": 1, "dst": "10.0.2.2", "dport": 2}}
    expire = {**base, "event": "expire", "state": "ESTABLISHED", "phase": "established"}
    expire |= {"idle": 3.04, "action": "reset-both", "forced": True}
    reset = {**base, "event": "reset", "to": "client", "seq": 7, "ack": None}
    assert views.event_line(expire).split(" ", 1)[1] == (
        "expire       10.0.1.2:1 > 10.0.2.2:2 ESTABLISHED after 3.0s idle (forced): reset-both"
    )
    assert views.event_line(reset).endswith(
        "reset        10.0.1.2:1 > 10.0.2.2:2 RST to client seq 7"
    )


def test_top_shows_status_counts_the_soonest_flows_and_events() -> None:
    status = {
        "pid": 42, "netns": "demo-fw", "queue": 0, "policy": "web", "origin": "fw.toml",
        "speed": 60.0, "dry_run": False, "packets": 9, "accepted": 8, "dropped": 1, "resets": 2,
        "flows": 3,
    }  # fmt: skip
    flows = [flow(1, expires_in=30), flow(2, expires_in=5), flow(4, expires_in=None)]
    text = render(views.top_view(status, flows, [], rows=2))
    assert "fwemu pid 42 netns demo-fw queue 0  policy web (fw.toml) x60" in text
    assert "ESTABLISHED 3" in text
    assert text.index("10.0.1.2:2 >") < text.index("10.0.1.2:1 >")
    assert "10.0.1.2:4 >" not in text and "... and 1 more flows" in text
    assert "BYPASSED" not in text
    overflowed = render(views.top_view({**status, "bypassed": 17}, flows, [], rows=2))
    assert "BYPASSED 17 packets: the queue overflowed" in overflowed
