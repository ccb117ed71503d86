"""The absolute lifetime and dead connection detection, seen from real endpoints (issue 13 item
5): an active connection is cut at its lifetime; DCD's probes are answered by both endpoints'
kernels, so an idle connection outlives its idle timer, while one whose server is gone (its
namespace drops everything of the connection) is reset after the retries.

Timers are policy values at SPEED (fwemu --speed): the wall-clock ones follow by `fw.scaled`.
"""

from __future__ import annotations

import errno
import select
import socket
import time
from typing import Any

import pytest

from fwemu.testing import EventTimeout, Firewall
from tests.e2e.endpoints import BOTH_FAMILIES, PORT, endpoints, exchange, sport

pytestmark = pytest.mark.e2e

SPEED = 10.0
WINDOW = 0.5  # the endpoints see an expiry within this long after its deadline (as test_expiry)
TICK = 0.2  # the active connection's pace: a few bytes every TICK s

# Policy seconds, as the policies below say them (SPEED times longer than the wall clock's).
LIFETIME = 20.0
LIFETIME_POLICY = f"""
[timeouts]
lifetime = {LIFETIME}
[on_expire]
lifetime = "reset-both"
"""

# Idle 1 s, then probes every 0.3 s, twice: a dead end's flow is gone 0.6 s after the first.
# The probes are pure ACKs below the window, which Linux answers at most every 500 ms per
# socket (tcp_invalid_ratelimit): only the first of each round of probing needs an answer.
IDLE, INTERVAL, RETRIES = 10.0, 3.0, 2
DCD_POLICY = f"""
[timeouts]
established = {IDLE}
dcd = {{ interval = {INTERVAL}, retries = {RETRIES} }}
[on_expire]
established = "reset-both"
"""


@BOTH_FAMILIES
def test_an_active_connection_is_cut_at_its_lifetime(v6: bool) -> None:
    """Envoy's max_connection_duration: data flows every TICK s, yet at the lifetime both ends
    are reset; the client's next send() fails with ECONNRESET."""
    with endpoints(LIFETIME_POLICY, speed=SPEED, v6=v6) as ends:
        fw = ends.fw
        lifetime = fw.scaled(LIFETIME)
        [(client, server)] = ends.hold(1)
        opened = fw.wait_for_event("new", sport=sport(client))["ts"]
        hangup = select.poll()
        hangup.register(client, 0)  # POLLERR and POLLHUP: a RST wakes it
        cut = None
        while cut is None:
            assert time.time() < opened + lifetime + WINDOW + 2, "never cut"
            try:
                client.sendall(b"tick")
            except ConnectionResetError:
                cut = time.time()
            hangup.poll(TICK * 1000)  # the pace, cut short by the RST
        assert opened + lifetime <= cut <= opened + lifetime + WINDOW
        # The server's RST follows the client's: wait for it to land (POLLERR) before reading.
        server_hangup = select.poll()
        server_hangup.register(server, 0)
        assert server_hangup.poll(WINDOW * 1000), "the server was never reset"
        assert server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET

        expired = fw.wait_for_event("expire", sport=sport(client))
        assert (expired["state"], expired["action"], expired["capped_by"]) == (
            "ESTABLISHED",
            "reset-both",
            "lifetime",
        )
        assert expired["timeout"] == pytest.approx(lifetime)
        assert expired["idle"] < TICK + 0.1  # active to the end
        assert fw.flows() == []


@BOTH_FAMILIES
def test_dcd_probes_answered_by_both_ends_keep_an_idle_connection(v6: bool) -> None:
    """Both kernels answer the probes: the flow outlives its idle timer and the time the
    retries would take, probing starts over at round 1, and the connection still works."""
    with endpoints(DCD_POLICY, speed=SPEED, v6=v6) as ends:
        fw = ends.fw
        [(client, server)] = ends.hold(1)
        exchange(client, server)
        port = sport(client)
        first = fw.wait_for_event("probe", sport=port)
        assert (first["round"], first["retries"]) == (1, RETRIES)
        again = next_probe(fw, port, after=first["ts"], timeout=fw.scaled(IDLE) + WINDOW + 1)
        # A round of probing ends only when both ends answered; a new one starts at 1.
        assert again["round"] == 1
        # By then a dead end's flow would be gone.
        assert again["ts"] - first["ts"] > fw.scaled(RETRIES * INTERVAL)

        [flow] = fw.flows()
        assert flow["state"] == "ESTABLISHED"
        assert not [e for e in fw.events() if e["event"] == "expire"]
        exchange(client, server, b"still here")


@BOTH_FAMILIES
def test_dcd_expires_a_connection_whose_server_is_gone_and_resets_the_client(v6: bool) -> None:
    """The server's namespace drops everything of the connection, as if its host had died: the
    probes go unanswered by it, and after the retries the flow expires with the established
    action, naming the silent end; the client's recv() fails with ECONNRESET."""
    with endpoints(DCD_POLICY, speed=SPEED, v6=v6) as ends:
        fw = ends.fw
        [(client, server)] = ends.hold(1)
        exchange(client, server)
        port = sport(client)
        for chain, direction in (("INPUT", "--dport"), ("OUTPUT", "--sport")):
            rule = [chain, "-p", "tcp", direction, str(PORT), "-j", "DROP"]
            ends.iptables("server", "-A", *rule)

        first = fw.wait_for_event("probe", sport=port, round=1)
        expired = fw.wait_for_event("expire", sport=port)
        assert (expired["state"], expired["action"], expired["capped_by"], expired["silent"]) == (
            "ESTABLISHED",
            "reset-both",
            "dcd",
            "server",
        )
        rounds = [e["round"] for e in fw.events() if e["event"] == "probe"]
        assert rounds == list(range(1, RETRIES + 1))
        deadline = first["ts"] + fw.scaled(RETRIES * INTERVAL)
        assert deadline <= expired["ts"] <= deadline + WINDOW

        client.settimeout(WINDOW)
        with pytest.raises(ConnectionResetError):
            client.recv(1)
        fw.wait_for_event("reset", sport=port, to="client", cause="expire")
        assert fw.flows() == []


def next_probe(fw: Firewall, port: int, *, after: float, timeout: float) -> dict[str, Any]:
    """The first probe event of the flow from client port `port` later than `after`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for record in fw.events():
            if (
                record["event"] == "probe"
                and record["flow"]["sport"] == port
                and record["ts"] > after
            ):
                return record
        time.sleep(0.01)
    raise EventTimeout(f"no probe of port {port} after the first within {timeout:g}s")
