"""`fwemu run --workers N`: N worker processes, one NFQUEUE each, under one supervisor.

Each worker is the single-queue `fwemu run` (its own queue, engine, control socket) forked from
the supervisor once the policy and the environment are checked. A worker tells the supervisor
through a pipe when its queue is bound, why it failed, and what it counted when it stopped (one
JSON object per line); the pipe's end of file is how the supervisor learns that it exited.

The supervisor installs no rule until every worker has bound its queue (the caller does, with
`--queue-balance`), stops every worker on SIGINT/SIGTERM, forwards SIGHUP and SIGUSR1, and stops
the others when one dies. Workers die with the supervisor (PR_SET_PDEATHSIG), so a SIGKILLed
supervisor leaves no worker bound to a queue; its rules stay, and `--queue-bypass` lets traffic
through unfiltered (docs/tcp-rst-and-nfqueue.md §3.3).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from fwemu.adapters.daemon import Signals
from fwemu.errors import FwemuError

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Generous for a busy 2-CPU VM, where a worker binds its queue in ~0.3 s.
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0  # seconds a worker may take to stop before it is killed
_READ_SIZE = 4096


class WorkerError(FwemuError):
    """A worker failed after the firewall was up; the others were stopped and the rules removed."""

    exit_code = 1


class Link:
    """A worker's side of its pipe to the supervisor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def _send(self, message: dict[str, Any]) -> None:
        # One write(2) of less than PIPE_BUF bytes: atomic, never interleaved.
        os.write(self._fd, (json.dumps(message) + "\n").encode())

    def ready(self) -> None:
        """The queue is bound: traffic may be sent to it."""
        self._send({"ready": True})

    def stopped(self, totals: dict[str, int]) -> None:
        """The worker stopped cleanly, having counted `totals`."""
        self._send({"stopped": totals})

    def failed(self, message: str, code: int) -> None:
        self._send({"error": message, "code": code})


# What a worker runs: its queue and its link -> its exit status.
WorkerMain = Callable[[int, Link], int]


@dataclass(slots=True)
class Worker:
    """The supervisor's view of one worker process."""

    queue: int
    pid: int
    fd: int  # the read end of its pipe
    ready: bool = False
    totals: dict[str, int] | None = None  # set when it stopped cleanly
    error: tuple[str, int] | None = None  # (message, exit status) if it failed
    status: int | None = None  # waitpid's status, once reaped
    _pending: bytes = field(default=b"", repr=False)

    def absorb(self, data: bytes) -> None:
        """Take the worker's messages out of `data` (complete lines only)."""
        *lines, self._pending = (self._pending + data).split(b"\n")
        for line in lines:
            message = json.loads(line)
            if message.get("ready"):
                self.ready = True
            elif "stopped" in message:
                self.totals = message["stopped"]
            elif "error" in message:
                self.error = (str(message["error"]), int(message["code"]))

    def describe_exit(self) -> str:
        """Why it ended, in a few words: its error, or how the process ended."""
        if self.error is not None:
            return self.error[0]
        status = self.status
        if status is None:
            return "still running"
        if os.WIFSIGNALED(status):
            return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exit status {os.WEXITSTATUS(status)}"


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when the supervisor dies (also if it already did, before the
    prctl took effect: the parent is then no longer `parent`)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def tagged(stream: TextIO, queue: int) -> TextIO:
    """`stream` with every line prefixed `[qN] ` and written in one write(2), so the lines of
    several workers sharing a terminal or log file never mix."""
    stream.flush()
    raw = _TaggedLines(stream.fileno(), f"[q{queue}] ".encode())
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding="utf-8", line_buffering=True)


class _TaggedLines(io.RawIOBase):
    def __init__(self, fd: int, tag: bytes) -> None:
        super().__init__()
        self._fd = fd
        self._tag = tag

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        os.write(self._fd, b"".join(self._tag + line for line in chunk.splitlines(keepends=True)))
        return len(chunk)


