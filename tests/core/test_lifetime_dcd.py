"""The absolute lifetime and dead connection detection, as traces over explicit time."""

from __future__ import annotations

from fwemu.core import packet as pk
from fwemu.core.events import FlowExpired, ProbeSent, ResetSent
from fwemu.policy import loads_policy

from .trace import Trace

ASA_LIKE = """
[timeouts]
established = "1h"
half_closed = "10m"
max_retrans = "never"
unacknowledged = "never"
dcd = { interval = "15s", retries = 5 }
[on_expire]
established = "reset-both"
"""


def expired(events: tuple[object, ...]) -> FlowExpired:
    (event,) = [e for e in events if isinstance(e, FlowExpired)]
    return event


class TestLifetime:
    def test_an_active_connection_is_cut_at_its_lifetime(self) -> None:
        t = Trace(loads_policy('[timeouts]\nlifetime = "4h"\n[on_expire]\nlifetime = "reset-both"'))
        t.handshake(at=0.0)
        for minute in range(1, 240):
            t.client("PA", 10, at=minute * 60.0)
        assert t.advance(14399.0).events == ()
        fx = t.advance(14400.0)
        got = expired(fx.events)
        assert (got.capped_by, got.timeout, got.action, got.state) == (
            "lifetime",
            14400.0,
            "reset-both",
            "ESTABLISHED",
        )
        assert len(fx.inject) == 2 and [e.to for e in fx.events if isinstance(e, ResetSent)] == [
            "client",
            "server",
        ]
        assert t.engine.flows(now=14400.0) == []

    def test_the_idle_timer_still_runs_first_when_it_is_shorter(self) -> None:
        t = Trace(loads_policy('[timeouts]\nestablished = "1m"\nlifetime = "4h"'))
        t.handshake(at=0.0)
        assert expired(t.advance(60.0).events).capped_by is None

    def test_a_reload_measures_the_new_lifetime_from_the_flows_start(self) -> None:
        t = Trace(loads_policy('[timeouts]\nlifetime = "4h"'))
        t.handshake(at=0.0)
        t.engine.reload(loads_policy('[timeouts]\nlifetime = "1h"'))
        assert expired(t.advance(3600.0).events).capped_by == "lifetime"


class TestDeadConnectionDetection:
    def test_idle_timer_out_probes_both_ends_with_seq_one_before_their_next(self) -> None:
        t = Trace(loads_policy(ASA_LIKE))
        t.handshake(at=0.0)
        t.client("PA", 10, at=1.0)
        fx = t.advance(3601.0)
        (event,) = fx.events
        assert isinstance(event, ProbeSent) and (event.round, event.retries) == (1, 5)
        to_client, to_server = (pk.parse(p) for p in fx.inject)
        assert isinstance(to_client, pk.Segment) and isinstance(to_server, pk.Segment)
        # As from the server to the client: seq the server's next - 1, ack the client's next.
        assert (to_client.seq, to_client.ack, to_client.flags) == (5000, 1011, pk.TCP_ACK)
        assert (to_server.seq, to_server.ack) == (1010, 5001)
        assert t.engine.flows(now=3601.0)[0].state == "ESTABLISHED"

    def test_both_ends_answering_restarts_the_idle_timer(self) -> None:
        t = Trace(loads_policy(ASA_LIKE))
        t.handshake(at=0.0)
        t.advance(3600.0)
        t.client("A", at=3600.1)  # the answers: a duplicate ACK from each end
        assert t.deadline(3600.1) == 3615.0  # one answer is not enough: the next probe
        t.server("A", at=3600.2)
        assert t.deadline(3600.2) == 3600.2 + 3600
        assert t.advance(3615.0).events == ()

    def test_an_end_that_never_answers_gets_the_expiry_action_after_the_retries(self) -> None:
        t = Trace(loads_policy(ASA_LIKE))
        t.handshake(at=0.0)
        rounds = []
        for k in range(5):
            fx = t.advance(3600.0 + 15 * k)
            rounds += [e.round for e in fx.events if isinstance(e, ProbeSent)]
            t.client("A", at=3600.5 + 15 * k)  # only the client answers
        fx = t.advance(3600.0 + 75)
        got = expired(fx.events)
        assert rounds == [1, 2, 3, 4, 5]
        assert (got.capped_by, got.silent, got.action) == ("dcd", "server", "reset-both")
        assert len(fx.inject) == 2

    def test_half_closed_flows_are_exempt(self) -> None:
        t = Trace(loads_policy(ASA_LIKE))
        t.handshake(at=0.0)
        t.client("FA", at=1.0)
        t.server("A", at=1.0)
        fx = t.advance(601.0)
        assert expired(fx.events).phase == "half_closed" and not fx.inject

    def test_without_dcd_the_idle_timer_expires_at_once(self) -> None:
        t = Trace(loads_policy(ASA_LIKE + "[[rule]]\nname = 'x'\nmatch = {}\ntimeouts.dcd = false"))
        t.handshake(at=0.0)
        assert expired(t.advance(3600.0).events).capped_by is None
