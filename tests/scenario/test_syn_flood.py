"""The `syn-flood` step as a scenario file writes it, and the messages for broken ones
(tests/e2e/test_syn_flood.py plays one)."""

from __future__ import annotations

import pytest

from fwemu.scenario.loader import ScenarioError, loads_scenario
from fwemu.scenario.model import Action, Outcome, flood_spec


def problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        loads_scenario(text, "s.toml")
    return str(caught.value).splitlines()


def test_a_flood_step_and_what_it_sends() -> None:
    scenario = loads_scenario(
        """\
[scenario]
speed = 10
port = 443
ipv6 = true

[[client]]
do = "syn-flood"
count = 50000
rate = 25000
sources = 16
for = "20s"
background = true
[[client]]
do = "syn-flood"
""",
        "s.toml",
    )
    flood, plain = scenario.client
    assert (flood.action, flood.count, flood.rate, flood.sources) == (
        Action.SYN_FLOOD,
        50000,
        25000,
        16,
    )
    assert (flood.duration, flood.background, flood.counts, flood.expect) == (
        20,
        True,
        None,
        Outcome.OK,
    )
    assert flood.describe() == "client step 1 (syn-flood x50000)"
    spec = flood_spec(flood, scenario.port, scenario.ipv6, scenario.speed)
    # `for` is scenario time, like every duration; the rate is SYNs a wall-clock second.
    assert (spec.count, spec.rate, spec.seconds, spec.sources, spec.port, spec.ipv6) == (
        50000,
        25000,
        2,
        16,
        443,
        True,
    )
    default = flood_spec(plain, scenario.port, scenario.ipv6, scenario.speed)
    assert (default.count, default.rate, default.seconds, default.sources) == (
        10000,
        1000,
        None,
        None,
    )


def test_broken_flood_steps_are_located() -> None:
    text = """\
[scenario]
clients = 3
[[client]]
do = "syn-flood"
count = 10000001
rate = 0
[[client]]
do = "syn-flood"
rate = 2000000
sources = 70000
[[client]]
do = "syn-flood"
count = 1000000
rate = 100
[[client]]
do = "syn-flood"
sources = 251
[[client]]
do = "syn-flood"
expect = "timeout"
[[client]]
do = "connect"
rate = 10
[[server]]
do = "syn-flood"
"""
    assert problems(text) == [
        "s.toml:5: client[1].count: must be at most 10000000, not 10000001",
        "s.toml:6: client[1].rate: must be greater than 0, not 0",
        "s.toml:9: client[2].rate: must be 1..1000000 SYNs a second, not 2000000",
        "s.toml:10: client[2].sources: must be at most 65536, not 70000",
        "s.toml:11: client[3]: 1,000,000 SYNs at 100/s would take 3 hours: more than 10 "
        "minutes; send fewer, faster, or set a duration",
        "s.toml:15: client[4]: 251 sources asked for, but 10.201.1.0/24 has 250 free addresses",
        "s.toml:20: client[5].expect: a syn-flood's outcome is ok (leave expect out)",
        "s.toml:23: client[6].rate: connect does not take 'rate' "
        "(it takes timeout, keepalive, count, source)",
        "s.toml:25: server[1].do: only the client can syn-flood",
    ]


def test_a_long_flood_loads_with_a_for_to_end_it() -> None:
    text = '[[client]]\ndo = "syn-flood"\ncount = 1000000\nrate = 100\nfor = "10s"\n'
    assert loads_scenario(text).client[0].duration == 10
