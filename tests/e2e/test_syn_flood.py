"""`fwemu flood` in a real lab (issue 14 item 3): its SYNs reach the server's kernel, which counts
them, and the report says what the server, fwemu and a legit client saw; the scenario step
floods in the background while later steps connect.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from fwemu.lab import lab
from fwemu.ops.control import CONTROL_DIR, CONTROL_SUFFIX
from fwemu.scenario.loader import loads_scenario
from fwemu.scenario.runner import run_scenario
from fwemu.testing import FWEMU_COMMAND, inline_firewall

from .conftest import report_figures, require_root

pytestmark = pytest.mark.e2e

COUNT, RATE = 2000, 2000
PORT = 8080
FLOOD_TIMEOUT = 30  # the flood takes ~1 s, its set-up and settling ~2 s more


def flood(*argv: str) -> subprocess.CompletedProcess[str]:
    """`fwemu flood ARGV` as a user runs it; it must succeed."""
    done = subprocess.run(
        [*FWEMU_COMMAND, "flood", *argv],
        capture_output=True,
        text=True,
        timeout=FLOOD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.timeout(60)
def test_a_flood_through_fwemu_reaches_the_server_and_the_report_says_so(
    request: pytest.FixtureRequest,
) -> None:
    require_root()
    # Where `fwemu flood` looks for the fwemu in the lab's fw namespace (by its process's
    # namespace, whatever the socket's name).
    control = CONTROL_DIR / f"fwemu-t{os.getpid()}-flood{CONTROL_SUFFIX}"
    with inline_firewall("linux", extra_args=["--control", str(control)]) as fw:
        done = flood(
            fw.plan.name, "--count", str(COUNT), "--rate", str(RATE), "--dport", str(PORT), "--json"
        )
    report = json.loads(done.stdout)
    sent, server, fwemu, legit = report["sent"], report["server"], report["fwemu"], report["legit"]
    assert (sent["syns"], sent["lost"], sent["stopped"]) == (COUNT, 0, False)
    assert sent["rate"] == pytest.approx(RATE, rel=0.05)
    # Every SYN reached the server's kernel, which answered each: a SYN-ACK from its SYN queue
    # (128 long, the flood's own listener's) or a SYN cookie once the queue was full.
    assert server["syns_received"]["flood"] == COUNT
    assert server["nstat"]["TcpInSegs"] >= COUNT
    assert server["listener"] == "the flood's own" and server["backlog"] == 128
    # The SYN queue stays at the backlog: Linux lets it reach 129, a legit SYN may add one.
    assert 0 < server["half_open"]["peak"] <= 128 + 4
    cookies = server["nstat"]["TcpExtSyncookiesSent"]
    assert cookies + server["half_open"]["end"] >= COUNT
    # fwemu saw each SYN and its SYN-ACK, and made a flow of each.
    assert fwemu["where"] == fw.plan.fw_client_side.namespace and fwemu["policy"] == "linux"
    assert fwemu["counters"]["packets"] >= 2 * COUNT
    assert fwemu["flows"]["peak"] >= COUNT
    # The legit client connected before and during the flood.
    assert legit["source"] == fw.client_address()
    assert legit["before"]["ok"] == 5 and legit["during"]["ok"] >= 1
    report_figures(
        request.config,
        f"fwemu flood: {sent['syns']} SYNs at {sent['rate']:.0f}/s, server sent {cookies} "
        f"cookies, legit connect p99 {legit['during']['connect_ms']['p99']} ms",
    )


@pytest.mark.timeout(60)
def test_an_ipv6_flood_without_fwemu_reads_as_the_kernel_forwarding_alone() -> None:
    require_root()
    with lab(f"fwemu-t{os.getpid()}-flood", 77) as plan:
        out = flood(
            plan.name, "--ipv6", "--count", "1000", "--rate", str(RATE), "--sources", "16"
        ).stdout
    lines = out.splitlines()
    assert lines[0] == (
        f"SYN flood in lab {plan.name}: {plan.server.ipv6}:80 from 16 addresses of fd00:77:1::/120"
    )
    assert lines[1].startswith("  sent     1,000 SYNs in ")
    assert "SYNs received: 1,000 from the flood" in out
    assert "TcpExtSyncookiesSent" in out
    assert "  fwemu    none in the fw namespace: the kernel forwarded alone" in lines
    assert lines[-2].startswith(f"  legit    from {plan.client.ipv6}, before: 5 of 5 connected")


SCENARIO = f"""\
[scenario]
description = "a client connects while a SYN flood hits its server"
port = {PORT}

[[server]]
do = "listen"

[[client]]
do = "syn-flood"
count = {COUNT}
rate = {RATE}
background = true
[[client]]
do = "sleep"
for = "0.3s"
[[client]]
do = "connect"
within = "1s"
[[client]]
do = "sleep"             # the flood ends first: the steps' end would stop it
for = "1.5s"
"""


@pytest.mark.timeout(60)
def test_a_scenario_connects_during_a_background_flood() -> None:
    require_root()
    result = run_scenario(loads_scenario(SCENARIO, "flood.toml"))
    assert result.passed, (result.error, result.problems)
    lines = [entry.what for entry in result.timeline]
    [summary] = [line for line in lines if line.startswith("syn-flood: 2,000 SYNs in")]
    assert f"server: {COUNT:,} received" in summary
    connected = next(i for i, line in enumerate(lines) if line.startswith("connected to"))
    assert connected < lines.index(summary)  # while it flooded
    # fwemu's events about the spoofed flows come as one line, not thousands.
    [flows] = [line for line in lines if line.startswith("the flood's")]
    assert flows.startswith(f"the flood's {COUNT:,} spoofed flows: new {COUNT:,}")
