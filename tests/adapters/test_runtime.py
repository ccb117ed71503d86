"""The composition root without a kernel: `runtime.run` wired to fakes for the queue, the rules
and the raw sockets, driven in this process as `fwemu run` would be (no root needed)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fwemu.adapters import iptables, runtime
from fwemu.adapters.queue import Handler, PacketQueue
from fwemu.adapters.runtime import Kernel, RunConfig
from fwemu.errors import FwemuError
from fwemu.ops.client import request
from fwemu.ops.protocol import Request
from fwemu.policy import Policy, loads_policy
from fwemu.policy.model import Protocol

from .fakes import FakePacket, FakeQueue, Rewriting, rewritten
from .test_daemon import conversation


class FakeHost:
    """Records what the run asked of the kernel, and hands it a FakeQueue."""

    def __init__(self, feed: Callable[[FakeQueue], None]) -> None:
        self.feed = feed
        self.steps: list[str] = []
        self.queue: FakeQueue | None = None
        self.captures: list[iptables.Capture] = []  # what each rules() call was asked to queue

    def kernel(self) -> Kernel:
        return Kernel(
            require_root=lambda what: self.steps.append("root"),
            enter_netns=lambda name: self.steps.append(f"netns {name}"),
            check_rules=lambda config: self.steps.append("check rules"),
            ensure_free=lambda queue: self.steps.append(f"queue {queue} free"),
            bind=self.bind,
            rules=self.rules,
            injector=self.injector,
            watch_bypass=False,
        )

    @contextmanager
    def bind(
        self, queue: int, handler: Handler, fail_open: bool, whole_packets: bool
    ) -> Iterator[PacketQueue]:
        whole = " whole-packets" if whole_packets else ""
        self.steps.append(f"bind {queue} fail-open={fail_open}{whole}")
        self.queue = FakeQueue(handler)
        try:
            yield self.queue
        finally:
            self.queue.close()
            self.steps.append("unbind")

    @contextmanager
    def rules(
        self, queue: int, capture: iptables.Capture, count: int
    ) -> Iterator[tuple[iptables.Family, ...]]:
        self.steps.append(f"rules {queue}x{count}")
        self.captures.append(capture)
        assert self.queue is not None  # bound first: no packet finds the queue unbound
        self.feed(self.queue)
        try:
            yield (4, 6)
        finally:
            self.steps.append("rules removed")

    @contextmanager
    def injector(self, on_error: Callable[[str], None]) -> Iterator[Any]:
        self.steps.append("raw sockets")
        yield self
        self.steps.append("raw sockets closed")

    def send(self, packet: bytes) -> bool:
        raise AssertionError("these packets make fwemu inject nothing")


def stop_soon() -> None:
    """SIGTERM this process once the loop runs (what an operator's `kill` does)."""
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()


def test_run_wires_queue_engine_events_and_control_and_undoes_all_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packets = [FakePacket(data) for data in conversation(3)]
    statuses: list[dict[str, Any]] = []
    control = tmp_path / "fw.sock"

    def feed(queue: FakeQueue) -> None:
        queue.put(*packets)

        def ask() -> None:  # a `fwemu top` while the loop runs
            statuses.extend(request(control, Request("status")))
            stop_soon()

        threading.Timer(0.2, ask).start()

    fake = FakeHost(feed)
    config = RunConfig(
        preset="linux", events=str(tmp_path / "events.jsonl"), control=control, netns="lab-fw"
    )
    assert runtime.run(config, fake.kernel()) == 0

    assert fake.steps == [
        "root",
        "netns lab-fw",
        "check rules",
        "queue 0 free",
        "raw sockets",
        "bind 0 fail-open=True",
        "rules 0x1",
        "rules removed",
        "unbind",
        "raw sockets closed",
    ]
    assert {p.verdict for p in packets} == {"accept"}
    [status] = statuses
    assert (status["packets"], status["accepted"], status["netns"]) == (6, 6, "lab-fw")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events][:1] == ["new"]
    assert not control.exists()
    log = capsys.readouterr().err
    assert "fwemu started in netns lab-fw: queue 0, policy linux" in log
    assert "fwemu stopped (SIGTERM): 6 packets, 6 accepted" in log


@pytest.mark.parametrize(
    ("protocols", "no_rules", "listed", "installed"),
    [
        ((Protocol.UDP,), False, ["udp"], "rules in iptables and ip6tables chain FWEMU-Q0 "
         "(all forwarded UDP)"),
        (tuple(Protocol), False, ["tcp", "udp"], "(all forwarded TCP and UDP)"),
        (tuple(Protocol), True, [], "no rules installed (--no-rules)"),
    ],
    ids=["udp", "both", "no-rules"],
)  # fmt: skip
def test_the_protocols_reach_the_rules_and_the_start_line_and_status_name_them(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    protocols: tuple[Protocol, ...],
    no_rules: bool,
    listed: list[str],
    installed: str,
) -> None:
    control = tmp_path / "fw.sock"
    statuses: list[dict[str, Any]] = []

    def ask() -> None:
        statuses.extend(request(control, Request("status")))
        stop_soon()

    fake = FakeHost(lambda queue: None)
    kernel = fake.kernel()
    bind = kernel.bind

    @contextmanager
    def bind_then_ask(*args: Any) -> Iterator[PacketQueue]:  # served from then on, rules or not
        with bind(*args) as queue:
            threading.Timer(0.2, ask).start()
            yield queue

    kernel = dataclasses.replace(kernel, bind=bind_then_ask)
    capture = iptables.Capture(protocols=protocols)
    config = RunConfig(preset="linux", control=control, capture=capture, no_rules=no_rules)
    assert runtime.run(config, kernel) == 0

    assert [c.protocols for c in fake.captures] == ([] if no_rules else [protocols])
    [status] = statuses
    assert status["protocols"] == listed
    assert installed in capsys.readouterr().err


