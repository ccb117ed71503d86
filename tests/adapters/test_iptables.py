"""fwemu's iptables rules: exactly what is added, exactly what is removed, nothing else touched."""

from __future__ import annotations

import ipaddress

import pytest

from fwemu.adapters import iptables
from fwemu.adapters.iptables import Capture, IptablesError
from fwemu.lab import call_in_netns
from fwemu.policy.model import Protocol

from .nfq_lab import in_netns, ruleset

V4 = ipaddress.ip_network("10.1.0.0/16")
V6 = ipaddress.ip_network("fd00:1::/64")


def test_no_selector_captures_all_tcp_and_udp_of_both_families() -> None:
    assert Capture().selectors(4) == ((),)
    assert Capture().selectors(6) == ((),)
    assert Capture().protocols == (Protocol.TCP, Protocol.UDP)
    assert Capture().describe() == "all forwarded TCP and UDP"


def test_each_protocol_jumps_to_the_one_chain_with_its_own_rule() -> None:
    comment = ("-m", "comment", "--comment", "fwemu:q2")
    assert iptables.jump_rule(2, Protocol.TCP) == ("-p", "tcp", *comment, "-j", "FWEMU-Q2")
    assert iptables.jump_rule(2, Protocol.UDP) == ("-p", "udp", *comment, "-j", "FWEMU-Q2")


def test_the_capture_says_which_protocols_it_queues() -> None:
    udp = Capture(in_interfaces=("cli0",), protocols=(Protocol.UDP,))
    assert udp.describe() == "UDP flows of in cli0, both directions"
    assert Capture(protocols=(Protocol.TCP,)).describe() == "all forwarded TCP"


def test_selectors_multiply_and_addresses_stay_in_their_family() -> None:
    capture = Capture(in_interfaces=("eth0", "eth1"), sources=(V4, V6))
    assert capture.selectors(4) == (
        ("-i", "eth0", "-s", "10.1.0.0/16"),
        ("-i", "eth1", "-s", "10.1.0.0/16"),
        ("-o", "eth0", "-d", "10.1.0.0/16"),
        ("-o", "eth1", "-d", "10.1.0.0/16"),
    )
    assert capture.selectors(6) == (
        ("-i", "eth0", "-s", "fd00:1::/64"),
        ("-i", "eth1", "-s", "fd00:1::/64"),
        ("-o", "eth0", "-d", "fd00:1::/64"),
        ("-o", "eth1", "-d", "fd00:1::/64"),
    )


def test_each_selector_also_queues_the_reply_direction_once() -> None:
    capture = Capture(("cli0",), ("srv0",), (V4,), (ipaddress.ip_network("10.2.0.0/16"),))
    assert capture.selectors(4) == (
        ("-i", "cli0", "-o", "srv0", "-s", "10.1.0.0/16", "-d", "10.2.0.0/16"),
        ("-i", "srv0", "-o", "cli0", "-s", "10.2.0.0/16", "-d", "10.1.0.0/16"),
    )
    both_ways = Capture(in_interfaces=("br0",), out_interfaces=("br0",))
    assert both_ways.selectors(4) == (("-i", "br0", "-o", "br0"),)


def test_addresses_of_one_family_capture_nothing_of_the_other() -> None:
    capture = Capture(destinations=(V4,), out_interfaces=("srv0",))
    assert capture.selectors(4) == (
        ("-o", "srv0", "-d", "10.1.0.0/16"),
        ("-i", "srv0", "-s", "10.1.0.0/16"),
    )
    assert capture.selectors(6) == ()


def add_unrelated_rules(namespace: str) -> tuple[str, str]:
    for binary, addr in (("iptables", "192.0.2.1"), ("ip6tables", "2001:db8::1")):
        in_netns(namespace, binary, "-N", "MINE")
        in_netns(namespace, binary, "-A", "MINE", "-j", "RETURN")
        in_netns(namespace, binary, "-A", "FORWARD", "-s", addr, "-j", "ACCEPT")
    return ruleset(namespace)


def test_install_puts_the_jump_first_and_remove_restores_the_ruleset(netns: str) -> None:
    before = add_unrelated_rules(netns)
    capture = Capture(in_interfaces=("cli0",), sources=(V4,))
    families = call_in_netns(netns, lambda: iptables.install(3, capture))
    assert families == (4,)

    v4, v6 = ruleset(netns)
    assert v4.splitlines()[3:] == [
        "-N FWEMU-Q3",
        "-N MINE",
        '-A FORWARD -p tcp -m comment --comment "fwemu:q3" -j FWEMU-Q3',
        '-A FORWARD -p udp -m comment --comment "fwemu:q3" -j FWEMU-Q3',
        "-A FORWARD -s 192.0.2.1/32 -j ACCEPT",
        "-A FWEMU-Q3 -s 10.1.0.0/16 -i cli0 -j NFQUEUE --queue-num 3 --queue-bypass",
        "-A FWEMU-Q3 -d 10.1.0.0/16 -o cli0 -j NFQUEUE --queue-num 3 --queue-bypass",
        "-A MINE -j RETURN",
    ]
    assert v6 == before[1]

    assert call_in_netns(netns, lambda: iptables.remove(3)) is True
    assert ruleset(netns) == before
    assert call_in_netns(netns, lambda: iptables.remove(3)) is False


