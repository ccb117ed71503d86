"""`fwemu check`: what a user sees for good policies, presets, and a mix of good and bad."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fwemu.cli import main
from fwemu.policy import preset_names

GOOD = """\
[policy]
name = "example"
description = "an example with [brackets] that are not markup"
sources = ["https://example.com/doc"]

[timeouts]
embryonic = "30s"
established = "1h"
half_closed = "10m"
close_wait = "1m"
max_retrans = "2m"
udp_stream = "3m"

[on_expire]
established = "reset-both"

[out_of_state]
action = "drop"
from_client = "reset"
remember = "5m"
udp_from_server = "icmp-unreachable"

[[rule]]
name = "dns"
match = { proto = "udp", dst_port = 53 }
timeouts = { udp = "10s", udp_stream_after = "0s" }
out_of_state = { udp_from_client = "drop", udp_from_server = "drop" }

[[rule]]
name = "postgres"
match = { proto = "tcp", dst = "10.0.2.0/24", dst_port = [5432, "6000-6010"] }
on_expire = { default = "reset-client", lifetime = "reset-both" }
out_of_state = { pickup = true, window_check = false }

[rule.limits]
per_client = 64
ports_per_destination = 50000
port_reuse = "2m"
on_exhausted = "reset"

[rule.timeouts]
established = "5m"
unacknowledged = "never"
lifetime = "4h"
dcd = { interval = "10s", retries = 3 }
"""


@pytest.fixture
def good(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    Path("good.toml").write_text(GOOD)
    return "good.toml"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def row(out: str, *cells: str) -> bool:
    """Whether one line of the table holds `cells` in this order, side by side."""
    wanted = " ".join(cells)
    return any(wanted in " ".join(line.split()) for line in out.splitlines())


def test_table_names_the_values(good: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, good)
    assert (code, err) == (0, "")
    assert "\x1b[" not in out  # not a terminal: no colour codes
    lines = out.splitlines()
    assert lines[:3] == [
        "example: an example with [brackets] that are not markup",
        "from good.toml",
        "source: https://example.com/doc",
    ]
    assert row(out, "postgres", "embryonic", "30s", "reset-client")
    assert row(out, "proto tcp", "established", "5m", "reset-client")
    assert row(out, "dst 10.0.2.0/24", "half_closed", "fin_wait 10m, close_wait 1m")
    assert row(out, "dst_port 5432, 6000-6010", "closing", "30s", "reset-client")
    assert row(out, "max_retrans", "at most 2m")
    assert row(out, "unacknowledged", "no cap")
    assert row(out, "lifetime", "4h", "reset-both")
    assert row(out, "dcd", "probe every 10s, 3 times", "then the established action")
    assert row(
        out, "out of state", "remember 5m", "drop, from client: reset, pickup, window check off"
    )
    assert row(out, "default", "embryonic", "30s", "silent")
    assert row(out, "established", "1h", "reset-both")
    assert row(out, "closing", "30s", "silent")  # Linux's last_ack default
    assert row(out, "unacknowledged", "at most 5m")  # Linux's default
    assert row(
        out, "out of state", "remember 5m", "drop, from client: reset, no pickup, window check on"
    )
    assert out.index("dns") < out.index("postgres") < out.index("default")
    assert (
        "limits on rule postgres's flows: per_client 64, ports_per_destination 50,000 "
        "(full: drop; ports (client pool, reused 2m after the flow ends): reset)"
    ) in out


def test_table_names_the_udp_timers_and_late_datagrams(
    good: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """UDP expiry is always silent; a rule's timers and late-datagram actions are merged over the
    policy's, and a rule's proto is one of its match lines."""
    _, out, _ = run(capsys, good)
    assert row(out, "dns", "embryonic")
    assert row(out, "proto udp", "established")
    assert row(out, "udp", "10s", "silent")  # the rule's own
    assert row(out, "udp_stream", "3m, once seen both ways", "silent")  # no grace: 0s
    assert row(out, "udp out of state", "from client: drop, from server: drop")
    assert row(out, "udp", "30s", "silent")  # the default profile: Linux's
    assert row(out, "udp_stream", "3m, once seen both ways for 2s", "silent")
    assert row(out, "udp out of state", "from client: new, from server: icmp-unreachable")


def test_names_print_as_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rich markup in a name is text, and names hold any printable character (the loader
    refuses control characters: tests/policy/broken/control_in_*.toml)."""
    path = tmp_path / "m.toml"
    path.write_text(
        '[policy]\nname = "[bold]x[/bold]"\ndescription = "café [red]"\n'
        '[[rule]]\nname = "[link=http://e.example]web\u2713"\nmatch = {}\n'
    )
    code, out, _ = run(capsys, str(path))
    assert code == 0
    assert out.startswith("[bold]x[/bold]: café [red]\n")
    assert row(out, "[link=http://e.example]web\u2713", "embryonic")


