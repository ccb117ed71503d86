"""`fwemu lab` as a user runs it: output, exit statuses, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fwemu.cli import main
from fwemu.lab import LabPlan, processes_in
from fwemu.lab.netns import STOP_GRACE
from fwemu.testing import STARTED, FwemuProcess

from .helpers import DEAF, FWEMU, ping


def console(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The console script a user runs, to completion."""
    return subprocess.run(
        [FWEMU, *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


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
def test_down_stops_what_runs_in_the_lab_naming_each_so_that_it_can_come_up_again(
    make_lab: Callable[[], LabPlan],
) -> None:
    plan = make_lab()
    fw_ns, server_ns, client_ns = (
        e.namespace for e in (plan.fw_client_side, plan.server, plan.client)
    )
    run = ["run", "--netns", fw_ns, "--preset", "linux"]  # its control socket in /run/fwemu
    web = [sys.executable, "-u", "-m", "http.server", "--bind", plan.server.ipv4, "8080"]
    fw = FwemuProcess.start(run, command=(FWEMU,))
    with (
        _in_lab(plan, "server", web) as server,
        _in_lab(plan, "client", DEAF) as stubborn,
    ):
        try:
            fw.wait_for(STARTED)
            assert server.stdout is not None and stubborn.stdout is not None
            assert server.stdout.readline().startswith("Serving HTTP")
            assert stubborn.stdout.readline() == "ready\n"
            down = console("lab", "down", plan.name)
            assert down.returncode == 0
            *stopped, removed = down.stdout.splitlines()
            assert removed == f"lab {plan.name} removed"
            by_pid = {int(line.split()[2]): line for line in stopped}
            assert by_pid.keys() == {fw.process.pid, server.pid, stubborn.pid}
            assert by_pid[fw.process.pid].startswith(f"stopped pid {fw.process.pid} in {fw_ns}: ")
            assert by_pid[fw.process.pid].endswith(f"{FWEMU} {' '.join(run)} (SIGTERM)")
            assert by_pid[server.pid] == (
                f"stopped pid {server.pid} in {server_ns}: {' '.join(web)} (SIGTERM)"
            )
            assert by_pid[stubborn.pid] == (
                f"stopped pid {stubborn.pid} in {client_ns}: {' '.join(DEAF)} "
                f"(SIGKILL: still running {STOP_GRACE:g} s after SIGTERM)"
            )
            assert (server.wait(10), stubborn.wait(10), fw.finish()) == (
                -signal.SIGTERM,
                -signal.SIGKILL,
                0,
            )
            assert "fwemu stopped (SIGTERM)" in fw.stderr
        finally:
            fw.stop(signal.SIGKILL)
            server.kill()
            stubborn.kill()
    assert console("lab", "up", plan.name, "--index", str(plan.index)).returncode == 0
    again = FwemuProcess.start(run, command=(FWEMU,))
    try:
        again.wait_for(STARTED)  # the old one's control socket is gone with it
    finally:
        assert again.stop() == 0


def _in_lab(plan: LabPlan, side: str, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [FWEMU, "lab", "exec", plan.name, side, "--", *argv], stdout=subprocess.PIPE, text=True
    )


@pytest.mark.usefixtures("needs_root")
def test_up_of_a_lab_that_is_up_changes_nothing_whatever_its_index(
    lab_name: Callable[[], str],
) -> None:
    name = lab_name()
    assert console("lab", "up", name, "--index", "7").returncode == 0
    plan = LabPlan.create(name, 7)
    inodes = [os.stat(f"/run/netns/{ns}").st_ino for ns in plan.namespaces]
    again = console("lab", "up", name)
    assert again.returncode == 0
    assert again.stdout.splitlines()[0] == f"lab {name} was already up, unchanged (index 7):"
    assert [os.stat(f"/run/netns/{ns}").st_ino for ns in plan.namespaces] == inodes
    other = console("lab", "up", name, "--index", "8")
    assert (other.returncode, other.stderr) == (
        2,
        f"fwemu: lab {name} is already up with index 7; run 'fwemu lab down {name}' first "
        "or use --index 7\n",
    )


@pytest.mark.usefixtures("needs_root")
def test_list_names_the_fwemu_serving_each_lab(
    make_lab: Callable[[], LabPlan], tmp_path: Path
) -> None:
    plan, idle = make_lab(), make_lab()
    fw_ns, control = plan.fw_client_side.namespace, tmp_path / "fw.sock"
    fw = FwemuProcess.start(
        ["run", "--netns", fw_ns, "--preset", "aws-nlb", "--queue", "3", "--control", str(control)],
        command=(FWEMU,),
    )
    try:
        fw.wait_for(STARTED)
        listed = {lab["name"]: lab for lab in json.loads(console("lab", "list", "--json").stdout)}
        assert listed[plan.name]["fwemu"] == [
            {
                "namespace": fw_ns,
                "queues": [3],
                "pid": fw.process.pid,
                "command": "fwemu",
                "policy": "aws-nlb",
                "control": [str(control)],
            }
        ]
        assert listed[idle.name]["fwemu"] == []
        table = console("lab", "list").stdout.splitlines()
        assert f"queue 3, pid {fw.process.pid}, policy aws-nlb" in next(
            line for line in table if plan.name in line
        )
    finally:
        assert fw.stop() == 0


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
    make_lab: Callable[[], LabPlan],
) -> None:
    plan = make_lab()
    shown = console("lab", "exec", plan.name, "server", "--", "ip", "-o", "addr")
    assert shown.returncode == 0 and plan.server.addresses[0] in shown.stdout
    assert console("lab", "exec", plan.name, "fw", "--", "sh", "-c", "exit 7").returncode == 7
    killed = console("lab", "exec", plan.name, "client", "--", "sh", "-c", "kill -TERM $$")
    assert killed.returncode == -signal.SIGTERM  # the command's own death, as a shell sees it


@pytest.mark.usefixtures("needs_root")
def test_exec_becomes_the_command_so_signalling_the_job_ends_it(
    make_lab: Callable[[], LabPlan],
) -> None:
    """`fwemu lab exec ... &` then `kill $!`: the pid the shell knows is the command's."""
    plan = make_lab()
    argv = [FWEMU, "lab", "exec", plan.name, "server", "--", "sh", "-c", "echo $$; exec sleep 600"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as job:
        try:
            assert job.stdout is not None
            assert int(job.stdout.readline()) == job.pid
            job.send_signal(signal.SIGHUP)
            assert job.wait(timeout=10) == -signal.SIGHUP
            assert processes_in(plan.name) == []
        finally:
            job.kill()


@pytest.mark.usefixtures("needs_root")
def test_exec_gives_the_command_the_signal_dispositions_fwemu_was_given(
    make_lab: Callable[[], LabPlan],
) -> None:
    """Python ignores SIGPIPE and SIGXFSZ for itself; the command must not inherit that (a
    `yes | head` in it would never end), but gets what fwemu itself was given: what a command
    this test starts gets (e.g. SIGINT and SIGQUIT ignored when the suite runs as a shell's
    background job)."""
    plan = make_lab()
    read = ["grep", "SigIgn", "/proc/self/status"]
    given = subprocess.run(read, capture_output=True, text=True, check=True).stdout.split()
    assert int(given[1], 16) & 1 << (signal.SIGPIPE - 1) == 0
    shown = console("lab", "exec", plan.name, "fw", "--", *read)
    assert shown.stdout.split() == given


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
