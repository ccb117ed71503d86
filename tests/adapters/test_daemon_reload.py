"""A reload (SIGHUP, `fwemu reload`) of a policy file that cannot be loaded: the rejection is
logged and the running policy stays in force (issue 19: files the loader crashed on made a
running fwemu exit 1)."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import cast

import pytest

from fwemu.adapters.daemon import Daemon
from fwemu.adapters.inject import Injector
from fwemu.adapters.output import Reporter
from fwemu.clock import Clock
from fwemu.core.engine import Engine
from fwemu.policy import load_policy
from fwemu.policy.source import PolicySource

from .fakes import NoInjector

GOOD = '[policy]\nname = "running"\n[timeouts]\nestablished = "1h"\n'
STAMP = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} ")


def write(path: Path, content: str | bytes) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        pytest.param("x = " + "[" * 500 + "]" * 500 + "\n", ":1: arrays and inline", id="nested"),
        pytest.param(f"x = 1{'0' * 4400}\n", ":1: number of more than 4300", id="huge-int"),
        pytest.param(
            f"[timeouts]\nestablished = 1{'0' * 400}\n", ":2: timeouts.established", id="overflow"
        ),
        pytest.param('[policy]\nname = "a\\u001b"\n', ":2: policy.name: non-printable", id="esc"),
        pytest.param(b"\xff\xfe", ": cannot read: not UTF-8 text", id="binary"),
        pytest.param(None, ": cannot read: No such file or directory", id="deleted"),
    ],
)
def test_a_bad_file_is_logged_and_the_policy_stays(
    tmp_path: Path, content: str | bytes | None, problem: str
) -> None:
    path = tmp_path / "fw.toml"
    write(path, GOOD)
    running = load_policy(path)
    log = io.StringIO()
    source = PolicySource(str(path), None, 1.0)
    daemon = Daemon(
        Engine(running), Reporter(Clock.start(), log), cast(Injector, NoInjector()), source
    )
    if content is None:
        path.unlink()
    else:
        write(path, content)

    ok, message = daemon.reload()

    assert not ok
    assert daemon.engine.policy is running
    lines = [STAMP.sub("", line) for line in log.getvalue().splitlines()]
    assert lines == message.splitlines()
    assert lines[0] == f"reload rejected, policy running ({path}) stays in force:"
    assert [line.startswith(f"{path}{problem}") for line in lines[1:]] == [True]
