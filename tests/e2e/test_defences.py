"""SYN-flood defences as applications meet them (issue 14): real kernels through `fwemu run`.
The cookie proxy carries a whole connection (its handshake answered by fwemu, every later
packet translated both ways; the client never sees the server's sequence numbers), a server
that is down costs the client a RST after its connect() succeeded, block lets `activate`
handshakes through, and sequence randomisation gives each side numbers the other never chose.

What each end's kernel saw is read from a packet socket in its own namespace.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from fwemu.core import packet as pk
from fwemu.lab import socket_in
from fwemu.testing import Firewall
from tests.e2e.endpoints import ANSWER_WAIT, BOTH_FAMILIES, PORT, endpoints

pytestmark = pytest.mark.e2e

COOKIES = """
    [syn_flood]
    activate = 0
    action = "syn-cookies"
"""
ETH_P_ALL = 0x0003
BULK = os.urandom(256 * 1024)  # enough to fill windows both ways (and use their scaling)


class Sniffer:
    """The TCP packets to or from PORT that one namespace's interfaces carried."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.seen: list[pk.Segment] = []

    def read(self) -> list[pk.Segment]:
        while True:
            try:
                data, _ = self._sock.recvfrom(65535)
            except BlockingIOError:
                return self.seen
            seg = pk.parse(data)
            if isinstance(seg, pk.Segment) and PORT in (seg.sport, seg.dport):
                self.seen.append(seg)

    def synacks(self) -> list[pk.Segment]:
        return [s for s in self.read() if s.flags & pk.TCP_SYN and s.flags & pk.TCP_ACK]


@contextmanager
def sniffing(fw: Firewall, side: str) -> Iterator[Sniffer]:
    """A packet socket in `side`'s namespace (cooked: IP packets, every interface)."""
    namespace = fw.plan.client.namespace if side == "client" else fw.plan.server.namespace
    sock = socket_in(namespace, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    with sock:
        yield Sniffer(sock)


def received_all(sock: socket.socket, size: int) -> bytes:
    """`size` bytes from `sock` (MSG_WAITALL does not wait on a socket with a timeout)."""
    got = b""
    while len(got) < size:
        chunk = sock.recv(size - len(got))
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return got


def both_ways(client: socket.socket, server: socket.socket) -> None:
    """BULK from the client to the server, then back: intact both ways."""
    client.sendall(BULK)
    assert received_all(server, len(BULK)) == BULK
    server.sendall(BULK)
    assert received_all(client, len(BULK)) == BULK


@BOTH_FAMILIES
def test_the_cookie_proxy_carries_a_whole_connection_and_hides_the_servers_numbers(
    v6: bool,
) -> None:
    with endpoints(COOKIES, v6=v6) as ends:
        fw = ends.fw
        with sniffing(fw, "client") as at_client, sniffing(fw, "server") as at_server:
            [(client, server)] = ends.hold(1)
            both_ways(client, server)
            client.shutdown(socket.SHUT_WR)
            assert server.recv(1) == b""
            server.close()
            assert client.recv(1) == b""
            [to_client] = at_client.synacks()
            [from_server] = at_server.synacks()
            server_isn = from_server.seq
        assert to_client.seq != server_isn  # the client's SYN-ACK was fwemu's cookie
        assert all(
            not (0 <= (s.seq - server_isn) & 0xFFFFFFFF < 2 * len(BULK))
            for s in at_client.seen
            if s.sport == PORT
        )  # no packet the client got carries the server's numbering
        status = fw.status()
        assert status["defences"]["cookies"] == {"answered": 1, "opened": 1}
        assert status["rewritten"] > 0


def test_a_server_that_is_down_gets_the_client_a_rst_after_its_connect_succeeded() -> None:
    with endpoints(COOKIES) as ends:
        started = time.monotonic()
        outcome, client = ends.connect(port=PORT + 1)  # nothing listens there
        # Connected (fwemu's SYN-ACK), then reset: never refused, as without the proxy. The RST
        # comes a round trip after the handshake, so connect()'s own result may already be it.
        assert outcome in ("ok", "ECONNRESET")
        if outcome == "ok":
            client.setblocking(True)
            client.settimeout(ANSWER_WAIT)
            with pytest.raises(ConnectionResetError):
                client.recv(1)
        assert time.monotonic() - started < 0.5
        reset = ends.fw.wait_for_event("reset", cause="proxy")
        assert reset["to"] == "client"


def test_block_lets_activate_handshakes_through_and_drops_the_rest() -> None:
    policy = """
        [syn_flood]
        activate = 3
        action = "block"
    """
    with endpoints(policy) as ends:
        seen = ends.outcomes(ends.open(10), timeout=0.8)
        assert {k: len(v) for k, v in seen.items()} == {"ok": 3, "timeout": 7}
        # Their SYNs come again a second later, while the last second was past: all blocked.
        assert {k: len(v) for k, v in ends.outcomes(seen["timeout"], 1.5).items()} == {"timeout": 7}
        assert ends.fw.status()["defences"]["syn_flood"][0]["dropped"] >= 7


@BOTH_FAMILIES
def test_randomised_sequence_numbers_differ_on_each_side_and_carry_bulk_data(v6: bool) -> None:
    policy = """
        [normalise]
        isn_randomisation = true
    """
    with endpoints(policy, v6=v6) as ends:
        fw = ends.fw
        with sniffing(fw, "client") as at_client, sniffing(fw, "server") as at_server:
            [(client, server)] = ends.hold(1)
            both_ways(client, server)
            sent_syn = next(s for s in at_client.read() if s.flags == pk.TCP_SYN)
            got_syn = next(s for s in at_server.read() if s.flags == pk.TCP_SYN)
            sent_synack = at_server.synacks()[0]
            got_synack = at_client.synacks()[0]
        assert sent_syn.seq != got_syn.seq and sent_synack.seq != got_synack.seq
        assert got_synack.ack == (sent_syn.seq + 1) & 0xFFFFFFFF  # translated back


def test_a_syn_with_data_is_dropped_by_the_normaliser_and_the_retry_without_it_gets_in() -> None:
    policy = """
        [normalise]
        syn_data = "drop"
    """
    with endpoints(policy) as ends:
        fw = ends.fw
        # TCP Fast Open with data on the first SYN, no cookie needed (1 | TFO_CLIENT_NO_COOKIE),
        # in the client namespace only.
        fw.run("client", ["sysctl", "-qw", "net.ipv4.tcp_fastopen=5"], check=True)
        client = ends.keep(fw.client_socket())
        client.settimeout(ANSWER_WAIT)
        started = time.monotonic()
        client.sendto(b"data on the SYN", socket.MSG_FASTOPEN, (ends.server, PORT))
        server, _ = ends.listener().accept()
        server.settimeout(ANSWER_WAIT)
        assert received_all(server, 15) == b"data on the SYN"
        assert time.monotonic() - started > 0.9  # the first SYN, with the data, was dropped
        server.close()
        assert fw.status()["dropped"] >= 1
