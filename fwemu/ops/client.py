"""The client side of the control socket: find the running fwemu, send a request, read replies."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fwemu.ops.control import CONTROL_DIR, CONTROL_SUFFIX, ControlError, is_alive
from fwemu.ops.protocol import ProtocolError, Request

# Seconds to wait for each part of a reply: the daemon answers between packet batches, within
# milliseconds; this only catches a daemon that is stopped (SIGSTOP) or wedged.
REPLY_TIMEOUT = 10.0


def add_control_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control",
        metavar="PATH",
        type=Path,
        help=f"the control socket of the fwemu to ask (default: the only one running, found "
        f"in {CONTROL_DIR})",
    )


def find_daemon(control: Path | None, directory: Path = CONTROL_DIR) -> Path:
    """`control` if given; else the only live control socket in `directory`."""
    if control is not None:
        return control
    try:
        candidates = sorted(p for p in directory.iterdir() if p.name.endswith(CONTROL_SUFFIX))
    except FileNotFoundError:
        candidates = []
    except PermissionError:
        raise ControlError(f"cannot read {directory}: it is root's; run this with sudo") from None
    live = [path for path in candidates if is_alive(path)]
    if not live:
        raise ControlError("no running fwemu found (is 'fwemu run' running?)")
    if len(live) > 1:
        listed = ", ".join(map(str, live))
        raise ControlError(f"{len(live)} fwemus are running ({listed}); choose one with --control")
    return live[0]


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
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_TIMEOUT)
    try:
        sock.connect(os.fspath(path))
    except OSError as err:
        sock.close()
        raise ControlError(_connect_problem(path, err)) from None
    return sock


def _connect_problem(path: Path, err: OSError) -> str:
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
