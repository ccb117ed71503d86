"""`fwemu run` in a real lab: traffic passes, every way out leaves the fw namespace as it was,
and refusals change nothing."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
from contextlib import suppress
from pathlib import Path

import pytest

from fwemu.adapters.nfqueue import WHOLE_RANGE
from fwemu.lab import LabPlan, socket_in
from fwemu.testing import FwemuProcess, tcp_exchange

from .nfq_lab import bound_queues, ruleset, run_fwemu, start_fwemu

pytestmark = pytest.mark.e2e


def fw_args(plan: LabPlan, *extra: str) -> list[str]:
    return ["--netns", plan.fw_client_side.namespace, "--preset", "linux", *extra]


def started(fwemus: list[FwemuProcess], fw: FwemuProcess) -> FwemuProcess:
    fwemus.append(fw)
    fw.wait_for("fwemu started")
    return fw


def assert_clean(plan: LabPlan, before: tuple[str, str]) -> None:
    namespace = plan.fw_client_side.namespace
    assert ruleset(namespace) == before
    assert "FWEMU" not in "".join(ruleset(namespace))
    assert bound_queues(namespace) == ""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_forwards_tcp_and_removes_everything_on_signal(
    lab_plan: LabPlan, fwemus: list[FwemuProcess], tmp_path: Path, signum: signal.Signals
) -> None:
    fw_ns = lab_plan.fw_client_side.namespace
    before = ruleset(fw_ns)
    events = tmp_path / "events.jsonl"
    fw = started(fwemus, start_fwemu(fw_args(lab_plan, "--events", str(events))))

    v4, v6 = ruleset(fw_ns)
    for rules in (v4, v6):
        assert '-A FORWARD -p tcp -m comment --comment "fwemu:q0" -j FWEMU-Q0' in rules
        assert '-A FORWARD -p udp -m comment --comment "fwemu:q0" -j FWEMU-Q0' in rules
        assert "-A FWEMU-Q0 -j NFQUEUE --queue-num 0 --queue-bypass" in rules
    assert bound_queues(fw_ns).split()[0] == "0"

    assert tcp_exchange(lab_plan, b"over v4") == b"over v4"

    assert fw.stop(signum) == 0
    stopped = re.search(
        rf"fwemu stopped \({signum.name}\): (\d+) packets, (\d+) accepted", fw.stderr
    )
    assert stopped is not None and int(stopped[1]) == int(stopped[2]) >= 5
    assert_clean(lab_plan, before)
    records = [json.loads(line) for line in events.read_text().splitlines()]
    new = [r for r in records if r["event"] == "new"]
    assert [r["flow"]["src"] for r in new] == [lab_plan.client.ipv4]
    # Without --verbose, new flows and state changes are events but not log lines.
    assert {r["event"] for r in records} >= {"new", "state"}
    assert not [line for line in fw.lines if " new " in line or " state " in line]


def test_run_forwards_ipv6_and_logs_state_changes_when_verbose(
    lab_plan: LabPlan, fwemus: list[FwemuProcess]
) -> None:
    fw = started(fwemus, start_fwemu(fw_args(lab_plan, "--verbose")))
    assert tcp_exchange(lab_plan, b"over v6", ipv6=True) == b"over v6"
    fw.wait_for(f"new      [{lab_plan.client.ipv6}]:")
    fw.wait_for("SYN_RECV -> ESTABLISHED")
    assert fw.stop() == 0


def test_timers_run_and_their_events_carry_wall_clock_time(
    lab_plan: LabPlan, fwemus: list[FwemuProcess]
) -> None:
    # Linux's TIME_WAIT is 120 s; at x10000 it runs out 12 ms after the connection closes.
    args = fw_args(lab_plan, "--speed", "10000", "--events", "-")
    fw = started(fwemus, start_fwemu(args, stdout=subprocess.PIPE))
    tcp_exchange(lab_plan)
    fw.wait_for("expire   ")
    assert fw.stop() == 0
    records = fw.records()
    expired = [r for r in records if r["event"] == "expire"]
    assert [r["state"] for r in expired] == ["TIME_WAIT"]
    # ts is epoch seconds, not the monotonic clock the core runs on.
    assert records[0]["ts"] > 1_600_000_000


def test_state_file_holds_the_flow_table_on_sigusr1(
    lab_plan: LabPlan, fwemus: list[FwemuProcess], tmp_path: Path
) -> None:
    state = tmp_path / "flows.json"
    fw = started(fwemus, start_fwemu(fw_args(lab_plan, "--state-file", str(state))))
    with socket_in(lab_plan.server.namespace) as server:
        server.bind((lab_plan.server.ipv4, 0))
        server.listen()
        with socket_in(lab_plan.client.namespace) as client:
            client.connect(server.getsockname())
            conn, _ = server.accept()
            with conn:
                client.sendall(b"x")
                assert conn.recv(1) == b"x"
                fw.process.send_signal(signal.SIGUSR1)
                fw.wait_for(f"wrote 1 flow to {state}")
    snapshot = json.loads(state.read_text())
    [flow] = snapshot["flows"]
    assert flow["flow"]["src"] == lab_plan.client.ipv4
    assert flow["state"] == "ESTABLISHED"
    assert fw.stop() == 0


def test_dry_run_marks_its_events(lab_plan: LabPlan, fwemus: list[FwemuProcess]) -> None:
    fw = started(
        fwemus,
        start_fwemu(fw_args(lab_plan, "--dry-run", "-v", "--events", "-"), stdout=subprocess.PIPE),
    )
    assert "DRY RUN" in fw.wait_for("fwemu started")
    tcp_exchange(lab_plan)
    fw.wait_for("[dry run] new")
    assert fw.stop() == 0
    records = fw.records()
    assert records and all(r["dry_run"] is True for r in records)


def test_no_rules_leaves_iptables_alone(lab_plan: LabPlan, fwemus: list[FwemuProcess]) -> None:
    before = ruleset(lab_plan.fw_client_side.namespace)
    fw = started(fwemus, start_fwemu(fw_args(lab_plan, "--no-rules", "--queue", "5")))
    assert ruleset(lab_plan.fw_client_side.namespace) == before
    assert bound_queues(lab_plan.fw_client_side.namespace).split()[0] == "5"
    assert fw.stop() == 0
    assert_clean(lab_plan, before)


def test_sigkill_leaves_rules_that_bypass_and_the_next_run_replaces(
    lab_plan: LabPlan, fwemus: list[FwemuProcess]
) -> None:
    fw_ns = lab_plan.fw_client_side.namespace
    before = ruleset(fw_ns)
    fw = started(fwemus, start_fwemu(fw_args(lab_plan)))
    fw.stop(signal.SIGKILL)
    # SIGKILL cannot clean up: the rules stay, but with no program bound to the queue
    # --queue-bypass lets the traffic through.
    assert "FWEMU-Q0" in ruleset(fw_ns)[0]
    assert bound_queues(fw_ns) == ""
    assert tcp_exchange(lab_plan, b"still flowing") == b"still flowing"

    again = started(fwemus, start_fwemu(fw_args(lab_plan)))
    assert ruleset(fw_ns)[0].count("-A FORWARD") == 2  # TCP's jump and UDP's, once each
    assert again.stop() == 0
    assert_clean(lab_plan, before)


def test_an_engine_failure_on_a_packet_accepts_it(
    lab_plan: LabPlan, fwemus: list[FwemuProcess]
) -> None:
    before = ruleset(lab_plan.fw_client_side.namespace)
    fw = started(fwemus, start_fwemu(fw_args(lab_plan), broken="handle_packet"))
    assert tcp_exchange(lab_plan, b"unharmed") == b"unharmed"
    assert "test-injected failure" in fw.wait_for("engine failed on a packet; accepted it")
    assert fw.stop() == 0
    assert "engine errors" in fw.stderr.splitlines()[-1]
    assert_clean(lab_plan, before)


def test_an_internal_error_exits_1_after_cleaning_up(
    lab_plan: LabPlan, fwemus: list[FwemuProcess]
) -> None:
    before = ruleset(lab_plan.fw_client_side.namespace)
    fw = start_fwemu(fw_args(lab_plan), broken="handle_timer")
    fwemus.append(fw)
    assert fw.finish() == 1
    last = fw.stderr.splitlines()[-1]
    assert last.startswith("fwemu: internal error, stopped after removing the rules: RuntimeError")
    assert "Traceback" not in fw.stderr
    assert_clean(lab_plan, before)


def test_a_second_fwemu_on_a_busy_queue_is_refused_before_touching_rules(
    lab_plan: LabPlan, fwemus: list[FwemuProcess]
) -> None:
    fw_ns = lab_plan.fw_client_side.namespace
    fw = started(fwemus, start_fwemu(fw_args(lab_plan)))
    during = ruleset(fw_ns)
    second = run_fwemu(fw_args(lab_plan, "--in-interface", "cli0"))
    assert second.returncode == 2
    assert second.stderr == (
        f"fwemu: NFQUEUE 0 is already bound by another fwemu (pid {fw.process.pid}, policy "
        "linux); stop it or pick another queue with --queue\n"
    )
    assert ruleset(fw_ns) == during
    assert tcp_exchange(lab_plan) == b"ping"
    assert fw.stop() == 0


def test_refusals_exit_2_with_one_line_and_change_nothing(
    lab_plan: LabPlan, tmp_path: Path
) -> None:
    fw_ns = lab_plan.fw_client_side.namespace
    before = ruleset(fw_ns)
    bad = tmp_path / "bad.toml"
    bad.write_text("[timeouts]\nestablished = 'soon'\n")
    cases = {
        "policy": ["--netns", fw_ns, "--policy", str(bad)],
        "netns": ["--netns", "fwemu-no-such-namespace", "--preset", "linux"],
        "preset": ["--netns", fw_ns, "--preset", "no-such-preset"],
        "interface": [*fw_args(lab_plan), "-i", "cli0", "-o", "eth9"],
        "interface wildcard": [*fw_args(lab_plan), "-i", "eth+"],
    }
    for what, args in cases.items():
        result = run_fwemu(args)
        assert result.returncode == 2, what
        assert result.stderr.startswith("fwemu: "), what
        assert len(result.stderr.splitlines()) == 1, (what, result.stderr)
        assert_clean(lab_plan, before)
    missing = run_fwemu(cases["netns"])
    assert "network namespace 'fwemu-no-such-namespace' does not exist" in missing.stderr
    no_if = run_fwemu(cases["interface"]).stderr
    assert f"no interface eth9 in network namespace {fw_ns}" in no_if


@pytest.mark.parametrize(
    "selector",
    [["--src", "{client}/24"], ["--dst", "{server}/24"], ["-i", "cli0"], ["-o", "srv+"]],
    ids=" ".join,
)
def test_a_capture_selector_queues_both_directions_of_its_flows(
    lab_plan: LabPlan, fwemus: list[FwemuProcess], selector: list[str]
) -> None:
    addresses = {"client": lab_plan.client.ipv4, "server": lab_plan.server.ipv4}
    chosen = [part.format(**addresses) for part in selector]
    fw = started(
        fwemus, start_fwemu([*fw_args(lab_plan, "--events", "-"), *chosen], stdout=subprocess.PIPE)
    )
    assert tcp_exchange(lab_plan, b"both ways") == b"both ways"
    assert fw.stop() == 0
    records = fw.records()
    # With only the client's direction queued, fwemu sees no SYN/ACK: no ESTABLISHED, and the
    # handshake's ACK is out of state.
    assert [r["state"] for r in records if r["event"] == "state"][:2] == [
        "SYN_RECV",
        "ESTABLISHED",
    ]
    assert not [r for r in records if r["event"] == "out_of_state"]


def test_expiry_rsts_leave_through_the_raw_sockets(
    lab_plan: LabPlan, fwemus: list[FwemuProcess], tmp_path: Path
) -> None:
    policy = tmp_path / "short.toml"
    policy.write_text('[timeouts]\nestablished = "1s"\n\n[on_expire]\ndefault = "reset-both"\n')
    args = ["--netns", lab_plan.fw_client_side.namespace, "--policy", str(policy)]
    fw = started(fwemus, start_fwemu(args))
    with socket_in(lab_plan.server.namespace) as server:
        server.bind((lab_plan.server.ipv4, 0))
        server.listen()
        with socket_in(lab_plan.client.namespace) as client:
            client.settimeout(10)
            client.connect(server.getsockname())
            conn, _ = server.accept()
            with conn, pytest.raises(ConnectionResetError):
                client.recv(1)  # idle until the established timer injects the RSTs
    assert fw.stop() == 0
    assert "injected 2 packets" in fw.stderr.splitlines()[-1]


def bulk_echo(plan: LabPlan, payload: bytes, *, ipv6: bool) -> bytes:
    """`payload` sent from the lab's client to its server and back, each side's sends large
    enough for GSO (64 KiB super-packets on the veths); what came back."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    address = plan.server.ipv6 if ipv6 else plan.server.ipv4
    with socket_in(plan.server.namespace, family) as server:
        server.settimeout(10)
        server.bind((address, 0))
        server.listen()

        def echo() -> None:
            with suppress(OSError), server.accept()[0] as conn:  # a failure shows on the client
                conn.settimeout(10)
                conn.sendall(receive_all(conn))

        thread = threading.Thread(target=echo)
        thread.start()
        try:
            with socket_in(plan.client.namespace, family) as client:
                client.settimeout(10)
                client.connect(server.getsockname()[:2])
                client.sendall(payload)
                client.shutdown(socket.SHUT_WR)
                return receive_all(client)
        finally:
            thread.join(10)


