"""bench/core.py runs end to end at a tiny size and prints every figure (no speed asserted), for
the compiled core and the pure one when the compiled core is installed."""

from __future__ import annotations

import re

from fwemu.core import compiled
from tests.bench.runner import run_bench

ARGS = ("--flows", "2000", "--data-flows", "100", "--data-packets", "2000", "--expiry-flows", "500")
ARGS += ("--oos-packets", "1000", "--rounds", "1")
BOTH = compiled.built()  # else only the pure core runs
COLUMNS = ["compiled", "pure", "pure/compiled"] if BOTH else ["pure"]
# A value per core, then pure/compiled when both ran (not for the rates: their µs/packet has it).
VALUES = r" +[\d.,]+" * (2 if BOTH else 1)
RATIO = r" +[\d.]+" if BOTH else ""
FIGURES = (
    rf"established data packets, µs/packet{VALUES}{RATIO}  \(100 flows, best of 5\)",
    rf"  established data packets, packets/s{VALUES}\n",
    rf"handshake/close packets, µs/packet{VALUES}{RATIO}  \([\d,]+ connections, events included",
    rf"established data packets, limits counted, µs/packet{VALUES}{RATIO}  \(100 flows",
    rf"UDP stream datagrams, µs/packet{VALUES}{RATIO}  \(100 flows",
    rf"expiry, silent, µs/flow{VALUES}{RATIO}  \(500 flows",
    rf"expiry, reset-both, µs/flow{VALUES}{RATIO}  \(500 flows",
    rf"out-of-state, answered in full, µs/packet{VALUES}{RATIO}  \(1,000 from one source",
    rf"out-of-state, past the answer rate, µs/packet{VALUES}{RATIO}  \(1,000 from one source",
    rf"SYN answered with a cookie, µs/packet{VALUES}{RATIO}  \(best of 3\)",
    rf"proxied flow, data rewritten, µs/packet{VALUES}{RATIO}  \(both ways",
    rf"memory per tracked flow, bytes{VALUES}{RATIO}  \(2,000 ESTABLISHED flows\)",
)


def test_tiny_run_prints_every_figure_for_each_core() -> None:
    done = run_bench("core.py", *ARGS, timeout=120)
    header = done.stdout.splitlines()[0]
    assert header.split()[-len(COLUMNS) :] == COLUMNS, header
    for figure in FIGURES:
        assert re.search(figure, done.stdout), f"{figure!r} not in:\n{done.stdout}"
