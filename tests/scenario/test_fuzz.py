"""No scenario file crashes `fwemu test`'s loader: a mutated shipped scenario is a Scenario or a
ScenarioError of printable lines naming the file (it shares the policy loader's TOML reading,
tests/policy/test_fuzz.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from fwemu.scenario.loader import ScenarioError, load_scenario
from tests.policy.mutations import mutated_bytes
from tests.policy.test_fuzz import FUZZ

SHIPPED = Path(__file__).parent.parent / "scenarios"
SEEDS = [path.read_text() for path in sorted(SHIPPED.glob("*.toml"))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@FUZZ
@given(data=mutated_bytes(SEEDS))
def test_a_mutated_scenario_is_a_scenario_or_a_scenario_error(workdir: Path, data: bytes) -> None:
    path = workdir / "fuzz.toml"
    path.write_bytes(data)
    try:
        scenario = load_scenario(path)
    except ScenarioError as err:
        assert err.problems
        lines = [str(problem) for problem in err.problems]
        assert all(line.isprintable() and line.startswith(str(workdir)) for line in lines), lines
    else:
        assert scenario.name.isprintable()
