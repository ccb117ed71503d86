"""Connection limits as traces: which new flows open, which are refused and how, and when room
comes back (fwemu/core/limits.py)."""

from __future__ import annotations

import itertools

from fwemu.core import packet as pk
from fwemu.core.decision import Reason, Verdict
from fwemu.core.engine import Engine
from fwemu.core.events import FlowDeleted, LimitRefused, LimitSummary, ResetSent
from fwemu.policy import loads_policy

from .trace import Trace

_ports = itertools.count(30000)


def policy(text: str) -> Engine:
    return Engine(loads_policy(text))


def conn(
    engine: Engine, client: str = "10.0.1.2", server: str = "10.0.2.2", port: int = 80
) -> Trace:
    """A new client connection through `engine` (each from its own port)."""
    t = Trace(engine.policy, client_addr=client, server_addr=server, client_port=next(_ports))
    t.engine = engine
    t.s.port = port
    return t


def refusal(decision: object) -> LimitRefused:
    (event, *_) = decision.events  # type: ignore[attr-defined]
    assert isinstance(event, LimitRefused), decision
    return event


class TestTable:
    def test_a_full_table_drops_new_syns_and_a_retry_gets_in_once_room_is_back(self) -> None:
        e = policy("[timeouts]\nsyn_sent = 5\n[limits]\nmax_flows = 2")
        a, b, c = conn(e), conn(e), conn(e)
        a.handshake(at=0.0)
        b.client("S", at=0.0)
        d = c.client("S", at=1.0)
        assert d.verdict == Verdict.DROP and d.reason is Reason.LIMIT and d.inject == ()
        got = refusal(d)
        assert (got.limit, got.value, got.count, got.counted, got.action) == (
            "max_flows",
            2,
            2,
            "table",
            "drop",
        )
        assert got.limits == "policy" and got.rule == "default"
        assert len(e) == 2
        c.advance(5.0)  # b's SYN_SENT timer runs out: room for the retransmitted SYN
        assert c.client("S", at=5.5).reason is Reason.NEW_FLOW

    def test_reset_answers_the_syn_so_connect_is_refused(self) -> None:
        e = policy('[limits]\nmax_flows = 1\non_full = "reset"')
        conn(e).client("S", at=0.0)
        c = conn(e)
        d = c.client("S", at=0.1)
        assert d.verdict == Verdict.DROP
        (rst,) = d.inject
        seg = pk.parse(rst)
        assert isinstance(seg, pk.Segment)
        assert seg.flags == pk.TCP_RST | pk.TCP_ACK and seg.ack == c.c.isn + 1  # type: ignore[operator]
        assert [type(x) for x in d.events] == [LimitRefused, ResetSent]
        assert d.events[1].cause == "limit"  # type: ignore[attr-defined]

    def test_early_drop_evicts_a_flow_not_yet_assured_to_make_room(self) -> None:
        # One bucket: early_drop() always finds the half-open flow.
        e = policy("[limits]\nmax_flows = 1\nearly_drop = true")
        conn(e).client("S", at=0.0)
        d = conn(e).client("S", at=0.1)
        assert d.reason is Reason.NEW_FLOW
        assert isinstance(d.events[0], FlowDeleted)
        assert d.events[0].reason == "early drop: the table is full"
        assert len(e) == 1

    def test_early_drop_never_evicts_an_assured_flow(self) -> None:
        e = policy("[limits]\nmax_flows = 1\nearly_drop = true")
        a = conn(e)
        a.handshake(at=0.0)
        a.server("PA", 10, at=0.1)  # a reply in ESTABLISHED: ASSURED
        d = conn(e).client("S", at=0.2)
        assert d.verdict == Verdict.DROP and refusal(d).limit == "max_flows"
        assert a.client("PA", 5, at=0.3).reason is Reason.IN_STATE

    def test_a_closed_flow_gives_its_place_back(self) -> None:
        e = policy("[limits]\nmax_flows = 1")
        a = conn(e)
        a.client("S", at=0.0)
        a.server("R", seq=0, ack=a.c.nxt, at=0.1)  # refused: gone at once
        assert len(e) == 0
        assert conn(e).client("S", at=0.2).reason is Reason.NEW_FLOW


class TestPerClientAndServer:
    def test_one_client_over_its_cap_leaves_another_unaffected(self) -> None:
        e = policy("[limits]\nper_client = 2")
        for _ in range(2):
            conn(e, client="10.0.1.2").handshake(at=0.0)
        d = conn(e, client="10.0.1.2").client("S", at=0.1)
        got = refusal(d)
        assert (got.limit, got.counted) == ("per_client", "client 10.0.1.2")
        assert conn(e, client="10.0.1.3").client("S", at=0.1).reason is Reason.NEW_FLOW

    def test_per_server_counts_address_and_port(self) -> None:
        e = policy("[limits]\nper_server = 1")
        conn(e, port=80).client("S", at=0.0)
        assert refusal(conn(e, port=80).client("S", at=0.1)).counted == "server 10.0.2.2:80"
        assert conn(e, port=443).client("S", at=0.1).reason is Reason.NEW_FLOW

    def test_a_rules_limits_count_its_flows_only_and_the_policys_count_all(self) -> None:
        e = policy(
            "[limits]\nmax_flows = 3\n"
            '[[rule]]\nname = "web"\nmatch = { dst_port = 80 }\nlimits = { per_client = 1 }'
        )
        conn(e, port=80).client("S", at=0.0)
        got = refusal(conn(e, port=80).client("S", at=0.1))
        assert (got.limit, got.limits, got.rule) == ("per_client", "rule web", "web")
        conn(e, port=22).client("S", at=0.1)
        conn(e, port=22).client("S", at=0.1)
        got = refusal(conn(e, port=22).client("S", at=0.1))
        assert (got.limit, got.limits, got.rule) == ("max_flows", "policy", "default")


