"""The compiled core (mypyc, built at install time by setup.py) decides as its .py files do, and
an edited source is run as Python, never as the stale build of what it was."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fwemu
from fwemu.core import compiled

ROOT = Path(__file__).resolve().parents[2]
SOURCES = "from fwemu.core import compiled; compiled.use_sources(); "
TRACES = "import runpy; runpy.run_module('tests.core.compiled_traces', run_name='__main__'); "
RUNNING = "from fwemu.core import compiled, packet; print(compiled.running())"

pytestmark = pytest.mark.skipif(
    not compiled.built(),
    reason="no compiled core matches these sources (`pip install -e .` builds one: setup.py)",
)


def python(code: str, cwd: Path = ROOT) -> list[str]:
    """The lines a Python child running `code` in `cwd` prints (it imports fwemu from there)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same set orders in both children
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.timeout(240)
def test_the_compiled_core_answers_every_trace_as_its_python_sources_do() -> None:
    *native, native_compiled = python(TRACES + RUNNING)
    *pure, pure_compiled = python(SOURCES + TRACES + RUNNING)
    assert (native_compiled, pure_compiled) == ("True", "False")
    assert len(pure) > 10_000
    if native != pure:
        lines = enumerate(zip([*native, ""], [*pure, ""], strict=False))
        i = next(i for i, (ours, theirs) in lines if ours != theirs)
        pytest.fail(f"from line {i} on:\ncompiled {native[i : i + 1]}\npure     {pure[i : i + 1]}")


def test_an_edited_source_runs_as_python_not_as_its_stale_build(tmp_path: Path) -> None:
    shutil.copytree(
        Path(fwemu.__file__).parent,
        tmp_path / "fwemu",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    assert python(RUNNING, tmp_path) == ["True"]
    with (tmp_path / "fwemu/core/window.py").open("a") as source:
        source.write("# an edit since the build\n")
    assert python(RUNNING, tmp_path) == ["False"]
