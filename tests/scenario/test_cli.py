"""`fwemu test` for real: the shipped scenarios pass, a wrong expectation fails and shows what
happened instead, a broken file is rejected before any lab comes up."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fwemu.cli import main
from tests.e2e.conftest import require_root

SCENARIOS = Path(__file__).parent.parent / "scenarios"
# ~75 s with two labs at a time on a 2-CPU VM (31 scenarios); the margin is for a busy one.
SUITE_TIMEOUT = 200


@pytest.mark.e2e
@pytest.mark.timeout(SUITE_TIMEOUT + 10)  # past the default 120 s: the subprocess's own limit
def test_the_shipped_scenarios_pass(tmp_path: Path) -> None:
    require_root()
    junit = tmp_path / "junit.xml"
    files = sorted(str(p) for p in SCENARIOS.glob("*.toml"))
    done = subprocess.run(
        [sys.executable, "-m", "fwemu", "test", *files, "--jobs", "2", "--junit", str(junit)],
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"all {len(files)} scenarios passed" in done.stdout
    (suite,) = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == (
        str(len(files)),
        "0",
        "0",
    )


@pytest.mark.e2e
def test_a_wrong_expectation_fails_with_what_happened_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()
    # The NLB resets the late request; this copy expects the request to hang instead.
    text = (SCENARIOS / "aws-nlb-idle-pool.toml").read_text()
    wrong = text.replace('expect = "reset"\nwithin = "1s"', 'expect = "timeout"\ntimeout = "1m"')
    assert wrong != text
    (tmp_path / "wrong.toml").write_text(wrong)
    assert main(["test", str(tmp_path / "wrong.toml")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  wrong  aws-nlb at speed 100" in out
    assert "client step 6 (recv): expected timeout, got reset (ECONNRESET) after" in out
    # ... and the timeline says why: fwemu answered the late request with a RST.
    for seen in (  # regular expressions
        r"fwemu   expire ESTABLISHED after 3\.5\ds idle .*: silent",
        r"fwemu   out-of-state packet from client, no flow \(expired\): answered with a RST",
        r"client  recv: ECONNRESET",
    ):
        assert _search(seen, out), f"no {seen!r} in:\n{out}"
    assert "the scenario FAILED" in out


def test_a_broken_scenario_exits_2_listing_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.toml").write_text('[[client]]\ndo = "conect"\n')
    (tmp_path / "b.toml").write_text('[scenario]\nspeed = 0\n[[client]]\ndo = "close"\n')
    assert main(["test", str(tmp_path / "a.toml"), str(tmp_path / "b.toml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{tmp_path}/a.toml:2: client[1].do: unknown action 'conect' (did you mean 'connect'?)",
        f"{tmp_path}/b.toml:2: scenario.speed: must be greater than 0, not 0",
    ]


def test_jobs_must_be_a_positive_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["test", "x.toml", "--jobs", "0"])
    assert caught.value.code == 2
    assert "jobs must be a whole number >= 1, not '0'" in capsys.readouterr().err


def _search(pattern: str, text: str) -> bool:
    import re

    return re.search(pattern, text) is not None
