"""Nanoseconds per `fwemu.core.packet.parse` call for typical queued packets.

Run: .venv/bin/python bench/packet.py
"""

import timeit

from fwemu.core.packet import TCP_ACK, TCP_PSH, TCP_SYN, build_rst, parse

_V4_A = bytes([10, 0, 1, 2])
_V4_B = bytes([10, 0, 2, 2])
_V6_A = bytes.fromhex("fd000000000000000000000000000102")
_V6_B = bytes.fromhex("fd000000000000000000000000000202")
# MSS 1460, SACK permitted, timestamps, NOP, window scale 7: what Linux puts on a SYN (20 bytes).
_SYN_OPTIONS = bytes.fromhex("020405b40402080a000000010000000001030307")


def _packet(src: bytes, dst: bytes, flags: int, options: bytes = b"", payload: int = 0) -> bytes:
    """A queued packet: an RST template re-flagged, optionally with options and a payload length."""
    rst = bytearray(build_rst(src, 40000, dst, 443, seq=1000, ack=2000))
    ip_len = 20 if len(src) == 4 else 40
    rst[ip_len + 12] = (5 + len(options) // 4) << 4
    rst[ip_len + 13] = flags
    total = len(rst) + len(options) + payload
    if len(src) == 4:
        rst[2:4] = total.to_bytes(2)
    else:
        rst[4:6] = (total - 40).to_bytes(2)
    return bytes(rst) + options + bytes(min(payload, 128 - len(rst) - len(options)))


def main() -> None:
    cases = {
        "IPv4 data segment (1448 B, copy 128)": _packet(
            _V4_B, _V4_A, TCP_ACK | TCP_PSH, payload=1448
        ),
        "IPv4 SYN with options": _packet(_V4_A, _V4_B, TCP_SYN, options=_SYN_OPTIONS),
        "IPv6 data segment (1428 B, copy 128)": _packet(_V6_A, _V6_B, TCP_ACK, payload=1428),
    }
    for name, data in cases.items():
        assert not hasattr(parse(data), "reason"), parse(data)
        timer = timeit.Timer("parse(data)", globals={"parse": parse, "data": data})
        loops = 200_000
        best = min(timer.repeat(repeat=7, number=loops)) / loops
        print(f"{name:40s} {best * 1e9:7.0f} ns/parse")


if __name__ == "__main__":
    main()
