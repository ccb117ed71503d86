"""My UDP agent's keepalive keeps its Cloud NAT mapping, so its server can still reach it
(docs/testing.md)."""

import socket
import threading
import time

import pytest

from fwemu.testing import Firewall

PORT = 5000
KEEPALIVE = 25.0  # seconds: the setting under test (Cloud NAT forgets a mapping after 30 s)


def keep_alive(sock: socket.socket, every: float, stop: threading.Event) -> None:
    """The code under test: a datagram to the server every `every` seconds until `stop`."""
    while not stop.wait(every):
        sock.send(b"keepalive")


@pytest.mark.fwemu("gcp-cloud-nat", speed=30)
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_server_still_reaches_the_agent_after_two_minutes(fwemu: Firewall, v6: bool) -> None:
    family = socket.AF_INET6 if v6 else socket.AF_INET
    address = (fwemu.server_address(v6), PORT)
    with (
        fwemu.server_socket(family, socket.SOCK_DGRAM) as server,
        fwemu.client_socket(family, socket.SOCK_DGRAM) as agent,  # behind fwemu
    ):
        server.bind(address)
        server.settimeout(5)
        agent.settimeout(5)
        agent.connect(address)
        agent.send(b"hello")
        _, agent_address = server.recvfrom(100)

        stop = threading.Event()
        every = fwemu.scaled(KEEPALIVE)  # 25 s of Cloud NAT time: 0.83 s at speed 30
        thread = threading.Thread(target=keep_alive, args=(agent, every, stop))
        thread.start()
        time.sleep(fwemu.scaled(120))
        stop.set()
        thread.join()

        server.sendto(b"new config", agent_address)  # the server speaks first, 2 minutes on
        assert agent.recv(100) == b"new config"

    assert not [e for e in fwemu.events() if e["event"] == "expire"]
