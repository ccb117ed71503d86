"""bench/scale.py runs end to end and prints every figure (root only; never skipped under CI).

A smoke run at tiny scale, not a measurement: nothing here asserts a speed or a stall.
"""

from __future__ import annotations

import json

from tests.bench.runner import run_bench
from tests.e2e.conftest import require_root

CONNECTIONS = 400
ARGS = ("--quick", "--connections", str(CONNECTIONS), "--hold", "3", "--json")
TIMEOUT = 120  # seconds; the run takes ~15 s on the 2-CPU development VM

COUNTS = (  # figures that must equal the number of connections
    "opened",
    "tracked_flows",
    "hold_expired",
    "mass_expired",
    "hold_resets_client",
    "hold_resets_server",
    "mass_resets_client",
    "mass_resets_server",
)
TIMINGS = (
    *(
        f"{window}_rtt_{stat}_ms"
        for window in ("baseline", "hold", "reload", "mass")
        for stat in ("p50", "p99", "worst")
    ),
    "bytes_per_flow",
    "hold_lateness_p50_ms",
    "hold_lateness_worst_ms",
    "open_rate",
)


def test_quick_run_holds_expires_and_resets_every_connection() -> None:
    require_root()
    result = run_bench("scale.py", *ARGS, timeout=TIMEOUT)
    figures = json.loads(result.stdout)["figures"]
    assert {key: figures[key] for key in COUNTS} == dict.fromkeys(COUNTS, CONNECTIONS)
    assert figures["open_errors"] == 0
    for key in TIMINGS:
        assert figures[key] >= 0, key
    assert "round 2: opening" in result.stderr  # progress went to stderr
