"""--match/--filter expressions and FLOW arguments, as an operator types them."""

from __future__ import annotations

import pytest

from fwemu.ops.filters import EVENT_KEYS, FilterError, parse_flow, parse_selector

FLOW = {"src": "10.0.1.2", "sport": 40000, "dst": "10.0.2.2", "dport": 5432, "proto": "tcp"}
FLOW6 = {"src": "fd00::1", "sport": 40001, "dst": "fd00:2::2", "dport": 443, "proto": "tcp"}
DNS = {"src": "10.0.1.2", "sport": 5353, "dst": "10.0.2.2", "dport": 53, "proto": "udp"}


@pytest.mark.parametrize(
    ("text", "selected"),
    [
        ("", True),
        ("dport=5432", True),
        ("dport=80,5432", True),
        ("dport=5000-6000", True),
        ("dport=80", False),
        ("sport=5432", False),
        ("port=5432", True),
        ("port=40000", True),
        ("src=10.0.1.0/24", True),
        ("src=10.0.2.2", False),
        ("dst=10.0.2.2 dport=5432", True),
        ("dst=10.0.2.2 dport=80", False),
        ("host=10.0.2.2", True),
        ("host=10.9.0.0/16", False),
        ("host=10.0.2.2 port=80,5432", True),
        ("src=fd00::/8", False),
        ("state=established", True),
        ("state=TIME_WAIT,established", True),
        ("state=time_wait", False),
        ("rule=db", True),
        ("rule=web", False),
        ("proto=tcp", True),
        ("proto=UDP", False),
        ("proto=udp,tcp dport=5432", True),
    ],
)
def test_matches_flows(text: str, selected: bool) -> None:
    assert parse_selector(text).matches(FLOW, state="ESTABLISHED", rule="db") is selected


@pytest.mark.parametrize(
    ("text", "tcp", "udp"),
    [
        ("proto=udp", False, True),
        ("proto=tcp", True, False),
        ("proto=tcp,udp", True, True),
        ("proto=udp dport=53", False, True),
        ("proto=udp dport=5432", False, False),
        ("state=unreplied", False, True),
        ("", True, True),
    ],
)
def test_flows_are_selected_by_protocol(text: str, tcp: bool, udp: bool) -> None:
    selector = parse_selector(text)
    assert selector.matches(FLOW, state="ESTABLISHED") is tcp
    assert selector.matches(DNS, state="UNREPLIED") is udp


def test_a_record_without_proto_is_tcp() -> None:
    """An older fwemu's flows and events, or a capture's from before UDP, name no protocol."""
    old = {k: v for k, v in FLOW.items() if k != "proto"}
    assert parse_selector("proto=tcp").matches(old)
    assert not parse_selector("proto=udp").matches(old)


def test_events_of_udp_flows_are_selected_by_protocol() -> None:
    unreachable = {"event": "unreachable", "flow": DNS, "state": None, "rule": "dns"}
    expire = {"event": "expire", "flow": FLOW, "state": "ESTABLISHED", "rule": "db"}
    selector = parse_selector("proto=udp event=unreachable,expire", EVENT_KEYS)
    assert selector.matches_event(unreachable)
    assert not selector.matches_event(expire)


def test_ipv6_flows_match_ipv6_networks_only() -> None:
    assert parse_selector("src=fd00::/16 dport=443").matches(FLOW6)
    assert not parse_selector("src=0.0.0.0/0").matches(FLOW6)


