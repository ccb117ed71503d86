"""Replay the TCP connections of packet captures through the real nf_conntrack and through fwemu's
engine, packet by packet, and say where their verdicts part: issue 12's check against real traffic.

    .venv/bin/python -m tests.e2e.replay_captures /work/shared/tcp-captures
    .venv/bin/python -m tests.e2e.replay_captures --trace -6 some.pcap

Each connection (one TCP four-tuple of one capture) is replayed on its own, the kernel's table
flushed and fwemu's engine fresh, in a lab built by tests/e2e/kernel.py whose fw namespace only
forwards. After every packet (a checkpoint) both name the flow's state and say whether the packet
was INVALID (the kernel's INVALID counter; fwemu's out-of-state verdict).

How a captured packet becomes a lab packet:
- addresses become the lab's client and server addresses (IPv6 ones for IPv6 captures); ports,
  sequence and acknowledgment numbers, flags, reserved bits, window, urgent pointer and options
  stay exactly as captured;
- the payload is zeros, as long as the IP length fields say (captures cut after the TCP header
  keep the original length there); an IPv4 total length of 0, written by captures of TSO
  segments, means the captured bytes are the whole segment;
- TTL/hop limit 64, no IP options (IPv4 keeps TOS, id and DF; IPv6 its traffic class and flow
  label); both checksums are recomputed (conntrack calls a forwarded segment with a bad TCP
  checksum INVALID: tcp_error(), nf_conntrack_checksum=1);
- the lab's veth MTU is raised to 65535: captures taken with TSO/GRO hold segments far beyond
  1500 bytes, and a raw socket cannot send more than the MTU.
Records that are no plain TCP segment (other protocols, fragments, IPv6 extension headers, a
TCP header cut short) are skipped and counted.

Which side is the client: the first packet carrying SYN decides (its sender if a SYN, its
receiver if a SYN/ACK); without one, the first packet's sender. This only picks which namespace
sends what: the kernel's and fwemu's original direction is the first packet's sender anyway.
Time is the replay's own clock for both, as the kernel lives it; the capture's gaps are not
reproduced.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import signal
import struct
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt

from fwemu.core import packet as pk
from fwemu.core.engine import Engine
from fwemu.errors import FwemuError
from fwemu.lab import Endpoint, Side, run_in
from fwemu.ops.capture import open_capture
from fwemu.policy.model import Policy
from tests.e2e.kernel import LINUX, Kernel, Verdict, engine_invalid, kernel_lab

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
LAB_INDEX = 78  # tests/e2e/test_kernel_parity.py uses 77
# veth's max_mtu (ETH_MAX_MTU, include/uapi/linux/if_ether.h): room for any IPv4 packet.
LAB_MTU = 65535
_TTL = 64
_PROTO_TCP = 6
_IP4_DF = 0x4000
_TCP_CHECKSUM_AT = 16


# --- reading captures -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Packet:
    """One captured TCP segment (its payload length from the IP header) and its header bytes."""

    frame: int  # the record's number in its capture, from 1 (Wireshark's frame number)
    segment: pk.Segment  # as captured: original addresses
    ip_header: bytes  # the captured IPv4 or IPv6 fixed header (IPv4 options left out)
    tcp_header: bytes  # the captured TCP header, options included


@dataclass(frozen=True, slots=True)
class Connection:
    capture: str  # the capture's file name
    number: int  # its place among the capture's connections, from 1
    client: tuple[bytes, int]  # (address, port) as captured
    packets: tuple[Packet, ...]

    @property
    def version(self) -> int:
        return self.packets[0].segment.version

    def from_client(self, packet: Packet) -> bool:
        seg = packet.segment
        return (seg.src, seg.sport) == self.client

    @property
    def server(self) -> tuple[bytes, int]:
        seg = self.packets[0].segment
        ends = ((seg.src, seg.sport), (seg.dst, seg.dport))
        return ends[1] if ends[0] == self.client else ends[0]

    @property
    def title(self) -> str:
        client, server = _endpoint(*self.client), _endpoint(*self.server)
        return f"{self.capture} #{self.number} {client} > {server}"


def capture_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named, and the captures (by suffix) under the directories named, sorted."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in CAPTURE_SUFFIXES)
        else:
            files.append(path)
    return files


def read_connections(path: Path, skipped: Counter[str]) -> list[Connection]:
    """The TCP connections of one capture, in order of first packet; what is not a plain TCP
    segment is counted in `skipped` by reason."""
    capture = open_capture(path)
    by_key: dict[bytes, list[Packet]] = {}
    try:
        for frame, (_, data) in enumerate(capture, 1):
            packet = _packet(frame, data)
            if isinstance(packet, str):
                skipped[packet] += 1
            else:
                by_key.setdefault(packet.segment.key, []).append(packet)
    finally:
        capture.close()
    for warning in capture.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return [
        Connection(path.name, n, _client(packets), tuple(packets))
        for n, packets in enumerate(by_key.values(), 1)
    ]


# One early return per way a record is not a segment we can replay, in header order.
def _packet(frame: int, data: bytes | None) -> Packet | str:  # noqa: PLR0911
    """The record as a Packet, or why it is skipped."""
    if data is None:
        return "not IP"
    version = data[0] >> 4 if data else 0
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0x0F) * 4
        if data[9] != _PROTO_TCP:
            return "not TCP"
        if int.from_bytes(data[2:4]) == 0:
            # TSO: the capture has the whole segment, the stack had not set the length yet.
            data = data[:2] + len(data).to_bytes(2) + data[4:]
        ip_header, tcp_at = data[:20], ihl
    elif version == 6 and len(data) >= 40:
        if data[6] != _PROTO_TCP:
            return "not TCP or IPv6 extension headers"
        ip_header, tcp_at = data[:40], 40
    else:
        return "not IP"
    segment = pk.parse(data)
    if not isinstance(segment, pk.Segment):
        return segment.reason
    header_len = (data[tcp_at + 12] >> 4) * 4
    if len(data) < tcp_at + header_len:
        return "TCP header cut short"
    return Packet(frame, segment, ip_header, data[tcp_at : tcp_at + header_len])


def _client(packets: Sequence[Packet]) -> tuple[bytes, int]:
    for packet in packets:
        seg = packet.segment
        if seg.flags & pk.TCP_SYN:
            return (seg.dst, seg.dport) if seg.flags & pk.TCP_ACK else (seg.src, seg.sport)
    first = packets[0].segment
    return first.src, first.sport


# --- rewriting for the lab ------------------------------------------------------------------


def rewrite(packet: Packet, src: bytes, dst: bytes) -> bytes:
    """The packet from `src` to `dst`: captured TCP header, zero payload of the captured length,
    fresh IP header, correct checksums."""
    tcp_len = len(packet.tcp_header) + packet.segment.payload_len
    if len(src) == 4:
        # RFC 9293 §3.1 pseudo-header: src, dst, zero, protocol, TCP length.
        pseudo = src + dst + struct.pack("!xBH", _PROTO_TCP, tcp_len)
        tos, ident, fragment = struct.unpack_from("!xBxxHH", packet.ip_header)
        fields = (0x45, tos, 20 + tcp_len, ident, fragment & _IP4_DF, _TTL, _PROTO_TCP)
        header = struct.pack("!BBHHHBBH4s4s", *fields, 0, src, dst)
        ip = struct.pack("!BBHHHBBH4s4s", *fields, dpkt.in_cksum(header), src, dst)
    else:
        # RFC 8200 §8.1 pseudo-header: src, dst, 32-bit length, 3 zero bytes, next header.
        pseudo = src + dst + struct.pack("!I3xB", tcp_len, _PROTO_TCP)
        (first_word,) = struct.unpack_from("!I", packet.ip_header)  # version, class, flow label
        ip = struct.pack("!IHBB16s16s", first_word, tcp_len, _PROTO_TCP, _TTL, src, dst)
    head = packet.tcp_header
    head = head[:_TCP_CHECKSUM_AT] + b"\0\0" + head[_TCP_CHECKSUM_AT + 2 :]
    # Zero bytes add nothing to a one's-complement sum (RFC 1071): the payload needs no summing.
    checksum: int = dpkt.in_cksum(pseudo + head)
    tcp = head[:_TCP_CHECKSUM_AT] + checksum.to_bytes(2) + head[_TCP_CHECKSUM_AT + 2 :]
    return ip + tcp + bytes(packet.segment.payload_len)


# --- replaying ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the kernel and fwemu made of one packet."""

    number: int  # in its connection, from 1
    packet: Packet
    side: str  # "client" or "server": who sent it
    kernel: Verdict
    fwemu: Verdict

    @property
    def same_state(self) -> bool:
        return self.kernel.state == self.fwemu.state

    @property
    def same(self) -> bool:
        return self.same_state and self.kernel.invalid == self.fwemu.invalid

    def to_dict(self) -> dict[str, Any]:
        seg = self.packet.segment
        return {
            "packet": self.number,
            "frame": self.packet.frame,
            "side": self.side,
            "segment": pk.describe(seg),
            "flags": seg.flags,
            "seq": seg.seq,
            "ack": seg.ack,
            "len": seg.payload_len,
            "kernel": dataclasses.asdict(self.kernel),
            "fwemu": dataclasses.asdict(self.fwemu),
        }

    def describe(self) -> str:
        return (
            f"packet {self.number} (frame {self.packet.frame}) {self.side} "
            f"{pk.describe(self.packet.segment)}: kernel {self.kernel}, fwemu {self.fwemu}"
        )


