"""`fwemu replay` on a tcpdump capture from a live lab names the flows and the times that the
live fwemu expired (root; never skipped under CI)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fwemu.cli import main
from fwemu.lab import exec_in
from fwemu.testing import Firewall, inline_firewall
from tests.e2e.conftest import require_root

pytestmark = pytest.mark.e2e

SILENT_PORT, RESET_PORT = 7601, 7602
POLICY = f"""
[policy]
name = "replay-parity"

[[rule]]
name = "silent"
match = {{ dst_port = {SILENT_PORT} }}
timeouts = {{ established = "1s" }}
on_expire = {{ established = "silent" }}
out_of_state = {{ action = "drop" }}

[[rule]]
name = "reset"
match = {{ dst_port = {RESET_PORT} }}
timeouts = {{ established = "1s" }}
on_expire = {{ established = "reset-both" }}
"""
# The live expiry runs when fwemu's event loop wakes for the deadline; the replay reports the
# deadline itself. Both clocks are the same kernel's CLOCK_REALTIME (tcpdump stamps packets in the
# client namespace, fwemu maps its monotonic time to wall-clock time at start). Measured: the live
# expiry comes about 1 ms after the replay's; the margin is for a loaded 2-CPU CI machine.
TOLERANCE = 0.010
STARTUP = 10.0


@contextmanager
def tcpdump(fw: Firewall, path: Path) -> Iterator[None]:
    """tcpdump on the client's interface (what the client sent and received), until SIGINT."""
    argv = ["tcpdump", "-i", "eth0", "-n", "--immediate-mode", "-U", "-w", str(path), "tcp"]
    process = exec_in(fw.plan.name, "client", argv, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "tcpdump: listening on eth0, ..." once capturing
        assert "listening on" in line, line
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STARTUP)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def connect(fw: Firewall, port: int) -> tuple[socket.socket, socket.socket, socket.socket]:
    listener = fw.server_socket()
    listener.bind((fw.server_address(), port))
    listener.listen()
    client = fw.client_socket()
    client.settimeout(STARTUP)
    client.connect((fw.server_address(), port))
    conn, _ = listener.accept()
    client.sendall(b"ping")
    assert conn.recv(16) == b"ping"
    conn.sendall(b"pong")
    assert client.recv(16) == b"pong"
    return listener, client, conn


def test_replay_names_the_flows_and_times_the_live_run_expired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_root()
    capture = tmp_path / "lab.pcap"
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(POLICY)
    with inline_firewall(policy_file) as fw, tcpdump(fw, capture):
        sockets = [*connect(fw, SILENT_PORT), *connect(fw, RESET_PORT)]
        try:
            live = {
                port: fw.wait_for_event("expire", dport=port) for port in (SILENT_PORT, RESET_PORT)
            }
            fw.wait_for_event("reset", dport=RESET_PORT, to="client")
            sockets[1].sendall(b"late")  # the black-holed client tries again: dropped live
            time.sleep(0.5)  # the capture gets the retransmissions too
        finally:
            for sock in sockets:
                sock.close()

    capsys.readouterr()
    assert main(["replay", str(capture), "--policy", str(policy_file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    flows = {f["flow"]["dport"]: f for f in report["flows"]}
    assert set(flows) == {SILENT_PORT, RESET_PORT}
    for port, event in live.items():
        flow, expired = flows[port], flows[port]["expired"]
        assert flow["flow"] == event["flow"]
        assert (expired["state"], expired["action"]) == (event["state"], event["action"])
        assert expired["ts"] == pytest.approx(event["ts"], abs=TOLERANCE)
    silent, reset = flows[SILENT_PORT], flows[RESET_PORT]
    assert silent["late_packets"] and all(p["outcome"] == "dropped" for p in silent["late_packets"])
    assert all(p["side"] == "client" for p in silent["late_packets"])
    # The client-side capture shows the RST the live fwemu injected: recognised as the policy's.
    assert len(reset["own_resets_seen"]) == 1
    assert reset["late_packets"] == []


SPED_UP = f"""
[policy]
name = "replay-parity-sped-up"

[[rule]]
name = "late-reset"
match = {{ dst_port = {RESET_PORT} }}
timeouts = {{ established = "100s" }}
on_expire = {{ established = "silent" }}
out_of_state = {{ from_client = "reset" }}
"""
SPEED = 100  # the established timer lasts 1 s live


def test_a_capture_of_a_sped_up_run_replays_with_its_speed_and_knows_its_late_rst(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Behind `fwemu run --speed 100`, the client's late data gets fwemu's RST: `fwemu replay
    --speed 100` expires the flow when the live run did, and takes the RST for the policy's."""
    require_root()
    capture = tmp_path / "lab.pcap"
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(SPED_UP)
    with inline_firewall(policy_file, speed=SPEED) as fw, tcpdump(fw, capture):
        sockets = connect(fw, RESET_PORT)
        try:
            expired = fw.wait_for_event("expire", dport=RESET_PORT)
            sockets[1].sendall(b"late")
            reset = fw.wait_for_event("reset", dport=RESET_PORT, cause="out_of_state")
            with pytest.raises(ConnectionResetError):
                sockets[1].recv(16)
        finally:
            for sock in sockets:
                sock.close()
    oos = next(e for e in fw.events() if e["event"] == "out_of_state")
    assert oos["expired_at"] == pytest.approx(expired["ts"], abs=TOLERANCE)  # both epoch seconds

    capsys.readouterr()
    argv = ["replay", str(capture), "--policy", str(policy_file), "--speed", str(SPEED), "--json"]
    assert main(argv) == 0
    [flow] = json.loads(capsys.readouterr().out)["flows"]
    assert flow["expired"]["ts"] == pytest.approx(expired["ts"], abs=TOLERANCE)
    [late] = flow["late_packets"]
    assert (late["outcome"], late["reset"]["seq"]) == ("answered with a RST", reset["seq"])
    assert len(flow["own_resets_seen"]) == 1
