"""Benchmark the sans-IO core: packets/s, µs per packet, and memory per tracked flow.

    .venv/bin/python bench/core.py [--flows 100000 1000000] [--data-packets 300000]

Drives flows through the engine (handshake, data, close, mass expiry) with synthetic IPv4
packets built once up front, so only the engine is timed. Targets (issue 2, one core of the
2-core dev machine): >= 300,000 packets/s for established data packets; <= 400 bytes per
tracked flow; UDP datagrams of a stream as cheap as established data packets (issue 17).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import struct
import time
import tracemalloc
from collections.abc import Iterator

from fwemu.core import packet as pk
from fwemu.core.engine import Engine
from fwemu.policy import loads_policy
from fwemu.policy.model import (
    AnswerRate,
    ExpireAction,
    Limits,
    OnExpire,
    OutOfState,
    OutOfStateAction,
    Policy,
    Profile,
    Timeouts,
)

_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08


def segment(
    src: bytes, sport: int, dst: bytes, dport: int, flags: int, seq: int, ack: int, payload: int = 0
) -> bytes:
    """An IPv4+TCP header (payload length in the IP header only, as an NFQUEUE copy-range gives)."""
    ip = _IP.pack(0x45, 0, 40 + payload, 0, 0x4000, 64, 6, 0, src, dst)
    tcp = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    return ip + tcp


def datagram(src: bytes, sport: int, dst: bytes, dport: int, payload: int = 100) -> bytes:
    """An IPv4+UDP header (payload length in the IP and UDP headers only, as a copy range gives)."""
    ip = _IP.pack(0x45, 0, 28 + payload, 0, 0x4000, 64, 17, 0, src, dst)
    return ip + _UDP.pack(sport, dport, 8 + payload, 0)


def endpoints(i: int) -> tuple[bytes, int, bytes, int]:
    client = bytes((10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255))
    return client, 10000 + i % 50000, bytes((10, 250, 0, 1)), 443


def handshake(i: int) -> Iterator[bytes]:
    c, cp, s, sp = endpoints(i)
    yield segment(c, cp, s, sp, SYN, 1000, 0)
    yield segment(s, sp, c, cp, SYN | ACK, 9000, 1001)
    yield segment(c, cp, s, sp, ACK, 1001, 9001)


def close(i: int, sent: int) -> Iterator[bytes]:
    c, cp, s, sp = endpoints(i)
    yield segment(c, cp, s, sp, FIN | ACK, 1001 + sent, 9001)
    yield segment(s, sp, c, cp, FIN | ACK, 9001, 1002 + sent)
    yield segment(c, cp, s, sp, ACK, 1002 + sent, 9002)


NO_LIMITS = Limits()


def policy(limits: Limits = NO_LIMITS) -> Policy:
    profile = Profile("default", Timeouts(), OnExpire(), OutOfState())
    return Policy("bench", profile, limits=limits)


# Every kind of limit counting at once (none reached): what counting costs per new flow.
COUNTED = Limits(
    max_flows=10_000_000,
    early_drop=True,
    per_client=10_000_000,
    per_server=10_000_000,
    embryonic=10_000_000,
    ports_per_destination=10_000_000,
)


def best_of_5(engine: Engine, packets: list[bytes], start: float) -> float:
    """The shortest of 5 passes of `packets` through the engine, each a second after the last
    (from `start`): seconds."""
    handle = engine.handle_packet
    best = float("inf")
    for rep in range(5):
        now = start + rep
        t0 = time.perf_counter()
        for p in packets:
            handle(p, now=now)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_data(flows: int, packets: int, limits: Limits = NO_LIMITS) -> None:
    label = " (limits counted)" if limits.counted else ""
    engine = Engine(policy(limits))
    for i in range(flows):
        for p in handshake(i):
            engine.handle_packet(p, now=0.0)
    per_flow = packets // flows
    data = []
    for k in range(per_flow):
        for i in range(flows):
            c, cp, s, sp = endpoints(i)
            if k % 2 == 0:
                data.append(segment(c, cp, s, sp, ACK | PSH, 1001 + 100 * k, 9001, 100))
            else:
                data.append(segment(s, sp, c, cp, ACK, 9001, 1001 + 100 * k, 0))
    handle = engine.handle_packet
    best = best_of_5(engine, data, start=1.0)
    n = len(data)
    print(
        f"established data packets: {n / best:>12,.0f} packets/s  {best / n * 1e6:6.2f} µs/packet "
        f"({flows:,} flows, best of 5){label}"
    )

    connections = 20_000
    whole = [p for i in range(flows, flows + connections) for p in (*handshake(i), *close(i, 0))]
    t0 = time.perf_counter()
    for p in whole:
        handle(p, now=10.0)
    dt = time.perf_counter() - t0
    print(
        f"whole connections:        {connections / dt:>12,.0f} connections/s "
        f"({dt / len(whole) * 1e6:.2f} µs per handshake/close packet, events included){label}"
    )


def bench_udp(flows: int, packets: int) -> None:
    """Datagrams of UDP streams both ways: UDP's per-datagram path, to set against the
    established data packets' (issue 17: as cheap as TCP's in-state path)."""
    engine = Engine(policy())
    for i in range(flows):
        c, cp, s, sp = endpoints(i)
        engine.handle_packet(datagram(c, cp, s, sp), now=0.0)
        engine.handle_packet(datagram(s, sp, c, cp), now=0.0)
        engine.handle_packet(datagram(c, cp, s, sp), now=3.0)  # past the grace: a stream
    per_flow = packets // flows
    data = []
    for k in range(per_flow):
        for i in range(flows):
            c, cp, s, sp = endpoints(i)
            data.append(datagram(c, cp, s, sp) if k % 2 == 0 else datagram(s, sp, c, cp))
    best = best_of_5(engine, data, start=4.0)
    n = len(data)
    print(
        f"UDP stream datagrams:     {n / best:>12,.0f} packets/s  {best / n * 1e6:6.2f} µs/packet "
        f"({flows:,} flows, best of 5)"
    )


def bench_expiry(flows: int) -> None:
    """The engine's share of a mass expiry: what one timer batch costs per flow."""
    for action in (ExpireAction.SILENT, ExpireAction.RESET_BOTH):
        expire = OnExpire(**{f.name: action for f in dataclasses.fields(OnExpire)})
        engine = Engine(Policy("bench", Profile("default", Timeouts(), expire, OutOfState())))
        for i in range(flows):
            for p in handshake(i):
                engine.handle_packet(p, now=0.0)
        t0 = time.perf_counter()
        while engine.next_deadline() is not None:
            engine.handle_timer(now=1e9, limit=1024)
        dt = time.perf_counter() - t0
        print(
            f"expiry, {action.value + ':':<20}{dt / flows * 1e6:>6.2f} µs per flow "
            f"({flows:,} flows due at once, batches of 1024)"
        )