@dataclass
class Outcome:
    connection: Connection
    checkpoints: list[Checkpoint] = field(default_factory=list)
    error: str | None = None  # why the replay stopped early

    @property
    def first_divergence(self) -> Checkpoint | None:
        return next((c for c in self.checkpoints if not c.same), None)

    @property
    def same_state(self) -> int:
        return sum(c.same_state for c in self.checkpoints)

    @property
    def same(self) -> int:
        return sum(c.same for c in self.checkpoints)

    def to_dict(self, *, trace: bool) -> dict[str, Any]:
        conn = self.connection
        first = self.first_divergence
        out: dict[str, Any] = {
            "capture": conn.capture,
            "connection": conn.number,
            "title": conn.title,
            "ip_version": conn.version,
            "packets": len(conn.packets),
            "checkpoints": len(self.checkpoints),
            "same_state": self.same_state,
            "same": self.same,
            "first_divergence": None if first is None else first.to_dict(),
            "error": self.error,
        }
        if trace:
            out["trace"] = [c.to_dict() for c in self.checkpoints]
        return out


def replay(kernel: Kernel, connection: Connection, policy: Policy = LINUX) -> Outcome:
    """Send every packet of `connection` through the kernel and a fresh engine, in order."""
    kernel.flush()
    engine = Engine(policy)
    plan = kernel.plan
    v6 = connection.version == 6
    client = ipaddress.ip_address(plan.client.ipv6 if v6 else plan.client.ipv4).packed
    server = ipaddress.ip_address(plan.server.ipv6 if v6 else plan.server.ipv4).packed
    outcome = Outcome(connection)
    start = time.monotonic()
    for number, packet in enumerate(connection.packets, 1):
        from_client = connection.from_client(packet)
        side = "client" if from_client else "server"
        data = rewrite(packet, *((client, server) if from_client else (server, client)))
        before = kernel.invalid()
        try:
            kernel.send(side, data)
        except (AssertionError, OSError) as err:
            outcome.error = f"packet {number} (frame {packet.frame}): {err}"
            break
        states = kernel.states()
        theirs = Verdict(states[0] if states else None, kernel.invalid() > before)
        now = time.monotonic() - start
        while (deadline := engine.next_deadline()) is not None and deadline <= now:
            engine.handle_timer(now=deadline)  # as the adapter runs timers: at their deadline
        decision = engine.handle_packet(data, now=now)
        flows = engine.flows(now=now)
        ours = Verdict(flows[0].state if flows else None, engine_invalid(decision))
        outcome.checkpoints.append(Checkpoint(number, packet, side, theirs, ours))
    return outcome


