"""Issue 15 against real fwemus in labs: choosing one of several by its namespace (`fwemu ps`,
--netns, $FWEMU_NETNS), the Python client, and `fwemu top` in an 80x24 terminal that waits for a
restarted fwemu. The CLI runs as a child, as a user types it."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from fwemu.lab import namespace_name
from fwemu.ops.client import Fwemu
from fwemu.ops.control import CONTROL_DIR, default_path
from fwemu.ops.protocol import PROTOCOL_VERSION
from fwemu.testing import FWEMU_COMMAND, STARTED, Firewall, FwemuProcess, inline_firewall
from tests.e2e.conftest import require_root

from .test_live import Conn

pytestmark = pytest.mark.e2e

CLI_TIMEOUT = 30  # seconds: a command takes well under one


def fwemu(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The fwemu CLI as a child, as typed in a shell: its exit status and output."""
    return subprocess.run(
        [*FWEMU_COMMAND, *argv],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


def lab_name(tag: str) -> str:
    return f"i15{tag}-{os.getpid() % 100000}"


@pytest.fixture(scope="module")
def two() -> Iterator[tuple[Firewall, Firewall]]:
    """Two labs with fwemu at its default control sockets: one of two workers (queues 0-1)
    and a lone one."""
    require_root()
    workers, lone = lab_name("w"), lab_name("l")
    with ExitStack() as stack:
        both = (
            stack.enter_context(
                inline_firewall(
                    "linux",
                    name=workers,
                    # The workers' sockets are then /run/fwemu/<NS>.q0.sock and .q1.sock, as
                    # without --control.
                    extra_args=[
                        "--workers",
                        "2",
                        "--control",
                        str(CONTROL_DIR / f"{namespace_name(workers, 'fw')}.sock"),
                    ],
                )
            ),
            stack.enter_context(
                inline_firewall(
                    "aws-nlb",
                    name=lone,
                    extra_args=["--control", str(default_path(0, namespace_name(lone, "fw")))],
                )
            ),
        )
        yield both


@pytest.fixture
def conns() -> Iterator[list[Conn]]:
    made: list[Conn] = []
    yield made
    for conn in made:
        conn.close()


def ns_of(fw: Firewall) -> str:
    return fw.plan.fw_client_side.namespace


def test_ps_lists_a_run_of_workers_as_one_line(two: tuple[Firewall, Firewall]) -> None:
    workers, lone = two
    listed = fwemu("ps", "--json")
    assert listed.returncode == 0, listed.stderr
    runs = {run["netns"]: run for run in json.loads(listed.stdout)}
    run = runs[ns_of(workers)]
    assert (run["queues"], run["policy"], run["choose"]) == (
        [0, 1],
        "linux",
        f"--netns {ns_of(workers)}",
    )
    assert [w["control"] for w in run["workers"]] == [
        str(default_path(queue, ns_of(workers))) for queue in (0, 1)
    ]
    assert run["pid"] == workers.process.pid and run["uptime"] > 0
    assert (runs[ns_of(lone)]["queues"], runs[ns_of(lone)]["policy"]) == ([0], "aws-nlb")

    table = fwemu("ps")
    assert table.returncode == 0
    [row] = [line for line in table.stdout.splitlines() if line.startswith(ns_of(workers))]
    assert row.split()[1:3] == ["0-1", "linux"]
    assert row.split()[-2:] == [str(default_path(0, ns_of(workers))), "+1"]


def test_netns_chooses_a_fwemu_and_an_ambiguous_choice_says_what_to_type(
    two: tuple[Firewall, Firewall], conns: list[Conn]
) -> None:
    workers, lone = two
    conns.extend([Conn(workers, 8401), Conn(lone, 8402)])
    chosen = fwemu("flows", "--netns", ns_of(workers), "--json")
    assert chosen.returncode == 0, chosen.stderr
    assert [flow["dport"] for flow in json.loads(chosen.stdout)] == [8401]
    also = fwemu("flows", "--json", env={"FWEMU_NETNS": ns_of(lone), "FWEMU_QUEUE": "0"})
    assert [flow["dport"] for flow in json.loads(also.stdout)] == [8402]

    ambiguous = fwemu("flows")
    assert ambiguous.returncode == 2 and ambiguous.stderr.count("\n") == 1
    assert "fwemus are running; choose one: " in ambiguous.stderr
    assert f"--netns {ns_of(workers)} (queues 0-1, policy linux)" in ambiguous.stderr
    assert f"--netns {ns_of(lone)} (queue 0, policy aws-nlb)" in ambiguous.stderr
    assert "/run/fwemu" not in ambiguous.stderr
    none = fwemu("flows", "--netns", ns_of(lone), "--queue", "1")
    assert none.returncode == 2
    assert none.stderr.startswith(
        f"fwemu: no fwemu in netns {ns_of(lone)} serving queue 1 is running"
    )


def test_the_python_client_asks_a_run_as_one_firewall(
    two: tuple[Firewall, Firewall], conns: list[Conn]
) -> None:
    workers, _ = two
    fw = Fwemu(netns=ns_of(workers))
    assert len(fw.targets) == 2
    conns.extend(Conn(workers, port) for port in range(8411, 8415))
    status = fw.status()
    assert status["version"] == PROTOCOL_VERSION and status["queue"] == "0-1 (2 workers)"
    assert status["flows"] >= 4 and status["policy"] == "linux"
    flows = fw.flows("dport=8411-8414")
    assert sorted(f["dport"] for f in flows) == [8411, 8412, 8413, 8414]
    assert {f["queue"] for f in flows} <= {0, 1}

    [retimed] = fw.retime("dport=8411", 3600)
    assert 3590 < retimed["expires_in"] <= 3600
    assert list(fw.events("event=expire,reset dport=8413")) == []
    [expired, *resets] = fw.expire("dport=8413", action="reset-both")
    assert (expired["event"], [r["to"] for r in resets]) == ("expire", ["client", "server"])
    assert [e["event"] for e in fw.events("dport=8413 event=expire,reset")] == [
        "expire",
        "reset",
        "reset",
    ]
    assert "reloaded policy linux" in fw.reload(preset="linux")


def test_status_counts_expiries_injected_and_out_of_state_packets(
    two: tuple[Firewall, Firewall], conns: list[Conn]
) -> None:
    _, lone = two
    fw = Fwemu(netns=ns_of(lone), queue=0)
    before = fw.status()
    conns.append(conn := Conn(lone, 8416))
    # A black hole, then a packet: out-of-state for aws-nlb, which resets the client.
    [expired] = fw.expire("dport=8416", action="silent")
    assert (expired["event"], expired["action"]) == ("expire", "silent")
    conn.client.sendall(b"late")
    lone.wait_for_event("out_of_state", dport=8416)
    after = fw.status()
    assert after["expired"] == before["expired"] + 1
    assert after["out_of_state"] >= before["out_of_state"] + 1
    assert after["resets"] >= before["resets"] + 1


def test_followed_events_of_a_run_end_when_the_caller_closes_them(
    two: tuple[Firewall, Firewall], conns: list[Conn]
) -> None:
    workers, _ = two
    fw = Fwemu(netns=ns_of(workers))
    stream = fw.events("event=new dport=8421", history=0, follow=True)
    conns.append(Conn(workers, 8421))
    first = next(stream)
    assert (first["event"], first["flow"]["dport"]) == ("new", 8421)
    stream.close()  # hangs up on both workers: they serve on
    assert fw.status()["flows"] >= 1


class Terminal:
    """A command in an 80x24 pseudo-terminal, its output read as it comes."""

    def __init__(self, argv: list[str], columns: int = 80, lines: int = 24) -> None:
        self._master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env={**os.environ, "TERM": "xterm"}
        )
        os.close(slave)
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 4096)
            except OSError:  # EIO: the command has exited
                return
            if not data:
                return
            with self._lock:
                self._output += data

    @property
    def text(self) -> str:
        """What it wrote so far, without the terminal's escape sequences."""
        with self._lock:
            raw = self._output.decode(errors="replace")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)

    def wait_for(self, pattern: str, after: int = 0, timeout: float = 20) -> re.Match[str]:
        """The first match of `pattern` in the output past offset `after`."""
        end = time.monotonic() + timeout
        while (found := re.compile(pattern).search(self.text, after)) is None:
            if time.monotonic() > end:
                raise AssertionError(f"no {pattern!r} within {timeout}s: {self.text[after:]!r}")
            time.sleep(0.02)
        return found

    def type(self, keys: bytes) -> None:
        os.write(self._master, keys)

    def close(self) -> int:
        try:
            return self.process.wait(10)
        finally:
            os.close(self._master)
            self._reader.join(5)