def bench_out_of_state(packets: int) -> None:
    """A flood's cost in the engine: mid-stream ACKs of no flow from one source under a reset
    policy, each answered in full (event + RST) or past the answer rate (the verdict alone)."""
    oos = OutOfState(action=OutOfStateAction.RESET)
    base = Policy("bench", Profile("default", Timeouts(), OnExpire(), oos))
    c, _, s, sp = endpoints(0)
    flood = [segment(c, 1024 + i % 60000, s, sp, ACK, i, i) for i in range(packets)]
    for label, rate in (
        ("answered in full", AnswerRate(per_source=packets, total=packets)),
        ("past the answer rate", AnswerRate()),
    ):
        best = float("inf")
        for _ in range(3):
            handle = Engine(dataclasses.replace(base, answer_rate=rate)).handle_packet
            t0 = time.perf_counter()
            for p in flood:
                handle(p, now=0.5)  # one window: past the rate, all but the first 100 are held
            best = min(best, time.perf_counter() - t0)
        print(
            f"out-of-state, {label + ':':<22}{best / packets * 1e6:>6.2f} µs/packet "
            f"({packets:,} from one source, best of 3)"
        )


def bench_defences(packets: int) -> None:
    """What the SYN-flood defences cost per packet: a SYN answered with a cookie, a SYN dropped
    by random early drop past its maximum, and a data packet of a proxied (translated) flow,
    rewritten (whole 1460-byte segments, as the queue copies them under such a policy)."""
    c, _, s, sp = endpoints(0)
    syns = [segment(c, 1024 + i % 60000, s, sp, SYN, i, 0) for i in range(packets)]
    for label, text in (
        ("SYN answered with a cookie", '[syn_flood]\nactivate = 0\naction = "syn-cookies"'),
        ("SYN dropped (RED at 100 %)", "[syn_flood]\nactivate = 1\nmaximum = 2"),
    ):
        best = float("inf")
        for _ in range(3):
            handle = Engine(loads_policy(text)).handle_packet
            t0 = time.perf_counter()
            for p in syns:
                handle(p, now=0.5)
            best = min(best, time.perf_counter() - t0)
        print(f"{label + ':':<33}{best / packets * 1e6:>6.2f} µs/packet (best of 3)")
    engine = Engine(loads_policy('[syn_flood]\nactivate = 0\naction = "syn-cookies"'))
    handle = engine.handle_packet
    cookie = pk.parse(
        handle(pk.build_segment(c, 40000, s, sp, flags=SYN, seq=999, ack=0), now=0.0).inject[0]
    )
    assert isinstance(cookie, pk.Segment)
    handle(pk.build_segment(c, 40000, s, sp, flags=ACK, seq=1000, ack=cookie.seq + 1), now=0.0)
    handle(pk.build_segment(s, sp, c, 40000, flags=SYN | ACK, seq=8999, ack=1000), now=0.0)
    data = []
    for k in range(packets // 2):
        seq, ack = 1000 + 1460 * k, cookie.seq + 1
        data.append(
            pk.build_segment(c, 40000, s, sp, flags=ACK, seq=seq, ack=ack, payload_len=1460)
        )
        data.append(pk.build_segment(s, sp, c, 40000, flags=ACK, seq=9000, ack=seq + 1460))
    t0 = time.perf_counter()
    for k, p in enumerate(data):
        handle(p, now=1.0 + k * 1e-6)
    dt = time.perf_counter() - t0
    print(
        f"{'proxied flow, data rewritten:':<33}{dt / len(data) * 1e6:>6.2f} µs/packet "
        "(both ways, 1460-byte segments)"
    )


def bench_memory(flows: int) -> None:
    gc.collect()
    tracemalloc.start()
    engine = Engine(policy())
    before, _ = tracemalloc.get_traced_memory()
    for i in range(flows):
        c, cp, s, sp = endpoints(i)
        engine.handle_packet(segment(c, cp, s, sp, SYN, 1000 + i, 0), now=0.0)
        engine.handle_packet(segment(s, sp, c, cp, SYN | ACK, 9000 + i, 1001 + i), now=0.0)
        engine.handle_packet(segment(c, cp, s, sp, ACK | PSH, 1001 + i, 9001 + i, 500), now=0.0)
    gc.collect()
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(engine) == flows, len(engine)
    print(
        f"memory per tracked flow:  {(after - before) / flows:>12,.0f} bytes "
        f"({flows:,} ESTABLISHED flows)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--flows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data-flows", type=int, default=10_000)
    parser.add_argument("--data-packets", type=int, default=300_000)
    parser.add_argument("--expiry-flows", type=int, default=50_000)
    parser.add_argument("--oos-packets", type=int, default=100_000)
    args = parser.parse_args()
    bench_data(args.data_flows, args.data_packets)
    bench_data(args.data_flows, args.data_packets, COUNTED)
    bench_udp(args.data_flows, args.data_packets)
    bench_expiry(args.expiry_flows)
    bench_out_of_state(args.oos_packets)
    bench_defences(args.oos_packets)
    for n in args.flows:
        bench_memory(n)


if __name__ == "__main__":
    main()