@contextmanager
def replay_lab(name: str, index: int = LAB_INDEX, *, liberal: bool = False) -> Iterator[Kernel]:
    """kernel_lab with room for the biggest captured segments (veth MTU 65535), and the kernel's
    window checks off if `liberal`."""
    with kernel_lab(name, index) as kernel:
        plan = kernel.plan
        ends: tuple[tuple[Side, Endpoint], ...] = (
            ("client", plan.client),
            ("fw", plan.fw_client_side),
            ("fw", plan.fw_server_side),
            ("server", plan.server),
        )
        for side, end in ends:
            argv = ["ip", "link", "set", "dev", end.ifname, "mtu", str(LAB_MTU)]
            done = run_in(plan.name, side, argv, capture_output=True)
            if done.returncode:
                raise FwemuError(f"{' '.join(argv)} in {end.namespace}: {done.stderr!r}")
        kernel.liberal(liberal)
        yield kernel


def liberal_policy(policy: Policy) -> Policy:
    """`policy` without window checks: fwemu's counterpart of nf_conntrack_tcp_be_liberal=1."""
    out_of_state = dataclasses.replace(policy.default.out_of_state, window_check=False)
    return dataclasses.replace(
        policy, default=dataclasses.replace(policy.default, out_of_state=out_of_state)
    )


