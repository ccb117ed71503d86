"""What a flood is asked, which addresses it spoofs and how its report reads, without the
kernel (tests/e2e/test_syn_flood.py floods a real lab)."""

from __future__ import annotations

import pytest

from fwemu.lab import LabPlan
from fwemu.lab.flood import (
    MAX_SOURCES,
    Connects,
    FloodError,
    FloodReport,
    FloodSpec,
    FwemuSeen,
    ServerSeen,
    Sources,
    spoofed_sources,
)
from fwemu.lab.sender import Sent

PLAN = LabPlan.create("lab", index=7, clients=3)  # clients 10.7.1.2 .. 10.7.1.4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"count": 0}, "count must be 1..10,000,000, not 0"),
        ({"count": 10_000_001}, "count must be 1..10,000,000, not 10,000,001"),
        ({"rate": 0.5}, "rate must be 1..1,000,000 SYNs a second, not 0.5"),
        ({"rate": float("inf")}, "rate must be 1..1,000,000 SYNs a second, not inf"),
        ({"port": 0}, "port must be 1..65535, not 0"),
        ({"seconds": 601}, "duration must be 0.001..600 seconds, not 601"),
        ({"sources": 0}, f"sources must be 1..{MAX_SOURCES}, not 0"),
        (
            {"count": 10_000_000, "rate": 10},
            "10,000,000 SYNs at 10/s would take 12 days: more than 10 minutes; send fewer, "
            "faster, or set a duration",
        ),
    ],
)
def test_absurd_values_are_refused_in_one_line(values: dict[str, float], message: str) -> None:
    with pytest.raises(FloodError) as raised:
        FloodSpec(**values)  # type: ignore[arg-type]
    assert str(raised.value) == message


def test_a_long_flood_is_fine_with_a_duration_to_end_it() -> None:
    assert FloodSpec(count=10_000_000, rate=10, seconds=60).takes == 60
    assert FloodSpec(count=2000, rate=1000).takes == 2


def test_by_default_every_free_address_of_the_client_subnet_is_spoofed() -> None:
    sources = spoofed_sources(PLAN, FloodSpec())
    assert sources.network == "10.7.1.0/24"
    # Not the fw's 10.7.1.1 nor the clients' .2 .. .4; nor .0 and .255 (the fw drops those).
    assert sources.addresses == tuple(f"10.7.1.{host}" for host in range(5, 255))
    assert sources.describe() == "10.7.1.0/24 (250 addresses)"


def test_ipv6_spoofs_the_first_120_of_the_client_subnet() -> None:
    sources = spoofed_sources(PLAN, FloodSpec(ipv6=True))
    assert sources.network == "fd00:7:1::/120"
    assert sources.addresses[0] == "fd00:7:1::5" and sources.addresses[-1] == "fd00:7:1::ff"


@pytest.mark.parametrize(
    ("sources", "addresses", "shown"),
    [
        ("10.7.1.77", ("10.7.1.77",), "10.7.1.77"),
        ("10.7.1.64/30", ("10.7.1.65", "10.7.1.66"), "10.7.1.64/30 (2 addresses)"),
        ("10.7.1.0/29", ("10.7.1.5", "10.7.1.6"), "10.7.1.0/29 (2 addresses)"),
        (2, ("10.7.1.253", "10.7.1.254"), "2 addresses of 10.7.1.0/24"),
        ("fd00:7:1::abcd", ("fd00:7:1::abcd",), "fd00:7:1::abcd"),
    ],
)
def test_sources_as_asked(sources: str | int, addresses: tuple[str, ...], shown: str) -> None:
    spoofed = spoofed_sources(PLAN, FloodSpec(sources=sources))
    assert spoofed.addresses == addresses
    assert spoofed.describe() == shown


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            FloodSpec(sources="198.51.100.0/24"),
            "sources 198.51.100.0/24 are outside the lab's client subnet 10.7.1.0/24: the fw "
            "would have no route for the server's replies",
        ),
        (
            FloodSpec(sources="fd00:7:1::/64"),
            "sources fd00:7:1::/64 have 18,446,744,073,709,551,616 addresses; at most 65,536 "
            "(a /112)",
        ),
        (
            FloodSpec(sources="10.7.1.2"),
            "sources 10.7.1.2/32 leave no address to spoof: the lab's own addresses (10.7.1.2) "
            "are never spoofed",
        ),
        (FloodSpec(sources=251), "251 sources asked for, but 10.7.1.0/24 has 250 free addresses"),
        (
            FloodSpec(sources="10.7.1.0/24", ipv6=True),
            "sources 10.7.1.0/24 are IPv4, but IPv6 was asked for",
        ),
        (
            FloodSpec(sources="10.7.1.0/33"),
            "sources '10.7.1.0/33' is not an address or network, like 10.201.1.0/24 or 10.201.1.77",
        ),
    ],
)
def test_sources_that_cannot_be_spoofed_are_refused_in_one_line(
    spec: FloodSpec, message: str
) -> None:
    with pytest.raises(FloodError) as raised:
        spoofed_sources(PLAN, spec)
    assert str(raised.value) == message


