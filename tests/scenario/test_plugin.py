"""The pytest plugin, run the way users run it: through its `pytest11` entry point, in a
pytester session of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import require_root

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).parent / "examples" / "pool_example.py"
UDP_EXAMPLE = Path(__file__).parent / "examples" / "udp_example.py"


def test_marker_and_option_are_registered(pytester: pytest.Pytester) -> None:
    markers = pytester.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.fwemu(policy=None, *, toml=None, speed=1.0):*"])
    helped = pytester.runpytest_subprocess("--help")
    helped.stdout.fnmatch_lines(["*--fwemu-events=*"])


def test_a_test_without_its_fixtures_gets_no_lab(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import os

        from pyroute2 import netns

        def test_plain():
            # The harness names its labs fwemu-<pid>-<n>: this process has made none.
            assert not [ns for ns in netns.listnetns() if ns.startswith(f"fwemu-{os.getpid()}-")]
        """
    )
    pytester.runpytest_subprocess("--strict-markers", "-W", "error").assert_outcomes(passed=1)


@pytest.mark.e2e
def test_the_documented_example_passes(pytester: pytest.Pytester) -> None:
    require_root()
    pytester.makepyfile(test_pool=EXAMPLE.read_text())
    result = pytester.runpytest_subprocess("-W", "error")
    result.assert_outcomes(passed=1)


@pytest.mark.e2e
def test_a_failing_test_shows_fwemu_events(pytester: pytest.Pytester) -> None:
    require_root()
    wrong = EXAMPLE.read_text().replace('"cause"] == "out_of_state"', '"cause"] == "expire"')
    assert wrong != EXAMPLE.read_text()
    pytester.makepyfile(test_pool=wrong)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*- fwemu events (fwemu-*) -*",
            "*expire ESTABLISHED after 3.5?s idle (established timer 3.5s): silent",
            "*out-of-state packet from client, no flow (expired): answered with a RST",
            "*RST to client seq * (for the out-of-state packet)",
        ]
    )


@pytest.mark.e2e
def test_factory_marker_text_policy_and_expiring(pytester: pytest.Pytester) -> None:
    require_root()
    pytester.makepyfile(
        """
        from pathlib import Path

        import pytest

        POLICY = '[timeouts]\\nestablished = "1h"\\n'

        @pytest.mark.fwemu(toml=POLICY)
        def test_expire(fwemu, fwemu_factory):
            other = fwemu_factory("azure-lb", speed=60)
            assert other.plan.name != fwemu.plan.name and other.speed == 60
            listener = fwemu.server_socket()
            listener.bind((fwemu.server_address(), 9000))
            listener.listen()
            client = fwemu.client_socket()
            client.settimeout(5)
            client.connect((fwemu.server_address(), 9000))
            assert [f["state"] for f in fwemu.flows()] == ["ESTABLISHED"]
            events = fwemu.expire("dport=9000", action="reset-client")
            assert [(e["event"], e.get("to")) for e in events] == [
                ("expire", None), ("reset", "client")
            ]
            assert fwemu.flows() == []
            with pytest.raises(ConnectionResetError):
                client.recv(10)
            assert fwemu.expire() == []  # nothing left to expire
            client.close()
            listener.close()
            # Code run in a namespace sees that namespace: the client forwards nothing.
            forwarding = Path("/proc/sys/net/ipv4/ip_forward")
            assert fwemu.call("client", forwarding.read_text) == "0\\n"
            assert fwemu.call("fw", forwarding.read_text) == "1\\n"
            assert fwemu.run("server", ["true"]).returncode == 0
        """
    )
    pytester.runpytest_subprocess("-W", "error").assert_outcomes(passed=1)


@pytest.mark.e2e
def test_the_documented_udp_example_passes_in_both_families(pytester: pytest.Pytester) -> None:
    require_root()
    pytester.makepyfile(test_udp=UDP_EXAMPLE.read_text())
    pytester.runpytest_subprocess("-W", "error", "-v").assert_outcomes(passed=2)


@pytest.mark.e2e
def test_the_udp_example_fails_with_a_keepalive_longer_than_the_timer(
    pytester: pytest.Pytester,
) -> None:
    require_root()
    text = UDP_EXAMPLE.read_text()
    wrong = text.replace("KEEPALIVE = 25.0", "KEEPALIVE = 35.0")
    assert wrong != text
    pytester.makepyfile(test_udp=wrong)
    result = pytester.runpytest_subprocess("-k", "ipv4")
    result.assert_outcomes(failed=1, deselected=1)
    # Every 35 s the mapping, unanswered, expired 30 s after the datagram before.
    result.stdout.fnmatch_lines(
        [
            "*- fwemu events (fwemu-*) -*",
            "*new UDP flow * UNREPLIED (rule default)",
            "*expire UNREPLIED after 1.0?s idle (udp timer 1s): silent",
        ]
    )


@pytest.mark.parametrize("example", [EXAMPLE, UDP_EXAMPLE], ids=["pool", "udp"])
def test_the_documentation_shows_the_example_as_it_is(example: Path) -> None:
    docs = (Path(__file__).parents[2] / "docs" / "testing.md").read_text()
    assert f"```python\n{example.read_text()}```" in docs
