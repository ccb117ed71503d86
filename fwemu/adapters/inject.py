"""Sending the core's forged packets (complete IP packets, headers included) via raw sockets.

IPPROTO_RAW sockets take the whole IP header from the caller: IP_HDRINCL is implied for IPv4
(raw(7)), and Linux's IPv6 raw sockets with IPPROTO_RAW take the IPv6 header too (ipv6(7)
"IPPROTO_RAW ... include the header"). The packets are locally generated, so they leave through
OUTPUT/POSTROUTING and never meet the FORWARD rule that queues traffic to fwemu.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from types import TracebackType
from typing import Protocol


class Sender(Protocol):
    """What the loop needs to inject a packet (Injector; a fake in tests)."""

    def send(self, packet: bytes) -> bool: ...


class Injector:
    """Two raw sockets, opened in the current network namespace; use as a context manager."""

    def __init__(self, on_error: Callable[[str], None]) -> None:
        self._on_error = on_error
        self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        except OSError:
            self._v4.close()
            raise

    def send(self, packet: bytes) -> bool:
        """Send one IPv4 or IPv6 packet to the destination in its header; False if it failed.

        A failure (no route, a full buffer) is reported through `on_error`, never raised: a lost
        RST must not stop the firewall.
        """
        version = packet[0] >> 4 if packet else 0
        try:
            if version == 4 and len(packet) >= 20:
                self._v4.sendto(packet, (str(ipaddress.IPv4Address(packet[16:20])), 0))
            elif version == 6 and len(packet) >= 40:
                self._v6.sendto(packet, (str(ipaddress.IPv6Address(packet[24:40])), 0))
            else:
                self._on_error(f"not an IPv4 or IPv6 packet ({len(packet)} bytes); not sent")
                return False
        except OSError as err:
            self._on_error(f"sending a {len(packet)}-byte IPv{version} packet failed: {err}")
            return False
        return True

    def close(self) -> None:
        self._v4.close()
        self._v6.close()

    def __enter__(self) -> Injector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