def test_installed_removes_the_rules_when_the_block_raises(netns: str) -> None:
    before = ruleset(netns)

    def crash_inside() -> None:
        with iptables.installed(0, Capture()):
            assert "FWEMU-Q0" in "".join(ruleset(netns))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call_in_netns(netns, crash_inside)
    assert ruleset(netns) == before


def test_a_rejected_rule_leaves_nothing_installed(netns: str) -> None:
    before = add_unrelated_rules(netns)
    too_long = Capture(in_interfaces=("an-interface-name-too-long",))
    with pytest.raises(IptablesError, match="iptables -A FWEMU-Q0 -i an-interface-name-too-long"):
        call_in_netns(netns, lambda: iptables.install(0, too_long))
    assert ruleset(netns) == before


def test_a_stale_install_is_replaced_not_duplicated(netns: str) -> None:
    call_in_netns(netns, lambda: iptables.install(1, Capture()))
    call_in_netns(netns, lambda: iptables.install(1, Capture(out_interfaces=("srv0",))))
    v4, _ = ruleset(netns)
    assert v4.count("-j FWEMU-Q1") == 2  # TCP's jump and UDP's
    assert "-A FWEMU-Q1 -o srv0 -j NFQUEUE --queue-num 1 --queue-bypass" in v4
    call_in_netns(netns, lambda: iptables.remove(1))


@pytest.mark.parametrize(
    ("protocols", "jumps"),
    [((Protocol.TCP,), ["tcp"]), ((Protocol.UDP,), ["udp"]), (tuple(Protocol), ["tcp", "udp"])],
    ids=["tcp", "udp", "both"],
)
def test_only_the_chosen_protocols_jump_to_the_chain_in_both_families(
    netns: str, protocols: tuple[Protocol, ...], jumps: list[str]
) -> None:
    before = ruleset(netns)
    call_in_netns(netns, lambda: iptables.install(0, Capture(protocols=protocols)))
    for rules in ruleset(netns):
        assert rules.splitlines()[3:] == [
            "-N FWEMU-Q0",
            *(f'-A FORWARD -p {p} -m comment --comment "fwemu:q0" -j FWEMU-Q0' for p in jumps),
            "-A FWEMU-Q0 -j NFQUEUE --queue-num 0 --queue-bypass",
        ]
    assert call_in_netns(netns, lambda: iptables.remove(0)) is True
    assert ruleset(netns) == before


def test_a_killed_runs_jumps_of_other_protocols_are_removed_too(netns: str) -> None:
    """A SIGKILLed `--proto udp` run, then `--proto tcp` on its queue: no UDP jump stays behind."""
    before = ruleset(netns)
    call_in_netns(netns, lambda: iptables.install(0, Capture(protocols=(Protocol.UDP,))))
    call_in_netns(netns, lambda: iptables.install(0, Capture(protocols=(Protocol.TCP,))))
    v4, v6 = ruleset(netns)
    assert "-p udp" not in v4 + v6
    assert (v4.count("-A FORWARD -p tcp"), v6.count("-A FORWARD -p tcp")) == (1, 1)
    call_in_netns(netns, lambda: iptables.remove(0))
    assert ruleset(netns) == before


def test_a_rejected_jump_leaves_nothing_installed(
    netns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """UDP's jump fails after TCP's went in: both go, and the chain, in both families."""
    before = ruleset(netns)
    real = iptables.jump_rule

    def udp_to_nowhere(queue: int, protocol: Protocol) -> tuple[str, ...]:
        rule = real(queue, protocol)
        return (*rule[:-1], "NO-SUCH-CHAIN") if protocol == Protocol.UDP else rule

    monkeypatch.setattr(iptables, "jump_rule", udp_to_nowhere)
    with pytest.raises(IptablesError, match="iptables -I FORWARD 2 -p udp"):
        call_in_netns(netns, lambda: iptables.install(0, Capture()))
    assert ruleset(netns) == before


def test_the_nfqueue_probe_leaves_nothing_behind(netns: str) -> None:
    before = ruleset(netns)
    call_in_netns(netns, lambda: iptables.check_available(7))
    assert ruleset(netns) == before


def test_several_queues_share_one_balancing_rule_set_named_after_the_first(netns: str) -> None:
    before = ruleset(netns)
    call_in_netns(netns, lambda: iptables.check_available(4, 3))
    assert ruleset(netns) == before
    families = call_in_netns(netns, lambda: iptables.install(4, Capture(), 3))
    assert families == (4, 6)
    for rules in ruleset(netns):
        assert rules.splitlines()[3:] == [
            "-N FWEMU-Q4",
            '-A FORWARD -p tcp -m comment --comment "fwemu:q4" -j FWEMU-Q4',
            '-A FORWARD -p udp -m comment --comment "fwemu:q4" -j FWEMU-Q4',
            "-A FWEMU-Q4 -j NFQUEUE --queue-balance 4:6 --queue-bypass",
        ]
    assert call_in_netns(netns, lambda: iptables.remove(4)) is True
    assert ruleset(netns) == before
