"""The client side of the control socket: find the running fwemu, send a request, read replies.

One `fwemu run --workers N` has N control sockets, one per worker. Their `status` replies name
the run they belong to, so the tools treat them as one firewall: `find_run` returns them all,
and `request_all`/`merged_events` ask each one.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import queue
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import monotonic, sleep
from typing import Any

from fwemu.ops.control import CONTROL_DIR, CONTROL_SUFFIX, ControlError, is_alive
from fwemu.ops.protocol import ProtocolError, Request

# Seconds to wait for each part of a reply: the daemon answers between packet batches, within
# milliseconds; this only catches a daemon that is stopped (SIGSTOP) or wedged.
REPLY_TIMEOUT = 10.0
# Seconds to keep trying while the daemon's queue of connections is full (EAGAIN): it accepts
# a few per loop turn, so a flood of other clients drains within milliseconds.
CONNECT_PATIENCE = 2.0
FIRST_PAUSE, LONGEST_PAUSE = 0.005, 0.1  # seconds between tries, doubling


def add_control_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control",
        metavar="PATH",
        type=Path,
        help=f"the control socket of the fwemu to ask, or a directory holding the sockets of "
        f"one run (default: the only fwemu running, found in {CONTROL_DIR}; the workers of "
        "one 'fwemu run --workers N' count as one)",
    )


@dataclass(frozen=True, slots=True)
class Target:
    """One control socket to ask; `queue` is set when it is one worker of several."""

    path: Path
    queue: int | None = None

    @property
    def tag(self) -> str:
        """What prefixes this worker's lines of output: "[q1] ", or nothing."""
        return "" if self.queue is None else f"[q{self.queue}] "


def find_run(control: Path | None, directory: Path = CONTROL_DIR) -> tuple[Target, ...]:
    """`control` if it is a socket; else the live control sockets in `control` (a directory) or
    `directory`, which must all belong to one run: one fwemu, or the workers of one."""
    if control is not None and not _is_dir(control):
        return (Target(control),)
    where = control or directory
    try:
        candidates = sorted(p for p in where.iterdir() if p.name.endswith(CONTROL_SUFFIX))
    except FileNotFoundError:
        candidates = []
    except PermissionError:
        raise ControlError(f"cannot read {where}: it is root's; run this with sudo") from None
    except OSError as err:
        raise ControlError(f"cannot read {where}: {err.strerror or err}") from None
    live = [path for path in candidates if is_alive(path)]
    if not live:
        raise ControlError("no running fwemu found (is 'fwemu run' running?)")
    if len(live) == 1:
        return (Target(live[0]),)
    runs: dict[str, list[tuple[int, Path]]] = {}
    for path in live:
        status = list(request(path, Request("status")))[-1]
        # A fwemu from before --workers has no run: it is a run of its own.
        runs.setdefault(str(status.get("run", path)), []).append((int(status["queue"]), path))
    if len(runs) > 1:
        listed = ", ".join(" + ".join(str(p) for _, p in sorted(r)) for r in runs.values())
        raise ControlError(f"{len(runs)} fwemus are running ({listed}); choose one with --control")
    (workers,) = runs.values()
    return tuple(Target(path, queue) for queue, path in sorted(workers))


def _is_dir(path: Path) -> bool:
    """`path.is_dir()`, which raises PermissionError for a path in a directory this user may not
    search (/run/fwemu is root's): the error says so."""
    try:
        return path.is_dir()
    except PermissionError:
        raise ControlError(
            f"no permission to use {path}: it is root's; run this with sudo"
        ) from None
    except OSError as err:
        raise ControlError(_connect_problem(path, err)) from None


def request_all(targets: Sequence[Target], req: Request) -> Iterator[tuple[Target, dict[str, Any]]]:
    """`request` to each target in turn; each reply record with the target it came from."""
    for target in targets:
        for record in request(target.path, req):
            yield target, record


