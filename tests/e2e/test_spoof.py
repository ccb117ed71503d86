"""Spoof safety (issue 12 item 4): a third party in the client's namespace who knows only an idle
connection's four-tuple sends FIN|ACKs, data, RSTs and SYNs with guessed sequence numbers
through `fwemu run`. What the kernel's conntrack does with them is what a user must see.

With the window checks on: the flow stays ESTABLISHED, its timer stays where the last real
packet put it (the server's answers to the spoofs are held, as real packets they would restart
it), the connection keeps working, and at expiry fwemu's RSTs reset both ends. With
`window_check = false` (the kernel's nf_conntrack_tcp_be_liberal) the spoofs do to fwemu's flow
what they do to the kernel's entry (spoof.kernel_outcome): FIN|ACKs take it to LAST_ACK, data
restarts its timer, RSTs above what the server acknowledged cut it to the CLOSE timer. The last
test holds kernel_outcome to this machine's kernel.
"""

from __future__ import annotations

import os
import random
import select
import socket
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

import pytest

from fwemu.lab import run_in
from fwemu.testing import Firewall, inline_firewall
from tests.core.trace import Trace
from tests.e2e.conftest import require_root
from tests.e2e.kernel import LINUX, Kernel, kernel_lab
from tests.e2e.spoof import (
    KINDS,
    SYN_OPTIONS,
    Kind,
    Numbers,
    Spoofer,
    Watch,
    guesses,
    kernel_outcome,
)

pytestmark = pytest.mark.e2e

TIMERS = {"established": 4.0, "last_ack": 3.0, "time_wait": 1.5, "close": 2.0}
SPREAD = 1.0  # the spoofs of a test go out over this long (see the test)
# How far fwemu's deadline may be from the one computed from the watch's timestamps: the
# queue's latency between the server's interface and fwemu (microseconds idle, tens of
# milliseconds on this shared 2-CPU host) and the control request's own duration. A spoof
# that restarted the timer would move it by up to SPREAD.
TOLERANCE = 0.15
WINDOW = 0.5  # the endpoints must see the expiry's RSTs this soon after the deadline
# A real ACK in LAST_ACK moves the kernel's entry to TIME_WAIT (sLA -> sTW); ESTABLISHED stays.
AFTER_REAL_TRAFFIC = {"ESTABLISHED": "ESTABLISHED", "LAST_ACK": "TIME_WAIT"}
STATE_TIMER = {"ESTABLISHED": "established", "TIME_WAIT": "time_wait"}
LIBERAL_PORTS = range(9450, 9500)
POLICY = f"""\
[policy]
name = "spoof"

[timeouts]
established = {TIMERS["established"]}
fin_wait = {TIMERS["last_ack"]}
close_wait = {TIMERS["last_ack"]}
last_ack = {TIMERS["last_ack"]}
time_wait = {TIMERS["time_wait"]}
close = {TIMERS["close"]}

[on_expire]
default = "reset-both"

[[rule]]
name = "be-liberal"
match = {{ dst_port = "{LIBERAL_PORTS[0]}-{LIBERAL_PORTS[-1]}" }}
out_of_state = {{ window_check = false }}
"""
_ports = {False: iter(range(9400, 9450)), True: iter(LIBERAL_PORTS)}


@pytest.fixture(scope="module")
def fw() -> Iterator[Firewall]:
    require_root()
    with inline_firewall(toml=POLICY) as firewall:
        yield firewall


@contextmanager
def answers_held(fw: Firewall, port: int) -> Iterator[None]:
    """The server's packets stay in its namespace (an OUTPUT rule on its port). Linux answers
    every out-of-window data or FIN segment at once with a dupACK (tcp_oow_rate_limited spares
    data), a SYN with a challenge ACK: real packets, which restart the timer in the kernel as in
    fwemu, and would hide a restart by the spoof that fwemu let through before them."""
    rule = ("OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP")
    fw.run("server", ["iptables", "-I", *rule], check=True)
    try:
        yield
    finally:
        fw.run("server", ["iptables", "-D", *rule], check=True)


