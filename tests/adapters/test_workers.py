"""The supervisor of `fwemu run --workers N`, with stand-in workers (no root, no queue), and
the argument checks of `fwemu run --workers`."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwemu.adapters.daemon import Signals
from fwemu.adapters.runtime import per_queue
from fwemu.adapters.workers import Link, Supervisor, WorkerError, tagged
from fwemu.cli import main
from fwemu.errors import FwemuError
from tests.e2e.conftest import require_root


def serve_until_stopped(queue: int, link: Link) -> int:
    """A well-behaved worker: ready at once; counts the SIGHUPs it gets; reports on SIGTERM."""
    waited = {signal.SIGHUP, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    link.ready()
    reloads = 0
    while signal.sigwait(waited) == signal.SIGHUP:
        reloads += 1
    link.stopped({"packets": queue + 1, "reloads": reloads})
    return 0


def refuse_on_queue_1(queue: int, link: Link) -> int:
    if queue == 1:
        raise FwemuError("NFQUEUE 1 is already bound by another program")
    return serve_until_stopped(queue, link)


@pytest.fixture
def signals() -> Iterator[Signals]:
    with Signals() as caught:
        yield caught


def test_workers_start_report_and_their_counts_add_up(signals: Signals) -> None:
    with Supervisor([0, 1, 2], serve_until_stopped, signals) as supervisor:
        assert supervisor.wait_ready() is True
        pids = [w.pid for w in supervisor.workers]
        assert len(set(pids)) == 3 and os.getpid() not in pids
    assert all(w.status == 0 for w in supervisor.workers)
    assert supervisor.totals() == {"packets": 1 + 2 + 3, "reloads": 0}


def test_sighup_reaches_every_worker_and_sigterm_stops_them(signals: Signals) -> None:
    stop = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    with Supervisor([0, 1], serve_until_stopped, signals) as supervisor:
        supervisor.wait_ready()
        os.kill(os.getpid(), signal.SIGHUP)
        stop.start()
        supervisor.run()  # returns once the stop signal came
    stop.join()
    assert signals.stop is signal.SIGTERM
    assert supervisor.totals() == {"packets": 1 + 2, "reloads": 2}  # one for each worker


def test_a_worker_that_refuses_to_start_is_the_whole_refusal(signals: Signals) -> None:
    with (
        pytest.raises(FwemuError, match=r"^NFQUEUE 1 is already bound by another program$") as err,
        Supervisor([0, 1], refuse_on_queue_1, signals) as supervisor,
    ):
        supervisor.wait_ready()
    assert err.value.exit_code == 2
    assert [w.status is not None for w in supervisor.workers] == [True, True]  # none left


def test_a_worker_that_dies_stops_the_run_with_exit_status_1(signals: Signals) -> None:
    with Supervisor([4, 5], serve_until_stopped, signals) as supervisor:
        supervisor.wait_ready()
        victim = supervisor.workers[1]
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(WorkerError) as err:
            supervisor.run()
    assert str(err.value) == (
        f"the worker of queue 5 (pid {victim.pid}) ended (killed by SIGKILL): "
        "stopped the other workers and removed the rules"
    )
    assert err.value.exit_code == 1
    assert supervisor.workers[0].status == 0  # the other one was stopped, and stopped cleanly


def test_workers_die_with_a_killed_supervisor(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    parent = os.fork()
    if parent == 0:  # pragma: no cover - the child's coverage is not collected
        with Signals() as caught, Supervisor([0, 1], serve_until_stopped, caught) as supervisor:
            supervisor.wait_ready()
            pids.write_text(" ".join(str(w.pid) for w in supervisor.workers))
            signal.pause()
        os._exit(0)
    deadline = time.monotonic() + 10
    while not pids.exists() or len(pids.read_text().split()) < 2:
        assert time.monotonic() < deadline, "the workers did not start"
        time.sleep(0.01)
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    for pid in map(int, pids.read_text().split()):
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} outlived its supervisor"
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, not yet reaped


def test_worker_log_lines_carry_their_queue_each_in_one_write(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with open(path, "w") as out:
        log = tagged(out, 3)
        log.write("12:00:00.000 first\n")
        log.flush()
        log.write("12:00:00.001 second\n12:00:00.002 third\n")
        log.flush()
    assert path.read_text() == (
        "[q3] 12:00:00.000 first\n[q3] 12:00:00.001 second\n[q3] 12:00:00.002 third\n"
    )


def test_per_worker_files_get_the_queue_before_their_suffix() -> None:
    assert per_queue(Path("/run/fwemu/fw.sock"), 1) == Path("/run/fwemu/fw.q1.sock")
    assert per_queue(Path("/tmp/flows.json"), 12) == Path("/tmp/flows.q12.json")
    assert per_queue(Path("/tmp/flows"), 0) == Path("/tmp/flows.q0")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--queue", "65535", "--workers", "2"],
            "fwemu: --queue 65535 with --workers 2 needs queues up to 65536, but NFQUEUE "
            "numbers end at 65535\n",
        ),
        (
            ["--workers", "3", "--metrics", ":65534"],
            "fwemu: --metrics port 65534 with --workers 3 needs ports up to 65536, past 65535\n",
        ),
    ],
)
def test_queue_and_port_ranges_are_checked_before_anything_changes(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()
    assert main(["run", "--preset", "linux", *argv]) == 2
    assert capsys.readouterr().err == message


@pytest.mark.parametrize("count", ["0", "65", "two"])
def test_workers_must_be_a_small_whole_number(
    count: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--preset", "linux", "--workers", count])
    assert exit_.value.code == 2
    assert f"workers must be a whole number 1..64, not '{count}'" in capsys.readouterr().err
