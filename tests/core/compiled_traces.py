"""Traces that the compiled core and its .py files must answer alike (tests/core/test_compiled.py).

Every preset and example policy drives one engine through seeded random conversations: whole
TCP connections, resets, handshakes left open, runs of arbitrary flags, UDP exchanges and
garbage, over IPv4 and IPv6 and explicit time, with the timers run in small batches, a forced
expiry, a timer set by hand and a reload half-way. Each answer (decision, timer effects, flow
snapshots, limit and defence counts) is printed on one line, in order:

    python -m tests.core.compiled_traces    # the core as installed: compiled if it was built
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Iterator
from pathlib import Path

from fwemu.core import packet as pk
from fwemu.core.decision import Decision
from fwemu.core.engine import Engine
from fwemu.policy.loader import load_policy
from fwemu.policy.model import Policy
from fwemu.policy.presets import load_preset, preset_names

from .trace import Trace

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SEEDS = 3  # conversations' seeds per policy
FLOWS = 24  # conversations per seed
FLAGS = ("S", "SA", "A", "PA", "FA", "R", "RA", "F", "", "SF", "UA", "FPA")
# Gaps between steps: mostly within every timer, sometimes past the short ones or all of them.
GAPS = (0.0, 0.001, 0.05, 0.5, 5.0, 40.0, 400.0)
GAP_WEIGHTS = (40, 25, 20, 10, 3, 1.5, 0.5)
OVERLAP = 3  # conversations under way at once
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")

Step = tuple[int, str, str, int]  # flow, side ("client", "server", "udp-client", ...), flags, len


def policies() -> Iterator[tuple[str, Policy]]:
    for name in preset_names():
        yield name, load_preset(name)
    for path in sorted(EXAMPLES.glob("*.toml")):
        yield path.name, load_policy(path)


def conversation(rng: random.Random, flow: int) -> list[Step]:
    """One flow's steps, in its order: its kind drawn at random."""
    kind = rng.choice(("whole", "whole", "reset", "open", "noise", "udp"))
    if kind == "udp":
        return [
            (flow, rng.choice(("udp-client", "udp-server")), "", rng.randint(0, 64))
            for _ in range(rng.randint(1, 8))
        ]
    if kind == "noise":
        return [
            (flow, rng.choice(("client", "server")), rng.choice(FLAGS), rng.randint(0, 3))
            for _ in range(rng.randint(1, 10))
        ]
    steps: list[Step] = [
        (flow, "client", "S", 0),
        (flow, "server", "SA", 0),
        (flow, "client", "A", 0),
    ]
    for _ in range(rng.randint(0, 6)):
        sender = rng.choice(("client", "server"))
        other = "server" if sender == "client" else "client"
        steps += [(flow, sender, "PA", rng.choice((1, 100, 1460))), (flow, other, "A", 0)]
    if kind == "whole":
        first = rng.choice(("client", "server"))
        second = "server" if first == "client" else "client"
        steps += [(flow, first, "FA", 0), (flow, second, "FA", 0), (flow, first, "A", 0)]
    elif kind == "reset":
        steps.append((flow, rng.choice(("client", "server")), rng.choice(("R", "RA")), 0))
    return steps


def interleaved(rng: random.Random, flows: list[list[Step]]) -> Iterator[Step]:
    """The flows' steps merged at random, each flow's in its own order, a few flows at a time."""
    pending = [list(reversed(steps)) for steps in flows if steps]
    while pending:
        steps = rng.choice(pending[:OVERLAP])
        yield steps.pop()
        if not steps:
            pending.remove(steps)


def datagram(t: Trace, from_client: bool, length: int) -> bytes:
    """A UDP datagram between the trace's endpoints (checksums left 0: the core reads none)."""
    src, dst = (t.c, t.s) if from_client else (t.s, t.c)
    udp = _UDP.pack(src.port, dst.port, 8 + length, 0) + bytes(length)
    if len(src.addr) == 4:
        return _IP4.pack(0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src.addr, dst.addr) + udp
    return _IP6.pack(6 << 28, len(udp), 17, 64, src.addr, dst.addr) + udp


def garbage(rng: random.Random) -> bytes:
    """Bytes no flow owns: random, truncated, a fragment."""
    return rng.choice(
        (
            bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60))),
            bytes((0x45,)) + bytes(10),
            _IP4.pack(0x45, 0, 40, 0, 0x2001, 64, 6, 0, bytes(4), bytes(4)) + bytes(20),
        )
    )


def follow(t: Trace, decision: Decision) -> None:
    """The endpoints take what the middlebox sent them in their name (a SYN proxy's SYN-ACK and
    SYN): each acknowledges the SYN it received, as a stack would."""
    for packet in decision.inject:
        seg = pk.parse(packet)
        if isinstance(seg, pk.Segment) and seg.flags & pk.TCP_SYN and not seg.flags & pk.TCP_RST:
            receiver = t.c if seg.dst == t.c.addr else t.s
            receiver.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF


def run(name: str, policy: Policy, reload_to: Policy, seed: int) -> Iterator[str]:
    rng = random.Random(f"{name} {seed}")
    engine = Engine(policy, seed)
    traces = []
    for flow in range(FLOWS):
        v6 = flow % 3 == 2
        client = f"fd00:1::{flow % 4 + 2}" if v6 else f"10.0.1.{flow % 4 + 2}"
        t = Trace(policy, v6=v6, client_addr=client, client_port=40000 + flow, count_invalid=False)
        t.engine = engine
        traces.append(t)
    steps = list(interleaved(rng, [conversation(rng, flow) for flow in range(FLOWS)]))
    now = 0.0
    for n, (flow, side, flags, length) in enumerate(steps):
        now += rng.choices(GAPS, GAP_WEIGHTS)[0]
        while (deadline := engine.next_deadline()) is not None and deadline <= now:
            yield f"{now:.3f} timer {engine.handle_timer(now=deadline, limit=3)!r}"
        t = traces[flow]
        if side.startswith("udp"):
            data = datagram(t, side == "udp-client", length)
            decision = engine.handle_packet(data, now=now)
        else:
            send = t.client if side == "client" else t.server
            seq = rng.getrandbits(32) if rng.random() < 0.03 else None
            decision = send(flags, length, at=now, seq=seq)
            follow(t, decision)
        yield f"{now:.3f} {side} {flags} {length}: {decision!r}"
        if rng.random() < 0.05:
            yield f"garbage: {engine.handle_packet(garbage(rng), now=now)!r}"
        if n == len(steps) // 3 and (keys := engine.keys()):
            yield f"expire: {engine.expire(keys[:2], now=now)!r}"
            yield f"retime: {engine.retime(keys[2:4], now=now, seconds=5.0)!r}"
        if n == len(steps) // 2:
            yield f"reload: {engine.reload(reload_to)}"
    yield f"flows: {engine.flows(now=now)!r}"
    yield f"limits: {engine.limits(now=now)!r} defences: {engine.defences()!r}"
    for key in engine.keys():  # noqa: SIM118  (an Engine is not a mapping)
        yield f"{ipaddress.ip_address(pk.endpoints(key)[0])}: {engine.info(key, now=now)!r}"


def main() -> None:
    named = list(policies())
    for (name, policy), (_, reload_to) in zip(named, [*named[1:], named[0]], strict=True):
        for seed in range(SEEDS):
            print(f"== {name} seed {seed}")
            for line in run(name, policy, reload_to, seed):
                print(line)


if __name__ == "__main__":
    main()
