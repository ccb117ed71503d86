"""Expiry seen from real endpoints: for each phase x action, the client and the server observe
what the policy says, within [T, T + 0.5 s] of the timer's deadline T, and the flow is gone from
fwemu's table. IPv4 and IPv6.

Each test holds its endpoints in one state with iptables rules inside the lab's client or server
namespace (never the root namespace), on its own server port; one fwemu serves the whole module,
its policy's rules choosing the expiry action by port range. Lateness figures go to LATENESS_FILE.
"""

from __future__ import annotations

import errno
import itertools
import select
import socket
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fwemu.testing import Firewall, inline_firewall
from tests.e2e.conftest import report_figures, require_root

pytestmark = pytest.mark.e2e

# A SYN that goes unanswered is retransmitted after Linux's 1 s initial RTO (TCP_TIMEOUT_INIT,
# RFC 6298 §2.1); embryonic timers run out before that, so no retransmit re-arms or races them.
EMBRYONIC = 0.6
TIMEOUT = 1.0  # every other phase
WINDOW = 0.5  # the endpoints must see the expiry within this long after the deadline (the issue)
QUIET = 0.2  # how long a side the policy leaves alone is watched after the expiry: RSTs to both
# sides leave in the same timer run, so a wrong one would show within milliseconds
RESET_SIDES: Mapping[str, tuple[str, ...]] = {
    "silent": (),
    "reset-both": ("client", "server"),
    "reset-client": ("client",),
    "reset-server": ("server",),
}
ACTIONS = tuple(RESET_SIDES)
# Each rule of the policy covers 100 server ports: (action, out-of-state action) -> first port.
PORTS: Mapping[tuple[str, str], int] = {
    ("silent", "drop"): 7100,
    ("silent", "reset"): 7200,
    ("reset-both", "drop"): 7300,
    ("reset-client", "drop"): 7400,
    ("reset-server", "drop"): 7500,
}
_ports = {key: itertools.count(first) for key, first in PORTS.items()}
LATENESS_FILE = Path("/tmp/fwemu-expiry-lateness.txt")


def _policy() -> str:
    rules = "".join(
        f'[[rule]]\nname = "{action}-oos-{oos}"\n'
        f'match = {{ dst_port = "{first}-{first + 99}" }}\n'
        f'on_expire = {{ default = "{action}" }}\n'
        f'out_of_state = {{ action = "{oos}" }}\n\n'
        for (action, oos), first in PORTS.items()
    )
    return (
        f'[policy]\nname = "expiry-matrix"\n\n[timeouts]\nembryonic = {EMBRYONIC}\n'
        f"established = {TIMEOUT}\nhalf_closed = {TIMEOUT}\nclosing = {TIMEOUT}\n"
        f"time_wait = {TIMEOUT}\n\n{rules}"
    )


@dataclass
class Lateness:
    """How late each expiry was: fwemu's own (event ts - deadline), and as an endpoint saw it."""

    timer: list[float] = field(default_factory=list)
    endpoint: list[float] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(
            [
                "fwemu expiry lateness (real timers of 0.6-1 s, lab on this host):",
                _figures("  timer (expire event ts - deadline)", self.timer),
                _figures("  endpoint saw the RST, after the deadline", self.endpoint),
            ]
        )


def _figures(what: str, values: list[float]) -> str:
    if not values:
        return f"{what}: no samples"
    return (
        f"{what}: median {statistics.median(values) * 1000:.1f} ms, "
        f"worst {max(values) * 1000:.1f} ms, n={len(values)}"
    )


@pytest.fixture(scope="module")
def lateness(request: pytest.FixtureRequest) -> Iterator[Lateness]:
    figures = Lateness()
    yield figures
    text = figures.summary()
    LATENESS_FILE.write_text(text + "\n")
    report_figures(request.config, f"{text}\n  (also in {LATENESS_FILE})")


@pytest.fixture(scope="module")
def fw() -> Iterator[Firewall]:
    require_root()
    with inline_firewall(toml=_policy()) as firewall:
        # TIME_WAIT assassination by a RST only happens with RFC 1337 protection off (the
        # default; per namespace, shared by IPv6): reference §2.4.
        firewall.run("client", ["sysctl", "-qw", "net.ipv4.tcp_rfc1337=0"], check=True)
        yield firewall


