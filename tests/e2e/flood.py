"""A bounded flood of junk TCP from one address, for the overload tests (run inside the lab's
client namespace, as root: `python tests/e2e/flood.py SRC DST DPORT --rate R --seconds S`).

The mix is what a stress run used against fwemu: mid-stream ACKs and FINs of no flow, SYN|FIN
(invalid flags) on random ports, TCP headers too short to parse, and, with --live SPORT, invalid
flags on a live connection's own four-tuple. Every packet crosses the firewall (the kernel
forwards without checking TCP); none can move a real connection's sequence numbers. Sent and
paced to `rate` packets a second as `fwemu flood` sends its SYNs (fwemu.lab.sender); it stops
after `seconds` and prints {"sent": N, "seconds": T}.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import random
import struct
from contextlib import closing

from fwemu.core import packet as pk
from fwemu.lab.sender import RawSender, pace


def junk(src: bytes, dst: bytes, dport: int, live: int | None, count: int) -> list[bytes]:
    rng = random.Random(7)
    out: list[bytes] = []
    for i in range(count):
        sport = rng.randrange(1024, 65536)
        seq, ack = rng.getrandbits(32), rng.getrandbits(32)
        kind = i % 5
        if kind == 4 and live is not None:
            flags, sport = pk.TCP_SYN | pk.TCP_FIN | pk.TCP_RST, live
        else:
            flags = (pk.TCP_ACK, pk.TCP_FIN, pk.TCP_SYN | pk.TCP_FIN, pk.TCP_ACK, 0)[kind]
        packet = pk.build_segment(src, sport, dst, dport, flags=flags, seq=seq, ack=ack)
        if kind == 3:  # a TCP header cut after 12 bytes: unparseable
            packet = packet[:2] + struct.pack("!H", 32) + packet[4:32]
        out.append(packet)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("dport", type=int)
    parser.add_argument("--rate", type=float, required=True, help="packets a second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--live", type=int, help="a live connection's client port")
    args = parser.parse_args()
    src, dst = (ipaddress.ip_address(a).packed for a in (args.src, args.dst))
    packets = junk(src, dst, args.dport, args.live, 4096)
    at = 0

    def send(count: int) -> tuple[int, int]:
        nonlocal at
        sender.load([packets[(at + i) % len(packets)] for i in range(count)])
        at = (at + count) % len(packets)
        return sender.send(count)

    with closing(RawSender(args.dst, max(map(len, packets)))) as sender:
        count = math.ceil(args.rate * args.seconds)
        done = pace(send, count=count, rate=args.rate, seconds=args.seconds)
    print(json.dumps({"sent": done.sent, "seconds": round(done.seconds, 3)}))


if __name__ == "__main__":
    main()
