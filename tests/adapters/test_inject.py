"""Injected packets leave the fw namespace with the addresses in their own headers."""

from __future__ import annotations

import socket

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

from fwemu.adapters.inject import Injector
from fwemu.lab import LabPlan, call_in_netns, socket_in


def test_ipv4_and_ipv6_packets_reach_the_address_in_their_header(lab_plan: LabPlan) -> None:
    errors: list[str] = []
    client, server = lab_plan.client, lab_plan.server
    with call_in_netns(lab_plan.fw_client_side.namespace, lambda: Injector(errors.append)) as inj:
        for family, address, forged in (
            (socket.AF_INET, server.ipv4, IP(src=client.ipv4, dst=server.ipv4)),
            (socket.AF_INET6, server.ipv6, IPv6(src=client.ipv6, dst=server.ipv6)),
        ):
            with socket_in(server.namespace, family, socket.SOCK_DGRAM) as receiver:
                receiver.settimeout(5)
                receiver.bind((address, 0))
                port = receiver.getsockname()[1]
                assert inj.send(bytes(forged / UDP(sport=4242, dport=port) / b"forged"))
                data, sender = receiver.recvfrom(100)
                assert (data, sender[:2]) == (b"forged", (forged.src, 4242))
    assert errors == []


def test_what_cannot_be_sent_is_reported_not_raised(lab_plan: LabPlan) -> None:
    errors: list[str] = []
    with call_in_netns(lab_plan.fw_client_side.namespace, lambda: Injector(errors.append)) as inj:
        assert inj.send(b"\x00garbage") is False
        # No route from the fw namespace to a documentation address.
        assert inj.send(bytes(IP(dst="192.0.2.1") / UDP())) is False
    assert errors == [
        "not an IPv4 or IPv6 packet (8 bytes); not sent",
        "sending a 28-byte IPv4 packet failed: [Errno 101] Network is unreachable",
    ]
