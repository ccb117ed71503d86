"""`fwemu flood`'s refusals: one line each, exit status 2, before anything is sent."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fwemu.cli import main
from fwemu.lab import LabPlan


def refusal(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `fwemu flood ARGV` printed on stderr; it must exit 2 with nothing on stdout."""
    assert main(["flood", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "0"], "count must be 1..10,000,000, not 0"),
        (["--count", "20000000"], "count must be 1..10,000,000, not 20,000,000"),
        (["--rate", "5000000"], "rate must be 1..1,000,000 SYNs a second, not 5,000,000"),
        (["--rate", "nan"], "rate must be 1..1,000,000 SYNs a second, not nan"),
        (["--dport", "65536"], "port must be 1..65535, not 65536"),
        (["--sources", "0"], "sources must be 1..65536, not 0"),
        (
            ["--count", "1000000", "--rate", "100"],
            "1,000,000 SYNs at 100/s would take 3 hours: more than 10 minutes; send fewer, "
            "faster, or set a duration",
        ),
        (["--connect-timeout", "0"], "connect timeout must be 0.01..60 seconds, not 0"),
        (["--legit-interval", "100"], "legit interval must be 0.001..60 seconds, not 100"),
    ],
)
def test_absurd_values(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    assert refusal(capsys, "somelab", *argv) == f"fwemu: {message}\n"


def test_a_duration_past_ten_minutes_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["flood", "somelab", "--duration", "1h"])
    assert exited.value.code == 2
    assert "duration must be a duration up to 10m, not '1h'" in capsys.readouterr().err


@pytest.mark.usefixtures("needs_root")
def test_a_lab_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    assert refusal(capsys, "fwemu-nosuchlab") == (
        "fwemu: no lab fwemu-nosuchlab; create it with 'fwemu lab up fwemu-nosuchlab'\n"
    )


@pytest.mark.timeout(60)
def test_sources_the_lab_cannot_spoof(
    make_lab: Callable[[], LabPlan], capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_lab()
    subnet = f"10.{plan.index}.1.0/24"
    cases = {
        "198.51.100.0/24": f"sources 198.51.100.0/24 are outside the lab's client subnet "
        f"{subnet}: the fw would have no route for the server's replies",
        "10.1.1.1/40": "sources '10.1.1.1/40' is not an address or network, like "
        "10.201.1.0/24 or 10.201.1.77",
        plan.client.ipv4: f"sources {plan.client.ipv4}/32 leave no address to spoof: the lab's "
        f"own addresses ({plan.client.ipv4}) are never spoofed",
        "300": f"300 sources asked for, but {subnet} has 252 free addresses",
    }
    for sources, message in cases.items():
        assert refusal(capsys, plan.name, "--sources", sources) == f"fwemu: {message}\n"
    assert refusal(capsys, plan.name, "--ipv6", "--sources", subnet) == (
        f"fwemu: sources {subnet} are IPv4, but IPv6 was asked for\n"
    )
    assert refusal(capsys, plan.name, "--backlog", "0") == (
        "fwemu: backlog must be 1..65535, not 0\n"
    )
