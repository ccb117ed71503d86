"""The troubleshooting tools over the workers of one `fwemu run --workers N`, against fake
workers: control sockets that answer like a worker's, from canned flows and events."""

from __future__ import annotations

import argparse
import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from queue import Queue
from types import SimpleNamespace
from typing import Any

import pytest

from fwemu.core.events import FlowId, FlowNew
from fwemu.ops import client
from fwemu.ops.commands import Commands
from fwemu.ops.control import ControlError
from fwemu.ops.filters import parse_selector
from fwemu.ops.protocol import Request

from .conftest import Cli

SERVER = "10.9.2.2"


def flow(sport: int, queue: int) -> dict[str, Any]:
    return {
        "src": "10.9.1.2", "sport": sport, "dst": SERVER, "dport": 80, "state": "ESTABLISHED",
        "phase": "established", "expires_in": 100.0 + sport % 7, "rule": "default", "age": 1.0,
        "idle": 1.0, "packets": [3, 2], "bytes": [1, 0], "queue": queue,
    }  # fmt: skip


def event(ts: float, kind: str = "new", sport: int = 1000) -> dict[str, Any]:
    return {
        "ts": ts, "event": kind, "flow": {"src": "10.9.1.2", "sport": sport, "dst": SERVER,
        "dport": 80}, "state": "ESTABLISHED", "phase": "established", "action": "silent",
        "rule": "default", "idle": 1.0, "forced": True,
    }  # fmt: skip