def merged_events(targets: Sequence[Target], req: Request) -> Iterator[dict[str, Any]]:
    """An `events` request to every target at once: the event records of their histories in
    time order (the latest `req.history` of them), then, if `req.follow`, live events as they
    come until every target has stopped."""
    if len(targets) == 1:
        yield from (r["event"] for r in request(targets[0].path, req) if "event" in r)
        return
    inbox: queue.Queue[tuple[int, dict[str, Any] | BaseException | None]] = queue.Queue()
    for index, target in enumerate(targets):
        threading.Thread(target=_pump, args=(index, target.path, req, inbox), daemon=True).start()
    history: list[dict[str, Any]] = []
    answered: set[int] = set()
    running = len(targets)
    live = False
    while running:
        index, item = inbox.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            running -= 1
            answered.add(index)
        elif "event" not in item:
            answered.add(index)  # the {"ok": true} after a history
        elif live:
            yield item["event"]
        else:
            history.append(item["event"])
        if not live and len(answered) == len(targets):
            live = True
            history.sort(key=lambda event: float(event["ts"]))
            yield from history[max(len(history) - req.history, 0) :] if req.history else []


def _pump(
    index: int,
    path: Path,
    req: Request,
    inbox: queue.Queue[tuple[int, dict[str, Any] | BaseException | None]],
) -> None:
    """One target's records into `inbox`, then None (or the error that ended them)."""
    try:
        for record in request(path, req):
            inbox.put((index, record))
    except BaseException as err:
        inbox.put((index, err))
        return
    inbox.put((index, None))


def request(path: Path, req: Request) -> Iterator[dict[str, Any]]:
    """Send `req` to the fwemu at `path`; its reply records, the final {"ok": true} one included
    (then, for a followed stream, the live events until the daemon stops). A {"ok": false}
    reply raises ControlError with the daemon's message."""
    finished = False
    with _connect(path) as sock, sock.makefile("rb") as lines:
        try:
            sock.sendall(req.encode())
            for line in lines:
                record = _decode(line, path)
                if record.get("ok") is False:
                    raise ControlError(str(record.get("error", "the request failed")))
                finished = finished or "ok" in record
                yield record
                if finished and not req.follow:
                    return
                if finished:
                    sock.settimeout(None)  # live events come when they come
        except TimeoutError:
            raise ControlError(
                f"the fwemu at {path} did not answer within {REPLY_TIMEOUT:g}s"
            ) from None
        except OSError as err:
            raise ControlError(f"lost the connection to {path}: {err.strerror or err}") from None
    if not finished:
        raise ControlError(f"the fwemu at {path} closed the connection without answering")


def _connect(path: Path) -> socket.socket:
    """A connection to the daemon at `path`, tried again for a while if its queue is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_TIMEOUT)  # which makes connect() non-blocking: EAGAIN, not a wait
    give_up, pause = monotonic() + CONNECT_PATIENCE, FIRST_PAUSE
    while True:
        try:
            sock.connect(os.fspath(path))
        except OSError as err:
            if isinstance(err, BlockingIOError) and monotonic() < give_up:
                sleep(pause)
                pause = min(2 * pause, LONGEST_PAUSE)
                continue
            sock.close()
            raise ControlError(_connect_problem(path, err)) from None
        return sock


def _connect_problem(path: Path, err: OSError) -> str:
    if err.errno == errno.EAGAIN:
        return f"the fwemu at {path} is too busy: no room to connect for {CONNECT_PATIENCE:g}s"
    if err.errno == errno.ENOENT:
        return f"no control socket {path} (is 'fwemu run' running?)"
    if err.errno == errno.ECONNREFUSED:
        return f"no fwemu is serving {path} (a stale socket: is 'fwemu run' running?)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to use {path}: the control socket is root's; run this with sudo"
    return f"cannot connect to {path}: {err.strerror or err}"


def _decode(line: bytes, path: Path) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ProtocolError(f"the fwemu at {path} sent something that is not a reply: {line!r}")
    return record
