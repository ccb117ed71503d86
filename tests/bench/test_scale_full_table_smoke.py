"""bench/scale.py --full-table runs end to end: a table at its limit refuses every SYN of the
stream, in both phases, and keeps every held connection (root only; never skipped under CI).

A smoke run at tiny scale, not a measurement: nothing here asserts a speed or a stall.
"""

from __future__ import annotations

import json

from tests.bench.runner import run_bench
from tests.e2e.conftest import require_root

CONNECTIONS = 200
TABLE = CONNECTIONS + 1  # and the prober's
ARGS = (
    *("--full-table", "--quick", "--connections", str(CONNECTIONS)),
    *("--syn-rate", "2000", "--syn-seconds", "1", "--json"),
)
TIMEOUT = 120  # seconds; the run takes ~15 s on the 2-CPU development VM


def test_full_table_refuses_every_syn_and_keeps_the_held_connections() -> None:
    require_root()
    result = run_bench("scale.py", *ARGS, timeout=TIMEOUT)
    figures = json.loads(result.stdout)["figures"]
    assert (figures["opened"], figures["max_flows"]) == (CONNECTIONS, TABLE)
    assert (figures["held_at_end"], figures["held_reset_or_closed"]) == (CONNECTIONS, 0)
    for phase in ("full", "early"):  # early_drop = false, then true
        sent = figures[f"{phase}_syns_sent"]
        assert sent > 0
        assert figures[f"{phase}_refused"] == sent
        # Each refusal in a limit event of its own or counted in a limit_summary.
        answered = figures[f"{phase}_refusal_events"] + figures[f"{phase}_refusals_summed"]
        assert answered == sent
        assert figures[f"{phase}_bypassed"] == 0
        assert figures[f"{phase}_disturbed_events"] == 0
        assert figures[f"{phase}_flows_after"] == TABLE
        assert figures[f"{phase}_syn_rtt_p99_ms"] >= 0
    assert "early_drop = true" in result.stderr  # progress went to stderr
