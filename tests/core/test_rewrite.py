"""Rewritten packets: every field changed as asked, nothing else, and a checksum a real stack
accepts (checked by recomputing it with scapy, in the tests only)."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from fwemu.core import packet as pk
from fwemu.core.rewrite import rewrite

V4 = (bytes((10, 0, 1, 2)), bytes((10, 0, 2, 2)))
V6 = (bytes.fromhex("fd000001" + "00" * 11 + "02"), bytes.fromhex("fd000002" + "00" * 11 + "02"))


def packet(v6: bool, flags: int = pk.TCP_ACK, options: bytes = b"", payload: int = 100) -> bytes:
    src, dst = V6 if v6 else V4
    return pk.build_segment(
        src,
        40000,
        dst,
        80,
        flags=flags,
        seq=0xFFFFFF00,
        ack=5000,
        options=options,
        payload_len=payload,
    )


def checksum_ok(data: bytes) -> bool:
    layer = IPv6(data) if data[0] >> 4 == 6 else IP(data)
    given = layer[TCP].chksum
    del layer[TCP].chksum
    return bool(given == type(layer)(bytes(layer))[TCP].chksum)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_seq_and_ack_move_modulo_2_32_and_the_checksum_stays_right(v6: bool) -> None:
    out = rewrite(packet(v6), seq=0x200, ack=-100)
    seg = pk.parse(out)
    assert isinstance(seg, pk.Segment)
    assert (seg.seq, seg.ack, seg.payload_len) == (0x100, 4900, 100)
    assert checksum_ok(out)


def test_no_ack_flag_no_ack_change() -> None:
    out = rewrite(packet(False, flags=pk.TCP_SYN, payload=0), seq=1, ack=7)
    seg = pk.parse(out)
    assert isinstance(seg, pk.Segment) and (seg.seq, seg.ack) == (0xFFFFFF01, 5000)
    assert checksum_ok(out)


def test_sack_edges_window_and_a_nothing_to_do_call() -> None:
    options = pk.encode_options(sack=((6000, 7000), (8000, 9000)))
    data = packet(False, options=options)
    assert rewrite(data) == data
    out = rewrite(data, ack=1000, sack=1000, window=512)
    seg = pk.parse(out)
    assert isinstance(seg, pk.Segment)
    assert (seg.ack, seg.sack, seg.window) == (6000, 10000, 512)
    assert checksum_ok(out)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_syn_options_cleared_to_nops_and_the_mss_clamped(v6: bool) -> None:
    options = pk.encode_options(mss=1460, wscale=7, sack_perm=True, timestamps=(1, 0))
    data = packet(v6, flags=pk.TCP_SYN, options=options, payload=0)
    out = rewrite(data, clear=frozenset((3, 4, 8)), mss=1380)
    seg = pk.parse(out)
    assert isinstance(seg, pk.Segment)
    assert (seg.wscale, seg.sack_perm) == (-1, False)
    layer = IPv6(out) if v6 else IP(out)
    assert dict((k, v) for k, v in layer[TCP].options if k != "NOP") == {"MSS": 1380}
    assert len(out) == len(data) and checksum_ok(out)
