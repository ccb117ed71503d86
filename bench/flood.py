"""How fast `fwemu flood` sends on this machine: building its SYNs, and sending them into a lab.

    sudo .venv/bin/python bench/flood.py [--count 300000] [--reps 3] [--inline] [--json]

Each mode sends COUNT SYNs as fast as it can (paced at an unreachable rate) from the client
namespace of a lab of its own to a listening port of its server (backlog 128, so past the first
SYNs each costs the server's kernel a SYN cookie, as in a flood):

  build      SynFactory.fill alone: SYNs built a second, no I/O
  send       one send() per SYN on the raw socket
  sendmmsg   fwemu.lab.sender's batches of 64 per sendmmsg(2) (what `fwemu flood` does)
  inline     (--inline) `fwemu flood`'s own run at its highest rate through `fwemu run --preset
             linux` in the fw namespace: what the sender reaches with fwemu inline, and what fwemu
             made of it (its queue overflows: packets let past it unseen, "bypassed")

CPU is the sender's (user + system, µs per SYN): the system part includes the kernel's work on
the whole path, which runs in the sender's softirq context on veths (forwarding in the fw
namespace, the server's SYN-ACK or cookie). It prints the median of each figure over the reps.
Needs root; the lab is removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from functools import partial
from pathlib import Path

from fwemu.lab import LabPlan, call_in_netns, lab, socket_in
from fwemu.lab.flood import MAX_RATE, FloodSpec, find_fwemu, run_flood, spoofed_sources
from fwemu.lab.sender import RawSender, SynFactory, pace
from fwemu.testing import STARTED, FwemuProcess

PORT = 80
BACKLOG = 128


def _sender(plan: LabPlan, mode: str, count: int) -> dict[str, float]:
    """One run of a mode in the client namespace: SYNs a second and CPU µs per SYN."""
    addresses = spoofed_sources(plan, FloodSpec()).addresses
    packed = [socket.inet_aton(a) for a in addresses]
    factory = SynFactory(packed, socket.inet_aton(plan.server.ipv4), PORT)
    sender = RawSender(plan.server.ipv4, factory.size)
    sender.buffer[:] = factory.template * sender.slots
    view = memoryview(sender.buffer)
    size = factory.size

    def build(n: int) -> tuple[int, int]:
        factory.fill(sender.buffer, n)
        return n, 0

    def one_by_one(n: int) -> tuple[int, int]:
        factory.fill(sender.buffer, n)
        for at in range(0, n * size, size):
            sender.sock.send(view[at : at + size])
        return n, 0

    def batched(n: int) -> tuple[int, int]:
        factory.fill(sender.buffer, n)
        return sender.send(n)

    send: Callable[[int], tuple[int, int]] = {
        "build": build,
        "send": one_by_one,
        "sendmmsg": batched,
    }[mode]
    with closing(sender):
        cpu = time.process_time()
        done = pace(send, count=count, rate=MAX_RATE * 100)
        cpu = time.process_time() - cpu
    return {"rate": done.rate, "cpu_us": cpu / count * 1e6}


def _listening(plan: LabPlan) -> socket.socket:
    listener = socket_in(plan.server.namespace)
    listener.bind((plan.server.ipv4, PORT))
    listener.listen(BACKLOG)
    return listener


def _inline(count: int) -> dict[str, float]:
    """`fwemu flood` at its highest rate through fwemu: its rate, and what fwemu saw."""
    with (
        lab(f"bflood{os.getpid()}i", 249) as plan,
        tempfile.TemporaryDirectory(prefix="bench-flood-") as workdir,
    ):
        control = Path(workdir) / "control.sock"
        argv = ["run", "--netns", plan.fw_client_side.namespace, "--preset", "linux"]
        fwemu = FwemuProcess.start([*argv, "--control", str(control)])
        try:
            fwemu.wait_for(STARTED)
            spec = FloodSpec(count=count, rate=MAX_RATE, port=PORT)
            report = run_flood(plan, spec, fwemu=find_fwemu(plan, control))
        finally:
            fwemu.stop()
    counters = report.fwemu.counters if report.fwemu else {}
    return {
        "rate": report.sent.rate,
        "received": float(report.server.syns or 0),
        "fwemu_packets": float(counters.get("packets", 0)),
        "bypassed": float(counters.get("bypassed", 0)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300_000, help="SYNs per run")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--inline", action="store_true", help="also through fwemu inline")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/flood.py needs root (network namespaces)", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {}
    with lab(f"bflood{os.getpid()}", 250) as plan, closing(_listening(plan)):
        for _ in range(args.reps):
            for mode in ("build", "send", "sendmmsg"):
                figures = call_in_netns(
                    plan.client.namespace, partial(_sender, plan, mode, args.count)
                )
                runs.setdefault(mode, []).append(figures)
    if args.inline:
        runs["inline"] = [_inline(args.count) for _ in range(args.reps)]
    medians: dict[str, dict[str, float]] = {
        mode: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for mode, results in runs.items()
    }
    if args.json:
        print(json.dumps({"count": args.count, "reps": args.reps, "medians": medians}, indent=2))
        return 0
    print(f"{args.count:,} SYNs per run, median of {args.reps}:")
    for mode, figures in medians.items():
        extra = "".join(
            f", {key} {value:,.0f}"
            for key, value in figures.items()
            if key not in ("rate", "cpu_us")
        )
        cpu = f", {figures['cpu_us']:.2f} µs CPU per SYN" if "cpu_us" in figures else ""
        print(f"  {mode:<9} {figures['rate']:>10,.0f} SYN/s{cpu}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
