"""UDP steps for real: datagrams both ways through fwemu, an echoing server, the ICMP port
unreachable a socket hears of from the server's kernel or from fwemu, v4 and v6 (issue 17)."""

from __future__ import annotations

import socket

import pytest

from fwemu.scenario.loader import loads_scenario
from fwemu.scenario.model import Outcome
from fwemu.scenario.report import details
from fwemu.scenario.runner import ScenarioResult, run_scenario
from fwemu.testing import EventTimeout, inline_firewall
from tests.e2e.conftest import require_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(20)]
FAMILIES = pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])


def play(text: str) -> ScenarioResult:
    require_root()
    result = run_scenario(loads_scenario(text, "udp.toml"))
    assert result.passed, "\n".join(details(result))
    return result


def said(result: ScenarioResult, who: str) -> list[str]:
    return [e.what for e in result.timeline if e.who == who]


@FAMILIES
def test_a_query_its_answer_and_an_echo(ipv6: bool) -> None:
    result = play(f"""\
[scenario]
ipv6 = {str(ipv6).lower()}
speed = 10
[[server]]
do = "bind"
[[server]]
do = "recv-from"
[[server]]
do = "send-to"
data = "answer"
[[server]]
do = "echo"
for = "2s"

[[client]]
do = "send-to"
data = "query"
[[client]]
do = "recv-from"
within = "1s"
[[client]]
do = "send-to"
[[client]]
do = "recv-from"
within = "1s"

[[event]]
event = "state"
proto = "udp"
old_state = "UNREPLIED"
state = "REPLIED"
""")
    echo = result.steps[-1]
    assert all(step.outcome is Outcome.OK for step in result.steps)
    assert echo.detail == "1 echoed"
    (new,) = [e.event for e in result.timeline if e.event and e.event["event"] == "new"]
    client = new["flow"]["src"], new["flow"]["sport"]
    where = f"[{client[0]}]:{client[1]}" if ipv6 else f"{client[0]}:{client[1]}"
    # The server answers where the query came from; the echo sends back what it got.
    assert said(result, "server")[1:4] == [
        f"received 'query' from {where}",
        f"sends 'answer' to {where}",
        f"echoes 'client step 3' to {where}",
    ]
    assert "received 'client step 3' from" in said(result, "client")[-1]
    assert new["flow"]["proto"] == "udp"


@FAMILIES
def test_nothing_bound_on_the_port_is_unreachable(ipv6: bool) -> None:
    # The server's kernel answers with an ICMP port unreachable; the client's connected socket
    # hears of it on its next call.
    result = play(f"""\
[scenario]
ipv6 = {str(ipv6).lower()}
[[client]]
do = "send-to"
[[client]]
do = "recv-from"
expect = "unreachable"
within = "1s"

[[no_event]]
event = "unreachable"
""")
    assert (
        said(result, "client")[-1] == "recvfrom: ECONNREFUSED: an ICMP port unreachable came back"
    )


@FAMILIES
def test_fwemu_answers_late_datagrams_of_either_side_with_port_unreachable(ipv6: bool) -> None:
    result = play(f"""\
[scenario]
ipv6 = {str(ipv6).lower()}
speed = 10
policy_toml = \"\"\"
[timeouts]
udp = "3s"
[out_of_state]
udp_from_client = "icmp-unreachable"
udp_from_server = "icmp-unreachable"
\"\"\"

[[server]]
do = "bind"
[[server]]
do = "echo"
for = "1s"
[[server]]
do = "sleep"             # the flow expires 3 s after the echo
for = "4s"
[[server]]
do = "send-to"           # late: fwemu answers it
[[server]]
do = "recv-from"         # the server's socket hears of it (IP_RECVERR)
expect = "unreachable"
within = "1s"

[[client]]
do = "send-to"
[[client]]
do = "recv-from"
within = "1s"
[[client]]
do = "sleep"
for = "6s"
[[client]]
do = "send-to"
[[client]]
do = "recv-from"
expect = "unreachable"
within = "1s"

[[event]]
event = "expire"
state = "REPLIED"
action = "silent"
after = "3s"
within = "4s"
[[event]]
event = "unreachable"
to = "server"
cause = "out_of_state"
[[event]]
event = "unreachable"
to = "client"
cause = "out_of_state"
""")
    fwemu = said(result, "fwemu")
    assert (
        "out-of-state datagram from server, no flow (expired): answered with an ICMP port "
        "unreachable"
    ) in fwemu
    assert "ICMP port unreachable to client (for the out-of-state packet)" in fwemu


def test_a_server_answers_only_once_it_has_heard_and_only_on_a_bound_socket() -> None:
    result = play("""\
[[server]]
do = "send-to"
expect = "error"
[[server]]
do = "bind"
[[server]]
do = "send-to"
expect = "error"
[[client]]
do = "sleep"
for = "10ms"

[[no_event]]
event = "new"
""")
    unbound, _bind, unheard = result.steps[1:]
    assert unbound.detail == "no UDP socket to send-to: add a bind step first"
    assert unheard.detail == "no datagram to answer: recv-from or echo first"


def test_a_lost_answer_fails_the_step_waiting_for_it() -> None:
    require_root()
    # Nothing answers: the recv-from that expects an answer times out, and the report says so.
    text = '[[server]]\ndo = "bind"\n[[client]]\ndo = "send-to"\n[[client]]\ndo = "recv-from"\n'
    result = run_scenario(loads_scenario(text + 'timeout = "300ms"\n', "lost.toml"))
    assert not result.passed
    assert result.problems[0].startswith(
        "client step 2 (recv-from): expected ok, got timeout after 300ms"
    )
    assert said(result, "client")[-2] == "recvfrom: no answer within 300ms (its socket timeout)"


@FAMILIES
def test_the_harness_gives_udp_sockets_whose_flows_its_errors_name(ipv6: bool) -> None:
    require_root()
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    with inline_firewall("linux") as fw:
        address = (fw.server_address(ipv6), 5353)
        with (
            fw.server_socket(family, socket.SOCK_DGRAM) as server,
            fw.client_socket(family, socket.SOCK_DGRAM) as client,
        ):
            server.bind(address)
            server.settimeout(5)
            client.connect(address)
            client.send(b"query")
            assert server.recvfrom(100)[0] == b"query"
            new = fw.wait_for_event("new", proto="udp", dport=5353)
            assert (new["state"], new["flow"]["src"]) == ("UNREPLIED", fw.client_address(ipv6))
            with pytest.raises(EventTimeout) as caught:
                fw.wait_for_event("expire", timeout=0.1, proto="udp")
    flow = f"udp {fw.client_address(ipv6)}:{new['flow']['sport']}>{fw.server_address(ipv6)}:5353"
    assert f"events: new {flow} state=UNREPLIED" in str(caught.value)
