"""Benchmark `fwemu replay`: packets/s for reading a capture, for the engine alone, and in total.

    .venv/bin/python bench/replay.py [--packets 2000000] [--flows 20000] [--keep FILE]

Writes a synthetic Ethernet pcap of many interleaved flows (handshake, data both ways, close)
with dpkt's pcap writer, then times: dpkt's own reader (the library's iterator); fwemu's reader
(dpkt header classes + a struct record loop, link layer stripped); the engine on pre-read
packets; and the whole replay. The core's target for established data is >= 300,000 packets/s
(issue 2); the replay's is to stay close to it. Each figure is the best of --repeat runs: the
dev machine is shared, and the best run is the one least disturbed.
"""

from __future__ import annotations

import argparse
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dpkt

from fwemu.core.engine import Engine
from fwemu.ops.capture import open_capture
from fwemu.ops.replay import replay
from fwemu.policy import load_preset

_ETHER = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
SYN, ACK, FIN, PSH = 0x02, 0x10, 0x01, 0x08
PAYLOAD = 100


def segment(
    src: bytes, sport: int, dst: bytes, dport: int, flags: int, seq: int, ack: int, size: int
) -> bytes:
    ip = _IP.pack(0x45, 0, 40 + size, 0, 0x4000, 64, 6, 0, src, dst)
    tcp = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0)
    return _ETHER + ip + tcp + bytes(size)


def flow_packets(i: int, data: int) -> Iterator[bytes]:
    """One connection: handshake, `data` segments alternating direction, close."""
    c = bytes((10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255))
    s, cp, sp = bytes((10, 250, 0, 1)), 10000 + i % 50000, 443
    yield segment(c, cp, s, sp, SYN, 1000, 0, 0)
    yield segment(s, sp, c, cp, SYN | ACK, 9000, 1001, 0)
    yield segment(c, cp, s, sp, ACK, 1001, 9001, 0)
    for k in range(data):
        if k % 2 == 0:
            yield segment(c, cp, s, sp, ACK | PSH, 1001 + PAYLOAD * (k // 2), 9001, PAYLOAD)
        else:
            yield segment(s, sp, c, cp, ACK, 9001, 1001 + PAYLOAD * (k // 2 + 1), 0)
    sent = PAYLOAD * ((data + 1) // 2)
    yield segment(c, cp, s, sp, FIN | ACK, 1001 + sent, 9001, 0)
    yield segment(s, sp, c, cp, FIN | ACK, 9001, 1002 + sent, 0)
    yield segment(c, cp, s, sp, ACK, 1002 + sent, 9002, 0)


def write_capture(path: Path, packets: int, flows: int) -> int:
    """Flows interleaved round-robin, 10 µs apart; returns the packet count written."""
    per_flow = max(packets // flows - 6, 0)
    iterators = [flow_packets(i, per_flow) for i in range(flows)]
    written = 0
    with open(path, "wb") as f:
        writer = dpkt.pcap.Writer(f, snaplen=262144)
        while iterators:
            alive = []
            for it in iterators:
                frame = next(it, None)
                if frame is not None:
                    writer.writepkt(frame, ts=1_700_000_000 + written * 1e-5)
                    written += 1
                    alive.append(it)
            iterators = alive
    return written


def best(repeat: int, run: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def timed(label: str, count: int, seconds: float) -> None:
    print(
        f"{label:<44} {count / seconds:>12,.0f} packets/s  {seconds * 1e6 / count:6.2f} µs/packet"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=2_000_000)
    parser.add_argument("--flows", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, help="write the capture here and keep it")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "bench.pcap"
        t0 = time.perf_counter()
        count = write_capture(path, args.packets, args.flows)
        size = path.stat().st_size
        print(
            f"wrote {count:,} packets of {args.flows:,} flows ({size / 1e6:.0f} MB) in "
            f"{time.perf_counter() - t0:.1f} s"
        )

        def dpkt_reader() -> int:
            with open(path, "rb") as f:
                return sum(1 for _ in dpkt.pcap.Reader(f))

        timed("read: dpkt.pcap.Reader (frames only)", count, best(args.repeat, dpkt_reader))

        def fwemu_reader() -> list[tuple[float, bytes]]:
            capture = open_capture(path)
            try:
                return [(ts, ip) for ts, ip in capture if ip is not None]
            finally:
                capture.close()

        timed("read: fwemu reader (+ Ethernet stripped)", count, best(args.repeat, fwemu_reader))
        packets = fwemu_reader()

        def engine_alone() -> None:
            handle = Engine(load_preset("linux")).handle_packet
            for ts, ip in packets:
                handle(ip, now=ts)

        timed("engine alone (handle_packet, pre-read)", count, best(args.repeat, engine_alone))
        packets.clear()

        def whole() -> None:
            capture = open_capture(path)
            try:
                replay(capture, load_preset("linux"))
            finally:
                capture.close()

        timed("replay total (read + timers + engine)", count, best(args.repeat, whole))


if __name__ == "__main__":
    main()