@dataclass
class Case:
    """One flow of one test: its server port (which picks the action) and its endpoints."""

    fw: Firewall
    lateness: Lateness
    action: str
    out_of_state: str
    v6: bool
    port: int
    challenge_acks: dict[str, int]
    sockets: list[socket.socket] = field(default_factory=list)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.v6 else socket.AF_INET

    @property
    def server_address(self) -> tuple[str, int]:
        return (self.fw.server_address(self.v6), self.port)

    def iptables(self, side: str, *rule: str) -> None:
        """Append `rule` in `side`'s namespace (per-port rules: they never touch other tests)."""
        tool = "ip6tables" if self.v6 else "iptables"
        self.fw.run(side, [tool, "-A", *rule], check=True)

    def listen(self) -> socket.socket:
        listener = self.keep(self.fw.server_socket(self.family))
        listener.bind(self.server_address)
        listener.listen()
        listener.setblocking(False)
        return listener

    def connect_nowait(self) -> socket.socket:
        """A client whose connect() is under way (EINPROGRESS): its handshake is left to run."""
        client = self.keep(self.fw.client_socket(self.family))
        client.setblocking(False)
        assert client.connect_ex(self.server_address) == errno.EINPROGRESS
        return client

    def connect(self) -> tuple[socket.socket, socket.socket]:
        """An ESTABLISHED connection: (client, server)."""
        listener = self.listen()
        client = self.keep(self.fw.client_socket(self.family))
        client.settimeout(5)
        client.connect(self.server_address)
        listener.settimeout(5)
        server, _ = listener.accept()
        listener.close()
        return client, self.keep(server)

    def keep(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    def ss(self, side: str, state: str) -> str:
        """`ss` lines of this flow in `side`'s namespace in TCP state `state` (e.g. time-wait)."""
        port = f"{'sport' if side == 'server' else 'dport'} = :{self.port}"
        return self.fw.run(side, ["ss", "-Htn", "state", state, port], check=True).stdout.strip()

    def in_state(self, side: str, state: str) -> Callable[[], bool]:
        return lambda: bool(self.ss(side, state))

    def expiry(
        self,
        watch: Mapping[str, Callable[[], bool]],
        *,
        state: str,
        timeout: float,
        since: float,
    ) -> None:
        """Watch each side until the policy's RSTs reach it; check when and that only the sides
        the action names were reset, and that the flow is gone from fwemu's table.
        `watch[side]()` is True while that side is unharmed; `since` is a wall-clock time before
        the flow's last packet."""
        hit = [side for side in RESET_SIDES[self.action] if side in watch]
        seen = _watch({side: watch[side] for side in hit}, until=since + timeout + WINDOW + 2)
        event = self.fw.wait_for_event("expire", timeout=timeout + 5, dport=self.port)
        assert (event["state"], event["action"]) == (state, self.action)
        assert event["timeout"] == pytest.approx(timeout)
        deadline = event["ts"] - event["idle"] + timeout
        self.lateness.timer.append(event["idle"] - timeout)
        assert deadline >= since + timeout  # fwemu counted from the last packet, not earlier
        for side in hit:
            assert side in seen, f"the {side} was never reset"
            self.lateness.endpoint.append(seen[side] - deadline)
            assert deadline <= seen[side] <= deadline + WINDOW, (side, seen[side] - deadline)
            self.fw.wait_for_event("reset", dport=self.port, to=side, cause="expire")
        spared = {side: alive for side, alive in watch.items() if side not in hit}
        assert _watch(spared, until=time.time() + QUIET) == {}
        assert [f for f in self.fw.flows() if f["dport"] == self.port] == []

    def read_challenge_acks(self) -> dict[str, int]:
        return {side: _challenge_acks(self.fw, side) for side in ("client", "server")}


def _challenge_acks(fw: Firewall, side: str) -> int:
    """TcpExtTCPChallengeACK in `side`'s namespace: ACKs sent for RSTs with an inexact seq."""
    out = fw.run(side, ["nstat", "-asz", "TcpExtTCPChallengeACK"], check=True).stdout
    return int(next(line.split()[1] for line in out.splitlines() if "ChallengeACK" in line))


def _watch(alive: Mapping[str, Callable[[], bool]], until: float) -> dict[str, float]:
    """Poll each side until it stops being alive or `until`; wall-clock times it stopped."""
    gone: dict[str, float] = {}
    while True:
        for side, check in alive.items():
            if side not in gone and not check():
                gone[side] = time.time()
        if len(gone) == len(alive) or time.time() >= until:
            return gone
        time.sleep(0.005)


def unharmed(sock: socket.socket) -> Callable[[], bool]:
    """True until the socket gets an error or hangs up (a RST does both)."""
    poller = select.poll()
    poller.register(sock, 0)  # POLLERR and POLLHUP are always reported
    return lambda: not poller.poll(0)


@pytest.fixture(params=[False, True], ids=["ipv4", "ipv6"])
def v6(request: pytest.FixtureRequest) -> bool:
    flag: bool = request.param
    return flag


@pytest.fixture
def case(fw: Firewall, lateness: Lateness, action: str, v6: bool) -> Iterator[Case]:
    """The flow of one test, on a port of the policy rule for `action` ("silent-oos-reset":
    silent, with out-of-state packets answered by a RST)."""
    expire, _, oos = action.partition("-oos-")
    oos = oos or "drop"
    this = Case(fw, lateness, expire, oos, v6, next(_ports[(expire, oos)]), {})
    this.challenge_acks = this.read_challenge_acks()
    yield this
    for sock in this.sockets:
        sock.close()


def no_challenge_acks(case: Case) -> None:
    assert case.read_challenge_acks() == case.challenge_acks


# --- embryonic ------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_client_in_syn_sent(case: Case) -> None:
    """The server never sees the SYN: reset-client refuses the client's connect()."""
    case.iptables("server", "INPUT", "-p", "tcp", "--dport", str(case.port), "--syn", "-j", "DROP")
    since = time.time()
    client = case.connect_nowait()
    case.fw.wait_for_event("new", dport=case.port)
    hold_syn_retransmits(case)
    case.expiry({"client": unharmed(client)}, state="SYN_SENT", timeout=EMBRYONIC, since=since)
    refused = "client" in RESET_SIDES[case.action]
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == (
        errno.ECONNREFUSED if refused else 0
    )
    no_challenge_acks(case)


@pytest.mark.parametrize("action", ACTIONS)
def test_server_in_syn_recv(case: Case) -> None:
    """The client never sees the SYN/ACK: reset-server removes the server's half-open request
    (nothing ever reaches accept()); reset-client refuses the client's connect()."""
    case.iptables(
        "client",
        *("INPUT", "-p", "tcp", "--sport", str(case.port)),
        *("--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "DROP"),
    )
    listener = case.listen()
    since = time.time()
    client = case.connect_nowait()
    case.fw.wait_for_event("state", dport=case.port, state="SYN_RECV")
    hold_syn_retransmits(case)
    request = case.in_state("server", "syn-recv")
    assert request()
    watch = {"client": unharmed(client), "server": request}
    case.expiry(watch, state="SYN_RECV", timeout=EMBRYONIC, since=since)
    refused = "client" in RESET_SIDES[case.action]
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == (
        errno.ECONNREFUSED if refused else 0
    )
    with pytest.raises(BlockingIOError):
        listener.accept()
    no_challenge_acks(case)


def hold_syn_retransmits(case: Case) -> None:
    """Keep the client's later SYNs in: a retransmit would open a new flow of the same 4-tuple."""
    case.iptables("client", "OUTPUT", "-p", "tcp", "--dport", str(case.port), "--syn", "-j", "DROP")


# --- established ----------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["reset-both", "reset-client", "reset-server"])
def test_established_idle(case: Case) -> None:
    """Both sides idle in ESTABLISHED: the reset sides' recv raises ECONNRESET."""
    since = time.time()
    client, server = case.connect()
    sides = {"client": client, "server": server}
    case.expiry(
        {side: unharmed(sock) for side, sock in sides.items()},
        state="ESTABLISHED",
        timeout=TIMEOUT,
        since=since,
    )
    for side in RESET_SIDES[case.action]:
        with pytest.raises(ConnectionResetError):
            sides[side].recv(1)
    no_challenge_acks(case)


@pytest.mark.parametrize("action", ["silent", "silent-oos-reset"])
def test_after_a_silent_expiry_late_data_is_dropped_or_reset(case: Case) -> None:
    """Nothing happens at the deadline; the client's next write is then black-holed (the server
    never gets it), or, with out_of_state "reset", answered with a RST."""
    since = time.time()
    client, server = case.connect()
    watch = {"client": unharmed(client), "server": unharmed(server)}
    case.expiry(watch, state="ESTABLISHED", timeout=TIMEOUT, since=since)
    client.settimeout(0.3)
    client.sendall(b"late")
    oos = case.fw.wait_for_event("out_of_state", dport=case.port, side="client")
    assert oos["action"] == case.out_of_state
    if case.out_of_state == "reset":
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    else:
        with pytest.raises(TimeoutError):
            client.recv(1)
        server.settimeout(0.1)
        with pytest.raises(TimeoutError):
            server.recv(4)
    no_challenge_acks(case)


# --- half-closed, closing, time-wait --------------------------------------------------------


@pytest.mark.parametrize("action", ACTIONS)
def test_client_in_fin_wait2_server_in_close_wait(case: Case) -> None:
    """The client shut down its sending side and the server keeps its socket open: a reset
    client's recv raises ECONNRESET, a reset server's CLOSE_WAIT socket is gone."""
    client, server = case.connect()
    since = time.time()
    client.shutdown(socket.SHUT_WR)
    case.fw.wait_for_event("state", dport=case.port, state="CLOSE_WAIT")
    watch = {"client": unharmed(client), "server": unharmed(server)}
    case.expiry(watch, state="CLOSE_WAIT", timeout=TIMEOUT, since=since)
    if "client" in RESET_SIDES[case.action]:
        with pytest.raises(ConnectionResetError):
            client.recv(1)
    else:
        assert case.ss("client", "fin-wait-2")
    if "server" in RESET_SIDES[case.action]:
        assert not case.ss("server", "close-wait")
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            server.send(b"x")
    else:
        assert case.ss("server", "close-wait")
    no_challenge_acks(case)


@pytest.mark.parametrize("action", ACTIONS)
def test_server_in_last_ack(case: Case) -> None:
    """The client's last ACK is held back, so the server (and conntrack) stay in LAST_ACK while
    the client waits in TIME_WAIT: each reset side's socket is gone."""
    client, server = case.connect()
    client.shutdown(socket.SHUT_WR)
    case.fw.wait_for_event("state", dport=case.port, state="CLOSE_WAIT")
    case.iptables(
        "client",
        *("OUTPUT", "-p", "tcp", "--dport", str(case.port)),
        *("--tcp-flags", "SYN,ACK,FIN,RST", "ACK", "-j", "DROP"),
    )
    since = time.time()
    server.close()
    case.fw.wait_for_event("state", dport=case.port, state="LAST_ACK")
    # Retransmits of the server's FIN would re-arm the timer: keep them in.
    case.iptables(
        "server",
        *("OUTPUT", "-p", "tcp", "--sport", str(case.port)),
        *("--tcp-flags", "FIN", "FIN", "-j", "DROP"),
    )
    watch = {
        "client": case.in_state("client", "time-wait"),
        "server": case.in_state("server", "last-ack"),
    }
    assert all(alive() for alive in watch.values())
    case.expiry(watch, state="LAST_ACK", timeout=TIMEOUT, since=since)
    no_challenge_acks(case)


@pytest.mark.parametrize("action", ACTIONS)
def test_client_in_time_wait(case: Case) -> None:
    """The client closes first and ends in TIME_WAIT; a reset client's TIME_WAIT is gone (the
    server has no socket left to reset)."""
    client, server = case.connect()
    since = time.time()
    client.close()
    assert server.recv(1) == b""
    server.close()
    case.fw.wait_for_event("state", dport=case.port, state="TIME_WAIT")
    time_wait = case.in_state("client", "time-wait")
    assert time_wait()
    case.expiry({"client": time_wait}, state="TIME_WAIT", timeout=TIMEOUT, since=since)
    no_challenge_acks(case)
