"""The capture replay tool (tests/e2e/replay_captures.py) on synthetic captures written here: it
must find the connections, rewrite them so the kernel sees the captured lengths and options, and
report where the kernel and fwemu part. (The shared real captures are for people to run it on.)
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from fwemu.core import packet as pk
from tests.core.trace import flags_of, make_policy
from tests.e2e.conftest import require_root
from tests.e2e.kernel import Kernel, Verdict
from tests.e2e.replay_captures import (
    Connection,
    capture_files,
    main,
    read_connections,
    replay,
    replay_lab,
)

pytestmark = pytest.mark.e2e

CLIENT4, SERVER4 = (ipaddress.ip_address(a).packed for a in ("192.0.2.10", "198.51.100.20"))
CLIENT6, SERVER6 = (ipaddress.ip_address(a).packed for a in ("2001:db8::10", "2001:db8:1::20"))
SYN_OPTIONS = pk.encode_options(mss=1460, sack_perm=True, timestamps=(100, 0), wscale=7)
TS = pk.encode_options(timestamps=(101, 100))
ETHER = bytes(12)  # MAC addresses; the EtherType follows
BIG = 20_000  # bytes: far above the lab's default 1500-byte MTU, as TSO captures hold


def segment(src: bytes, sport: int, dst: bytes, dport: int, flags: str, seq: int, ack: int,
            length: int = 0, options: bytes = TS) -> bytes:  # fmt: skip
    return pk.build_segment(
        src, sport, dst, dport, flags=flags_of(flags), seq=seq, ack=ack, payload_len=length,
        options=options,
    )  # fmt: skip


def cut(packet: bytes) -> bytes:
    """The packet cut after its TCP header, its IP length still the original's (as the shared
    captures are)."""
    tcp_at = 20 if packet[0] >> 4 == 4 else 40
    return packet[: tcp_at + (packet[tcp_at + 12] >> 4) * 4]


def tso(packet: bytes) -> bytes:
    """An IPv4 packet as captured before TSO split it: total length 0, every byte present."""
    return packet[:2] + b"\0\0" + packet[4:]


def closed(client: bytes, server: bytes, port: int) -> list[bytes]:
    """A handshake with options, 20000 bytes up (the client's sequence wraps past 2**32) and
    3000 down, the server closing first: TIME_WAIT at the end."""
    c, s = 0xFFFFF000, 1_000_000

    def up(flags: str, seq: int, ack: int, length: int = 0, options: bytes = TS) -> bytes:
        return segment(client, port, server, 80, flags, seq, ack, length, options)

    def down(flags: str, seq: int, ack: int, length: int = 0, options: bytes = TS) -> bytes:
        return segment(server, 80, client, port, flags, seq, ack, length, options)

    down_data = down("PA", s + 1, c + 1 + BIG, 3000)
    return [
        cut(up("S", c, 0, options=SYN_OPTIONS)),
        cut(down("SA", s, c + 1, options=SYN_OPTIONS)),
        cut(up("A", c + 1, s + 1)),
        cut(up("PA", c + 1, s + 1, BIG)),
        tso(down_data) if len(client) == 4 else cut(down_data),
        cut(up("A", c + 1 + BIG, s + 3001)),
        cut(down("FA", s + 3001, c + 1 + BIG)),
        cut(up("FA", c + 1 + BIG, s + 3002)),
        cut(down("A", s + 3002, c + 2 + BIG)),
    ]


def midstream() -> list[bytes]:
    """A connection caught after its handshake, the server (port 443) speaking first."""
    return [
        cut(segment(SERVER4, 443, CLIENT4, 50000, "PA", 5000, 7000, 100)),
        cut(segment(CLIENT4, 50000, SERVER4, 443, "A", 7000, 5100)),
        cut(segment(CLIENT4, 50000, SERVER4, 443, "PA", 7000, 5100, 10)),
        cut(segment(SERVER4, 443, CLIENT4, 50000, "A", 5100, 7010)),
    ]


def write_pcap(path: Path, packets: list[bytes]) -> None:
    with path.open("wb") as f:
        writer = dpkt.pcap.Writer(f, linktype=dpkt.pcap.DLT_EN10MB)
        for n, packet in enumerate(packets):
            ethertype = b"\x08\x00" if packet[0] >> 4 == 4 else b"\x86\xdd"
            writer.writepkt(ETHER + ethertype + packet, ts=1_700_000_000 + n / 1000)


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a.pcap: an IPv4 connection with the mid-stream one interleaved; b.pcap: IPv6."""
    folder = tmp_path_factory.mktemp("captures")
    v4, other = closed(CLIENT4, SERVER4, 40000), midstream()
    write_pcap(folder / "a.pcap", [v4[0], other[0], *v4[1:3], *other[1:], *v4[3:]])
    write_pcap(folder / "b.pcap", closed(CLIENT6, SERVER6, 40001))
    (folder / "notes.txt").write_text("not a capture")
    return folder


@pytest.fixture(scope="module")
def kernel() -> Iterator[Kernel]:
    require_root()
    with replay_lab(f"fwemu-{os.getpid()}-rct", 79) as k:
        yield k


def connections(folder: Path) -> list[Connection]:
    skipped: Counter[str] = Counter()
    found = [c for path in capture_files([folder]) for c in read_connections(path, skipped)]
    assert not skipped
    return found


def test_connections_are_found_with_their_clients(captures: Path) -> None:
    found = connections(captures)
    assert [(c.capture, c.number, c.version, len(c.packets)) for c in found] == [
        ("a.pcap", 1, 4, 9),
        ("a.pcap", 2, 4, 4),
        ("b.pcap", 1, 6, 9),
    ]
    # The SYN's sender; without a SYN, the first packet's sender.
    assert [c.client for c in found] == [(CLIENT4, 40000), (SERVER4, 443), (CLIENT6, 40001)]
    # The TSO record's length came from its bytes.
    assert found[0].packets[4].segment.payload_len == 3000


def test_the_kernel_and_fwemu_see_the_captured_conversation(kernel: Kernel, captures: Path) -> None:
    outcomes = [replay(kernel, c) for c in connections(captures)]
    # The kernel followed every segment, 20000-byte ones included: a wrong length or checksum
    # would make it call packets INVALID, an MTU too small would stop the replay.
    assert [o.error for o in outcomes] == [None, None, None]
    assert [[c.kernel.invalid for c in o.checkpoints] for o in outcomes] == [
        [False] * 9,
        [False] * 4,
        [False] * 9,
    ]
    assert [o.checkpoints[-1].kernel.state for o in outcomes] == [
        "TIME_WAIT",
        "ESTABLISHED",
        "TIME_WAIT",
    ]
    assert [o.first_divergence for o in outcomes] == [None, None, None]


def test_a_divergence_names_its_packet_and_both_verdicts(kernel: Kernel, captures: Path) -> None:
    picked_up = connections(captures)[1]
    # fwemu without the kernel's tcp_loose pickup: the kernel adopts the flow, fwemu does not.
    outcome = replay(kernel, picked_up, make_policy(pickup=False))
    first = outcome.first_divergence
    assert first is not None
    assert (first.number, first.packet.frame, first.side) == (1, 2, "client")
    assert (first.kernel, first.fwemu) == (Verdict("ESTABLISHED", False), Verdict(None, True))
    assert (outcome.same_state, outcome.same) == (0, 0)


def test_the_command_sums_up_in_json(captures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_root()
    assert main(["--json", "-v", str(captures)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"] == {
        "connections": 3,
        "checkpoints": 22,
        "same_state": 22,
        "same_state_percent": 100.0,
        "same": 22,
        "same_percent": 100.0,
        "diverged_on_state": 0,
        "diverged": 0,
        "errors": 0,
        "skipped_records": {},
    }
    assert [c["title"] for c in doc["connections"]] == [
        "a.pcap #1 192.0.2.10:40000 > 198.51.100.20:80",
        "a.pcap #2 198.51.100.20:443 > 192.0.2.10:50000",
        "b.pcap #1 [2001:db8::10]:40001 > [2001:db8:1::20]:80",
    ]


def test_the_command_picks_a_family(captures: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_root()
    assert main(["-6", str(captures / "a.pcap"), str(captures / "b.pcap")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("1 connections, 9 checkpoints:")
