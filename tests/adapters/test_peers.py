"""Other fwemus in the namespace: whose rules overlap, who holds a queue (by pid, and by policy
when it is a fwemu: see tests/e2e/test_shared_netns.py)."""

from __future__ import annotations

import ipaddress
import os
from contextlib import ExitStack

import pytest
from netfilterqueue import Packet

from fwemu.adapters import iptables, nfqueue, peers
from fwemu.adapters.iptables import Capture, Found
from fwemu.adapters.nfqueue import QueueError
from fwemu.errors import FwemuError
from fwemu.lab import call_in_netns
from fwemu.policy.model import Protocol

CLIENTS = ipaddress.ip_network("10.1.0.0/16")
SERVERS = ipaddress.ip_network("10.2.0.0/16")
ELSEWHERE = ipaddress.ip_network("192.0.2.0/24")
V6 = ipaddress.ip_network("fd00:1::/64")


BOTH = (Protocol.TCP, Protocol.UDP)
TCP, UDP = (Protocol.TCP,), (Protocol.UDP,)


def found(
    *matches: tuple[iptables.Family, tuple[str, ...]], protocols: tuple[str, ...] = BOTH
) -> Found:
    return Found(0, frozenset({0}), frozenset(protocols), matches)


def test_rules_matching_all_flows_overlap_any_capture() -> None:
    everything = found((4, ()), (6, ()))
    assert everything.shared(Capture()) == BOTH
    assert everything.shared(Capture(in_interfaces=("cli0",), sources=(ELSEWHERE,))) == BOTH


def test_one_protocol_overlaps_only_a_capture_of_that_protocol() -> None:
    udp = found((4, ()), (6, ()), protocols=("udp",))
    assert udp.shared(Capture(protocols=TCP)) == ()
    assert udp.shared(Capture(protocols=UDP)) == UDP
    assert udp.shared(Capture()) == UDP  # what the refusal names
    assert found((4, ()), protocols=("tcp",)).shared(Capture()) == TCP


def test_a_source_and_a_destination_overlap_whatever_their_networks() -> None:
    # Some packet goes from one network to the other.
    rules = found((4, ("-s", "10.1.0.0/16")), (4, ("-d", "10.1.0.0/16")))
    assert rules.shared(Capture(sources=(ELSEWHERE,))) == BOTH


def test_flows_between_other_networks_do_not_overlap() -> None:
    rules = found(
        (4, ("-s", "10.1.0.0/16", "-d", "10.2.0.0/16")),
        (4, ("-s", "10.2.0.0/16", "-d", "10.1.0.0/16")),
    )
    assert rules.shared(Capture(sources=(ELSEWHERE,), destinations=(SERVERS,))) == ()
    assert rules.shared(Capture(sources=(ipaddress.ip_network("10.1.2.0/24"),))) == BOTH


def test_families_are_compared_apart() -> None:
    only_v6 = found((6, ("-s", "fd00:1::/64")), (6, ("-d", "fd00:1::/64")))
    assert only_v6.shared(Capture(sources=(CLIENTS,))) == ()  # IPv4 only: no IPv6 rules at all
    assert only_v6.shared(Capture(sources=(V6, CLIENTS))) == BOTH


@pytest.mark.parametrize(
    ("theirs", "ours", "overlap"),
    [
        ("cli0", "cli0", True),
        ("cli0", "cli1", False),
        ("cli+", "cli1", True),
        ("cli1", "cli+", True),
        ("cli+", "cl+", True),
        ("cli+", "srv+", False),
        ("cli+", "cl", False),  # "cl" itself does not start with "cli"
    ],
)
def test_interface_names_overlap_as_iptables_matches_them(
    theirs: str, ours: str, overlap: bool
) -> None:
    # In and out on the same interface: a flow that only passes it, both ways (one rule).
    rules = found((4, ("-i", theirs, "-o", theirs)))
    shared = rules.shared(Capture(in_interfaces=(ours,), out_interfaces=(ours,)))
    assert shared == (BOTH if overlap else ())


def test_flows_in_on_one_interface_overlap_those_out_on_another() -> None:
    rules = found((4, ("-i", "cli0")), (4, ("-o", "cli0")))
    assert rules.shared(Capture(in_interfaces=("srv0",))) == BOTH  # in cli0, out srv0


