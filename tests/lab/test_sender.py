"""The flood's SYNs against scapy (an independent implementation of the headers and their
checksums), and the pacing, without touching the kernel."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import threading
import time

import pytest

from fwemu.lab.sender import BATCH, FIRST_PORT, PORTS, SYN_WINDOW, Sent, SynFactory, pace

# scapy logs warnings about its environment at import; they are not ours to fail on.
logging.getLogger("scapy").setLevel(logging.ERROR)
from scapy.layers.inet import IP, TCP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.packet import Packet  # noqa: E402

SOURCES4 = [ipaddress.ip_address(f"10.7.1.{host}").packed for host in range(3, 255)]
SOURCES6 = [ipaddress.ip_address(f"fd00:7:1::{host:x}").packed for host in range(3, 255)]
SERVER4 = ipaddress.ip_address("10.7.2.2").packed
SERVER6 = ipaddress.ip_address("fd00:7:2::2").packed


def syns(factory: SynFactory, count: int) -> list[bytes]:
    buffer = bytearray(factory.template * count)
    factory.fill(buffer, count)
    return [bytes(buffer[i : i + factory.size]) for i in range(0, len(buffer), factory.size)]


def recomputed(packet: Packet) -> Packet:
    """The same packet with scapy's own checksums: `packet` with them deleted, rebuilt."""
    copy = packet.copy()
    del copy[TCP].chksum
    if IP in copy:
        del copy[IP].chksum
    return copy.__class__(bytes(copy))


@pytest.mark.parametrize(
    ("sources", "server", "layer"),
    [(SOURCES4, SERVER4, IP), (SOURCES6, SERVER6, IPv6)],
    ids=["ipv4", "ipv6"],
)
def test_every_syn_has_both_checksums_right(
    sources: list[bytes], server: bytes, layer: type[Packet]
) -> None:
    factory = SynFactory(sources, server, 8080, seed=1)
    for raw in syns(factory, 3 * BATCH):
        packet = layer(raw)
        again = recomputed(packet)
        assert packet[TCP].chksum == again[TCP].chksum
        if layer is IP:
            assert packet[IP].chksum == again[IP].chksum
        assert bytes(again) == raw  # nothing else differs


def test_syns_look_like_linux_ones() -> None:
    [raw] = syns(SynFactory(SOURCES4, SERVER4, 80, seed=2), 1)
    packet = IP(raw)
    assert (packet[IP].ttl, packet[IP].flags, packet[IP].dst) == (64, "DF", "10.7.2.2")
    tcp = packet[TCP]
    assert (tcp.flags, tcp.dport, tcp.ack, tcp.window) == ("S", 80, 0, SYN_WINDOW)
    assert [name for name, _ in tcp.options] == ["MSS", "SAckOK", "Timestamp", "NOP", "WScale"]
    assert FIRST_PORT <= tcp.sport < 65536
    assert ipaddress.ip_address(packet[IP].src).packed in SOURCES4


def test_source_and_port_pairs_do_not_repeat_until_all_are_used() -> None:
    factory = SynFactory(SOURCES4[:3], SERVER4, 80, seed=3)
    assert factory.distinct == 3 * PORTS

    def pairs(count: int) -> list[tuple[bytes, bytes]]:
        """(source address, source port) of the next SYNs, as the IPv4 and TCP headers hold
        them (scapy would take seconds to parse them all)."""
        return [(raw[12:16], raw[20:22]) for raw in syns(factory, count)]

    every = pairs(factory.distinct)
    assert len(set(every)) == factory.distinct
    # Consecutive SYNs differ in address and port, as random choices would.
    assert all(a[0] != b[0] and a[1] != b[1] for a, b in itertools.pairwise(every))
    # Then the same pairs come round again, in the same order.
    assert pairs(10) == every[:10]


def test_sequence_numbers_are_random() -> None:
    packets = [IP(raw) for raw in syns(SynFactory(SOURCES4, SERVER4, 80, seed=4), 1000)]
    assert len({p[TCP].seq for p in packets}) > 990


def test_a_seed_repeats_the_flood() -> None:
    def first(seed: int) -> list[bytes]:
        return syns(SynFactory(SOURCES6, SERVER6, 443, seed=seed), 10)

    assert first(5) == first(5)
    assert first(5) != first(6)


def test_sources_of_another_family_are_refused() -> None:
    with pytest.raises(ValueError, match="family"):
        SynFactory(SOURCES6, SERVER4, 80)
    with pytest.raises(ValueError, match="family"):
        SynFactory([], SERVER4, 80)


class Recorder:
    """A `send` for pace: records batch sizes; `lost` packets of each batch are lost."""

    def __init__(self, lost: int = 0) -> None:
        self.batches: list[int] = []
        self.lost = lost

    def __call__(self, count: int) -> tuple[int, int]:
        self.batches.append(count)
        lost = min(self.lost, count)
        return count - lost, lost


@pytest.mark.timeout(10)
def test_pace_sends_the_count_in_batches_and_reports_the_losses() -> None:
    send = Recorder(lost=1)
    done = pace(send, count=10_000, rate=1_000_000)
    assert sum(send.batches) == 10_000
    assert max(send.batches) <= BATCH
    assert (done.sent + done.lost, done.lost, done.stopped) == (10_000, len(send.batches), False)


@pytest.mark.timeout(10)
def test_pace_keeps_to_the_rate() -> None:
    count, rate = 300, 3000.0
    done = pace(Recorder(), count=count, rate=rate)
    # The k-th packet is due k / rate after the first: never sooner, and bursts are small.
    assert done.seconds >= (count - rate / 1000) / rate
    assert done.rate <= rate * 1.05


@pytest.mark.timeout(10)
def test_pace_stops_after_its_seconds() -> None:
    done = pace(Recorder(), count=10**9, rate=1000, seconds=0.2)
    assert 0 < done.sent <= 0.2 * 1000 + BATCH
    assert not done.stopped  # it ran out of time, nobody stopped it


@pytest.mark.timeout(10)
def test_a_stop_from_another_thread_ends_it_and_is_reported() -> None:
    stop = threading.Event()
    progress = Sent()
    options = {"count": 10**9, "rate": 10_000, "stop": stop, "progress": progress}
    sending = threading.Thread(target=pace, args=(Recorder(),), kwargs=options)
    sending.start()
    deadline = time.monotonic() + 5
    while progress.sent < 100 and time.monotonic() < deadline:  # until it is under way
        time.sleep(0.001)
    stop.set()
    sending.join(5)
    assert not sending.is_alive()
    assert progress.stopped and 100 <= progress.sent < 10**9


def test_nothing_is_sent_once_stopped() -> None:
    stop = threading.Event()
    stop.set()
    send = Recorder()
    done = pace(send, count=10, rate=10, stop=stop)
    assert (send.batches, done.sent, done.stopped) == ([], 0, True)
