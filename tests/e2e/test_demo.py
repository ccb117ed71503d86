"""`fwemu demo` for real: a lab, fwemu inline, five scripted connections; nothing left behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import netns

from fwemu.cli import main
from fwemu.demo import runner
from fwemu.policy import loads_policy

from .conftest import require_root

pytestmark = pytest.mark.e2e

# The demo takes ~15 s; it promises under a minute. The margin is for a busy 2-CPU VM.
DEMO_TIMEOUT = 90.0

# What a person must be able to read in the timeline, per case: (case, who, what) patterns.
KEY_OBSERVATIONS = [
    (1, "fwemu", r"expire SYN_SENT .*: reset-client"),
    (1, "client", r"connect: ECONNREFUSED"),
    (2, "fwemu", r"expire ESTABLISHED .*: reset-both"),
    (2, "client", r"recv: ECONNRESET"),
    (2, "server", r"recv: ECONNRESET"),
    (3, "client", r"shutdown\(SHUT_WR\)"),
    (3, "fwemu", r"expire CLOSE_WAIT .*: reset-both"),
    (3, "client", r"recv: ECONNRESET"),
    (3, "server", r"socket reset .*EPIPE"),
    (4, "fwemu", r"expire ESTABLISHED .*: silent"),
    (4, "fwemu", r"out-of-state packet from client.*: dropped"),
    (4, "client", r"recv: no answer within 3s"),
    (4, "server", r"saw nothing"),
    (5, "fwemu", r"out-of-state packet from client.*: answered with a RST"),
    (5, "fwemu", r"RST to client"),
    (5, "client", r"recv: ECONNRESET"),
]


@pytest.fixture
def lab_name() -> Iterator[str]:
    """A lab name of this test run's own; after the test, nothing of that lab may remain."""
    require_root()
    name = f"fwemu-t{os.getpid()}-demo"
    rules_before = _root_rules()
    yield name
    assert not [ns for ns in netns.listnetns() if ns.startswith(f"{name}-")]
    assert not _processes_mentioning(f"{name}-fw")
    assert _root_rules() == rules_before


def _root_rules() -> str:
    """The root namespace's ruleset (read only: the demo must leave it as it was)."""
    return subprocess.run(["iptables", "-S"], capture_output=True, text=True, check=True).stdout


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in args:
            found.append(args)
    return found


def test_demo_shows_every_case_and_passes(lab_name: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fwemu", "demo", "--lab", lab_name],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for case, who, what in KEY_OBSERVATIONS:
        assert re.search(rf"^\s+\+\d+\.\d\d\s+case {case}\s+{who}\s+{what}", out, re.M), (
            f"case {case}: no {who} line matching {what!r} in:\n{out}"
        )
    assert len(re.findall(r"\bPASS\b", out)) == 5
    assert "all cases passed" in out


def test_json_timeline_and_summary(lab_name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--lab", lab_name, "--json", "--case", "5"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    entries, summary = records[:-1], records[-1]
    assert {e["case"] for e in entries} == {5}
    assert [e["t"] for e in entries] == sorted(e["t"] for e in entries)
    rst = next(e for e in entries if e["who"] == "fwemu" and e["event"]["event"] == "reset")
    assert rst["event"]["to"] == "client"
    reset = next(e for e in entries if e["who"] == "client" and "ECONNRESET" in e["what"])
    assert reset["t"] >= rst["t"]
    assert summary["case"] == 5
    assert summary["result"] == "PASS"


def test_a_case_that_does_not_behave_fails_the_demo(
    lab_name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Case 5 expects a RST for the late packet; with the policy dropping it instead, the client
    # just times out, and the demo must say FAIL and exit non-zero.
    text = runner.policy_text()
    broken = text.replace('out_of_state = { from_client = "reset" }', "")
    assert broken != text
    monkeypatch.setattr(runner, "policy_text", lambda: broken)
    assert main(["demo", "--lab", lab_name, "--case", "5"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL\s+5\s.*client timeout \(expected ECONNRESET\)", out, re.M)
    assert "1 of 1 cases FAILED" in out


def test_show_policy_prints_the_policy_it_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--show-policy"]) == 0
    shown = loads_policy(capsys.readouterr().out, "shown")
    assert [rule.name for rule in shown.rules] == [rule.name for rule in runner.load_policy().rules]
    assert [rule.match.dst_port[0].low for rule in shown.rules] == [9001, 9002, 9003, 9004, 9005]


def test_a_lab_up_with_another_index_is_run_with_the_index_its_error_names(
    lab_name: str,
) -> None:
    index = 2 + os.getpid() % 190  # this run's own (not the default 201)
    fwemu = [sys.executable, "-m", "fwemu"]
    subprocess.run([*fwemu, "lab", "up", lab_name, "--index", str(index)], check=True, timeout=60)
    try:
        demo = [*fwemu, "demo", "--lab", lab_name, "--case", "5", "--json"]
        refused = subprocess.run(demo, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 2
        assert f"or use --index {index}" in refused.stderr

        done = subprocess.run(
            [*demo, "--index", str(index)], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        records = [json.loads(line) for line in done.stdout.splitlines()]
        flows = [r["event"]["flow"] for r in records if r.get("event")]
        assert flows and all(f["src"].startswith(f"10.{index}.") for f in flows)
    finally:  # the demo removes its lab; this one too if it failed first
        subprocess.run(
            [*fwemu, "lab", "down", lab_name], capture_output=True, timeout=60, check=False
        )