@pytest.mark.parametrize("protocols", [BOTH, UDP], ids=["both", "udp"])
def test_found_rules_read_back_what_install_added(
    netns: str, protocols: tuple[Protocol, ...]
) -> None:
    capture = Capture(
        in_interfaces=("cli0",), sources=(CLIENTS,), destinations=(SERVERS,), protocols=protocols
    )
    call_in_netns(netns, lambda: iptables.install(3, capture, 2))
    try:
        (rules,) = call_in_netns(netns, iptables.found_rules)
    finally:
        call_in_netns(netns, lambda: iptables.remove(3))
    assert (rules.queue, rules.queues, rules.protocols) == (3, frozenset({3, 4}), set(protocols))
    assert rules.matches == tuple(
        (4, tuple(_kernel_order(selector))) for selector in capture.selectors(4)
    )
    assert rules.shared(capture) == protocols
    assert rules.shared(Capture(protocols=TCP)) == (() if protocols == UDP else TCP)
    assert call_in_netns(netns, iptables.found_rules) == []


def _kernel_order(selector: tuple[str, ...]) -> list[str]:
    """`iptables -S` prints -s and -d (as networks) before -i and -o."""
    flags = dict(zip(selector[::2], selector[1::2], strict=True))
    return [
        word for flag in ("-s", "-d", "-i", "-o") if flag in flags for word in (flag, flags[flag])
    ]


def test_rules_whose_queue_nobody_holds_refuse_nothing(netns: str) -> None:
    """A killed fwemu's rules: --queue-bypass lets their packets through, so a new run's rules
    above them take nothing from anyone."""
    call_in_netns(netns, lambda: iptables.install(0, Capture()))
    try:
        call_in_netns(netns, lambda: peers.check_overlap(1, 1, Capture(), "here"))
    finally:
        call_in_netns(netns, lambda: iptables.remove(0))


def accept(packet: Packet) -> None:
    packet.accept()


def test_a_queue_holder_that_is_not_a_fwemu_is_named_by_its_pid(netns: str) -> None:
    with ExitStack() as stack:
        call_in_netns(netns, lambda: stack.enter_context(nfqueue.bound(4, accept, fail_open=True)))
        (peer,) = call_in_netns(netns, peers.running)
        with open("/proc/self/comm", encoding="utf-8") as f:
            comm = f.read().strip()
        assert (peer.queues, peer.pid, peer.command, peer.policy) == ((4,), os.getpid(), comm, None)
        assert peer.describe() == f"queue 4, pid {os.getpid()} ({comm})"
        with pytest.raises(QueueError) as refused:
            call_in_netns(netns, lambda: peers.ensure_free(4))
        assert str(refused.value) == (
            f"NFQUEUE 4 is already bound by another program (pid {os.getpid()} ({comm})); "
            "stop it or pick another queue with --queue"
        )
        call_in_netns(netns, lambda: peers.ensure_free(5))
    assert call_in_netns(netns, peers.running) == []


def test_a_live_run_of_one_protocol_refuses_only_a_capture_of_that_protocol(netns: str) -> None:
    """A run queueing UDP on queue 0: a TCP-only run beside it is welcome; one queueing both
    is told that the UDP flows are taken."""
    with ExitStack() as stack:
        call_in_netns(netns, lambda: stack.enter_context(nfqueue.bound(0, accept, fail_open=True)))
        # Removed in the namespace: the stack unwinds in this thread's own.
        call_in_netns(netns, lambda: iptables.install(0, Capture(protocols=UDP)))
        stack.callback(call_in_netns, netns, lambda: iptables.remove(0))
        call_in_netns(netns, lambda: peers.check_overlap(1, 1, Capture(protocols=TCP), "here"))
        with pytest.raises(FwemuError) as refused:
            call_in_netns(netns, lambda: peers.check_overlap(1, 1, Capture(), "here"))
        assert str(refused.value).startswith(
            f"another fwemu captures the same UDP flows in here (queue 0, pid {os.getpid()} "
        )
        assert str(refused.value).endswith(
            "stop it first, or capture other flows (--proto, --in-interface, --out-interface, "
            "--src, --dst)"
        )
