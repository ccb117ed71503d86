"""Count steps for real: many connections at once through fwemu, each outcome counted, the
connected ones held until a close step; a second client address (issue 13's scenarios)."""

from __future__ import annotations

from collections import Counter

import pytest

from fwemu.scenario.loader import loads_scenario
from fwemu.scenario.model import Outcome
from fwemu.scenario.report import details
from fwemu.scenario.runner import ScenarioResult, format_time, run_scenario
from tests.e2e.conftest import require_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(20)]


def play(text: str) -> ScenarioResult:
    require_root()
    result = run_scenario(loads_scenario(text, "count.toml"))
    assert result.passed, "\n".join(details(result))
    return result


def new_flows(result: ScenarioResult) -> Counter[str]:
    """How many flows fwemu saw begin, by client address."""
    return Counter(
        e.event["flow"]["src"]
        for e in result.timeline
        if e.event and e.who == "fwemu" and e.event["event"] == "new"
    )


def test_twenty_connects_at_once_all_connect_and_are_held() -> None:
    result = play("""\
[scenario]
policy = "linux"
[[server]]
do = "listen"
[[server]]
do = "accept"             # the kernel completed them all without an accept: take them now
count = 25
timeout = "1s"
expect = { ok = 20, timeout = 5 }
[[client]]
do = "connect"
count = 20
timeout = "5s"
[[client]]
do = "sleep"
for = "500ms"
[[client]]
do = "close"

[[no_event]]
event = "reset"
""")
    connect, _, close, _, accept = result.steps
    assert connect.counts == {Outcome.OK: 20}
    assert accept.counts == {Outcome.OK: 20, Outcome.TIMEOUT: 5}
    assert close.detail == "ok"
    assert sum(new_flows(result).values()) == 20
    notes = {e.what: e.ts for e in result.timeline if e.who == "client"}
    assert "close() x20: sent their FINs" in notes
    # Each one stayed established through the sleep, until the close step closed it.
    closed = [
        e.ts for e in result.timeline if e.event and e.event.get("old_state") == "ESTABLISHED"
    ]
    assert len(closed) == 20
    assert min(closed) > notes["connect x20: ok 20"] + 0.4


def test_connects_to_a_port_nobody_listens_on_are_all_refused() -> None:
    result = play("""\
[scenario]
policy = "linux"
[[client]]
do = "connect"
count = 5
timeout = "5s"
expect = { refused = 5 }
[[client]]
do = "send"
data = "x"
expect = "error"

[[event]]
event = "delete"
""")
    connect, send = result.steps
    assert connect.counts == {Outcome.REFUSED: 5}
    assert send.detail == "send takes one connection, not client step 1 (connect x5)'s"
    assert sum(new_flows(result).values()) == 5


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_a_connect_binds_to_the_client_address_its_source_names(ipv6: bool) -> None:
    result = play(f"""\
[scenario]
clients = 2
ipv6 = {str(ipv6).lower()}
[[server]]
do = "listen"
[[client]]
do = "connect"
count = 3
source = 2
timeout = "5s"
[[client]]
do = "connect"
timeout = "5s"
[[client]]
do = "abort"
all = true

[[no_event]]
event = "expire"
""")
    # Client 2 is host 3 of the client's subnet (10.N.1.3, fd00:N:1::3); the plain connect
    # leaves the choice to the kernel, which takes the main address, host 2.
    flows = {src.rsplit(":" if ipv6 else ".", 1)[1]: n for src, n in new_flows(result).items()}
    assert flows == {"3": 3, "2": 1}
    assert result.steps[2].detail == "ok"
    assert "abort x4: close() with SO_LINGER 0 (sends RSTs)" in [e.what for e in result.timeline]


def test_a_wrong_count_fails_showing_the_counts() -> None:
    require_root()
    scenario = loads_scenario(
        '[[client]]\ndo = "connect"\ncount = 4\ntimeout = "5s"\nexpect = { ok = 4 }\n', "x.toml"
    )
    result = run_scenario(scenario)
    assert result.problems == (
        "client step 1 (connect x4): expected ok 4, got refused 4 after "
        + format_time(result.steps[0].took),
    )
