"""Captures for the replay tests: TCP conversations and UDP exchanges built with scapy, framed in
each link layer and written with dpkt's pcap and pcapng writers (implementations independent of
fwemu's)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dpkt
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1Q, Ether

CLIENT4, SERVER4 = "10.9.0.2", "10.9.1.2"
CLIENT6, SERVER6 = "fd00:9::2", "fd00:9:1::2"
T0 = 1_700_000_000.0  # capture timestamps are epoch seconds
MAC_A, MAC_B = "02:00:00:00:00:01", "02:00:00:00:00:02"

Frame = tuple[float, bytes]


def _ethertype(ip: bytes) -> int:
    return 0x86DD if ip[0] >> 4 == 6 else 0x0800


# Link layers: name -> (pcap link type, how to frame an IP packet).
LINKS: dict[str, tuple[int, Callable[[bytes], bytes]]] = {
    "ethernet": (1, lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B, type=_ethertype(ip)) / ip)),
    "vlan": (
        1,
        lambda ip: bytes(Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=7, type=_ethertype(ip)) / ip),
    ),
    "sll": (113, lambda ip: bytes(CookedLinux(proto=_ethertype(ip)) / ip)),
    "sll2": (276, lambda ip: bytes(CookedLinuxV2(proto=_ethertype(ip)) / ip)),
    "raw": (101, lambda ip: ip),
    "ipv4": (228, lambda ip: ip),
}


@dataclass
class Conversation:
    """One TCP connection, written packet by packet at explicit times (seconds from T0)."""

    sport: int = 40000
    dport: int = 8080
    v6: bool = False
    client_seq: int = 1000
    server_seq: int = 5000
    packets: list[Frame] = field(default_factory=list)

    def _ip(self, from_client: bool) -> IP | IPv6:
        client, server = (CLIENT6, SERVER6) if self.v6 else (CLIENT4, SERVER4)
        src, dst = (client, server) if from_client else (server, client)
        return IPv6(src=src, dst=dst) if self.v6 else IP(src=src, dst=dst)

    def send(self, t: float, from_client: bool, flags: str, data: bytes = b"") -> bytes:
        """A segment with the sender's next seq and the peer's next as ack; returns its bytes."""
        seq, ack = (
            (self.client_seq, self.server_seq)
            if from_client
            else (self.server_seq, self.client_seq)
        )
        sport, dport = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        tcp = TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack if "A" in flags else 0)
        raw = bytes(self._ip(from_client) / tcp / data)
        used = len(data) + ("S" in flags) + ("F" in flags)
        if from_client:
            self.client_seq += used
        else:
            self.server_seq += used
        self.packets.append((T0 + t, raw))
        return raw

    def client(self, t: float, flags: str = "A", data: bytes = b"") -> bytes:
        return self.send(t, True, flags, data)

    def server(self, t: float, flags: str = "A", data: bytes = b"") -> bytes:
        return self.send(t, False, flags, data)

    def handshake(self, t: float) -> Conversation:
        self.client(t, "S")
        self.server(t + 0.001, "SA")
        self.client(t + 0.002, "A")
        return self

    def exchange(self, t: float, data: bytes = b"ping") -> Conversation:
        self.client(t, "PA", data)
        self.server(t + 0.001, "PA", data)
        self.client(t + 0.002, "A")
        return self


@dataclass
class Datagrams:
    """One UDP flow (a DNS-like client and server), written datagram by datagram at explicit
    times (seconds from T0)."""

    sport: int = 40000
    dport: int = 53
    v6: bool = False
    packets: list[Frame] = field(default_factory=list)

    def send(self, t: float, from_client: bool, data: bytes) -> bytes:
        client, server = (CLIENT6, SERVER6) if self.v6 else (CLIENT4, SERVER4)
        src, dst = (client, server) if from_client else (server, client)
        sport, dport = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        ip = IPv6(src=src, dst=dst) if self.v6 else IP(src=src, dst=dst)
        raw = bytes(ip / UDP(sport=sport, dport=dport) / data)
        self.packets.append((T0 + t, raw))
        return raw

    def client(self, t: float, data: bytes = b"query") -> bytes:
        return self.send(t, True, data)

    def server(self, t: float, data: bytes = b"answer") -> bytes:
        return self.send(t, False, data)


def merged(*conversations: Conversation | Datagrams, extra: list[Frame] = ()) -> list[Frame]:  # type: ignore[assignment]
    return sorted([p for c in conversations for p in c.packets] + list(extra), key=lambda p: p[0])


def write(
    path: Path,
    packets: list[Frame],
    link: str = "ethernet",
    *,
    pcapng: bool = False,
    nano: bool = False,
) -> Path:
    linktype, frame = LINKS[link]
    with open(path, "wb") as f:
        if pcapng:
            writer = dpkt.pcapng.Writer(f, linktype=linktype)
        else:
            writer = dpkt.pcap.Writer(f, linktype=linktype, nano=nano)
        for ts, ip in packets:
            writer.writepkt(frame(ip), ts=ts)
    return path