class FakeWorker:
    """A control socket answering as the worker of `queue` in run `run` would."""

    def __init__(
        self,
        path: Path,
        queue: int,
        run: str,
        flows: list[dict[str, Any]],
        events: list[dict[str, Any]],
        *,
        reload_error: str | None = None,
        netns: str | None = None,
    ) -> None:
        self.path, self.queue, self.run, self.netns = path, queue, run, netns
        self.flows, self.events = flows, events
        self.reload_error = reload_error
        self.requests: list[dict[str, Any]] = []
        self.live: Queue[dict[str, Any] | None] = Queue()
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            line = stream.readline()
            if not line:
                return  # a liveness probe
            request = json.loads(line)
            self.requests.append(request)
            for record in self._reply(request):
                stream.write(json.dumps(record).encode() + b"\n")
                stream.flush()

    def _reply(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        command = request["cmd"]
        if command == "status":
            yield {
                "ok": True, "queue": self.queue, "run": self.run, "supervisor": 100,
                "pid": 100 + self.queue + 1, "netns": self.netns, "speed": 1.0, "dry_run": False,
                "policy": "web", "origin": "fw.toml", "flows": len(self.flows),
                "packets": 10 * (self.queue + 1), "accepted": 9, "dropped": 1, "resets": 0,
                "errors": 0,
            }  # fmt: skip
        elif command == "flows":
            yield from ({"flow": f} for f in self.flows)
            yield {"ok": True, "count": len(self.flows), "total": len(self.flows)}
        elif command == "events":
            history = request.get("history", 100)
            yield from ({"event": e} for e in self.events[max(len(self.events) - history, 0) :])
            yield {"ok": True, "count": min(history, len(self.events))}
            while request.get("follow") and (live := self.live.get()) is not None:
                yield {"event": live}
        elif command == "expire":
            yield from ({"event": event(5.0, "expire", f["sport"])} for f in self.flows)
            yield {"ok": True, "expired": len(self.flows), "resets": 1, "injected": 1}
        elif self.reload_error is not None:
            yield {"ok": False, "error": self.reload_error}
        else:
            yield {"ok": True, "message": "reloaded policy web (fw.toml): 1 flows kept"}

    def close(self) -> None:
        self.live.put(None)
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[tuple[Path, list[FakeWorker]]]:
    """Two workers of run "r1" in a directory: queue 0 holds two flows, queue 1 one."""
    workers = [
        FakeWorker(tmp_path / "fw.q1.sock", 1, "r1", [flow(2001, 1)], [event(2.0), event(4.0)]),
        FakeWorker(
            tmp_path / "fw.q0.sock",
            0,
            "r1",
            [flow(1001, 0), flow(1002, 0)],
            [event(1.0), event(3.0)],
        ),
    ]
    yield tmp_path, workers
    for worker in workers:
        worker.close()


def test_the_workers_of_one_run_are_one_firewall_in_queue_order(
    run_dir: tuple[Path, list[FakeWorker]],
) -> None:
    directory, _ = run_dir
    assert client.find_run(None, directory) == (
        client.Target(directory / "fw.q0.sock", 0),
        client.Target(directory / "fw.q1.sock", 1),
    )
    assert client.find_run(directory) == client.find_run(None, directory)  # --control DIR
    one = directory / "fw.q1.sock"
    assert client.find_run(one, directory) == (client.Target(one),)  # --control on one worker


def test_sockets_of_different_runs_stay_ambiguous(run_dir: tuple[Path, list[FakeWorker]]) -> None:
    directory, _ = run_dir
    other = FakeWorker(directory / "other.q5.sock", 5, "r2", [], [])
    try:
        with pytest.raises(ControlError) as err:
            client.find_run(None, directory)
    finally:
        other.close()
    # Issue 15: what to type, not socket paths; a run of workers is one fwemu.
    assert str(err.value) == (
        "2 fwemus are running; choose one: --queue 0 (queues 0-1, policy web), "
        "--queue 5 (queue 5, policy web)"
    )


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[Path]:
    """Two labs' fwemus: lab1-fw's of two workers (queues 0-1), lab2-fw's on queues 0 and 3."""
    made = [
        FakeWorker(tmp_path / "lab1-fw.q0.sock", 0, "r1", [flow(1001, 0)], [], netns="lab1-fw"),
        FakeWorker(tmp_path / "lab1-fw.q1.sock", 1, "r1", [flow(2001, 1)], [], netns="lab1-fw"),
        FakeWorker(tmp_path / "lab2-fw.q0.sock", 0, "r2", [flow(3001, 0)], [], netns="lab2-fw"),
        FakeWorker(tmp_path / "lab2-fw.q3.sock", 3, "r3", [], [], netns="lab2-fw"),
    ]
    yield tmp_path
    for worker in made:
        worker.close()


def test_netns_chooses_every_worker_of_its_run(labs: Path) -> None:
    assert client.find_run(None, labs, netns="lab1-fw") == (
        client.Target(labs / "lab1-fw.q0.sock", 0),
        client.Target(labs / "lab1-fw.q1.sock", 1),
    )
    # Any queue of a run chooses all of it.
    assert client.find_run(None, labs, netns="lab1-fw", queue=1) == client.find_run(
        None, labs, netns="lab1-fw"
    )
    assert client.find_run(None, labs, netns="lab2-fw", queue=3) == (
        client.Target(labs / "lab2-fw.q3.sock"),
    )
    assert client.find_run(None, labs, queue=3) == (client.Target(labs / "lab2-fw.q3.sock"),)


def test_a_choice_that_fits_several_or_none_says_what_to_type(labs: Path) -> None:
    with pytest.raises(ControlError) as several:
        client.find_run(None, labs, netns="lab2-fw")
    assert str(several.value) == (
        "2 fwemus are running; choose one: --netns lab2-fw --queue 0 (queue 0, policy web), "
        "--queue 3 (queue 3, policy web)"
    )
    with pytest.raises(ControlError) as none:
        client.find_run(None, labs, netns="lab3-fw", queue=1)
    assert str(none.value) == (
        "no fwemu in netns lab3-fw serving queue 1 is running; running: --netns lab1-fw "
        "(queues 0-1, policy web), --netns lab2-fw --queue 0 (queue 0, policy web), --queue 3 "
        "(queue 3, policy web)"
    )
    with pytest.raises(ControlError, match=r"^no fwemu in the host's namespace is running"):
        client.find_run(None, labs, netns="")
    with pytest.raises(ControlError, match="is one fwemu's socket: it takes no --netns"):
        client.find_run(labs / "lab2-fw.q3.sock", labs, netns="lab2-fw")


def test_the_environment_chooses_unless_the_command_line_does(labs: Path) -> None:
    def chosen(environ: dict[str, str], **given: Any) -> tuple[client.Target, ...]:
        args = argparse.Namespace(**{"netns": None, "queue": None, "control": labs, **given})
        return client.chosen_run(args, environ)

    lab1 = client.find_run(None, labs, netns="lab1-fw")
    assert chosen({"FWEMU_NETNS": "lab1-fw"}) == lab1
    assert chosen({"FWEMU_NETNS": "lab2-fw"}, netns="lab1-fw") == lab1
    assert chosen({"FWEMU_NETNS": "lab2-fw", "FWEMU_QUEUE": "3"}) == (
        client.Target(labs / "lab2-fw.q3.sock"),
    )
    one = labs / "lab2-fw.q3.sock"  # --control on a socket: the environment does not apply
    assert chosen({"FWEMU_NETNS": "lab1-fw"}, control=one) == (client.Target(one),)
    with pytest.raises(ControlError, match=r"^\$FWEMU_QUEUE must be a queue number 0..65535, "):
        chosen({"FWEMU_QUEUE": "zero"})
    with pytest.raises(ControlError, match=r"^--queue must be a queue number 0..65535, not '-1'"):
        chosen({}, queue="-1")


def test_running_lists_a_run_of_workers_once(labs: Path) -> None:
    runs = client.running(labs)
    assert [(run.netns, run.queues) for run in runs] == [
        ("lab1-fw", (0, 1)),
        ("lab2-fw", (0,)),
        ("lab2-fw", (3,)),
    ]
    assert runs[0].status["flows"] == 2 and runs[0].status["pid"] == 100
    assert [run.choice(runs) for run in runs] == [
        "--netns lab1-fw",
        "--netns lab2-fw --queue 0",
        "--queue 3",
    ]


def test_the_ops_commands_take_netns_and_queue(labs: Path, fwemu: Cli) -> None:
    result = fwemu("flows", "--control", str(labs), "--netns", "lab1-fw", "--json")
    assert result.code == 0, result.err
    assert sorted(f["sport"] for f in json.loads(result.out)) == [1001, 2001]
    for command in (["top", "--once"], ["events"], ["expire", "--all"], ["reload"]):
        chosen = fwemu(*command, "--control", str(labs), "--netns", "lab2-fw", "--queue", "3")
        assert chosen.code in (0, 1), (command, chosen.err)  # expire: 1 for nothing expired
        ambiguous = fwemu(*command, "--control", str(labs), "--netns", "lab2-fw")
        assert ambiguous.code == 2 and "choose one: --netns lab2-fw --queue 0" in ambiguous.err


def test_flows_lists_every_workers_flows_once_with_its_queue(
    run_dir: tuple[Path, list[FakeWorker]], fwemu: Cli
) -> None:
    directory, _ = run_dir
    result = fwemu("flows", "--control", str(directory), "--json")
    assert result.code == 0
    flows = json.loads(result.out)
    assert sorted((f["sport"], f["queue"]) for f in flows) == [(1001, 0), (1002, 0), (2001, 1)]
    table = fwemu("flows", "--control", str(directory))
    assert "3 flows: ESTABLISHED 3" in table.out


def test_expire_asks_every_worker_and_sums_up(
    run_dir: tuple[Path, list[FakeWorker]], fwemu: Cli
) -> None:
    directory, workers = run_dir
    result = fwemu("expire", "--control", str(directory), "--match", "dport=80")
    assert result.code == 0
    assert result.out.splitlines()[-1] == "expired 3 flows, injected 2 RSTs"
    assert [w.requests[-1]["cmd"] for w in workers] == ["expire", "expire"]


def test_reload_reports_each_worker_and_a_rejection_fails(
    run_dir: tuple[Path, list[FakeWorker]], fwemu: Cli
) -> None:
    directory, workers = run_dir
    result = fwemu("reload", "--control", str(directory))
    assert (result.code, result.out.splitlines()) == (
        0,
        [
            "[q0] reloaded policy web (fw.toml): 1 flows kept",
            "[q1] reloaded policy web (fw.toml): 1 flows kept",
        ],
    )
    workers[0].reload_error = "reload rejected: fw.toml: line 3: bad duration"
    rejected = fwemu("reload", "--control", str(directory))
    assert rejected.code == 2
    assert rejected.out == "[q0] reloaded policy web (fw.toml): 1 flows kept\n"
    assert rejected.err == "fwemu: [q1] reload rejected: fw.toml: line 3: bad duration\n"


def test_events_history_is_merged_in_time_order(
    run_dir: tuple[Path, list[FakeWorker]], fwemu: Cli
) -> None:
    directory, _ = run_dir
    result = fwemu("events", "--control", str(directory), "--history", "3")
    assert [json.loads(line)["ts"] for line in result.out.splitlines()] == [2.0, 3.0, 4.0]


def test_followed_events_come_from_every_worker_until_all_stop(
    run_dir: tuple[Path, list[FakeWorker]],
) -> None:
    directory, workers = run_dir
    targets = client.find_run(directory)
    stream = client.merged_events(targets, Request("events", follow=True, history=1))
    assert next(stream)["ts"] == 4.0  # the latest of the histories, then live events
    workers[0].live.put(event(7.0, sport=2002))
    workers[1].live.put(event(8.0, sport=1003))
    assert sorted(next(stream)["flow"]["sport"] for _ in range(2)) == [1003, 2002]
    for worker in workers:
        worker.live.put(None)
    assert list(stream) == []


def test_top_shows_the_run_as_one_firewall(
    run_dir: tuple[Path, list[FakeWorker]], fwemu: Cli
) -> None:
    directory, _ = run_dir
    result = fwemu("top", "--once", "--control", str(directory))
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].startswith("fwemu pid 100 queue 0-1 (2 workers)  policy web (fw.toml)")
    assert lines[1:3] == [
        "packets 30  accepted 18  dropped 2  flows 3",
        "injected 0  expired 0  out-of-state 0",
    ]


