"""Connection limits as applications meet them (issue 13): real sockets through `fwemu run` see
a full table's connect() hang until a retransmitted SYN finds room, a "reset" limit refuse
connect() at once, a NAT's pool let N of a burst through and fail the rest, a released port stay
unusable for port_reuse, a stuck handshake hold back the next, and one client over its cap while
another is unaffected.

Each test runs its own fwemu with the policy it shows (a lab of its own: no counts carry over).
"""

from __future__ import annotations

import socket
import time

import pytest

from fwemu.testing import Firewall
from tests.e2e.endpoints import ANSWER_WAIT, BOTH_FAMILIES, OTHER_PORT, endpoints, sport

pytestmark = pytest.mark.e2e

# A dropped SYN: no answer for this long, as Linux retransmits it only after its 1 s initial
# RTO (TCP_TIMEOUT_INIT, RFC 6298 §2.1).
HANG = 0.8
AT_ONCE = 0.5  # a refusal's RST arrives within this (a lab round trip is under a millisecond)
RETRY = 0.1  # how often the client of the port_reuse test retries a refused connect()
TRIP = 0.02  # a SYN's way from the client's clock to fwemu's (the trip, the clocks' mapping)


def syn_retransmits(fw: Firewall) -> int:
    """TcpExtTCPSynRetrans in the client namespace: SYNs its kernel sent again."""
    out = fw.run("client", ["nstat", "-asz", "TcpExtTCPSynRetrans"], check=True).stdout
    return int(next(line.split()[1] for line in out.splitlines() if "SynRetrans" in line))


def refusal(fw: Firewall, client: socket.socket) -> tuple[str, int, int, str, str]:
    """The limit event of the client's connect(): (limit, value, count, counted, action)."""
    got = fw.wait_for_event("limit", sport=sport(client))
    return (got["limit"], got["value"], got["count"], got["counted"], got["action"])


# --- the table: max_flows, per_server, per_client ------------------------------------------


def test_a_full_table_hangs_connect_until_its_retransmitted_syn_finds_room() -> None:
    """nf_conntrack's "table full, dropping packet": with max_flows connections open the next
    connect() gets no answer; once one of them has closed (and its TIME_WAIT flow is gone), the
    kernel's retransmission of that SYN gets in and the same connect() succeeds."""
    with endpoints(
        """
        [timeouts]
        time_wait = "100ms"  # a closed connection gives its place back at once
        [limits]
        max_flows = 3
        on_full = "drop"
        """
    ) as ends:
        held = ends.hold(3)
        retransmits = syn_retransmits(ends.fw)
        [hung] = ends.open()
        assert refusal(ends.fw, hung) == ("max_flows", 3, 3, "table", "drop")
        assert ends.outcomes([hung], HANG) == {"timeout": [hung]}

        client, server = held[0]
        closed = sport(client)
        client.close()  # the client closes first: its end waits in TIME_WAIT
        server.close()
        ends.fw.wait_for_event("expire", sport=closed, state="TIME_WAIT")
        assert ends.outcomes([hung], ANSWER_WAIT) == {"ok": [hung]}
        assert syn_retransmits(ends.fw) > retransmits
        [flow] = [f for f in ends.fw.flows() if f["sport"] == sport(hung)]
        assert flow["state"] == "ESTABLISHED"


@BOTH_FAMILIES
def test_a_full_table_that_resets_refuses_connect_at_once(v6: bool) -> None:
    """on_full = "reset": a RST answers the SYN, so connect() fails with ECONNREFUSED."""
    with endpoints('[limits]\nmax_flows = 1\non_full = "reset"', v6=v6) as ends:
        ends.hold(1)
        outcome, client = ends.connect(timeout=AT_ONCE)
        assert outcome == "ECONNREFUSED"
        assert refusal(ends.fw, client) == ("max_flows", 1, 1, "table", "reset")
        ends.fw.wait_for_event("reset", sport=sport(client), to="client", cause="limit")
        assert len(ends.fw.flows()) == 1


def test_per_server_refuses_only_connections_to_the_busy_server_port() -> None:
    """The ASA's conn-max per server: another port of the same host is unaffected."""
    with endpoints('[limits]\nper_server = 2\non_full = "reset"') as ends:
        ends.listen(OTHER_PORT)
        ends.hold(2)
        outcome, client = ends.connect(timeout=AT_ONCE)
        assert outcome == "ECONNREFUSED"
        busy = f"server {ends.hostport()}"
        assert refusal(ends.fw, client) == ("per_server", 2, 2, busy, "reset")
        assert ends.connect(OTHER_PORT)[0] == "ok"


