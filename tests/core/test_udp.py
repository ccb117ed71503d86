"""UDP flows through the engine, over explicit time: the kernel's UNREPLIED / REPLIED / STREAM
(nf_conntrack_udp_packet()), silent expiry, and what late datagrams meet."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fwemu.core import packet as pk
from fwemu.core.decision import Decision, Reason, Verdict
from fwemu.core.engine import Engine
from fwemu.policy.loader import loads_policy
from fwemu.policy.model import ExpireAction, Policy

logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.layers.inet import ICMP, IP, TCP, UDP, UDPerror  # noqa: E402
from scapy.layers.inet6 import ICMPv6DestUnreach, IPv6  # noqa: E402

CLIENT4, SERVER4 = "10.0.0.1", "10.0.1.1"
CLIENT6, SERVER6 = "fd00::1", "fd00:1::1"


def policy(text: str = "") -> Policy:
    return loads_policy(text)


class Peers:
    """A client and a server exchanging datagrams through one engine."""

    def __init__(self, engine: Engine, v6: bool = False, sport: int = 40000, dport: int = 53):
        self.engine = engine
        self.ip = IPv6 if v6 else IP
        self.client, self.server = (CLIENT6, SERVER6) if v6 else (CLIENT4, SERVER4)
        self.sport, self.dport = sport, dport

    def datagram(self, from_client: bool, payload: bytes = b"q") -> bytes:
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        sport, dport = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        return bytes(self.ip(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload)

    def client_sends(self, at: float, payload: bytes = b"q") -> Decision:
        return self.engine.handle_packet(self.datagram(True, payload), now=at)

    def server_sends(self, at: float, payload: bytes = b"a") -> Decision:
        return self.engine.handle_packet(self.datagram(False, payload), now=at)

    def state(self, at: float) -> str | None:
        flows = self.engine.flows(now=at)
        return flows[0].state if flows else None

    def deadline(self) -> float | None:
        """When the flow's timer runs out (next_deadline() may be earlier: it is re-filed
        lazily, and never late)."""
        [info] = self.engine.flows(now=0.0)
        return None if info.expires_in is None else info.expires_in


def kinds(decision: Decision) -> list[str]:
    return [event.kind for event in decision.events]


def expire_until(engine: Engine, now: float) -> list[dict[str, object]]:
    """Run the timers up to `now`: the events, as dicts."""
    events = []
    while (deadline := engine.next_deadline()) is not None and deadline <= now:
        fx = engine.handle_timer(now=deadline)
        assert fx.inject == ()  # a UDP flow's expiry sends nothing
        events += [e.to_dict() for e in fx.events]
    return events


def test_a_first_datagram_opens_an_unreplied_flow_on_the_udp_timer() -> None:
    peers = Peers(Engine(policy()))
    out = peers.client_sends(at=0.0)
    assert (out.verdict, out.reason, kinds(out)) == (Verdict.ACCEPT, Reason.NEW_FLOW, ["new"])
    new = out.events[0].to_dict()
    assert new["state"] == "UNREPLIED"
    assert new["flow"] == {
        "src": CLIENT4,
        "sport": 40000,
        "dst": SERVER4,
        "dport": 53,
        "proto": "udp",
    }
    [info] = peers.engine.flows(now=1.0)
    assert (info.state, info.phase, info.expires_in) == ("UNREPLIED", "udp", 29.0)
    assert peers.deadline() == 30.0


def test_a_reply_makes_it_replied_but_keeps_the_udp_timer() -> None:
    peers = Peers(Engine(policy()))
    peers.client_sends(at=0.0)
    out = peers.server_sends(at=0.5)
    assert [e.to_dict()["state"] for e in out.events] == ["REPLIED"]
    assert peers.deadline() == 30.5


def test_a_dns_pair_within_the_grace_stays_on_the_udp_timer() -> None:
    # The A and AAAA queries and answers of one lookup, within 2 s: not a stream (commit
    # d535c8a69c19), so a lookup's flow is gone 30 s later, not 120 s.
    peers = Peers(Engine(policy()))
    peers.client_sends(at=0.0)
    peers.client_sends(at=0.01)
    peers.server_sends(at=0.02)
    out = peers.server_sends(at=1.9)
    assert kinds(out) == []
    assert peers.state(2.0) == "REPLIED"
    assert peers.deadline() == pytest.approx(31.9)


def test_a_datagram_after_the_grace_makes_a_stream_on_the_stream_timer() -> None:
    peers = Peers(Engine(policy()))
    peers.client_sends(at=0.0)
    peers.server_sends(at=0.5)
    out = peers.client_sends(at=2.5)
    [event] = out.events
    assert (event.to_dict()["state"], event.to_dict()["phase"]) == ("STREAM", "udp_stream")
    assert peers.deadline() == 122.5
    assert kinds(peers.client_sends(at=3.0)) == []  # assured once
    assert peers.deadline() == 123.0


def test_one_way_traffic_never_becomes_a_stream() -> None:
    peers = Peers(Engine(policy()))
    for at in (0.0, 10.0, 20.0, 35.0):
        peers.client_sends(at=at)
    assert peers.state(36.0) == "UNREPLIED"
    assert peers.deadline() == 65.0


@pytest.mark.parametrize(
    ("replies", "phase", "at"), [(False, "udp", 30.0), (True, "udp_stream", 123.0)]
)
def test_expiry_is_silent(replies: bool, phase: str, at: float) -> None:
    peers = Peers(Engine(policy('[on_expire]\ndefault = "reset-both"')))
    peers.client_sends(at=0.0)
    if replies:
        peers.server_sends(at=1.0)
        peers.client_sends(at=3.0)
    [expired] = expire_until(peers.engine, at)
    assert (expired["event"], expired["phase"], expired["action"]) == ("expire", phase, "silent")
    assert expired["ts"] == at
    assert len(peers.engine) == 0


def test_expire_by_hand_resets_nothing() -> None:
    peers = Peers(Engine(policy()))
    peers.client_sends(at=0.0)
    keys = peers.engine.keys()
    fx = peers.engine.expire(keys, now=1.0, action=ExpireAction.RESET_BOTH)
    assert fx.inject == ()
    assert (fx.events[0].to_dict()["action"], fx.events[0].to_dict()["forced"]) == ("silent", True)


def test_expire_by_hand_without_an_action_says_it_was_forced() -> None:
    peers = Peers(Engine(policy()))
    peers.client_sends(at=0.0)
    [expired] = peers.engine.expire(peers.engine.keys(), now=1.0).events
    assert (expired.to_dict()["forced"], expired.to_dict()["timeout"]) == (True, None)


def test_a_late_reply_is_dropped_and_the_clients_next_datagram_opens_a_new_flow() -> None:
    peers = Peers(Engine(policy()))
    peers.client_sends(at=0.0)
    expire_until(peers.engine, 30.0)
    late = peers.server_sends(at=31.0)
    assert (late.verdict, late.reason, late.inject) == (Verdict.DROP, Reason.OUT_OF_STATE, ())
    [oos] = [e.to_dict() for e in late.events]
    assert (oos["event"], oos["side"], oos["action"]) == ("out_of_state", "server", "drop")
    assert oos["expired_phase"] == "udp"
    again = peers.client_sends(at=32.0)
    assert (again.reason, kinds(again)) == (Reason.NEW_FLOW, ["new"])


@pytest.mark.parametrize("v6", [False, True])
def test_icmp_unreachable_answers_a_late_datagram(v6: bool) -> None:
    text = '[out_of_state]\nudp_from_server = "icmp-unreachable"'
    peers = Peers(Engine(policy(text)), v6=v6)
    peers.client_sends(at=0.0)
    expire_until(peers.engine, 30.0)
    late = peers.server_sends(at=31.0, payload=b"late answer")
    assert late.verdict == Verdict.DROP
    assert kinds(late) == ["out_of_state", "unreachable"]
    assert late.events[1].to_dict()["to"] == "server"
    [icmp] = late.inject
    # A checksum is right when the words it covers, itself included, sum to zero.
    if v6:
        packet = IPv6(icmp)
        error = packet[ICMPv6DestUnreach]
        assert (error.type, error.code) == (1, 4)
        pseudo = icmp[8:40] + (len(icmp) - 40).to_bytes(4) + bytes((0, 0, 0, 58))
        assert pk.internet_checksum(pseudo + icmp[40:]) == 0
    else:
        packet = IP(icmp)
        error = packet[ICMP]
        assert (error.type, error.code, packet[UDPerror].sport) == (3, 3, 53)
        assert pk.internet_checksum(icmp[:20]) == pk.internet_checksum(icmp[20:]) == 0
    # From the address the datagram was meant for, to its sender, quoting it whole.
    assert (packet.src, packet.dst) == (peers.client, peers.server)
    assert peers.datagram(False, b"late answer") in icmp


def test_a_late_client_datagram_can_be_refused_too() -> None:
    text = '[out_of_state]\nudp_from_client = "drop"'
    peers = Peers(Engine(policy(text)))
    peers.client_sends(at=0.0)
    expire_until(peers.engine, 30.0)
    late = peers.client_sends(at=31.0)
    assert (late.verdict, late.events[0].to_dict()["side"]) == (Verdict.DROP, "client")


def test_new_on_the_server_side_tracks_the_late_reply_as_linux_does() -> None:
    text = '[out_of_state]\nudp_from_server = "new"'
    peers = Peers(Engine(policy(text)))
    peers.client_sends(at=0.0)
    expire_until(peers.engine, 30.0)
    late = peers.server_sends(at=31.0)
    assert late.reason == Reason.NEW_FLOW
    assert late.events[0].to_dict()["flow"]["src"] == SERVER4  # the server is its client now


def test_udp_and_tcp_between_the_same_ports_are_two_flows() -> None:
    engine = Engine(policy())
    Peers(engine).client_sends(at=0.0)
    syn = bytes(IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=53, flags="S"))
    assert engine.handle_packet(syn, now=0.1).reason == Reason.NEW_FLOW
    assert sorted(info.flow.proto for info in engine.flows(now=0.2)) == ["tcp", "udp"]


def test_a_rule_for_udp_leaves_tcp_to_the_default() -> None:
    text = """
