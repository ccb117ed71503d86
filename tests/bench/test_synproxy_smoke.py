"""bench/synproxy.py runs end to end: a small flood through each middlebox is accounted for,
and the established flow survives it (root only; never skipped under CI).

A smoke run at a low rate, not a measurement: nothing here asserts a speed or a latency.
"""

from __future__ import annotations

import json

from tests.bench.runner import run_bench
from tests.e2e.conftest import require_root

ARGS = ("--rates", "2000", "--seconds", "1", "--json")
TIMEOUT = 120  # seconds; the run takes ~25 s on the 2-CPU development VM


def test_each_middlebox_answers_or_passes_every_syn_and_the_flow_survives() -> None:
    require_root()
    result = run_bench("synproxy.py", *ARGS, timeout=TIMEOUT)
    out = json.loads(result.stdout)
    runs = {run["mode"]: run for run in out["runs"]}
    assert set(runs) == {"fwemu", "synproxy", "forward"}
    for run in runs.values():
        assert run["sent"] > 0
    fwemu, synproxy, forward = runs["fwemu"], runs["synproxy"], runs["forward"]
    # fwemu answers each SYN itself, or fail-open lets it reach the server.
    assert fwemu["answered_by_fw"] > 0
    assert fwemu["answered_by_fw"] + fwemu["server_syns"] == fwemu["sent"]
    # The kernel's SYNPROXY answers every one (and counts it), passing none to the server.
    assert synproxy["answered_by_fw"] == synproxy["sent"]
    assert synproxy["synproxy_syn_received"] >= synproxy["sent"]  # the legit client's too
    assert synproxy["server_syns"] == 0
    # Without a middlebox the server gets them all and answers them itself.
    assert forward["answered_by_fw"] == 0
    assert forward["server_syns"] == forward["sent"]
    assert forward["answered_by_server"] >= forward["sent"]
    for run in (synproxy, forward):
        assert run["legit_ok"] == run["legit_attempts"] > 0
    for flow in out["flow"].values():
        assert flow["error"] is None
        assert flow["after_round_trips"] > 0
    assert "synproxy 2,000/s" in result.stderr  # progress went to stderr
