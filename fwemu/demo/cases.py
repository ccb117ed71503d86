"""The demo's cases: each scripts a client and a server through one connection of its own.

A case finds its server port and its timers in the demo policy through its rule's name, notes
what each endpoint sees as it happens, and returns each endpoint's final observation (an errno
name, "timeout" or "nothing"), which the runner compares with what the case expects.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from functools import partial

from fwemu.errors import FwemuError
from fwemu.policy import PHASE_STATES, Phase, Profile, Rule
from fwemu.scenario.peer import Peer, abort, hostport
from fwemu.scenario.timeline import Notebook, Who
from fwemu.testing import EventTimeout, Firewall

# Case 4: how long the client waits for a reply before giving up, as an application's read
# timeout would. Short, so the demo stays short.
CLIENT_TIMEOUT = 3.0
# How long past the policy's timer an endpoint waits for what should happen before the case
# counts as failed: room for a busy 2-CPU VM, short enough that a broken fwemu fails quickly.
GRACE = 3.0
# Cases 4 and 5: how long after fwemu forgot the flow the client writes again.
LATE = 0.5

Observed = dict[Who, str]


class CaseError(FwemuError):
    """A case cannot be set up (e.g. its rule is missing from the policy)."""


@dataclass(frozen=True, slots=True)
class Case:
    """One demo case. `state` names the conntrack timer (a `Timeouts` field) the case runs out;
    `expect` is what each endpoint should finally observe."""

    number: int
    title: str
    rule: str
    state: str
    expect: Mapping[Who, str]
    script: Callable[[Stage], Observed]

    @property
    def phase(self) -> Phase:
        return next(p for p, states in PHASE_STATES.items() if self.state in states)


class Task:
    """A server script running in a thread; `result` collects its observation."""

    def __init__(self, run: Callable[[], str], over: threading.Event) -> None:
        self._result = "no observation"
        self._over = over
        self._thread = threading.Thread(target=self._main, args=(run,), daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[], str]) -> None:
        with suppress(OSError):  # a failure shows as the default result and in the timeline
            self._result = run()

    def result(self, timeout: float) -> str:
        """What the script observed within `timeout`; after that the case is declared over,
        which ends a `quiet` wait with "nothing"."""
        self._thread.join(timeout)
        self._over.set()
        self._thread.join(GRACE)
        return self._result


class Stage:
    """What a case script works with: the firewall, the case's rule, sockets that clean up."""

    def __init__(self, fw: Firewall, rule: Rule, case: Case, notebook: Notebook) -> None:
        self.fw = fw
        self.case = case
        self.notebook = notebook
        self.profile: Profile = rule.profile
        self.port = rule.match.dst_port[0].low
        self.address = (fw.server_address(), self.port)
        self.sockets = ExitStack()
        self.over = threading.Event()

    def note(self, who: Who, what: str) -> None:
        self.notebook.note(self.case.number, who, what)

    @property
    def timer(self) -> float:
        """The policy's timer for the state the case runs out (seconds)."""
        value: float | None = getattr(self.profile.timeouts, self.case.state)
        if value is None:
            raise CaseError(
                f"case {self.case.number}: rule {self.case.rule} has no {self.case.state} timer"
            )
        return value

    def _peer(self, who: Who, sock: socket.socket) -> Peer:
        self.sockets.callback(abort, sock)
        return Peer(sock, partial(self.note, who))

    def client(self) -> Peer:
        return self._peer("client", self.fw.client_socket())

    def listen(self) -> socket.socket:
        listener = self.fw.server_socket()
        self.sockets.callback(abort, listener)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(self.address)
        listener.listen()
        return listener

    def serve(self, then: Callable[[Peer], str]) -> Task:
        """A server that accepts one connection, answers one message, then runs `then`."""
        listener = self.listen()
        listener.settimeout(self.timer + GRACE)
        self.note("server", f"listening on {hostport(self.address)}")

        def run() -> str:
            conn, peer_address = listener.accept()
            server = self._peer("server", conn)
            server.note(f"accepted {hostport(peer_address)}")
            if server.recv(GRACE) != "data":
                return "no request"
            server.send(b"hello back")
            return then(server)

        return Task(run, self.over)

    def exchange(self, then: Callable[[Peer], str]) -> tuple[Peer, Task]:
        """A connected client that has said hello and got its answer; the server runs `then`."""
        server = self.serve(then)
        client = self.client()
        if client.connect(self.address, GRACE) == "connected":
            client.send(b"hello")
            client.recv(GRACE)
        return client, server

    def wait_for_expiry(self) -> bool:
        """Wait until fwemu expires this case's flow; False if it does not in time."""
        try:
            self.fw.wait_for_event("expire", timeout=self.timer + GRACE, rule=self.case.rule)
        except EventTimeout:
            return False
        return True