def test_one_client_over_its_cap_leaves_another_client_unaffected() -> None:
    """The ASA's per-client-max: the second client address of the lab connects as usual."""
    with endpoints('[limits]\nper_client = 2\non_full = "reset"', clients=2) as ends:
        (first, _), (second, _) = ends.fw.plan.client.pairs
        ends.hold(2, source=first)
        outcome, client = ends.connect(source=first, timeout=AT_ONCE)
        assert outcome == "ECONNREFUSED"
        assert refusal(ends.fw, client) == ("per_client", 2, 2, f"client {first}", "reset")
        outcome, other = ends.connect(source=second)
        assert outcome == "ok"
        assert other.getsockname()[0] == second


# --- NAT port pools -------------------------------------------------------------------------


@BOTH_FAMILIES
def test_a_burst_past_the_nat_pool_gets_its_excess_refused(v6: bool) -> None:
    """GCP Cloud NAT's 64 ports per VM: of 100 connections opened at once to one server, 64
    succeed and 36 are refused, each answered at once (no SYN retransmitted)."""
    with endpoints(
        """
        [limits]
        ports_per_destination = 64
        on_exhausted = "reset"
        """,
        v6=v6,
    ) as ends:
        seen = ends.outcomes(ends.open(100), HANG)
        assert {outcome: len(clients) for outcome, clients in seen.items()} == {
            "ok": 64,
            "ECONNREFUSED": 36,
        }
        pool = f"client {ends.client} to {ends.hostport()}"
        for client in seen["ECONNREFUSED"]:
            assert refusal(ends.fw, client) == ("ports_per_destination", 64, 64, pool, "reset")
        assert len([e for e in ends.fw.events() if e["event"] == "limit"]) == 36
        assert len(ends.fw.flows()) == 64


def test_a_nat_pool_that_drops_times_connects_out() -> None:
    """An exhausted pool that drops (AWS NAT gateway's ErrorPortAllocation): the connect()s past
    it time out, their retransmitted SYNs dropped too while the pool stays full."""
    with endpoints(
        """
        [limits]
        ports_per_destination = 4
        on_exhausted = "drop"
        """
    ) as ends:
        seen = ends.outcomes(ends.open(6), 1.5)
        assert {outcome: len(clients) for outcome, clients in seen.items()} == {
            "ok": 4,
            "timeout": 2,
        }
        for client in seen["timeout"]:
            assert refusal(ends.fw, client)[0] == "ports_per_destination"


def test_a_released_nat_port_is_reusable_only_after_port_reuse() -> None:
    """A pool of one port held for port_reuse after its connection ended (Cloud NAT's 120 s
    TCP TIME_WAIT, at speed 40: 3 s): a client retrying every RETRY s is refused until then."""
    with endpoints(
        """
        [timeouts]
        time_wait = "4s"
        [limits]
        ports_per_destination = 1
        port_reuse = "120s"
        on_exhausted = "reset"
        """,
        speed=40.0,
    ) as ends:
        reuse = ends.fw.scaled(120.0)
        [(client, server)] = ends.hold(1)
        closed = sport(client)
        client.close()
        server.close()
        gone = ends.fw.wait_for_event("expire", sport=closed, state="TIME_WAIT")["ts"]
        assert ends.fw.flows() == []
        tries: list[tuple[float, str]] = []
        while not tries or tries[-1][1] != "ok":
            assert time.time() < gone + reuse + ANSWER_WAIT, tries
            if tries:
                time.sleep(RETRY)  # the client's own pace, not a wait for fwemu
            sent = time.time()
            tries.append((sent, ends.connect(timeout=AT_ONCE)[0]))
        refused, (succeeded, _) = tries[:-1], tries[-1]
        assert refused and {outcome for _, outcome in refused} == {"ECONNREFUSED"}
        assert gone + reuse - TRIP <= succeeded <= gone + reuse + RETRY + AT_ONCE
        assert refused[-1][0] < gone + reuse
        reasons = {e["limit"] for e in ends.fw.events() if e["event"] == "limit"}
        assert reasons == {"ports_per_destination"}


# --- handshakes -----------------------------------------------------------------------------


def test_a_stuck_handshake_holds_back_the_next_until_it_completes() -> None:
    """The ASA's embryonic-conn-max of 1: while one SYN goes unanswered (the server's namespace
    drops it) a second connect() is refused; once the first completes, connects succeed."""
    with endpoints('[limits]\nembryonic = 1\non_embryonic = "reset"') as ends:
        ends.listen(OTHER_PORT)
        drop_syn = ["INPUT", "-p", "tcp", "--dport", str(OTHER_PORT), "--syn", "-j", "DROP"]
        ends.iptables("server", "-A", *drop_syn)
        [stuck] = ends.open(port=OTHER_PORT)
        ends.fw.wait_for_event("new", sport=sport(stuck))

        outcome, client = ends.connect(timeout=AT_ONCE)
        assert outcome == "ECONNREFUSED"
        assert refusal(ends.fw, client) == ("embryonic", 1, 1, "table", "reset")

        ends.iptables("server", "-D", *drop_syn)
        assert ends.outcomes([stuck], ANSWER_WAIT) == {"ok": [stuck]}
        assert ends.connect()[0] == "ok"