def test_a_worker_sends_its_whole_history_when_asked_for_more() -> None:
    # Each worker is asked for the run's `history`: with fewer events than that (but more than
    # half), it must still send them all.
    daemon = SimpleNamespace(reporter=SimpleNamespace(record=lambda e: {"ts": e.ts}))
    commands = Commands(daemon, {"queue": 0})  # type: ignore[arg-type]
    history = deque(
        FlowNew(float(ts), FlowId("10.0.0.1", ts, "10.0.0.2", 80), state="SYN_SENT", rule="r")
        for ts in range(1, 4)
    )
    reply = commands.handle(Request("events", history=5), history)
    assert [item["event"]["ts"] for item in reply.items if "event" in item] == [1.0, 2.0, 3.0]


def test_the_events_history_is_filtered_by_protocol() -> None:
    daemon = SimpleNamespace(reporter=SimpleNamespace(record=lambda e: {"proto": e.flow.proto}))
    commands = Commands(daemon, {"queue": 0})  # type: ignore[arg-type]
    history = deque(
        FlowNew(1.0, FlowId("10.0.0.1", 5000, "10.0.0.2", 53, proto), "UNREPLIED", rule="r")
        for proto in ("tcp", "udp", "udp")
    )
    request = Request("events", history=5, selector=parse_selector("proto=udp"))
    reply = commands.handle(request, history)
    assert [item["event"]["proto"] for item in reply.items if "event" in item] == ["udp", "udp"]


def test_a_fwemu_stopping_while_asked_is_left_out(
    run_dir: tuple[Path, list[FakeWorker]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another fwemu on the host stops between the directory listing and its status reply: the
    # others are still listed (it failed `fwemu ps` and --netns lookups, 10-18 times in 150).
    directory, _ = run_dir
    gone = directory / "gone.q0.sock"
    live = [gone, *sorted(directory.glob("fw.q*.sock"))]
    asked = client.request

    def request(path: Path, req: Request) -> Iterator[dict[str, Any]]:
        if path == gone:
            raise client.ControlError(f"lost the connection to {gone}: Connection reset by peer")
        return asked(path, req)

    monkeypatch.setattr(client, "request", request)
    monkeypatch.setattr(client, "_live", lambda _: live)
    [run] = client.running(directory)
    assert [target.path.name for target in run.targets] == ["fw.q0.sock", "fw.q1.sock"]