class Supervisor:
    """The workers of one run, forked on entry and stopped (then reaped) on every way out."""

    def __init__(self, queues: Iterable[int], work: WorkerMain, signals: Signals) -> None:
        self._queues = tuple(queues)
        self._work = work
        self._signals = signals
        self.workers: list[Worker] = []
        self._selector = selectors.DefaultSelector()
        self._selector.register(signals.fileno(), selectors.EVENT_READ)

    def __enter__(self) -> Supervisor:
        try:
            for queue in self._queues:
                self.workers.append(self._fork(queue))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._selector.close()

    def _fork(self, queue: int) -> Worker:
        read, write = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child's coverage is not collected
            os.close(read)
            for worker in self.workers:
                os.close(worker.fd)
            os._exit(_child(queue, self._work, Link(write), parent))
        os.close(write)
        worker = Worker(queue, pid, read)
        self._selector.register(read, selectors.EVENT_READ, worker)
        return worker

    def wait_ready(self) -> bool:
        """Wait until every worker has bound its queue: True; False if a stop signal came first.
        A worker that fails raises its own error (a refusal: exit status 2, nothing changed)."""
        end = time.monotonic() + READY_TIMEOUT
        while not all(w.ready for w in self.workers):
            if self._signals.stop is not None:
                return False
            left = end - time.monotonic()
            if left <= 0:
                late = ", ".join(str(w.queue) for w in self.workers if not w.ready)
                raise WorkerError(
                    f"the workers of queues {late} did not start in {READY_TIMEOUT:g}s"
                )
            for gone in self._poll(left):
                message, code = gone.error or (
                    f"the worker of queue {gone.queue} ended ({gone.describe_exit()}) before it "
                    "bound its queue",
                    1,
                )
                error = FwemuError(message)
                error.exit_code = code
                raise error
        return True

    def run(self, snapshot: Callable[[], None] | None = None) -> None:
        """Supervise until SIGINT/SIGTERM. SIGHUP goes to every worker (reload); SIGUSR1 calls
        `snapshot` if given, else goes to every worker. A worker that exits raises WorkerError."""
        signals = self._signals
        while signals.stop is None:
            if signals.reload:
                signals.reload = False
                self.signal_all(signal.SIGHUP)
            if signals.snapshot:
                signals.snapshot = False
                if snapshot is None:
                    self.signal_all(signal.SIGUSR1)
                else:
                    snapshot()
            gone = self._poll(None)
            if gone and signals.stop is None:
                first = gone[0]
                raise WorkerError(
                    f"the worker of queue {first.queue} (pid {first.pid}) ended "
                    f"({first.describe_exit()}): stopped the other workers and removed the rules"
                )

    def _poll(self, timeout: float | None) -> list[Worker]:
        """Wait for messages, signals or exits; the workers that exited meanwhile."""
        gone = []
        for key, _ in self._selector.select(timeout):
            worker = key.data
            if worker is None:
                self._signals.drain()
                continue
            data = os.read(worker.fd, _READ_SIZE)
            worker.absorb(data)
            if not data:
                self._reap(worker)
                gone.append(worker)
        return gone

    def _reap(self, worker: Worker) -> None:
        self._selector.unregister(worker.fd)
        os.close(worker.fd)
        worker.fd = -1
        _, worker.status = os.waitpid(worker.pid, 0)

    def signal_all(self, signum: signal.Signals) -> None:
        for worker in self.workers:
            if worker.status is None:
                os.kill(worker.pid, signum)

    def stop(self) -> None:
        """SIGTERM every live worker and wait for it (SIGKILL after STOP_TIMEOUT); idempotent."""
        self.signal_all(signal.SIGTERM)
        end = time.monotonic() + STOP_TIMEOUT
        while any(w.status is None for w in self.workers):
            left = end - time.monotonic()
            if left <= 0:
                self.signal_all(signal.SIGKILL)
                left = STOP_TIMEOUT
            self._poll(left)

    def totals(self) -> dict[str, int]:
        """The sum of what the workers counted (those that stopped cleanly)."""
        summed: dict[str, int] = {}
        for worker in self.workers:
            for key, value in (worker.totals or {}).items():
                summed[key] = summed.get(key, 0) + value
        return summed


def where(err: BaseException) -> str:
    """The error and the innermost frame it came from: enough for a bug report, in one line."""
    frames = traceback.extract_tb(err.__traceback__)
    at = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}: {err}{at}"


def _child(queue: int, work: WorkerMain, link: Link, parent: int) -> int:
    """The worker process's life; its exit status. Never returns through the parent's stack."""
    code = 1
    try:
        die_with_parent(parent)
        code = work(queue, link)
    except FwemuError as err:
        code = err.exit_code
        link.failed(str(err), code)
    except BaseException as err:
        link.failed(f"internal error: {where(err)}", 1)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing to save
                stream.flush()
    return code
