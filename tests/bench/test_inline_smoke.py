"""bench/inline.py runs end to end and prints every figure (root only; never skipped under CI).

A smoke run, not a measurement: figures belong to the bench, so nothing here asserts a speed.
"""

from __future__ import annotations

import re

from tests.bench.runner import run_bench
from tests.e2e.conftest import require_root

# --quick with the smallest settings: one repetition, 1 s per workload.
ARGS = ("--quick", "--duration", "1", "--round-trips", "200")
TIMEOUT = 90  # seconds; the run takes ~18 s on the 2-CPU development VM (C consumer compiled)

FIGURES = (
    "bulk throughput Gbit/s",
    "bulk packets forwarded pkt/s",
    "small-segment packets forwarded pkt/s",
    "small-segment throughput Mbit/s",
    "new connections conn/s",
    "round trip p50 µs",
    "round trip p99 µs",
    "round trip p50 added vs (a) µs",
    "round trip p99 added vs (a) µs",
)
TARGETS = (
    "bulk throughput >= 90 % of (b)",
    "bulk throughput >= 80 % of (d)",
    "connections/s >= 85 % of (b)",
    "added round-trip p99 < 0.2 ms",
)
NUMBER = r"-?[\d,]+(?:\.\d+)?"


def test_quick_run_prints_every_figure_for_every_mode_and_the_targets() -> None:
    require_root()
    result = run_bench("inline.py", *ARGS, timeout=TIMEOUT)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "(a) kernel" in line)
    assert header.split() == [
        "(a)", "kernel", "(b)", "accept-all", "(c)", "fwemu", "(d)", "C", "accept-all",
        "fwemu/(a)", "fwemu/(b)", "fwemu/(d)",
    ]  # fmt: skip
    for figure in FIGURES:
        row = next((line for line in lines if line.startswith(figure + " ")), None)
        assert row is not None, f"no row {figure!r} in:\n{result.stdout}"
        # Throughput rows: a value per mode and three ratios; added latency: (b), (c), (d) only.
        count = 3 if "added" in figure else 7
        assert len(re.findall(NUMBER, row[len(figure) :])) == count, row
    for target in TARGETS:
        assert re.search(rf"^  (met|NOT MET) +{re.escape(target)}", result.stdout, re.M), target
    # A ratio target shows what each side spends per packet (ratios alone move between machines).
    cpu = rf"CPU per packet {NUMBER} vs {NUMBER} µs\)$"
    assert re.search(rf"of \(d\)  \({NUMBER} %; {cpu}", result.stdout, re.M), result.stdout
    assert "bypassed" not in result.stdout
