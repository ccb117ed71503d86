"""What bench/inline.py and bench/scale.py share: the programs' building blocks inside the lab
(forked workers that die with the bench, listeners, an echo server) and, from the bench's side,
a program started in the lab and a percentile."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fwemu.errors import FwemuError

ECHO_PORT = 7001  # ping-pong: one long connection
PING_SIZE = 64
START_TIMEOUT = 20.0  # a consumer or server start on a busy 2-CPU VM takes well under 1 s
STOP_TIMEOUT = 10.0
POLL = 0.01
STARTED = "fwemu started"  # fwemu run's log line once its queue and rules are up
READY = "ready"  # what this script's roles print once they serve
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
TAIL_LINES = 3  # log lines quoted in an error message


class BenchError(FwemuError):
    """The bench cannot run, or a program it started failed."""


# --- inside the lab ---------------------------------------------------------------------------


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies, so no worker outlives the bench's lab."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def fork(work: Callable[[], None]) -> int:
    """A child process that runs `work` and exits; its pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            die_with_parent()
            work()
        except BaseException:
            code = 1
        os._exit(code)
    return pid


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def listen_on(address: str, port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(4096)
    return sock


def serve_echo(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError), conn:
            while True:
                conn.sendall(recv_exactly(conn, PING_SIZE))


# --- from the bench's side --------------------------------------------------------------------


class Child:
    """A program started in the lab, its stdout and stderr going to a log file."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self._log = log

    @classmethod
    def start(cls, name: str, argv: Sequence[str], workdir: Path, namespace: str | None) -> Child:
        """`argv` run in `namespace` (`ip netns exec`), or where the bench runs if None."""
        log = workdir / f"{name}.log"
        prefix = ["ip", "netns", "exec", namespace] if namespace else []
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [*prefix, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # see `run_tool`
            )
        return cls(name, process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self._log.read_text(errors="replace")

    def tail(self) -> str:
        lines = self.log().splitlines()[-TAIL_LINES:]
        return " | ".join(lines) or "(no output)"

    def wait_for(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Return once the log holds `text`; BenchError if the program exits or times out."""
        end = time.monotonic() + timeout
        while text not in self.log():
            if self.process.poll() is not None:
                raise BenchError(
                    f"{self.name} exited with status {self.process.returncode} before it was "
                    f"ready: {self.tail()}"
                )
            if time.monotonic() > end:
                raise BenchError(f"{self.name} was not ready within {timeout:g}s: {self.tail()}")
            time.sleep(POLL)

    def stop(self) -> int:
        """SIGTERM (SIGKILL after STOP_TIMEOUT) unless it has exited; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1]


# A program of the bench's, run inside the lab: its arguments.
Role = Callable[[Sequence[str]], None]
# The bench itself: its arguments and a progress printer -> the report to print.
Measure = Callable[[Sequence[str], Callable[[str], None]], str]


def run_bench(name: str, argv: Sequence[str], roles: Mapping[str, Role], measure: Measure) -> int:
    """A bench script's main: one of its roles when argv names one (the programs it runs inside
    the lab), else the bench, progress on stderr and the report on stdout. SIGTERM tears the lab
    down as Ctrl-C does; errors are one line."""
    if argv and argv[0] in roles:
        roles[argv[0]](argv[1:])
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        report = measure(argv, progress)
    except FwemuError as err:
        print(f"{name}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{name}: interrupted; lab removed", file=sys.stderr)
        return 130
    print(report)
    return 0
