"""The lab's shell scripts: shellcheck-clean, and the client's idle scenario telling apart what an
application sees (a reply, a reset, silence), played against a stand-in redis on loopback."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import SHELL_SCRIPTS, VAGRANT, run, tool

_SCENARIO = VAGRANT / "scenario-idle.sh"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shellcheck_finds_nothing(script: Path) -> None:
    done = run(tool("shellcheck"), "--external-sources", str(script))
    assert done.returncode == 0, done.stdout


@contextmanager
def redis_standin(then: str) -> Iterator[int]:
    """A one-connection server on loopback (its port is yielded) that answers the first PING and
    then, to the next one: "answer", "reset" (a RST, right after the first reply) or "ignore"."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        stop = threading.Event()

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(64)
                conn.sendall(b"+PONG\r\n")
                if then == "reset":  # SO_LINGER with a zero timeout: close() sends a RST
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                conn.recv(64)
                if then == "answer":
                    conn.sendall(b"+PONG\r\n")
                stop.wait(10)

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            yield server.getsockname()[1]
        finally:
            stop.set()
            thread.join()


def scenario(*args: str) -> tuple[int, str]:
    done = run(tool("bash"), str(_SCENARIO), *args, env=os.environ | {"WAIT": "1"})
    return done.returncode, done.stdout.strip()


@pytest.mark.parametrize(
    ("then", "status", "verdict"),
    [("answer", 0, "alive"), ("reset", 1, "reset"), ("ignore", 3, "hang")],
)
def test_idle_scenario_reports_what_the_application_saw(
    then: str, status: int, verdict: str
) -> None:
    with redis_standin(then) as port:
        assert scenario("0", "127.0.0.1", str(port)) == (status, verdict)


def test_idle_scenario_without_a_server_or_with_bad_arguments_is_an_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    assert scenario("0", "127.0.0.1", str(port))[0] == 2
    assert scenario("soon")[0] == 2
