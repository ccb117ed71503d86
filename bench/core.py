"""Benchmark the sans-IO core: packets/s, µs per packet, and memory per tracked flow, for the
compiled core (mypyc, built at install time by setup.py) and its pure-Python modules.

    .venv/bin/python bench/core.py [--core both|compiled|pure] [--rounds 3]
                                   [--flows 100000 1000000] [--data-packets 300000]

Drives flows through the engine (handshake, data, close, mass expiry) with synthetic IPv4
packets built once up front, so only the engine is timed, in CPU time (preemption by other
processes on a shared machine does not count). Each section runs in a process of its own per
core, compiled and pure in turns, `--rounds` times each (the best figure counts), so that both
meet the same load; the default is both when the compiled core is installed. Memory is measured
once per table size: tracing every allocation of a million flows takes the pure core minutes.

Targets (one core of the 2-core dev machine): >= 300,000 packets/s for established data packets
and <= 400 bytes per tracked flow (issue 2); UDP datagrams of a stream as cheap as established
data packets (issue 17); >= 1,000,000 established data packets/s (issue 18).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import NamedTuple

from fwemu.core import compiled
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


clock = time.process_time  # this process's CPU time: what the core costs, whatever else runs


class Figure(NamedTuple):
    """One measured figure: `value` in `unit`, with what it was measured on."""

    label: str
    value: float
    unit: str
    note: str = ""


def rate(label: str, seconds: float, packets: int, note: str) -> list[Figure]:
    """µs per packet and packets/s, for a per-packet path."""
    return [
        Figure(label, seconds / packets * 1e6, "µs/packet", note),
        Figure(f"  {label.strip()}", packets / seconds, "packets/s"),
    ]


def best_of_5(engine: Engine, packets: list[bytes], start: float) -> float:
    """The shortest of 5 passes of `packets` through the engine, each a second after the last
    (from `start`): seconds."""
    handle = engine.handle_packet
    best = float("inf")
    for rep in range(5):
        now = start + rep
        t0 = clock()
        for p in packets:
            handle(p, now=now)
        best = min(best, clock() - t0)
    return best


def bench_data(flows: int, packets: int, limits: Limits = NO_LIMITS) -> list[Figure]:
    label = ", limits counted" if limits.counted else ""
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
    figures = rate(
        f"established data packets{label}", best, len(data), f"{flows:,} flows, best of 5"
    )

    connections = 20_000
    whole = [p for i in range(flows, flows + connections) for p in (*handshake(i), *close(i, 0))]
    t0 = clock()
    for p in whole:
        handle(p, now=10.0)
    dt = clock() - t0
    note = f"{connections:,} connections, events included"
    return [
        *figures,
        Figure(f"handshake/close packets{label}", dt / len(whole) * 1e6, "µs/packet", note),
    ]


def bench_udp(flows: int, packets: int) -> list[Figure]:
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
    return rate("UDP stream datagrams", best, len(data), f"{flows:,} flows, best of 5")


def bench_expiry(flows: int) -> list[Figure]:
    """The engine's share of a mass expiry: what one timer batch costs per flow."""
    figures = []
    for action in (ExpireAction.SILENT, ExpireAction.RESET_BOTH):
        expire = OnExpire(**{f.name: action for f in dataclasses.fields(OnExpire)})
        engine = Engine(Policy("bench", Profile("default", Timeouts(), expire, OutOfState())))
        for i in range(flows):
            for p in handshake(i):
                engine.handle_packet(p, now=0.0)
        t0 = clock()
        while engine.next_deadline() is not None:
            engine.handle_timer(now=1e9, limit=1024)
        dt = clock() - t0
        note = f"{flows:,} flows due at once, batches of 1024"
        figures.append(Figure(f"expiry, {action.value}", dt / flows * 1e6, "µs/flow", note))
    return figures


def bench_out_of_state(packets: int) -> list[Figure]:
    """A flood's cost in the engine: mid-stream ACKs of no flow from one source under a reset
    policy, each answered in full (event + RST) or past the answer rate (the verdict alone)."""
    oos = OutOfState(action=OutOfStateAction.RESET)
    base = Policy("bench", Profile("default", Timeouts(), OnExpire(), oos))
    c, _, s, sp = endpoints(0)
    flood = [segment(c, 1024 + i % 60000, s, sp, ACK, i, i) for i in range(packets)]
    figures = []
    for label, answers in (
        ("answered in full", AnswerRate(per_source=packets, total=packets)),
        ("past the answer rate", AnswerRate()),
    ):
        best = float("inf")
        for _ in range(3):
            handle = Engine(dataclasses.replace(base, answer_rate=answers)).handle_packet
            t0 = clock()
            for p in flood:
                handle(p, now=0.5)  # one window: past the rate, all but the first 100 are held
            best = min(best, clock() - t0)
        note = f"{packets:,} from one source, best of 3"
        figures.append(Figure(f"out-of-state, {label}", best / packets * 1e6, "µs/packet", note))
    return figures