def test_top_at_80x24_keeps_the_countdown_readable(
    two: tuple[Firewall, Firewall], conns: list[Conn]
) -> None:
    _, lone = two
    conns.append(conn := Conn(lone, 8431))
    screen = Terminal([*FWEMU_COMMAND, "top", "--netns", ns_of(lone), "--once"])
    assert screen.close() == 0
    lines = screen.text.splitlines()
    assert len(lines) <= 23 and max(map(len, lines)) <= 80  # a line for the prompt after it
    [row] = [line for line in lines if line.startswith(f"{lone.client_address()}:{conn.sport} >")]
    cells = row.split()[3:]
    assert cells[:2] == ["ESTABLISHED", "established"] and cells[3:] == ["default"]
    assert re.fullmatch(r"5m\d\ds", cells[2])  # aws-nlb's 350 s, counting down
    counters = r"injected \d+  expired \d+  out-of-state \d+"
    assert any(re.fullmatch(counters, line.rstrip()) for line in lines)


def test_top_waits_for_a_restarted_fwemu() -> None:
    require_root()
    name = lab_name("t")
    control = default_path(0, namespace_name(name, "fw"))
    with inline_firewall("linux", name=name, extra_args=["--control", str(control)]) as fw:
        top = Terminal([*FWEMU_COMMAND, "top", "--netns", ns_of(fw), "--interval", "0.2"])
        try:
            first = top.wait_for(rf"fwemu pid {fw.process.pid} netns {ns_of(fw)} queue 0")
            assert fw.fwemu.stop() == 0
            waiting = top.wait_for(r"waiting for fwemu\.\.\.", first.end())
            top.wait_for(rf"no fwemu in netns {ns_of(fw)} is running", waiting.end())
            again = FwemuProcess.start(
                ["run", "--netns", ns_of(fw), "--preset", "aws-nlb", "--control", str(control)]
            )
            try:
                again.wait_for(STARTED)
                top.wait_for(
                    rf"fwemu pid {again.process.pid} netns .* policy aws-nlb", waiting.end()
                )
            finally:
                assert again.stop() == 0
            top.type(b"q")
            assert top.close() == 0
        finally:
            if top.process.poll() is None:
                top.process.kill()
                top.close()
