"""A reload (SIGHUP, `fwemu reload`) of a policy file that cannot be loaded, or of one that
rewrites packets when the queue copies only their headers: the rejection is logged and the
running policy stays in force (issue 19: files the loader crashed on made a running fwemu exit 1;
issue 14: the queue's copies are chosen once, at bind)."""

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


# The ASA's sequence randomisation: every packet of every flow is rewritten.
REWRITING = '[policy]\nname = "rewriting"\n[normalise]\nisn_randomisation = true\n'


def daemon_on(path: Path, *, whole_packets: bool) -> tuple[Daemon, io.StringIO]:
    log = io.StringIO()
    source = PolicySource(str(path), None, 1.0)
    daemon = Daemon(
        Engine(load_policy(path)),
        Reporter(Clock.start(), log),
        cast(Injector, NoInjector()),
        source,
        whole_packets=whole_packets,
    )
    return daemon, log


def test_a_policy_that_rewrites_is_refused_by_a_queue_bound_for_headers(tmp_path: Path) -> None:
    running_path, rewriting_path = tmp_path / "fw.toml", tmp_path / "rewriting.toml"
    write(running_path, GOOD)
    write(rewriting_path, REWRITING)
    daemon, log = daemon_on(running_path, whole_packets=False)
    running, source = daemon.engine.policy, daemon.source
    assert load_policy(rewriting_path).rewrites

    ok, message = daemon.reload(str(rewriting_path))

    assert not ok
    assert daemon.engine.policy is running and daemon.source is source
    lines = [STAMP.sub("", line) for line in log.getvalue().splitlines()]
    assert lines == message.splitlines()
    assert lines == [
        f"reload rejected, policy running ({running_path}) stays in force:",
        f"{rewriting_path}: policy rewriting rewrites packets (SYN cookies, TCP intercept, "
        "sequence randomisation or the normaliser) and needs whole packets, but the queue was "
        "bound for their headers only: restart fwemu run with this policy",
    ]


def test_a_queue_of_whole_packets_takes_any_policy(tmp_path: Path) -> None:
    path = tmp_path / "fw.toml"
    write(path, REWRITING)
    daemon, _ = daemon_on(path, whole_packets=True)
    write(path, GOOD)  # one that no longer rewrites
    assert daemon.reload()[0]
    assert daemon.engine.policy.name == "running"
    write(path, REWRITING)  # and back
    assert daemon.reload()[0]
    assert daemon.engine.policy.name == "rewriting"
