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


def udp_flow(sport: int, state: str = "UNREPLIED", expires_in: float | None = 25.0) -> dict:
    """A DNS-like UDP flow, as `fwemu flows --json` lists it."""
    phase = "udp_stream" if state == "STREAM" else "udp"
    return {
        **flow(sport, state, expires_in),
        "dport": 53,
        "proto": "udp",
        "phase": phase,
        "rule": "dns",
        "age": 5.0,
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


def test_a_udp_flow_is_named_udp_in_the_same_columns() -> None:
    tcp_only = render(views.flows_table([flow(1)])).splitlines()
    lines = render(views.flows_table([flow(1), udp_flow(5353), udp_flow(5354, "STREAM")]))
    lines = lines.splitlines()
    assert lines[0].split() == tcp_only[0].split()  # the same columns: no PROTO
    assert lines[2].split()[:3] == ["10.0.1.2:1", ">", "10.0.2.2:443"]
    assert lines[3].split()[:8] == [
        "udp", "10.0.1.2:5353", ">", "10.0.2.2:53", "UNREPLIED", "udp", "25.0s", "dns",
    ]  # fmt: skip
    assert lines[4].split()[4:8] == ["STREAM", "udp_stream", "25.0s", "dns"]


def test_a_flow_record_without_proto_is_tcp() -> None:
    old = {k: v for k, v in udp_flow(5353).items() if k != "proto"}
    assert views.flow_name(old) == "10.0.1.2:5353 > 10.0.2.2:53"
    assert views.flow_name(udp_flow(5353)) == "udp 10.0.1.2:5353 > 10.0.2.2:53"


def test_flows_are_listed_soonest_expiry_first() -> None:
    ordered = views.by_deadline(
        [flow(1, expires_in=None), flow(2, expires_in=9), flow(3, expires_in=1)]
    )
    assert [f["sport"] for f in ordered] == [3, 2, 1]


def test_state_counts_follow_a_connection_s_life() -> None:
    records = [flow(1, "TIME_WAIT"), flow(2), flow(4, "SYN_SENT"), flow(5)]
    assert str(views.state_counts(records)) == "SYN_SENT 1  ESTABLISHED 2  TIME_WAIT 1"
    assert str(views.state_counts([])) == "no flows"


def test_the_flow_count_names_the_protocols_once_there_is_udp() -> None:
    tcp = [flow(1), flow(2, "TIME_WAIT")]
    assert views.flows_line(tcp) == "2 flows: ESTABLISHED 1  TIME_WAIT 1"
    mixed = [*tcp, udp_flow(5353), udp_flow(5354, "STREAM"), udp_flow(5355, "REPLIED")]
    assert views.flows_line(mixed) == (
        "5 flows (tcp 2, udp 3): ESTABLISHED 1  TIME_WAIT 1  UNREPLIED 1  REPLIED 1  STREAM 1"
    )
    assert views.flows_line([udp_flow(5353)]) == "1 flow (udp 1): UNREPLIED 1"
    assert views.protocol_counts(mixed) == {"tcp": 2, "udp": 3}
    assert views.protocol_counts([]) == {"tcp": 0, "udp": 0}


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


def test_event_lines_of_udp_flows() -> None:
    dns = {"src": "10.0.1.2", "sport": 5353, "dst": "10.0.2.2", "dport": 53, "proto": "udp"}
    base = {"ts": 0.5, "flow": dns, "rule": "dns"}
    records = [
        {**base, "event": "new", "state": "UNREPLIED"},
        {**base, "event": "state", "old_state": "UNREPLIED", "state": "REPLIED"},
        {**base, "event": "expire", "state": "STREAM", "phase": "udp_stream", "idle": 120.0}
        | {"action": "silent", "forced": False},
        {**base, "event": "out_of_state", "reason": "no flow (expired)"}
        | {"action": "icmp-unreachable", "side": "server"},
        {**base, "event": "unreachable", "to": "server", "cause": "out_of_state"},
    ]
    assert [views.event_line(r).split(" ", 1)[1] for r in records] == [
        "new          udp 10.0.1.2:5353 > 10.0.2.2:53 UNREPLIED (rule dns)",
        "state        udp 10.0.1.2:5353 > 10.0.2.2:53 UNREPLIED -> REPLIED",
        "expire       udp 10.0.1.2:5353 > 10.0.2.2:53 STREAM after 120.0s idle (udp_stream timer): "
        "silent",
        "out_of_state udp 10.0.1.2:5353 > 10.0.2.2:53 no flow (expired): icmp-unreachable",
        "unreachable  udp 10.0.1.2:5353 > 10.0.2.2:53 ICMP port unreachable to server "
        "(out_of_state)",
    ]


STATUS = {
    "pid": 42, "netns": "demo-fw", "queue": 0, "policy": "web", "origin": "fw.toml",
    "speed": 60.0, "dry_run": False, "packets": 9, "accepted": 8, "dropped": 1, "resets": 2,
    "expired": 3, "out_of_state": 4, "flows": 3,
}  # fmt: skip


def render_at(renderable: object, width: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, highlight=False).print(renderable)
    return out.getvalue().splitlines()


def test_top_shows_status_counts_the_soonest_flows_and_events() -> None:
    flows = [flow(1, expires_in=30), flow(2, expires_in=5), flow(4, expires_in=None)]
    # 11 lines: 3 of header, 6 of chrome, 2 flows (and no room for events).
    lines = render_at(views.top_view(STATUS, flows, [], 160, 11), 160)
    assert lines[:4] == [
        "fwemu pid 42 netns demo-fw queue 0  policy web (fw.toml) x60",
        "packets 9  accepted 8  dropped 1  flows 3",
        "injected 2  expired 3  out-of-state 4",
        "ESTABLISHED 3",
    ]
    text = "\n".join(lines)
    assert text.index("10.0.1.2:2 >") < text.index("10.0.1.2:1 >")
    assert "10.0.1.2:4 >" not in text and "... and 1 more (fwemu flows" in text
    assert "BYPASSED" not in text
    overflowed = "\n".join(
        render_at(views.top_view({**STATUS, "bypassed": 17}, flows, [], 160, 12), 160)
    )
    assert "BYPASSED 17 packets: the queue overflowed" in overflowed


def event(sport: int) -> dict:
    return {
        "ts": 0.5, "event": "expire", "flow": {"src": "10.201.1.2", "sport": sport,
        "dst": "10.201.2.2", "dport": 5432}, "state": "ESTABLISHED", "phase": "established",
        "idle": 3.04, "action": "reset-both", "forced": False,
    }  # fmt: skip


def test_top_at_80x24_keeps_state_timer_left_and_rule_whole() -> None:
    # Issue 15: rich used to cut them to "ESTABL…" at 80 columns.
    flows = [
        {**flow(sport), "src": "10.201.1.2", "dst": "10.201.2.2", "dport": 5432,
         "rule": "postgres", "expires_in": 431000.0 + sport - 51000}
        for sport in range(51000, 51030)
    ]  # fmt: skip
    events = [event(sport) for sport in range(40000, 40010)]
    lines = render_at(views.top_view(STATUS, flows, events, 80, 24), 80)
    assert len(lines) == 24 and max(map(len, lines)) <= 80
    head = next(line for line in lines if line.startswith("FLOW"))
    assert head.split()[-5:] == ["server)", "STATE", "TIMER", "LEFT", "RULE"]  # no counters
    rows = [line for line in lines if line.startswith("10.201.1.2:51")]
    assert len(rows) == 10  # what fits beside 5 events
    assert rows[0].split() == [
        "10.201.1.2:51000", ">", "10.201.2.2:5432", "ESTABLISHED", "established", "4d23h",
        "postgres",
    ]  # fmt: skip
    assert "... and 20 more (fwemu flows" in "\n".join(lines)
    shown = [line for line in lines if " expire " in line]
    assert len(shown) == 5 and all(line.endswith("…") for line in shown)  # cut, not wrapped
    assert lines[-1] == "q or Ctrl-C quits"


def test_top_at_80x24_shows_udp_flows_with_their_states_and_countdowns() -> None:
    """DNS-like UDP flows beside PostgreSQL-like connections: every row fits, the marker, the
    state, the timer, its countdown and the rule whole."""
    tcp = [
        {**flow(sport), "src": "10.201.1.2", "dst": "10.201.2.2", "dport": 5432,
         "rule": "postgres", "expires_in": 431000.0}
        for sport in range(51000, 51004)
    ]  # fmt: skip
    udp = [
        {**udp_flow(sport, state, 20.0 + sport % 10), "src": "10.201.1.2", "dst": "10.201.2.2"}
        for sport, state in ((40001, "UNREPLIED"), (40002, "REPLIED"), (40003, "STREAM"))
    ]
    events = [
        {"ts": 0.5, "event": "unreachable", "flow": {**udp[0], "sport": 39999}, "to": "server"}
        | {"cause": "out_of_state"}
    ]
    lines = render_at(views.top_view(STATUS, tcp + udp, events, 80, 24), 80)
    assert max(map(len, lines)) <= 80
    assert "ESTABLISHED 4  UNREPLIED 1  REPLIED 1  STREAM 1" in lines
    rows = [line.split() for line in lines if line.startswith("udp ")]
    assert [row[4:] for row in rows] == [
        ["UNREPLIED", "udp", "21.0s", "dns"],
        ["REPLIED", "udp", "22.0s", "dns"],
        ["STREAM", "udp_stream", "23.0s", "dns"],
    ]
    assert rows[0][:4] == ["udp", "10.201.1.2:40001", ">", "10.201.2.2:53"]
    [shown] = [line for line in lines if " unreachable " in line]
    assert "unreachable  udp 10.201.1.2:39999 > 10.201.2.2:53 ICMP port" in shown


@pytest.mark.parametrize(
    ("width", "columns"),
    [
        (160, ["PKTS", "BYTES", "AGE"]),
        (100, ["PKTS", "AGE"]),  # bytes go first
        (90, ["AGE"]),  # then packets
        (80, []),  # then the age, and the gaps narrow
    ],
)
def test_a_narrow_flow_table_drops_counters_then_age(width: int, columns: list[str]) -> None:
    records = [{**flow(51820), "src": "10.201.1.2", "dst": "10.201.2.2", "dport": 5432}]
    [head, _, row] = render_at(views.flows_table(records, width), width)
    assert [word for word in head.split() if word in ("PKTS", "BYTES", "AGE")] == columns
    assert len(row) <= width
    assert row.split()[3:7] == ["ESTABLISHED", "established", "12.3s", "web"]


def test_an_ipv6_flow_s_name_is_cut_before_any_other_cell() -> None:
    records = [{**flow(3), "src": "fd00:201:1::2", "dst": "fd00:201:2::2"}]
    [_, _, row] = render_at(views.flows_table(records, 60), 60)
    assert row.split()[-4:] == ["ESTABLISHED", "established", "12.3s", "web"]
    assert row.startswith("[fd00:201:1::2]:3 > ") and "…" in row


def test_top_waits_for_fwemu_with_the_reason() -> None:
    lines = render_at(views.waiting_view("no running fwemu found"), 80)
    assert lines == ["waiting for fwemu...", "no running fwemu found", "q or Ctrl-C quits"]


def test_ps_shows_a_run_of_workers_as_one_row() -> None:
    record = {
        "netns": "lab1-fw", "queues": [0, 1], "policy": "linux", "origin": "preset",
        "flows": 1200, "uptime": 185.0, "pid": 4242, "dry_run": False, "protocols": ["tcp", "udp"],
        "workers": [{"control": "/run/fwemu/lab1-fw.q0.sock"},
                    {"control": "/run/fwemu/lab1-fw.q1.sock"}],
    }  # fmt: skip
    host = {
        **record, "netns": None, "queues": [3], "protocols": [],
        "workers": [{"control": "/run/fwemu/q3.sock"}],
    }  # fmt: skip
    lines = render_at(views.runs_table([record, host]), 160)
    assert lines[0].split() == [
        "NETNS", "QUEUE", "POLICY", "PROTO", "FLOWS", "UP", "PID", "CONTROL",
    ]  # fmt: skip
    assert lines[2].split() == [
        "lab1-fw", "0-1", "linux", "(preset)", "tcp,udp", "1,200", "3m05s", "4242",
        "/run/fwemu/lab1-fw.q0.sock", "+1",
    ]  # fmt: skip
    assert lines[3].split()[:2] == ["-", "3"]
    assert lines[3].split()[4] == "-"  # --no-rules: nothing queued


def test_limits_at_80_columns_cut_only_whose_count_it_is() -> None:
    # The README's policy: a long destination must not cut the numbers or the limits' names.
    usage = {
        "limits": "policy",
        "values": {"max_flows": 262144, "per_client": 100, "ports_per_destination": 64},
        "counts": {
            "max_flows": [["table", 13]],
            "per_client": [["10.201.1.2", 13]],
            "ports_per_destination": [["10.201.1.2 to [fd00:201:2::2]:5432 (udp)", 12]],
        },
        "refused": {"per_client": 1},
    }
    lines = render_at(views.limits_table([usage], busiest=1, width=80), 80)
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split() == ["LIMITS", "LIMIT", "COUNT", "OF", "REFUSED", "WHOSE"]
    assert lines[2].split() == ["policy", "max_flows", "13", "262,144", "0"]
    assert lines[3].split() == ["per_client", "13", "100", "1", "10.201.1.2"]
    row = lines[4].split()
    assert row[:4] == ["ports_per_destination", "12", "64", "0"] and row[-1].endswith("…")


def test_ps_at_80_columns_keeps_every_column_and_cuts_the_socket_path() -> None:
    record = {
        "netns": "fwemu-t12894-fw", "queues": [0, 1], "policy": "aws-nlb",
        "origin": "preset:aws-nlb", "protocols": ["tcp", "udp"], "flows": 1200, "uptime": 185.0,
        "pid": 4242, "dry_run": False,
        "workers": [{"control": "/run/fwemu/fwemu-t12894-fw.q0.sock"},
                    {"control": "/run/fwemu/fwemu-t12894-fw.q1.sock"}],
    }  # fmt: skip
    lines = render_at(views.runs_table([record], 80), 80)
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split() == [
        "NETNS", "QUEUE", "POLICY", "PROTO", "FLOWS", "UP", "PID", "CONTROL",
    ]  # fmt: skip
    row = lines[2].split()  # a preset's name is said once
    assert row[:7] == ["fwemu-t12894-fw", "0-1", "aws-nlb", "tcp,udp", "1,200", "3m05s", "4242"]
    assert row[7].startswith("/run/fwemu") and row[7].endswith("…")