class TestEmbryonic:
    def test_handshakes_in_progress_are_capped_and_completed_ones_free_their_place(self) -> None:
        e = policy('[limits]\nembryonic = 1\non_embryonic = "reset"')
        a = conn(e)
        a.client("S", at=0.0)
        a.server("SA", at=0.0)
        d = conn(e).client("S", at=0.1)
        assert refusal(d).limit == "embryonic" and len(d.inject) == 1
        a.client("A", at=0.2)  # ESTABLISHED: no longer a handshake
        assert conn(e).client("S", at=0.3).reason is Reason.NEW_FLOW

    def test_per_client_embryonic(self) -> None:
        e = policy("[limits]\nper_client_embryonic = 1")
        conn(e, client="10.0.1.2").client("S", at=0.0)
        assert refusal(conn(e, client="10.0.1.2").client("S", at=0.1)).limit == (
            "per_client_embryonic"
        )
        assert conn(e, client="10.0.1.3").client("S", at=0.1).reason is Reason.NEW_FLOW

    def test_a_picked_up_flow_is_no_handshake(self) -> None:
        e = policy("[out_of_state]\npickup = true\n[limits]\nembryonic = 1")
        conn(e).client("S", at=0.0)
        assert conn(e).client("A", at=0.1).reason is Reason.NEW_FLOW


class TestNatPools:
    def test_64_ports_to_one_destination_refuse_the_65th_and_others_still_open(self) -> None:
        e = policy("[limits]\nports_per_destination = 64")
        outcomes = [conn(e).client("S", at=0.0).reason for _ in range(100)]
        assert outcomes.count(Reason.NEW_FLOW) == 64 and outcomes.count(Reason.LIMIT) == 36
        assert conn(e, server="10.0.2.3").client("S", at=0.0).reason is Reason.NEW_FLOW

    def test_a_shared_pool_counts_every_client(self) -> None:
        e = policy('[limits]\nports_per_client = 2\nnat_pool = "shared"')
        conn(e, client="10.0.1.2").client("S", at=0.0)
        conn(e, client="10.0.1.3").client("S", at=0.0)
        got = refusal(conn(e, client="10.0.1.4").client("S", at=0.0))
        assert (got.limit, got.counted) == ("ports_per_client", "the shared pool")

    def test_a_port_stays_in_use_for_port_reuse_after_its_flow_is_gone(self) -> None:
        e = policy(
            "[timeouts]\ntime_wait = 1\n"
            '[limits]\nports_per_client = 1\nport_reuse = "30s"\non_exhausted = "reset"'
        )
        a = conn(e)
        a.handshake(at=0.0)
        for send, flags in ((a.client, "FA"), (a.server, "FA"), (a.client, "A")):
            send(flags, at=0.1)
        a.advance(1.1)  # TIME_WAIT over: the flow is gone, its port is not
        assert len(e) == 0
        d = conn(e).client("S", at=10.0)
        assert refusal(d).limit == "ports_per_client" and len(d.inject) == 1
        assert conn(e).client("S", at=31.2).reason is Reason.NEW_FLOW


class TestFloodsAndReload:
    def test_refusals_past_the_answer_rate_are_summed_up(self) -> None:
        e = policy(
            '[out_of_state]\nrate_per_source = 2\n[limits]\nmax_flows = 1\non_full = "reset"'
        )
        conn(e).client("S", at=0.0)
        decisions = [conn(e).client("S", at=0.5) for _ in range(10)]
        assert sum(len(d.inject) for d in decisions) == 2
        assert all(d.verdict == Verdict.DROP for d in decisions)
        summary = [x for x in conn(e).advance(2.0).events if isinstance(x, LimitSummary)]
        assert [(s.packets, s.resets_withheld, s.limit) for s in summary] == [(8, 8, "max_flows")]

    def test_a_syn_flood_over_the_table_leaves_established_flows_working(self) -> None:
        e = policy("[limits]\nmax_flows = 10\nearly_drop = true")
        live = conn(e)
        live.handshake(at=0.0)
        live.server("PA", 1, at=0.0)
        for i in range(500):
            conn(e, client=f"10.9.{i // 250}.{i % 250 + 1}").client("S", at=1.0)
        assert len(e) == 10
        assert live.client("PA", 5, at=2.0).reason is Reason.IN_STATE

    def test_reload_recounts_the_flows_under_the_new_limits(self) -> None:
        e = policy("[limits]\nper_client = 5")
        for _ in range(3):
            conn(e).client("S", at=0.0)
        e.reload(loads_policy("[limits]\nper_client = 3"))
        assert refusal(conn(e).client("S", at=0.1)).count == 3
        e.reload(loads_policy(""))
        assert conn(e).client("S", at=0.2).reason is Reason.NEW_FLOW