# --- reporting ------------------------------------------------------------------------------


def summary(outcomes: Sequence[Outcome], skipped: Counter[str]) -> dict[str, Any]:
    checkpoints = sum(len(o.checkpoints) for o in outcomes)

    def share(n: int) -> float:
        return round(100 * n / checkpoints, 2) if checkpoints else 100.0

    same_state = sum(o.same_state for o in outcomes)
    same = sum(o.same for o in outcomes)
    return {
        "connections": len(outcomes),
        "checkpoints": checkpoints,
        "same_state": same_state,
        "same_state_percent": share(same_state),
        "same": same,
        "same_percent": share(same),
        "diverged_on_state": sum(o.same_state < len(o.checkpoints) for o in outcomes),
        "diverged": sum(o.same < len(o.checkpoints) for o in outcomes),
        "errors": sum(o.error is not None for o in outcomes),
        "skipped_records": dict(skipped),
    }


def summary_line(s: dict[str, Any]) -> str:
    skipped = sum(s["skipped_records"].values())
    return (
        f"{s['connections']} connections, {s['checkpoints']} checkpoints: state equal at "
        f"{s['same_state']} ({s['same_state_percent']:.2f} %), state and INVALID equal at "
        f"{s['same']} ({s['same_percent']:.2f} %); {s['diverged']} connections diverged "
        f"({s['diverged_on_state']} on state), {s['errors']} stopped early"
        + (f"; {skipped} records skipped" if skipped else "")
    )


def report_text(outcome: Outcome, *, trace: bool) -> Iterator[str]:
    first = outcome.first_divergence
    n = len(outcome.checkpoints)
    if first is None and outcome.error is None:
        yield f"{outcome.connection.title}: same at all {n} packets"
        return
    yield f"{outcome.connection.title}: {n - outcome.same} of {n} packets differ"
    if first is not None:
        yield f"  first: {first.describe()}"
    if outcome.error is not None:
        yield f"  stopped at {outcome.error}"
    if trace:
        for c in outcome.checkpoints:
            yield f"  {' ' if c.same else '!'} {c.describe()}"


