"""bench/core.py runs end to end at a tiny size and prints every figure (no speed asserted)."""

from __future__ import annotations

import re

from tests.bench.runner import run_bench

ARGS = ("--flows", "2000", "--data-flows", "100", "--data-packets", "2000", "--expiry-flows", "500")
ARGS += ("--oos-packets", "1000")
FIGURES = (
    r"established data packets: +[\d,]+ packets/s +[\d.]+ µs/packet",
    r"whole connections: +[\d,]+ connections/s \([\d.]+ µs per handshake/close packet",
    r"expiry, silent: +[\d.]+ µs per flow \(500 flows",
    r"expiry, reset-both: +[\d.]+ µs per flow \(500 flows",
    r"out-of-state, answered in full: +[\d.]+ µs/packet \(1,000 from one source",
    r"out-of-state, past the answer rate: +[\d.]+ µs/packet \(1,000 from one source",
    r"memory per tracked flow: +[\d,]+ bytes \(2,000 ESTABLISHED flows\)",
)


def test_tiny_run_prints_every_figure() -> None:
    done = run_bench("core.py", *ARGS, timeout=60)
    for figure in FIGURES:
        assert re.search(figure, done.stdout), f"{figure!r} not in:\n{done.stdout}"
