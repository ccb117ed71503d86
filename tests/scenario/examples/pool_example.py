"""My connection pool recovers when an AWS NLB forgets an idle connection (docs/testing.md)."""

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing

import pytest

from fwemu.testing import Firewall

PORT = 8080


class Pool:
    """The code under test: one pooled connection, and one retry on a new one after a reset."""

    def __init__(self, connect: Callable[[], socket.socket]) -> None:
        self.connect = connect
        self.conn = connect()

    def request(self, data: bytes) -> bytes:
        try:
            self.conn.sendall(data)
            return self.conn.recv(1024)
        except ConnectionResetError:
            self.conn.close()
            self.conn = self.connect()
            self.conn.sendall(data)
            return self.conn.recv(1024)

    def close(self) -> None:
        self.conn.close()


def echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(1024):
            conn.sendall(data)


@pytest.fixture
def echo_server(fwemu: Firewall) -> Iterator[tuple[str, int]]:
    """An echo server in the lab's server namespace, for the length of the test."""
    listener = fwemu.server_socket()
    listener.bind((fwemu.server_address(), PORT))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # shut down: the test is over
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield (fwemu.server_address(), PORT)
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()


@pytest.mark.fwemu("aws-nlb", speed=100)
def test_pool_recovers_after_the_nlb_forgets_an_idle_connection(
    fwemu: Firewall, echo_server: tuple[str, int]
) -> None:
    def connect() -> socket.socket:
        sock = fwemu.client_socket()  # a socket in the client namespace, behind fwemu
        sock.settimeout(5)
        sock.connect(echo_server)
        return sock

    with closing(Pool(connect)) as pool:
        assert pool.request(b"one") == b"one"
        time.sleep(fwemu.scaled(360))  # idle for 6 minutes of NLB time: 3.6 s at speed 100
        assert pool.request(b"two") == b"two"  # reset on the old connection, answered anew

    expired = fwemu.wait_for_event("expire", dport=PORT)
    assert expired["state"] == "ESTABLISHED" and expired["action"] == "silent"
    assert fwemu.wait_for_event("reset", to="client")["cause"] == "out_of_state"