[[rule]]
name = "dns"
match = { proto = "udp", dst_port = 53 }
timeouts = { udp = "5s" }
"""
    engine = Engine(policy(text))
    Peers(engine).client_sends(at=0.0)
    syn = bytes(IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=53, flags="S"))
    engine.handle_packet(syn, now=0.0)
    rules = {info.flow.proto: (info.rule, info.expires_in) for info in engine.flows(now=0.0)}
    assert rules == {"udp": ("dns", 5.0), "tcp": ("default", 120.0)}


def test_the_table_limit_counts_udp_flows() -> None:
    text = '[limits]\nmax_flows = 1\non_full = "reset"'
    engine = Engine(policy(text))
    Peers(engine).client_sends(at=0.0)
    refused = Peers(engine, sport=40001).client_sends(at=0.1)
    assert (refused.verdict, refused.reason) == (Verdict.DROP, Reason.LIMIT)
    assert kinds(refused) == ["limit", "unreachable"]
    assert IP(refused.inject[0])[ICMP].type == 3


def test_nat_ports_are_pooled_per_protocol() -> None:
    # NATs keep TCP's and UDP's ports apart (Azure NAT gateway, AWS NAT gateway per protocol).
    engine = Engine(policy("[limits]\nports_per_client = 1"))
    syn = bytes(IP(src=CLIENT4, dst=SERVER4) / TCP(sport=40000, dport=53, flags="S"))
    assert engine.handle_packet(syn, now=0.0).reason == Reason.NEW_FLOW
    assert Peers(engine).client_sends(at=0.0).reason == Reason.NEW_FLOW
    refused = Peers(engine, sport=40001).client_sends(at=0.1)
    assert refused.reason == Reason.LIMIT
    assert refused.events[0].to_dict()["counted"] == f"client {CLIENT4} (udp)"
    [usage] = engine.limits(now=0.2)
    assert sorted(usage.counts["ports_per_client"]) == [(CLIENT4, 1), (f"{CLIENT4} (udp)", 1)]


def test_reload_keeps_udp_flows_and_retimes_them() -> None:
    engine = Engine(policy())
    peers = Peers(engine)
    peers.client_sends(at=0.0)
    assert engine.reload(policy("[timeouts]\nudp = '10s'")) == 1
    assert peers.deadline() == 10.0
    assert peers.state(1.0) == "UNREPLIED"


def test_a_timer_set_by_hand_lasts_until_the_next_datagram() -> None:
    engine = Engine(policy())
    peers = Peers(engine)
    peers.client_sends(at=0.0)
    engine.retime(engine.keys(), now=1.0, seconds=5.0)
    assert peers.deadline() == 6.0
    peers.client_sends(at=2.0)
    assert peers.deadline() == 32.0


def test_a_lifetime_ends_a_udp_flow_silently() -> None:
    text = '[timeouts]\nlifetime = "10s"\n[on_expire]\nlifetime = "reset-both"'
    engine = Engine(policy(text))
    peers = Peers(engine)
    for at in range(10):
        peers.client_sends(at=float(at))
    [expired] = expire_until(engine, 10.0)
    assert (expired["capped_by"], expired["action"]) == ("lifetime", "silent")


def test_speed_scales_the_grace_with_the_timers() -> None:
    engine = Engine(policy().scaled(100))
    peers = Peers(engine)
    peers.client_sends(at=0.0)
    peers.server_sends(at=0.01)
    peers.client_sends(at=0.03)  # past 2 s / 100
    assert peers.state(0.04) == "STREAM"
    assert peers.deadline() == pytest.approx(0.03 + 1.2)


def test_a_bad_udp_length_is_not_tracked() -> None:
    engine = Engine(policy())
    data = bytearray(Peers(engine).datagram(True))
    data[24:26] = (100).to_bytes(2)
    assert engine.handle_packet(bytes(data), now=0.0).reason == Reason.UNPARSEABLE
    assert len(engine) == 0


def test_other_protocols_pass_untracked() -> None:
    engine = Engine(policy())
    out = engine.handle_packet(bytes(IP(src=CLIENT4, dst=SERVER4) / ICMP()), now=0.0)
    assert (out.verdict, out.reason, len(engine)) == (Verdict.ACCEPT, Reason.OTHER_PROTOCOL, 0)


def test_datagram_fields() -> None:
    data = bytes(IPv6(src=CLIENT6, dst=SERVER6) / UDP(sport=5000, dport=443) / (b"x" * 1200))
    dg = pk.parse(data[:128])  # a copy cut by the queue's copy range
    assert isinstance(dg, pk.Datagram)
    assert (dg.version, dg.sport, dg.dport, dg.payload_len) == (6, 5000, 443, 1200)
    assert pk.protocol_of(dg.key) == 17
    reply = pk.parse(bytes(IPv6(src=SERVER6, dst=CLIENT6) / UDP(sport=443, dport=5000)))
    assert isinstance(reply, pk.Datagram)
    assert (reply.key, reply.forward) == (dg.key, not dg.forward)


def test_the_policy_defaults_are_linuxs() -> None:
    timeouts = policy().default.timeouts
    assert dataclasses.astuple(timeouts)[-3:] == (30.0, 120.0, 2.0)