def receive_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_a_policy_that_rewrites_gets_whole_packets_and_its_rewrites_reach_both_ends(
    lab_plan: LabPlan, fwemus: list[FwemuProcess], tmp_path: Path, ipv6: bool
) -> None:
    """Sequence randomisation rewrites every packet of the connection (seq, ack and the
    checksum, updated incrementally): the bytes arrive intact only if the queue handed over
    each packet whole, segmented and with its checksum complete."""
    policy = tmp_path / "asa.toml"
    policy.write_text("[normalise]\nisn_randomisation = true\n")
    args = ["--netns", lab_plan.fw_client_side.namespace, "--policy", str(policy)]
    fw = started(fwemus, start_fwemu(args))
    assert "copying whole packets (the policy rewrites them)" in fw.lines[0]
    assert bound_queues(lab_plan.fw_client_side.namespace).split()[4] == str(WHOLE_RANGE)

    payload = bytes(range(256)) * 4096  # 1 MiB
    assert bulk_echo(lab_plan, payload, ipv6=ipv6) == payload

    assert fw.stop() == 0
    stopped = re.search(r"(\d+) packets, (\d+) accepted \(rewritten (\d+)\)", fw.stderr)
    assert stopped is not None
    packets, accepted, rewritten = map(int, stopped.groups())
    assert packets == accepted == rewritten > 2 * len(payload) // 1500  # MSS-sized segments