# --- the command ----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tests.e2e.replay_captures",
        description=(
            "Replay every TCP connection of the captures packet by packet through the real "
            "kernel's conntrack (in a lab's fw namespace) and through fwemu's engine (Linux "
            "policy: tcp_loose pickup), and report per connection whether the state after "
            "each packet and the INVALID verdict agree, with the first divergence. "
            "Needs root. The captures are read in place, never copied."
        ),
        epilog=(
            "Output: one line per diverging connection (all with -v) naming its first "
            "divergence (packet number in the connection, frame number in the capture, "
            "sender, tcpdump-like flags/seq/ack/len with the captured addresses, kernel vs "
            "fwemu), then a summary line. Exit status: 0 if every checkpoint agreed, 1 if any "
            "diverged or a replay stopped early, 2 on bad usage or an unreadable capture. "
            "Example: %(prog)s --trace /work/shared/tcp-captures/zeek--tcp_missing-syn.pcap"
        ),
    )
    ap.add_argument(
        "paths",
        nargs="+",
        metavar="PCAP_OR_DIR",
        help="captures, or directories searched "
        f"recursively for {', '.join(CAPTURE_SUFFIXES)} files",
    )
    ap.add_argument("--json", action="store_true", help="one JSON document: summary, connections")
    ap.add_argument(
        "--liberal",
        action="store_true",
        help="window checks off on both: nf_conntrack_tcp_be_liberal=1 and the policy's "
        "out_of_state.window_check = false",
    )
    family = ap.add_mutually_exclusive_group()
    family.add_argument("-4", dest="version", action="store_const", const=4, help="IPv4 only")
    family.add_argument("-6", dest="version", action="store_const", const=6, help="IPv6 only")
    ap.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="a line for every connection, not only those that diverged",
    )
    ap.add_argument(
        "--trace",
        action="store_true",
        help="every packet of each diverging connection "
        "(all connections with -v), '!' marking those that differ; in --json, a trace list",
    )
    ap.add_argument(
        "--lab-index", type=int, default=LAB_INDEX, help=f"the lab's index (default {LAB_INDEX})"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    skipped: Counter[str] = Counter()
    try:
        connections = [
            conn
            for path in capture_files(args.paths)
            for conn in read_connections(path, skipped)
            if args.version in (None, conn.version)
        ]
        policy = liberal_policy(LINUX) if args.liberal else LINUX
        outcomes = []
        # "fwemu-<pid>-<name>": fwemu.lab.reap_orphans removes it if we are SIGKILLed.
        with replay_lab(f"fwemu-{os.getpid()}-rc", args.lab_index, liberal=args.liberal) as k:
            for conn in connections:
                outcome = replay(k, conn, policy)
                outcomes.append(outcome)
                if not args.json and (args.verbose or outcome.same < len(conn.packets)):
                    trace = args.trace and (args.verbose or outcome.same < len(conn.packets))
                    for line in report_text(outcome, trace=trace):
                        print(line, flush=True)
    except FwemuError as err:
        print(f"replay_captures: {err}", file=sys.stderr)
        return 2
    result = summary(outcomes, skipped)
    if args.json:
        diverging = [o for o in outcomes if args.verbose or o.same < len(o.connection.packets)]
        doc = {"summary": result, "connections": [o.to_dict(trace=args.trace) for o in diverging]}
        print(json.dumps(doc, indent=1))
    else:
        print(summary_line(result))
    return 0 if all(o.same == len(o.connection.packets) for o in outcomes) else 1


def _endpoint(addr: bytes, port: int) -> str:
    ip = ipaddress.ip_address(addr)
    return f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}"


if __name__ == "__main__":
    # A SIGTERM ends us through the lab's clean-up, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    sys.exit(main())