def test_events_filter_by_kind_and_flow() -> None:
    record = {"event": "expire", "flow": FLOW, "state": "ESTABLISHED", "rule": "db"}
    assert parse_selector("event=expire,reset dport=5432", EVENT_KEYS).matches_event(record)
    assert not parse_selector("event=new", EVENT_KEYS).matches_event(record)
    oos = {"event": "out_of_state", "flow": FLOW, "state": None, "rule": "db"}
    assert not parse_selector("state=established", EVENT_KEYS).matches_event(oos)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dport", "bad term 'dport' in 'dport': expected KEY=VALUE, e.g. dport=80"),
        ("dport=", "bad term 'dport=' in 'dport=': expected KEY=VALUE, e.g. dport=80"),
        (
            "prot=tcp",
            "unknown key 'prot' in 'prot=tcp': use src, dst, host, sport, dport, port, proto",
        ),
        ("proto=icmp", "bad proto in 'proto=icmp': unknown icmp: use tcp, udp"),
        ("proto=tcp,sctp", "bad proto in 'proto=tcp,sctp': unknown sctp: use tcp, udp"),
        ("dport=http", "bad dport in 'dport=http': expected ports or ranges LOW-HIGH, not 'http'"),
        ("dport=90-80", "bad dport in 'dport=90-80': port range '90-80' is not within 0..65535"),
        ("src=10.0.0.300", "bad src in 'src=10.0.0.300': expected IP addresses or CIDR networks"),
        ("state=open", "bad state in 'state=open': unknown OPEN: use CLOSE, CLOSE_WAIT"),
        ("state=assured", "bad state in 'state=assured': unknown ASSURED: use CLOSE, CLOSE_WAIT"),
        ("port=1 port=2", "port given twice in 'port=1 port=2': list the values, e.g. port=a,b"),
        ("event=new", "unknown key 'event' in 'event=new'"),
    ],
)
def test_mistakes_are_named(text: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        parse_selector(text)
    assert str(err.value).startswith(message)


def test_event_kinds_are_checked() -> None:
    with pytest.raises(
        FilterError, match="unknown boom: use delete, expire, limit, limit_summary, new, "
    ):
        parse_selector("event=boom", EVENT_KEYS)


@pytest.mark.parametrize(
    "text",
    [
        "10.0.1.2:40000>10.0.2.2:5432",
        "10.0.1.2:40000 > 10.0.2.2:5432",
        "  10.0.1.2:40000 >10.0.2.2:5432 ",
    ],
)
def test_a_flow_as_flows_prints_it_selects_exactly_that_flow(text: str) -> None:
    selector = parse_flow(text)
    assert selector.matches(FLOW)
    assert not selector.matches({**FLOW, "sport": 40002})
    assert not selector.matches({**FLOW, "src": FLOW["dst"], "dst": FLOW["src"]})


def test_an_ipv6_flow() -> None:
    assert parse_flow("[fd00::1]:40001 > [fd00:2::2]:443").matches(FLOW6)


@pytest.mark.parametrize(
    ("text", "tcp", "udp"),
    [
        ("udp 10.0.1.2:5353 > 10.0.2.2:53", False, True),  # as str(FlowId) prints it
        ("UDP 10.0.1.2:5353>10.0.2.2:53", False, True),
        ("tcp 10.0.1.2:5353>10.0.2.2:53", True, False),
        ("10.0.1.2:5353>10.0.2.2:53", True, True),  # either protocol's flow
    ],
)
def test_a_flow_names_its_protocol_or_either(text: str, tcp: bool, udp: bool) -> None:
    selector = parse_flow(text)
    assert selector.matches({**DNS, "proto": "tcp"}) is tcp
    assert selector.matches(DNS) is udp


def test_a_flow_of_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(FilterError, match="unknown icmp: use tcp, udp"):
        parse_flow("icmp 10.0.1.2:1>10.0.2.2:2")


@pytest.mark.parametrize(
    "text",
    [
        "10.0.1.2>10.0.2.2",
        "10.0.1.2:1-10.0.2.2:2",
        "fd00::1:1>x:2",
        "",
        "udp",
        "u-dp 1.2.3.4:1>x:2",
    ],
)
def test_a_malformed_flow_is_refused(text: str) -> None:
    with pytest.raises(FilterError, match=r"expected \[PROTO\] CLIENT:PORT>SERVER:PORT"):
        parse_flow(text)
