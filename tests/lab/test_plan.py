"""The lab plan: names and addresses users will type, without touching the kernel."""

from __future__ import annotations

import pytest

from fwemu.lab import LabError, LabPlan


def test_default_lab_addresses_match_the_documentation() -> None:
    plan = LabPlan.create()
    assert (plan.name, plan.index) == ("fwemu", 201)
    assert plan.namespaces == ("fwemu-client", "fwemu-fw", "fwemu-server")
    assert (plan.client.ipv4, plan.client.ipv6) == ("10.201.1.2", "fd00:201:1::2")
    assert (plan.fw_client_side.ipv4, plan.fw_client_side.ipv6) == ("10.201.1.1", "fd00:201:1::1")
    assert (plan.fw_server_side.ipv4, plan.fw_server_side.ipv6) == ("10.201.2.1", "fd00:201:2::1")
    assert (plan.server.ipv4, plan.server.ipv6) == ("10.201.2.2", "fd00:201:2::2")
    assert plan.client.addresses == ("10.201.1.2/24", "fd00:201:1::2/64")


def test_interfaces_and_namespaces() -> None:
    plan = LabPlan.create("lab1", index=7)
    assert [(e.namespace, e.ifname) for e in plan.endpoints] == [
        ("lab1-client", "eth0"),
        ("lab1-fw", "cli0"),
        ("lab1-fw", "srv0"),
        ("lab1-server", "eth0"),
    ]


def test_client_and_server_route_both_families_via_fw() -> None:
    plan = LabPlan.create("lab1", index=7)
    assert {(r.namespace, r.family, r.gateway) for r in plan.routes} == {
        ("lab1-client", 4, "10.7.1.1"),
        ("lab1-client", 6, "fd00:7:1::1"),
        ("lab1-server", 4, "10.7.2.1"),
        ("lab1-server", 6, "fd00:7:2::1"),
    }


def test_only_fw_forwards_and_no_interface_waits_for_dad() -> None:
    sysctls = {(s.namespace, s.key, s.value) for s in LabPlan.create("lab1").sysctls}
    assert ("lab1-fw", "net/ipv4/ip_forward", "1") in sysctls
    assert ("lab1-fw", "net/ipv6/conf/all/forwarding", "1") in sysctls
    # Hosts, whatever the root namespace's forwarding they would inherit.
    assert ("lab1-client", "net/ipv4/ip_forward", "0") in sysctls
    assert ("lab1-server", "net/ipv4/ip_forward", "0") in sysctls
    assert ("lab1-client", "net/ipv6/conf/eth0/accept_dad", "0") in sysctls
    assert ("lab1-fw", "net/ipv6/conf/srv0/accept_dad", "0") in sysctls


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "is invalid"),
        ("has space", "is invalid"),
        ("a/b", "is invalid"),
        ("-leading-dash", "is invalid"),
        ("x" * 249, "the limit is 248"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name: str, fragment: str) -> None:
    with pytest.raises(LabError, match=fragment) as caught:
        LabPlan.create(name)
    assert "\n" not in str(caught.value)


def test_longest_name_is_accepted() -> None:
    assert LabPlan.create("x" * 248).server.namespace == "x" * 248 + "-server"


@pytest.mark.parametrize("index", [0, 251, -1])
def test_index_out_of_range_is_refused(index: int) -> None:
    with pytest.raises(LabError, match=f"index {index} is out of range"):
        LabPlan.create("lab1", index=index)


def test_extra_clients_are_further_addresses_on_the_clients_interface() -> None:
    client = LabPlan.create("lab1", index=7, clients=3).client
    assert client.pairs == (
        ("10.7.1.2", "fd00:7:1::2"),
        ("10.7.1.3", "fd00:7:1::3"),
        ("10.7.1.4", "fd00:7:1::4"),
    )
    assert (client.ipv4, client.ipv6) == ("10.7.1.2", "fd00:7:1::2")
    assert client.addresses[2:4] == ("10.7.1.3/24", "fd00:7:1::3/64")
    assert LabPlan.create("lab1", index=7).client.pairs == (("10.7.1.2", "fd00:7:1::2"),)
    assert LabPlan.create("lab1", clients=253).client.pairs[-1] == (
        "10.201.1.254",
        "fd00:201:1::254",
    )


@pytest.mark.parametrize("clients", [0, 254])
def test_clients_out_of_range_are_refused(clients: int) -> None:
    with pytest.raises(LabError, match=f"{clients} clients is out of range: use 1..253"):
        LabPlan.create("lab1", clients=clients)
