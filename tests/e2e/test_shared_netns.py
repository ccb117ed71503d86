"""Two fwemus in one namespace: a second run whose rules would go above the first's and take its
flows is refused before it changes anything, naming the first; so is one asking for its queue,
rules or not; runs capturing disjoint flows share the namespace, each keeping its own."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fwemu.ops.client import request
from fwemu.ops.protocol import Request
from fwemu.testing import (
    STARTED,
    STARTUP_TIMEOUT,
    Firewall,
    FwemuProcess,
    inline_firewall,
    tcp_exchange,
)
from tests.adapters.nfq_lab import bound_queues, ruleset
from tests.e2e.conftest import require_root
from tests.lab.helpers import FWEMU

pytestmark = pytest.mark.e2e

INDEX = 77  # the lab's 10.77.1.0/24 (client side) and 10.77.2.0/24 (server side)


@pytest.fixture
def first() -> Iterator[Firewall]:
    """fwemu inline on queue 0, capturing all forwarded TCP and UDP."""
    require_root()
    with inline_firewall() as fw:
        yield fw


def run_second(fw: Firewall, *args: str) -> subprocess.CompletedProcess[str]:
    """`fwemu run ARGS` in `fw`'s namespace, expected to refuse."""
    return subprocess.run(
        [FWEMU, "run", "--netns", fw.plan.fw_client_side.namespace, *args],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )


def test_a_run_that_would_take_another_ones_flows_is_refused_naming_it(first: Firewall) -> None:
    namespace = first.plan.fw_client_side.namespace
    before = (ruleset(namespace), bound_queues(namespace))
    refused = run_second(first, "--preset", "aws-nlb", "--queue", "1", "--src", "10.0.0.0/8")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == (
        f"fwemu: another fwemu captures the same TCP and UDP flows in network namespace "
        f"{namespace} (queue 0, pid {first.process.pid}, policy linux): this run's rules would "
        "go above its own and take them all; stop it first, or capture other flows (--proto, "
        "--in-interface, --out-interface, --src, --dst)\n"
    )
    assert (ruleset(namespace), bound_queues(namespace)) == before
    assert tcp_exchange(first.plan) == b"ping"
    assert first.status()["flows"] == 1


def test_a_run_asking_for_a_fwemus_queue_is_refused_naming_it(first: Firewall) -> None:
    for rules in ([], ["--no-rules"]):
        refused = run_second(first, "--preset", "aws-nlb", *rules)
        assert (refused.returncode, refused.stderr) == (
            2,
            f"fwemu: NFQUEUE 0 is already bound by another fwemu (pid {first.process.pid}, "
            "policy linux); stop it or pick another queue with --queue\n",
        )


def test_runs_capturing_disjoint_flows_share_a_namespace(tmp_path: Path) -> None:
    require_root()
    ours = ["--src", f"10.{INDEX}.1.0/24", "--dst", f"10.{INDEX}.2.0/24"]
    with inline_firewall(index=INDEX, extra_args=ours) as fw:
        control = tmp_path / "second.sock"
        theirs = ["--src", "192.0.2.0/24", "--dst", "198.51.100.0/24", "--control", str(control)]
        where = ["--netns", fw.plan.fw_client_side.namespace]
        second = FwemuProcess.start(
            ["run", *where, "--preset", "aws-nlb", "--queue", "1", *theirs], command=(FWEMU,)
        )
        try:
            second.wait_for(STARTED)
            assert tcp_exchange(fw.plan) == b"ping"
            *_, status = request(control, Request("status"))
            assert (fw.status()["flows"], status["flows"]) == (1, 0)
        finally:
            assert second.stop() == 0


def test_the_workers_of_a_run_are_named_as_one() -> None:
    require_root()
    with inline_firewall(extra_args=["--workers", "2"]) as fw:
        refused = run_second(fw, "--preset", "aws-nlb", "--queue", "2")
        assert refused.returncode == 2
        assert f"(queues 0-1, pid {fw.process.pid}, policy linux)" in refused.stderr