def test_connect_times_and_failures() -> None:
    results = [(0.001 * ms, None) for ms in range(1, 101)] + [
        (3.0, "timeout"),
        (0.0, "ECONNREFUSED"),
    ]
    connects = Connects.of([*results, (3.0, "timeout")])
    assert (connects.attempts, connects.ok) == (103, 100)
    assert connects.failures == {"timeout": 2, "ECONNREFUSED": 1}
    assert (connects.p50_ms, connects.p99_ms, connects.max_ms) == pytest.approx((50, 99, 100))
    assert connects.describe() == (
        "100 of 103 connected, connect p50 50.0 ms, p99 99.0 ms; failed: timeout 2, ECONNREFUSED 1"
    )
    assert Connects.of([]).describe() == "0 of 0 connected"


def report(fwemu: FwemuSeen | None) -> FloodReport:
    spec = FloodSpec(count=2000, rate=2000)
    server = ServerSeen(
        address="10.7.2.2",
        port=80,
        listener="the flood's own",
        backlog=128,
        sysctls={"net.ipv4.tcp_syncookies": "1"},
        syns=2000,
        legit_syns=11,
        half_open_peak=129,
        half_open_end=129,
        accept_queue_peak=0,
        nstat={"TcpInSegs": 2041, "TcpExtSyncookiesSent": 1871, "TcpExtListenDrops": 0},
    )
    return FloodReport(
        lab="lab",
        spec=spec,
        sources=Sources("10.7.1.0/24", ("10.7.1.5", "10.7.1.6")),
        sent=Sent(sent=2000, seconds=1.0),
        server=server,
        fwemu=fwemu,
        legit_before=Connects.of([(0.0002, None)]),
        legit_during=Connects.of([(0.0005, None), (1.0, None)]),
        legit_source="10.7.1.2",
    )


def test_the_report_says_what_each_side_saw() -> None:
    seen = FwemuSeen(
        where="lab-fw",
        policy="linux",
        counters={"packets": 4202, "accepted": 4202, "dropped": 0},
        flows=(0, 2016, 2016),
        events={"limit_summary": 1, "limit": 12},
    )
    assert report(seen).lines() == [
        "SYN flood in lab lab: 10.7.2.2:80 from 10.7.1.0/24 (2 addresses)",
        "  sent     2,000 SYNs in 1.00 s: 2,000/s (asked 2,000 at 2,000/s)",
        "  server   listener: the flood's own, backlog 128; tcp_syncookies 1",
        "           SYNs received: 2,000 from the flood, 11 from the legit client",
        "           half-open (SYN_RECV) peak 129, at the end 129; accept queue peak 0",
        "           nstat: TcpInSegs 2,041, TcpExtSyncookiesSent 1,871",
        "  fwemu    in lab-fw, policy linux: packets 4,202, accepted 4,202; events: limit 12, "
        "limit_summary 1",
        "           flows 0 before, peak 2,016, 2,016 after",
        "  legit    from 10.7.1.2, before: 1 of 1 connected, connect p50 0.20 ms, p99 0.20 ms",
        "           during: 2 of 2 connected, connect p50 0.50 ms, p99 1,000.0 ms",
    ]
    assert report(seen).summary() == (
        "2,000 SYNs in 1.00 s (2,000/s) from 10.7.1.0/24 (2 addresses); server: 2,000 received, "
        "half-open peak 129, 1,871 SYN cookies sent; fwemu: packets 4,202, accepted 4,202; "
        "events: limit 12, limit_summary 1"
    )


def test_the_json_report_has_every_figure() -> None:
    data = report(None).to_dict()
    assert data["sent"] == {
        "syns": 2000,
        "lost": 0,
        "seconds": 1.0,
        "rate": 2000.0,
        "stopped": False,
    }
    assert data["server"]["syns_received"] == {"flood": 2000, "legit": 11}
    assert data["server"]["nstat"]["TcpExtSyncookiesSent"] == 1871
    assert data["fwemu"] is None
    assert data["legit"]["during"]["connect_ms"] == {"p50": 0.5, "p99": 1000.0, "max": 1000.0}
    assert (
        report(None).lines()[6] == "  fwemu    none in the fw namespace: the kernel forwarded alone"
    )