def test_a_refusal_changes_nothing() -> None:
    fake = FakeHost(lambda queue: None)
    kernel = fake.kernel()

    def busy(queue: int) -> None:
        raise FwemuError(f"NFQUEUE {queue} is already bound by another program")

    refused = dataclasses.replace(kernel, ensure_free=busy)
    with pytest.raises(FwemuError, match="already bound"):
        runtime.run(RunConfig(preset="linux", no_rules=True), refused)
    assert fake.steps == ["root"]  # no rules were checked with --no-rules; nothing was bound


def test_workers_name_the_limits_each_of_them_counts_alone() -> None:
    """Flows are balanced by address pair: a client pool's ports_per_destination sees all of a
    pair's flows in one worker; every other limit is counted per worker."""
    policy = loads_policy(
        "[limits]\nmax_flows = 10\nports_per_destination = 5\n"
        '[[rule]]\nname = "r"\nmatch = {}\nlimits = { per_client = 2 }'
    )
    assert runtime._split_limits(policy) == ["max_flows", "per_client"]
    assert runtime._split_limits(loads_policy("[limits]\nports_per_destination = 5")) == []


class LastPacket(FakePacket):
    """Stops the run (SIGTERM, as `kill` would) once it has its verdict."""

    def _give(self, verdict: str) -> None:
        super()._give(verdict)
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_policy_that_rewrites_is_served_whole_packets_and_its_rewrites_are_counted(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    dry_run: bool,
) -> None:
    monkeypatch.setattr(Policy, "rewrites", property(lambda self: True))
    monkeypatch.setattr(runtime, "Engine", Rewriting)
    *first, last = conversation(1)
    packets = [*map(FakePacket, first), LastPacket(last)]
    fake = FakeHost(lambda queue: queue.put(*packets))
    config = RunConfig(preset="linux", control=tmp_path / "fw.sock", dry_run=dry_run)

    assert runtime.run(config, fake.kernel()) == 0

    assert "bind 0 fail-open=True whole-packets" in fake.steps
    sent = [d if dry_run else rewritten(d) for d in (*first, last)]
    assert [(p.data, p.verdict) for p in packets] == [(d, "accept") for d in sent]
    log = capsys.readouterr().err
    assert ", copying whole packets (the policy rewrites them)" in log
    if dry_run:
        assert "DRY RUN (accepting everything, injecting or rewriting nothing)" in log
        assert "4 packets, 4 accepted (would have rewritten 4), would have dropped 0" in log
    else:
        assert "4 packets, 4 accepted (rewritten 4), dropped 0" in log


def test_sigusr1_while_fwemu_checks_and_binds_is_a_snapshot_on_the_loop_s_first_turn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fwemu run --state-file F & kill -USR1 $!`: the signal comes before the loop runs, while
    the slow checks do. A handler of the test's own stands for the default (which would end
    the process): fwemu's must be the one in place by then."""
    missed: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: missed.append(signum))
    try:
        fake = FakeHost(lambda queue: queue.put(LastPacket(conversation(0)[0])))
        kernel = dataclasses.replace(
            fake.kernel(), check_rules=lambda config: os.kill(os.getpid(), signal.SIGUSR1)
        )
        state = tmp_path / "state.json"
        config = RunConfig(preset="linux", control=tmp_path / "fw.sock", state_file=state)
        assert runtime.run(config, kernel) == 0
        assert missed == []
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert json.loads(state.read_text())["flows"] == []
    log = capsys.readouterr().err
    assert f"wrote 0 flows to {state}" in log
    assert "stopped (SIGTERM): 1 packet, 1 accepted, dropped 0, injected 0 packets, 1 flow " in log


@pytest.mark.parametrize(
    ("workers", "problem"),
    [(1, "it is a directory"), (2, "no directory {tmp}/missing")],
)
def test_a_state_file_that_cannot_be_written_is_refused_before_anything_starts(
    tmp_path: Path, workers: int, problem: str
) -> None:
    """With --workers each has its own file (.q<queue>): here in a directory that is missing."""
    fake = FakeHost(lambda queue: None)
    (tmp_path / "state.json").mkdir()
    path = tmp_path / "missing" / "state.json" if workers > 1 else tmp_path / "state.json"
    config = RunConfig(preset="linux", state_file=path, workers=workers)
    shown = runtime.per_queue(path, 0) if workers > 1 else path
    with pytest.raises(FwemuError) as refused:
        runtime.run(config, fake.kernel())
    assert str(refused.value) == f"cannot write the state file {shown}: " + problem.format(
        tmp=tmp_path
    )
    assert fake.steps == []