@contextmanager
def connection(fw: Firewall, port: int) -> Iterator[tuple[socket.socket, socket.socket]]:
    with closing(fw.server_socket()) as listener:
        listener.bind((fw.server_address(), port))
        listener.listen()
        client = fw.client_socket()
        client.settimeout(5)
        client.connect((fw.server_address(), port))
        listener.settimeout(5)
        server, _ = listener.accept()
    server.settimeout(5)
    with closing(client), closing(server):
        yield client, server


def exchange(client: socket.socket, server: socket.socket, payload: bytes) -> None:
    """`payload` from the client to the server and back: both directions work."""
    client.sendall(payload)
    assert server.recv(len(payload), socket.MSG_WAITALL) == payload
    server.sendall(payload)
    assert client.recv(len(payload), socket.MSG_WAITALL) == payload


def flow(fw: Firewall, port: int) -> tuple[str, float]:
    """The flow's state and deadline (wall clock) as fwemu lists them."""
    before = time.time()
    [record] = [f for f in fw.flows() if f["dport"] == port]
    return record["state"], (before + time.time()) / 2 + record["expires_in"]


def transitions(fw: Firewall, port: int, since: float) -> list[tuple[str, str]]:
    return [
        (e["old_state"], e["state"])
        for e in fw.events()
        if e["event"] == "state" and e["flow"]["dport"] == port and e["ts"] >= since
    ]


def reset_times(socks: dict[str, socket.socket], until: float) -> dict[str, float]:
    """When each socket got an error or hang-up (a RST gives both), waiting until `until`."""
    poller = select.poll()
    sides = {}
    for side, sock in socks.items():
        poller.register(sock, 0)  # POLLERR and POLLHUP are always reported
        sides[sock.fileno()] = side
    hit: dict[str, float] = {}
    while len(hit) < len(socks) and (left := until - time.time()) > 0:
        for fd, _ in poller.poll(left * 1000):
            hit[sides[fd]] = time.time()
            poller.unregister(fd)
    return hit


@pytest.mark.parametrize("liberal", [False, True], ids=["window-check", "be-liberal"])
@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_spoofs_into_an_idle_connection(fw: Firewall, kind: Kind, liberal: bool) -> None:
    """A connection exchanges a few bytes and goes idle; `kind`'s guesses follow, with the
    server's answers held; then the state and deadline are the kernel's, both directions still
    work, and at the policy's expiry both ends are reset."""
    port = next(_ports[liberal])
    with closing(Watch(fw, port)) as watch, connection(fw, port) as (client, server):
        exchange(client, server, b"before the spoofs")
        real = watch.settled()
        spoofs = guesses(kind, real, random.Random(kind.name))
        outcome = kernel_outcome(kind, liberal, spoofs, real)
        start = time.time()
        spoofer = Spoofer(fw, watch, client.getsockname()[1])
        with answers_held(fw, port), closing(spoofer):
            for i, spoof in enumerate(spoofs):
                # Paced, not synchronised: spread over SPREAD after the last real packet, a
                # spoof that restarted the timer moves the deadline by up to SPREAD.
                time.sleep(max(0.0, start + i * SPREAD / len(spoofs) - time.time()))
                spoofer.send(spoof)
        last_real = watch.last_real()
        if outcome.restarts:
            at = max(s.at for s in spoofer.sent if s.spoof in outcome.restarts)
            assert at > last_real
            expected = at + TIMERS[outcome.timer]
        else:
            expected = last_real + TIMERS["established"]
        state, deadline = flow(fw, port)
        moved = transitions(fw, port, start)
        assert (state, moved[:1]) == (
            outcome.state,
            [] if outcome.state == "ESTABLISHED" else [("ESTABLISHED", "FIN_WAIT")],
        ), moved
        if outcome.state == "ESTABLISHED":
            assert moved == []
        assert deadline == pytest.approx(expected, abs=TOLERANCE), (
            f"deadline {deadline - last_real:.3f}s after the last real packet, "
            f"{deadline - spoofer.sent[-1].at:.3f}s after the last spoof"
        )

        exchange(client, server, b"after the spoofs")
        watch.settled()
        last_real = watch.last_real()
        state = AFTER_REAL_TRAFFIC[outcome.state]
        timeout = TIMERS[STATE_TIMER[state]]
        now_state, deadline = flow(fw, port)
        assert now_state == state
        assert deadline == pytest.approx(last_real + timeout, abs=TOLERANCE)

        socks = {"client": client, "server": server}
        hit = reset_times(socks, until=last_real + timeout + WINDOW + 1)
        expired = fw.wait_for_event("expire", dport=port)
        assert (expired["state"], expired["action"]) == (state, "reset-both")
        assert expired["ts"] - expired["idle"] + timeout == pytest.approx(
            last_real + timeout, abs=TOLERANCE
        )
        for side, sock in socks.items():
            fw.wait_for_event("reset", dport=port, to=side, cause="expire")
            assert side in hit, f"the {side} was never reset"
            assert last_real + timeout <= hit[side] <= last_real + timeout + WINDOW
            with pytest.raises(ConnectionResetError):
                sock.recv(1)


