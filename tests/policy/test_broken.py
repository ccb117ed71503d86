"""The corpus of broken policies: each `broken/NAME.toml` has the exact problem lines a user
sees in `broken/NAME.expected`, from the loader and from `fwemu check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwemu.cli import main
from fwemu.policy import PolicyError, load_policy

BROKEN = Path(__file__).parent / "broken"
CASES = sorted(path.name for path in BROKEN.glob("*.toml"))


@pytest.fixture(autouse=True)
def _in_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are named as a user in that directory would type them."""
    monkeypatch.chdir(BROKEN)


def expected(name: str) -> str:
    return (BROKEN / name).with_suffix(".expected").read_text()


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 15
    assert sorted(p.name for p in BROKEN.glob("*.expected")) == [
        name.replace(".toml", ".expected") for name in CASES
    ]


@pytest.mark.parametrize("name", CASES)
def test_loader(name: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(name)
    assert f"{caught.value}\n" == expected(name)
    assert all(problem.origin == name for problem in caught.value.problems)


@pytest.mark.parametrize("name", CASES)
def test_check_command(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", name]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", expected(name))
