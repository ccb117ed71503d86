"""Clients and a server across one `fwemu run`, and what each connect() came to: the sockets of
tests/e2e/test_limits.py and test_lifetime_dcd.py, which each run fwemu with their own policy."""

from __future__ import annotations

import errno
import select
import socket
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from fwemu.testing import Firewall, inline_firewall
from tests.e2e.conftest import require_root

PORT = 8080  # the server the clients connect to
OTHER_PORT = 8081  # a second server port, where a test needs one
ANSWER_WAIT = 5.0  # a connect() is answered within this: the SYN at 0, retransmits at 1 s and 3 s
# A test's `v6` argument: run it over IPv4 and over IPv6.
BOTH_FAMILIES = pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])


class Endpoints:
    """The sockets of one test, of one address family: servers listening in the server
    namespace, clients connecting from the client namespace (from `source`, one of the lab's
    client addresses, if given)."""

    def __init__(self, fw: Firewall, stack: ExitStack, v6: bool) -> None:
        self.fw = fw
        self.v6 = v6
        self.family = socket.AF_INET6 if v6 else socket.AF_INET
        self.server = fw.server_address(v6)
        self.client = fw.client_address(v6)
        self._stack = stack
        self._listeners: dict[int, socket.socket] = {}

    def keep(self, sock: socket.socket) -> socket.socket:
        """Close `sock` when the test ends."""
        return self._stack.enter_context(sock)

    def listen(self, port: int = PORT) -> socket.socket:
        """A server on `port` with room for every connection a test opens at once."""
        listener = self.keep(self.fw.server_socket(self.family))
        listener.bind((self.server, port))
        listener.listen(4096)
        listener.settimeout(ANSWER_WAIT)
        self._listeners[port] = listener
        return listener

    def listener(self, port: int = PORT) -> socket.socket:
        """The server listening on `port`."""
        return self._listeners[port]

    def open(
        self, count: int = 1, port: int = PORT, source: str | None = None
    ) -> list[socket.socket]:
        """`count` connect()s under way at once (non-blocking: their SYNs leave together)."""
        opened = []
        for _ in range(count):
            client = self.keep(self.fw.client_socket(self.family))
            client.setblocking(False)
            if source is not None:
                client.bind((source, 0))
            assert client.connect_ex((self.server, port)) == errno.EINPROGRESS
            opened.append(client)
        return opened

    def outcomes(
        self, clients: list[socket.socket], timeout: float
    ) -> dict[str, list[socket.socket]]:
        """What each connect() came to within `timeout`: "ok", "timeout", or the errno's name
        ("ECONNREFUSED" when a RST answered the SYN)."""
        seen: dict[str, list[socket.socket]] = {}
        pending = {client.fileno(): client for client in clients}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLOUT)
        end = time.monotonic() + timeout
        while pending and (left := end - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                client = pending.pop(fd)
                error = client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                seen.setdefault(errno.errorcode[error] if error else "ok", []).append(client)
        if pending:
            seen["timeout"] = list(pending.values())
        return seen

    def connect(
        self, port: int = PORT, source: str | None = None, timeout: float = ANSWER_WAIT
    ) -> tuple[str, socket.socket]:
        """One connect(): what it came to within `timeout`, and its socket."""
        [client] = self.open(1, port, source)
        [(outcome, _)] = self.outcomes([client], timeout).items()
        return outcome, client

    def hold(
        self, count: int, port: int = PORT, source: str | None = None
    ) -> list[tuple[socket.socket, socket.socket]]:
        """`count` connections held open: (client, server) pairs, blocking, each ESTABLISHED
        on both ends."""
        pairs = []
        for client in self.open(count, port, source):
            assert self.outcomes([client], ANSWER_WAIT) == {"ok": [client]}
            client.setblocking(True)
            client.settimeout(ANSWER_WAIT)
            server, _ = self._listeners[port].accept()
            server.settimeout(ANSWER_WAIT)
            pairs.append((client, self.keep(server)))
        return pairs

    def iptables(self, side: str, *args: str) -> None:
        """iptables (ip6tables for IPv6) in `side`'s namespace of the lab, never the root's."""
        self.fw.run(side, ["ip6tables" if self.v6 else "iptables", *args], check=True)

    def hostport(self, port: int = PORT) -> str:
        """The server as fwemu's events name it: 10.N.2.2:8080, [fd00:N:2::2]:8080."""
        return f"[{self.server}]:{port}" if self.v6 else f"{self.server}:{port}"


def sport(client: socket.socket) -> int:
    """The client's port: how fwemu's events and flows name its connection."""
    port: int = client.getsockname()[1]
    return port


def exchange(client: socket.socket, server: socket.socket, payload: bytes = b"ping") -> None:
    """`payload` from the client to the server and back: both directions work."""
    client.sendall(payload)
    assert server.recv(len(payload), socket.MSG_WAITALL) == payload
    server.sendall(payload)
    assert client.recv(len(payload), socket.MSG_WAITALL) == payload


@contextmanager
def endpoints(
    policy: str, *, speed: float = 1.0, clients: int = 1, v6: bool = False
) -> Iterator[Endpoints]:
    """fwemu inline with `policy` (TOML, indentation ignored) at `speed`, a lab of `clients`
    client addresses, and a server listening on PORT (IPv6 if `v6`)."""
    require_root()
    with (
        inline_firewall(toml=textwrap.dedent(policy), speed=speed, clients=clients) as fw,
        ExitStack() as stack,
    ):
        ends = Endpoints(fw, stack, v6)
        ends.listen(PORT)
        yield ends
