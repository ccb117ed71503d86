"""`fwemu lab` as a user runs it: output, exit statuses, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from fwemu.cli import main
from fwemu.lab import LabPlan

from .helpers import ping


def _fwemu(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fwemu", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.usefixtures("needs_root")
def test_up_prints_addresses_and_next_steps(
    lab_name: Callable[[], str], capsys: pytest.CaptureFixture[str]
) -> None:
    name = lab_name()
    assert main(["lab", "up", name, "--index", "33"]) == 0
    out = capsys.readouterr().out
    assert f"{name}-client  eth0  10.33.1.2/24  fd00:33:1::2/64" in out
    assert f"{name}-fw      srv0  10.33.2.1/24  fd00:33:2::1/64" in out
    assert f"fwemu lab exec {name} client -- ping -c1 10.33.2.2" in out
    assert f"fwemu run --netns {name}-fw" in out
    assert ping(f"{name}-client", "fd00:33:2::2")


@pytest.mark.usefixtures("needs_root")
def test_parallel_ups_of_different_labs_both_succeed(lab_name: Callable[[], str]) -> None:
    names = [lab_name() for _ in range(3)]
    procs = [_fwemu("lab", "up", name) for name in names]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (0, "")
    for name in names:
        plan = LabPlan.create(name)
        assert ping(plan.client.namespace, plan.server.ipv4)


@pytest.mark.usefixtures("needs_root")
def test_down_and_down_again(
    make_lab: Callable[[], LabPlan], capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_lab()
    assert main(["lab", "down", plan.name]) == 0
    assert main(["lab", "down", plan.name]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"lab {plan.name} removed",
        f"nothing to remove: no namespace of lab {plan.name} exists",
    ]


@pytest.mark.usefixtures("needs_root")
def test_list_json_describes_the_lab(
    make_lab: Callable[[], LabPlan], capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_lab()
    assert main(["lab", "list", "--json"]) == 0
    labs = {lab["name"]: lab for lab in json.loads(capsys.readouterr().out)}
    assert labs[plan.name]["state"] == "up"
    assert labs[plan.name]["index"] == plan.index
    assert labs[plan.name]["namespaces"] == list(plan.namespaces)
    assert labs[plan.name]["addresses"]["server"] == list(plan.server.addresses)


@pytest.mark.usefixtures("needs_root")
def test_list_table_names_the_lab(
    make_lab: Callable[[], LabPlan], capsys: pytest.CaptureFixture[str]
) -> None:
    plan = make_lab()
    assert main(["lab", "list"]) == 0
    out = capsys.readouterr().out
    assert plan.name in out and plan.client.addresses[0] in out


@pytest.mark.usefixtures("needs_root")
def test_exec_runs_inside_the_namespace_and_passes_the_status_through(
    make_lab: Callable[[], LabPlan], capfd: pytest.CaptureFixture[str]
) -> None:
    plan = make_lab()
    assert main(["lab", "exec", plan.name, "server", "--", "ip", "-o", "addr"]) == 0
    assert plan.server.addresses[0] in capfd.readouterr().out
    assert main(["lab", "exec", plan.name, "fw", "--", "sh", "-c", "exit 7"]) == 7
    assert main(["lab", "exec", plan.name, "client", "--", "sh", "-c", "kill -TERM $$"]) == 143


@pytest.mark.usefixtures("needs_root")
def test_exec_in_a_missing_lab_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "exec", "fwemu-no-such-lab", "client", "--", "true"]) == 2
    assert capsys.readouterr().err == (
        "fwemu: lab fwemu-no-such-lab has no namespace fwemu-no-such-lab-client; "
        "run 'fwemu lab up fwemu-no-such-lab'\n"
    )


@pytest.mark.usefixtures("needs_root")
@pytest.mark.parametrize(
    ("action", "name", "more"),
    [("up", "bad name", []), ("down", "a/b", []), ("up", "fwemu-t{pid}-bad", ["--index", "0"])],
)
def test_bad_arguments_exit_2_with_one_line(
    action: str, name: str, more: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    name = name.format(pid=os.getpid())
    assert main(["lab", action, name, *more]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("fwemu: lab ") and captured.err.count("\n") == 1
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"{name}-")]


def test_not_root_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert main(["lab", "up", "fwemu-nonroot"]) == 2
    assert capsys.readouterr().err == (
        "fwemu: managing network namespaces needs root (CAP_SYS_ADMIN); run fwemu with sudo\n"
    )
