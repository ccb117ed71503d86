"""Property tests: no packet sequence crashes the core, escapes the table, or outlives its timer."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fwemu.core import packet as pk
from fwemu.core.decision import Verdict
from fwemu.core.engine import Engine
from fwemu.core.states import PHASE_OF
from fwemu.policy.model import ExpireAction, OutOfStateAction

from .trace import Trace, make_policy

REAL_STATES = {s.name for s in PHASE_OF}
FLAGS = ["S", "SA", "A", "PA", "FA", "R", "RA", "F", "", "SF", "SR", "FPA", "UA"]

ops = st.lists(
    st.tuples(
        st.sampled_from(["client", "server"]),
        st.sampled_from(FLAGS),
        st.integers(0, 3),  # payload length
        st.floats(0, 30, allow_nan=False),  # time step
        st.one_of(st.none(), st.integers(0, 2**32 - 1)),  # occasionally a wild seq
    ),
    max_size=40,
)
policies = st.builds(
    make_policy,
    oos=st.sampled_from(list(OutOfStateAction)),
    from_client=st.one_of(st.none(), st.sampled_from(list(OutOfStateAction))),
    pickup=st.booleans(),
    default_action=st.sampled_from(list(ExpireAction)),
    syn_sent=st.floats(0, 50),
    syn_recv=st.floats(0, 50),
    established=st.floats(0, 100),
    fin_wait=st.floats(0, 50),
    close_wait=st.floats(0, 50),
    last_ack=st.floats(0, 50),
    time_wait=st.floats(0, 50),
    close=st.floats(0, 50),
)


@settings(max_examples=300, deadline=None)
@given(policies, ops, st.booleans())
def test_any_conversation_is_handled_within_the_table(policy, steps, v6) -> None:  # type: ignore[no-untyped-def]
    t = Trace(policy, v6=v6)
    now = 0.0
    for side, flags, length, dt, seq in steps:
        now += dt
        fx = t.advance(now)
        for packet in fx.inject:
            assert_rst(packet)
        send = t.client if side == "client" else t.server
        decision = send(flags, length, at=now, seq=seq)
        assert decision.verdict in (Verdict.ACCEPT, Verdict.DROP)
        for packet in decision.inject:
            assert_rst(packet)
        for info in t.engine.flows(now=now):
            assert info.state in REAL_STATES
            assert info.expires_in is None or info.expires_in >= 0, "a flow outlived its timer"
    longest = 100.0
    t.advance(now + longest)
    assert t.engine.flows(now=now + longest) == [], "a flow leaked past every timeout"


def assert_rst(packet: bytes) -> None:
    seg = pk.parse(packet)
    assert isinstance(seg, pk.Segment), seg
    assert seg.flags & pk.TCP_RST and seg.payload_len == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.floats(0, 1e6, allow_nan=False))
def test_garbage_is_a_verdict_not_an_exception(data: bytes, now: float) -> None:
    decision = Engine(make_policy()).handle_packet(data, now=now)
    assert decision.verdict in (Verdict.ACCEPT, Verdict.DROP)
