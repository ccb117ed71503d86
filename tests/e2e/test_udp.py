"""UDP through `fwemu run`, seen from real sockets (issue 17): a flow is forgotten silently at
the policy's time, after which the server's late datagram meets silence (a NAT) or, from a
firewall that rejects, an ICMP port unreachable its connected socket reports as ECONNREFUSED;
the client's next datagram opens a new flow. A flow seen both ways past the grace lives on the
stream timer. IPv4 and IPv6.

Timers are policy values at SPEED (fwemu --speed): the wall-clock ones follow by `fw.scaled`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest

from fwemu.testing import Firewall, inline_firewall
from tests.e2e.conftest import require_root
from tests.e2e.endpoints import BOTH_FAMILIES

pytestmark = pytest.mark.e2e

SPEED = 10.0
PORT = 5353
UDP, STREAM, AFTER = 10.0, 30.0, 1.0  # policy seconds: 1 s, 3 s and 0.1 s on the wall clock
WINDOW = 0.5  # an expiry is seen within this long after its deadline (as test_expiry)
QUIET = 0.5  # how long a socket waits to call a datagram lost
POLICY = f"""
[timeouts]
udp = {UDP}
udp_stream = {STREAM}
udp_stream_after = {AFTER}
"""
REJECTING = POLICY + '[out_of_state]\nudp_from_server = "icmp-unreachable"\n'


@dataclass
class Pair:
    """A connected UDP socket in the client namespace and its peer in the server namespace."""

    fw: Firewall
    client: socket.socket
    server: socket.socket

    @property
    def sport(self) -> int:
        return int(self.client.getsockname()[1])

    def ask(self, payload: bytes = b"query") -> None:
        """The client sends; the server gets it and, the first time, connects back to it."""
        self.client.send(payload)
        self.server.settimeout(QUIET * 4)
        data, peer = self.server.recvfrom(2048)
        assert data == payload
        self.server.connect(peer)

    def answer(self, payload: bytes = b"answer") -> bytes | None:
        """The server sends; what the client got within QUIET (None: nothing)."""
        self.server.send(payload)
        self.client.settimeout(QUIET)
        try:
            return self.client.recv(2048)
        except TimeoutError:
            return None


@contextmanager
def pair(policy: str, v6: bool) -> Iterator[Pair]:
    require_root()
    family = socket.AF_INET6 if v6 else socket.AF_INET
    with ExitStack() as stack, inline_firewall(toml=policy, speed=SPEED) as fw:
        server = stack.enter_context(fw.server_socket(family, socket.SOCK_DGRAM))
        server.bind((fw.server_address(v6), PORT))
        client = stack.enter_context(fw.client_socket(family, socket.SOCK_DGRAM))
        client.connect((fw.server_address(v6), PORT))
        yield Pair(fw, client, server)


@BOTH_FAMILIES
def test_a_late_reply_meets_silence_and_the_client_opens_again(v6: bool) -> None:
    """Cloud NAT's DNS case: the answer after the mapping expired never arrives; the client's
    next query is a new flow and gets its answer."""
    with pair(POLICY, v6) as ends:
        fw = ends.fw
        ends.ask()
        assert ends.answer() == b"answer"
        replied = time.time()
        expired = fw.wait_for_event("expire", timeout=fw.scaled(UDP) + 5, sport=ends.sport)
        assert (expired["state"], expired["phase"], expired["action"]) == (
            "REPLIED",
            "udp",
            "silent",
        )
        assert replied + fw.scaled(UDP) - 0.1 <= expired["ts"] <= replied + fw.scaled(UDP) + WINDOW

        assert ends.answer(b"late") is None
        late = fw.wait_for_event("out_of_state", sport=ends.sport)
        assert (late["side"], late["action"], late["flow"]["proto"]) == ("server", "drop", "udp")

        ends.ask(b"again")
        fw.wait_for_event("new", sport=ends.sport, state="UNREPLIED")
        assert ends.answer() == b"answer"


@BOTH_FAMILIES
def test_a_rejecting_firewall_tells_the_late_sender_port_unreachable(v6: bool) -> None:
    with pair(REJECTING, v6) as ends:
        fw = ends.fw
        ends.ask()
        assert ends.answer() == b"answer"
        fw.wait_for_event("expire", timeout=fw.scaled(UDP) + 5, sport=ends.sport)

        ends.server.send(b"late")
        ends.server.settimeout(QUIET * 4)
        with pytest.raises(ConnectionRefusedError):
            ends.server.recv(2048)  # the ICMP error, reported on the connected socket
        sent = fw.wait_for_event("unreachable", sport=ends.sport)
        assert (sent["to"], sent["cause"]) == ("server", "out_of_state")


@BOTH_FAMILIES
def test_a_stream_lives_on_the_stream_timer(v6: bool) -> None:
    """Seen both ways, then a datagram after the grace: STREAM, forgotten only after
    udp_stream, not udp."""
    with pair(POLICY, v6) as ends:
        fw = ends.fw
        ends.ask()
        assert ends.answer() == b"answer"
        time.sleep(fw.scaled(AFTER) + 0.05)  # the grace is a duration to outwait, not an event
        ends.client.send(b"more")
        fw.wait_for_event("state", sport=ends.sport, state="STREAM")
        last = time.time()
        assert ends.server.recv(2048) == b"more"
        # Past the udp timer, the flow is still there and passes both ways.
        time.sleep(fw.scaled(UDP) + WINDOW)
        assert [flow["state"] for flow in fw.flows()] == ["STREAM"]
        expired = fw.wait_for_event("expire", timeout=fw.scaled(STREAM) + 5, sport=ends.sport)
        assert expired["phase"] == "udp_stream"
        deadline = last + fw.scaled(STREAM)
        assert deadline - 0.3 <= expired["ts"] <= deadline + WINDOW