# --- the expectations against the kernel ----------------------------------------------------

# /proc shows an entry's timer in whole seconds: a timer the spoofs did not restart shows this
# much less than its full length at least, one they restarted at most a second less.
GAP = 1.5


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    require_root()
    with kernel_lab(f"fwemu-kp{os.getpid()}-spoof", 94) as k:
        yield k


def entry(kernel: Kernel) -> tuple[str, int]:
    """The (only) TCP entry's state and seconds left on its timer."""
    [fields] = [
        line.split()
        for line in (kernel.proc / "nf_conntrack").read_text().splitlines()
        if line.split()[2] == "tcp"
    ]
    return fields[5], int(fields[4])


def kernel_timeout(kernel: Kernel, timer: str) -> int:
    key = f"net.netfilter.nf_conntrack_tcp_timeout_{timer}"
    done = run_in(kernel.plan.name, "fw", ["sysctl", "-n", key], capture_output=True, text=True)
    return int(done.stdout)


@pytest.mark.parametrize("liberal", [False, True], ids=["window-check", "be-liberal"])
@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_the_expected_outcomes_are_the_kernels(kernel: Kernel, kind: Kind, liberal: bool) -> None:
    """kernel_outcome on the same kind of guesses, sent into an idle ESTABLISHED entry of a lab
    where only the kernel's conntrack runs (tests/e2e/kernel.py); its state and timer after."""
    plan = kernel.plan
    kernel.flush()
    kernel.liberal(liberal)
    try:
        t = Trace(
            LINUX,
            client_addr=plan.client.ipv4,
            server_addr=plan.server.ipv4,
            tap=kernel.send,
            count_invalid=False,
        )
        # A Linux handshake (window scale 7 both ways) and a few bytes each way, all ACKed.
        t.client("S", at=0, window=64240, options=SYN_OPTIONS)
        t.server("SA", at=0, window=65160, options=SYN_OPTIONS)
        t.client("A", at=0, window=502)
        t.client("PA", 6, at=0, window=502)
        t.server("PA", 6, at=0, window=509)
        t.client("A", at=0, window=502)
        real = Numbers(t.c.nxt, t.s.nxt, 65160)
        spoofs = guesses(kind, real, random.Random(kind.name))
        outcome = kernel_outcome(kind, liberal, spoofs, real)
        time.sleep(GAP)  # the thing asserted: whether the spoofs restarted the timer
        for spoof in spoofs:
            kernel.send("client", spoof.packet(t.c.addr, t.c.port, t.s.addr, t.s.port))
        state, left = entry(kernel)
        full = kernel_timeout(kernel, outcome.timer)
        assert state == outcome.state
        if outcome.restarts:
            assert full - 1 <= left <= full
        else:
            assert left <= full - GAP
    finally:
        kernel.liberal(False)