def bench_defences(packets: int) -> list[Figure]:
    """What the SYN-flood defences cost per packet: a SYN answered with a cookie, a SYN dropped
    by random early drop past its maximum, and a data packet of a proxied (translated) flow,
    rewritten (whole 1460-byte segments, as the queue copies them under such a policy)."""
    c, _, s, sp = endpoints(0)
    syns = [segment(c, 1024 + i % 60000, s, sp, SYN, i, 0) for i in range(packets)]
    figures = []
    for label, text in (
        ("SYN answered with a cookie", '[syn_flood]\nactivate = 0\naction = "syn-cookies"'),
        ("SYN dropped (RED at 100 %)", "[syn_flood]\nactivate = 1\nmaximum = 2"),
    ):
        best = float("inf")
        for _ in range(3):
            handle = Engine(loads_policy(text)).handle_packet
            t0 = clock()
            for p in syns:
                handle(p, now=0.5)
            best = min(best, clock() - t0)
        figures.append(Figure(label, best / packets * 1e6, "µs/packet", "best of 3"))
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
    t0 = clock()
    for k, p in enumerate(data):
        handle(p, now=1.0 + k * 1e-6)
    dt = clock() - t0
    note = "both ways, 1460-byte segments"
    return [
        *figures,
        Figure("proxied flow, data rewritten", dt / len(data) * 1e6, "µs/packet", note),
    ]


def bench_memory(flows: int) -> list[Figure]:
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
    note = f"{flows:,} ESTABLISHED flows"
    return [Figure("memory per tracked flow", (after - before) / flows, "bytes", note)]


Section = Callable[[argparse.Namespace], list[Figure]]
SECTIONS: dict[str, Section] = {
    "data": lambda a: bench_data(a.data_flows, a.data_packets),
    "data-limits": lambda a: bench_data(a.data_flows, a.data_packets, COUNTED),
    "udp": lambda a: bench_udp(a.data_flows, a.data_packets),
    "expiry": lambda a: bench_expiry(a.expiry_flows),
    "out-of-state": lambda a: bench_out_of_state(a.oos_packets),
    "defences": lambda a: bench_defences(a.oos_packets),
    "memory": lambda a: bench_memory(a.flows[0]),  # a child measures one table size
}
# The core a child runs: the installed one (compiled, if it was built), or its .py files.
_PRELUDE = {"compiled": "", "pure": "from fwemu.core import compiled; compiled.use_sources(); "}


def measured(core: str, section: str, argv: list[str]) -> list[Figure]:
    """A section's figures from a process of its own running the core as `core` says."""
    child = [__file__, "--section", section, *argv]
    run = (
        f"import runpy, sys; sys.argv = {child!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    out = subprocess.run(
        [sys.executable, "-c", _PRELUDE[core] + run], capture_output=True, text=True, check=False
    )
    if out.returncode:
        sys.exit(f"bench/core.py: {section} with the {core} core failed:\n{out.stderr}")
    running, figures = json.loads(out.stdout)
    if running != (core == "compiled"):
        sys.exit(f"bench/core.py: {section} was to run the {core} core and ran the other")
    return [Figure(*f) for f in figures]


def better(figure: Figure) -> float:
    """What makes a figure better: fewer µs and bytes, more packets/s."""
    return -figure.value if figure.unit == "packets/s" else figure.value


def show(rows: list[list[Figure]]) -> None:
    """One line per figure: its value per core, pure/compiled when both ran, and its note."""
    for i, figure in enumerate(rows[0]):
        values = [row[i].value for row in rows]
        whole = figure.unit in ("packets/s", "bytes")
        text = "".join(f"{v:>12,.0f}" if whole else f"{v:>12.2f}" for v in values)
        both = len(values) == 2 and figure.unit != "packets/s"  # its µs/packet has the ratio
        ratio = f"{values[1] / values[0]:>15.2f}" if both and values[0] else ""
        note = f"  ({figure.note})" if figure.note else ""
        print(f"{figure.label + ', ' + figure.unit:<56}{text}{ratio}{note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--core", choices=("both", "compiled", "pure"))
    parser.add_argument("--flows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--data-flows", type=int, default=10_000)
    parser.add_argument("--data-packets", type=int, default=300_000)
    parser.add_argument("--expiry-flows", type=int, default=50_000)
    parser.add_argument("--oos-packets", type=int, default=100_000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="runs of each timed section per core (the best counts)",
    )
    parser.add_argument("--section", choices=SECTIONS, help=argparse.SUPPRESS)  # a child's
    args = parser.parse_args()
    if args.section:
        print(json.dumps([compiled.running(), SECTIONS[args.section](args)]))
        return
    if args.core is None:
        args.core = "both" if compiled.built() else "pure"
    elif args.core != "pure" and not compiled.built():
        sys.exit("bench/core.py: the core is not compiled here (see setup.py); try --core pure")
    cores = ["compiled", "pure"] if args.core == "both" else [args.core]
    sizes = [
        f"--data-flows={args.data_flows}",
        f"--data-packets={args.data_packets}",
        f"--expiry-flows={args.expiry_flows}",
        f"--oos-packets={args.oos_packets}",
    ]
    runs = [(name, sizes) for name in SECTIONS if name != "memory"]
    runs += [("memory", [*sizes, f"--flows={n}"]) for n in args.flows]
    ratio = "  pure/compiled" if len(cores) == 2 else ""
    title = f"the core: CPU time on one core (rounds: {args.rounds}, the best counts)"
    print(f"{title:<56}" + "".join(f"{c:>12}" for c in cores) + ratio)
    turn = 0
    for section, argv in runs:
        best: dict[str, list[Figure]] = {}
        for _ in range(1 if section == "memory" else args.rounds):
            for core in cores if turn % 2 == 0 else cores[::-1]:  # neither always runs first
                figures = measured(core, section, argv)
                best[core] = [
                    min(f, b, key=better)
                    for f, b in zip(figures, best.get(core, figures), strict=True)
                ]
            turn += 1
        show([best[core] for core in cores])


if __name__ == "__main__":
    main()