# --- the cases ------------------------------------------------------------------------------


def _handshake_abandoned(stage: Stage) -> Observed:
    stage.listen()  # so that a SYN which got through would complete the handshake: a FAIL
    port = str(stage.port)
    drop = ["iptables", "-I", "INPUT", "-p", "tcp", "--syn", "--dport", port, "-j", "DROP"]
    stage.fw.run("server", drop, check=True)
    stage.note(
        "server",
        f"listening on {hostport(stage.address)}, but its firewall drops SYNs to port {port}",
    )
    return {"client": stage.client().connect(stage.address, stage.timer + GRACE)}


def _idle_reset(stage: Stage) -> Observed:
    client, server = stage.exchange(lambda peer: peer.recv(stage.timer + GRACE))
    client.note("idle, blocked in recv()")
    seen = client.recv(stage.timer + GRACE)
    return {"client": seen, "server": server.result(GRACE)}


def _half_closed_reset(stage: Stage) -> Observed:
    def server_side(peer: Peer) -> str:
        if peer.recv(GRACE) == "EOF":
            peer.note("keeps its side open (half-closed), sends nothing")
        return peer.quiet(stage.over)

    client, server = stage.exchange(server_side)
    client.sock.shutdown(socket.SHUT_WR)
    client.note("shutdown(SHUT_WR): sent its FIN, still reading")
    seen = client.recv(stage.timer + GRACE)
    # The server's RST leaves with the client's: it has come by now, or within GRACE.
    return {"client": seen, "server": server.result(GRACE)}


def _late_write(stage: Stage, timeout: float) -> Observed:
    """Cases 4 and 5: idle past the expiry, then write and wait for the answer."""
    client, server = stage.exchange(lambda peer: peer.quiet(stage.over))
    client.note("idle")
    if not stage.wait_for_expiry():
        client.note(
            f"(fwemu did not expire the flow within {stage.timer + GRACE:g}s; writing anyway)"
        )
    time.sleep(LATE)
    client.send(b"still there?")
    sent = time.monotonic()
    seen = client.recv(timeout)
    if seen == "timeout":
        client.note("its write vanished: no reply and no error (without a timeout it would hang)")
    elif seen != "data":
        client.note(f"({seen} {time.monotonic() - sent:.2f}s after its write)")
    # The server has nothing to wait for: the case is over.
    return {"client": seen, "server": server.result(0)}


CASES: tuple[Case, ...] = (
    Case(
        1,
        "handshake abandoned (embryonic timer)",
        "embryonic-reset",
        "syn_sent",
        {"client": "ECONNREFUSED"},
        _handshake_abandoned,
    ),
    Case(
        2,
        "idle established connection reset",
        "idle-reset",
        "established",
        {"client": "ECONNRESET", "server": "ECONNRESET"},
        _idle_reset,
    ),
    Case(
        3,
        "half-closed connection reset",
        "half-closed-reset",
        "close_wait",
        {"client": "ECONNRESET", "server": "EPIPE"},
        _half_closed_reset,
    ),
    Case(
        4,
        "silent expiry: the black hole",
        "silent-blackhole",
        "established",
        {"client": "timeout", "server": "nothing"},
        lambda stage: _late_write(stage, CLIENT_TIMEOUT),
    ),
    Case(
        5,
        "late packet answered by a RST",
        "late-packet-reset",
        "established",
        {"client": "ECONNRESET", "server": "nothing"},
        lambda stage: _late_write(stage, GRACE),
    ),
)