def test_json(good: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", good)
    assert code == 0
    [policy] = json.loads(out)
    assert {k: policy[k] for k in ("name", "origin", "description", "sources")} == {
        "name": "example",
        "origin": "good.toml",
        "description": "an example with [brackets] that are not markup",
        "sources": ["https://example.com/doc"],
    }
    assert policy["answer_rate"] == {"per_source": 100, "total": 1000}
    dns, postgres, default = policy["profiles"]
    assert dns["match"] == {"proto": ["udp"], "dst_port": [53]}
    assert {k: dns["timeouts"][k] for k in ("udp", "udp_stream", "udp_stream_after")} == {
        "udp": 10,
        "udp_stream": 180,
        "udp_stream_after": 0,
    }
    assert postgres.pop("syn_flood")["activate"] is None
    assert postgres.pop("syn_proxy") == {
        "mss": 1460,
        "wscale": 7,
        "sack_perm": True,
        "timestamps": False,
    }
    assert postgres.pop("normalise")["clear"] == []
    assert postgres == {
        "name": "postgres",
        "match": {"proto": ["tcp"], "dst": ["10.0.2.0/24"], "dst_port": [5432, "6000-6010"]},
        "timeouts": {
            "syn_sent": 30,
            "syn_recv": 30,
            "established": 300,
            "fin_wait": 600,
            "close_wait": 60,
            "last_ack": 30,
            "time_wait": 120,
            "close": 10,
            "max_retrans": 120,
            "unacknowledged": None,
            "lifetime": 14400,
            "udp": 30,
            "udp_stream": 180,
            "udp_stream_after": 2,
        },
        "on_expire": dict.fromkeys(
            ("embryonic", "established", "half_closed", "closing", "time_wait", "close"),
            "reset-client",
        )
        | {"lifetime": "reset-both"},
        "dcd": {"interval": 10, "retries": 3},
        "out_of_state": {
            "action": "drop",
            "from_client": "reset",
            "from_server": "drop",
            "pickup": True,
            "window_check": False,
            "remember": 300,
            "udp_from_client": "new",
            "udp_from_server": "icmp-unreachable",
        },
        "limits": {
            "max_flows": None,
            "on_full": "drop",
            "early_drop": False,
            "per_client": 64,
            "per_server": None,
            "embryonic": None,
            "per_client_embryonic": None,
            "on_embryonic": "drop",
            "ports_per_client": None,
            "ports_per_destination": 50000,
            "port_reuse": 120,
            "nat_pool": "client",
            "on_exhausted": "reset",
        },
    }
    assert policy["limits"]["max_flows"] is None  # the policy's own: none set
    assert default["name"] == "default"
    assert default["match"] is None
    assert default["timeouts"]["established"] == 3600
    assert (default["timeouts"]["max_retrans"], default["timeouts"]["unacknowledged"]) == (120, 300)
    assert default["out_of_state"]["window_check"] is True
    assert (dns["out_of_state"]["udp_from_client"], dns["out_of_state"]["udp_from_server"]) == (
        "drop",
        "drop",
    )


def test_json_never_is_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "n.toml"
    path.write_text('[timeouts]\nestablished = "never"\n')
    _, out, _ = run(capsys, "--json", str(path))
    assert json.loads(out)[0]["profiles"][0]["timeouts"]["established"] is None


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_is_valid(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, name)
    assert (code, err) == (0, "")
    assert f"from preset:{name}" in out
    assert "udp_stream" in out and "udp out of state" in out


def test_bad_files_do_not_stop_the_others(good: str, capsys: pytest.CaptureFixture[str]) -> None:
    Path("bad.toml").write_text('[timeouts]\nestablished = "1h"\nclose = "soon"\n')
    code, out, err = run(capsys, "bad.toml", "nope.toml", "no-such-preset", good)
    assert code == 2
    assert out.startswith("example: ")
    assert err.splitlines() == [
        "bad.toml:3: timeouts.close: invalid duration 'soon' (use units d h m s ms, "
        'largest first, like "90s", "1h30m" or "250ms")',
        "nope.toml: cannot read: No such file or directory",
        "fwemu: no policy file or preset named 'no-such-preset'; presets: "
        + ", ".join(preset_names()),
    ]


def test_json_lists_only_valid_policies(good: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--json", "nope.toml", good)
    assert code == 2
    assert [p["name"] for p in json.loads(out)] == ["example"]


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    assert "fwemu check cisco-asa" in out
