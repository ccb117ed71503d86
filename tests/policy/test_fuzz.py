"""No policy file crashes fwemu: load_policy on a mutated preset returns a valid policy or raises
PolicyError, whose every line is printable and names the file; never any other exception
(issue 19: RecursionError, ValueError, OverflowError reached users as tracebacks)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from fwemu.policy import Policy, PolicyError, load_policy, preset_names

from .mutations import mutated_bytes

PRESETS = resources.files("fwemu.presets")
SEEDS = [PRESETS.joinpath(f"{name}.toml").read_text(encoding="utf-8") for name in preset_names()]

# Bounded so the suite stays fast: 300 files of at most ~24 KB take a few seconds.
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_problems_are_lines(err: PolicyError, origin: str) -> None:
    """What a user sees of a rejected file: one printable line per problem, naming the file."""
    assert err.problems
    for problem in err.problems:
        line = str(problem)
        assert line.isprintable(), line
        assert line.startswith(f"{origin}:"), line


def assert_printable(policy: Policy) -> None:
    """What fwemu check and the event log print of a loaded policy."""
    names = [policy.name, *policy.sources, *(rule.profile.name for rule in policy.rules)]
    assert all(name.isprintable() for name in names), names
    assert all(line.isprintable() for line in policy.description.split("\n"))


@FUZZ
@given(data=mutated_bytes(SEEDS))
def test_a_mutated_preset_is_a_policy_or_a_policy_error(workdir: Path, data: bytes) -> None:
    path = workdir / "fuzz.toml"
    path.write_bytes(data)
    try:
        policy = load_policy(path)
    except PolicyError as err:
        assert_problems_are_lines(err, str(path))
    else:
        assert_printable(policy)
