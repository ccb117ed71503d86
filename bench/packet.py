"""Nanoseconds per `fwemu.core.packet.parse` call for typical queued packets.

Run: .venv/bin/python bench/packet.py
"""

import timeit

from fwemu.core.packet import TCP_ACK, TCP_PSH, TCP_SYN, Segment, build_segment, parse

_V4_CLIENT = bytes([10, 0, 1, 2])
_V4_SERVER = bytes([10, 0, 2, 2])
_V6_CLIENT = bytes.fromhex("fd000000000000000000000000000102")
_V6_SERVER = bytes.fromhex("fd000000000000000000000000000202")
# MSS 1460, SACK permitted, timestamps, NOP, window scale 7: what Linux puts on a SYN.
_SYN_OPTIONS = bytes.fromhex("020405b40402080a000000010000000001030307")
_COPY_RANGE = 128  # the adapter's header-only copy (reference tcp-rst-and-nfqueue.md §3.2)


def _queued(src: bytes, dst: bytes, flags: int, payload_len: int) -> bytes:
    data = build_segment(src, 40000, dst, 443, flags=flags, seq=1, ack=2, payload_len=payload_len)
    return data[:_COPY_RANGE]


def _syn_with_options() -> bytes:
    """A SYN whose first payload bytes are turned into options by raising the data offset."""
    data = bytearray(_queued(_V4_CLIENT, _V4_SERVER, TCP_SYN, len(_SYN_OPTIONS)))
    data[32] = (5 + len(_SYN_OPTIONS) // 4) << 4
    data[40:] = _SYN_OPTIONS
    return bytes(data)


def main() -> None:
    cases = {
        # server -> client: the key's endpoints are swapped, the costlier direction.
        "IPv4 data segment (1448 B)": _queued(_V4_SERVER, _V4_CLIENT, TCP_ACK | TCP_PSH, 1448),
        "IPv4 SYN with options": _syn_with_options(),
        "IPv6 data segment (1428 B)": _queued(_V6_SERVER, _V6_CLIENT, TCP_ACK | TCP_PSH, 1428),
    }
    for name, data in cases.items():
        if not isinstance(parse(data), Segment):
            raise SystemExit(f"{name}: {parse(data)}")
        timer = timeit.Timer("parse(data)", globals={"parse": parse, "data": data})
        loops = 200_000
        best = min(timer.repeat(repeat=7, number=loops)) / loops
        print(f"{name:30s} {best * 1e9:6.0f} ns/parse")


if __name__ == "__main__":
    main()
