"""`fwemu run --proto`: what the option reads into the RunConfig, and what it refuses (no root:
the run itself is replaced by one that records its config)."""

from __future__ import annotations

import pytest

from fwemu.adapters import runtime
from fwemu.adapters.runtime import RunConfig
from fwemu.cli import main
from fwemu.policy.model import Protocol


@pytest.fixture
def configs(monkeypatch: pytest.MonkeyPatch) -> list[RunConfig]:
    """The RunConfigs `fwemu run` was given, in place of running them."""
    given: list[RunConfig] = []
    monkeypatch.setattr(runtime, "run", lambda config: given.append(config) or 0)
    return given


@pytest.mark.parametrize(
    ("argv", "protocols"),
    [
        ([], (Protocol.TCP, Protocol.UDP)),
        (["--proto", "udp"], (Protocol.UDP,)),
        (["--proto", "tcp"], (Protocol.TCP,)),
        (["--proto", "udp,tcp"], (Protocol.TCP, Protocol.UDP)),
        (["--proto", "UDP, tcp,udp"], (Protocol.TCP, Protocol.UDP)),
    ],
    ids=["default", "udp", "tcp", "udp,tcp", "spaced, repeated"],
)
def test_proto_chooses_the_protocols_the_rules_queue(
    configs: list[RunConfig], argv: list[str], protocols: tuple[Protocol, ...]
) -> None:
    assert main(["run", "--preset", "linux", "-i", "cli0", *argv]) == 0
    [config] = configs
    assert config.capture.protocols == protocols
    assert config.capture.in_interfaces == ("cli0",)


@pytest.mark.parametrize(
    ("value", "bad"), [("icmp", "icmp"), ("tcp,sctp", "sctp"), ("tcp,", ""), ("", "")]
)
def test_an_unknown_protocol_is_refused_in_one_line_naming_it(
    configs: list[RunConfig], capsys: pytest.CaptureFixture[str], value: str, bad: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--preset", "linux", "--proto", value])
    assert exit_.value.code == 2
    assert configs == []
    error = capsys.readouterr().err.splitlines()[-1]
    assert error == (
        f"fwemu run: error: argument --proto: unknown protocol {bad!r} in {value!r}: "
        "use tcp, udp or tcp,udp"
    )


def test_help_says_what_proto_does_and_which_timers_udp_runs_on(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--proto LIST the protocols to queue: tcp, udp or tcp,udp (default: tcp,udp)" in text
    assert "[timeouts] udp and udp_stream" in text
