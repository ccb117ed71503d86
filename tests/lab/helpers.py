"""Helpers for lab tests: what a person would check with ip(8) and ping(8)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from fwemu.lab import socket_in

# The console script a user runs, from this interpreter's virtualenv.
FWEMU = str(Path(sys.executable).with_name("fwemu"))
# Commands to run in a lab that say "ready" once they are, then wait: one that SIGTERM ends,
# and one that ignores it.
_READY = "print('ready', flush=True); import time; time.sleep(600)"
SLEEPER = [sys.executable, "-c", _READY]
DEAF = [
    sys.executable,
    "-c",
    f"import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); {_READY}",
]


def root_network() -> str:
    """The root namespace's links and routes, as `ip` prints them."""
    commands = (["ip", "-o", "link"], ["ip", "-4", "route"], ["ip", "-6", "route"])
    return "\n".join(
        subprocess.run(c, check=True, capture_output=True, text=True).stdout for c in commands
    )


def ping(namespace: str, address: str, timeout: float = 2.0) -> bool:
    """True if an ICMP echo from `namespace` to `address` is answered (the lab has no ping(8))."""
    v6 = ":" in address
    family, proto = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    )
    # Echo request/reply types: RFC 792 (8/0) and RFC 4443 §4 (128/129).
    request, reply = (128, 129) if v6 else (8, 0)
    ident = os.getpid() & 0xFFFF
    message = struct.pack("!BBHHH", request, 0, 0, ident, 1) + b"fwemu-lab"
    if not v6:  # the kernel fills in the ICMPv6 checksum itself (RFC 3542 §3.1), not ICMPv4's
        message = message[:2] + struct.pack("!H", _inet_checksum(message)) + message[4:]
    deadline = time.monotonic() + timeout
    with socket_in(namespace, family, socket.SOCK_RAW, proto) as sock:
        sock.sendto(message, (address, 0))
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(2048)
            except TimeoutError:
                return False
            icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]  # raw IPv4 includes the IP header
            if icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
                return True
    return False


def _inet_checksum(data: bytes) -> int:
    """RFC 1071 one's-complement sum of 16-bit words."""
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))
    if len(data) % 2:
        total += data[-1] << 8
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF
