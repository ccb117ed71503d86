"""`fwemu run --workers 2` inline: the kernel spreads the flows of many client addresses over
both workers, each flow whole on one of them; the tools see the workers as one firewall; a timer's
RSTs reach the client whichever worker holds the flow; SIGTERM leaves nothing behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwemu.lab import socket_in
from fwemu.testing import Firewall, HarnessError, inline_firewall
from tests.e2e.conftest import require_root

pytestmark = pytest.mark.e2e

# The kernel hashes the client and server addresses with a seed drawn at boot: 16 client
# addresses all land on one of 2 queues with probability 2 / 2**16.
CLIENTS = 16
FIRST_HOST = 10  # 10.N.1.10 .. 10.N.1.25, next to the lab's own client address 10.N.1.2
LONG_PORT = 8080  # flows that keep the preset's timers (days)
SHORT_PORT = 8081  # flows whose established timer runs out after SHORT seconds, with RSTs
SHORT = 3.0  # long enough to list the flows first; the connections take ~0.5 s to open
POLICY = f"""\
[policy]
name = "workers"

[[rule]]
name = "short"
match = {{ dst_port = {SHORT_PORT} }}
timeouts = {{ established = {SHORT} }}
on_expire = {{ default = "reset-both" }}
"""


@pytest.fixture(scope="module")
def control_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers")


@pytest.fixture(scope="module")
def fw(control_dir: Path) -> Iterator[Firewall]:
    require_root()
    extra = ["--workers", "2", "--control", str(control_dir / "fw.sock")]
    with inline_firewall(toml=POLICY, extra_args=extra) as firewall:
        prefix = firewall.plan.client.ipv4.rsplit(".", 1)[0]
        for host in range(FIRST_HOST, FIRST_HOST + CLIENTS):
            firewall.run("client", ["ip", "addr", "add", f"{prefix}.{host}/24", "dev", "eth0"])
        yield firewall


def clients(fw: Firewall) -> list[str]:
    prefix = fw.plan.client.ipv4.rsplit(".", 1)[0]
    return [f"{prefix}.{host}" for host in range(FIRST_HOST, FIRST_HOST + CLIENTS)]


def fwemu(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fwemu", *argv], capture_output=True, text=True, check=False
    )


def connect_from_each_client(fw: Firewall, port: int) -> list[tuple[socket.socket, socket.socket]]:
    """One established connection from every client address: (client, server) sockets, after
    one byte each way (so the flow is ESTABLISHED on both sides of fwemu)."""
    server = fw.server_address()
    listener = socket_in(fw.plan.server.namespace, socket.AF_INET)
    listener.bind((server, port))
    listener.listen(CLIENTS)
    listener.settimeout(5)
    pairs = []
    with listener:
        for address in clients(fw):
            client = socket_in(fw.plan.client.namespace, socket.AF_INET)
            client.settimeout(5)
            client.bind((address, 0))
            client.connect((server, port))
            accepted, _ = listener.accept()
            accepted.settimeout(5)
            client.sendall(b"x")
            assert accepted.recv(1) == b"x"
            accepted.sendall(b"y")
            assert client.recv(1) == b"y"
            pairs.append((client, accepted))
    return pairs


def flows_json(control_dir: Path) -> list[dict[str, Any]]:
    result = fwemu("flows", "--control", str(control_dir), "--json")
    assert result.returncode == 0, result.stderr
    flows: list[dict[str, Any]] = json.loads(result.stdout)
    return flows


def test_flows_of_many_clients_spread_whole_over_both_workers(
    fw: Firewall, control_dir: Path
) -> None:
    pairs = connect_from_each_client(fw, LONG_PORT)
    try:
        listed = [f for f in flows_json(control_dir) if f["dport"] == LONG_PORT]
        mine = {(client.getsockname()[0], client.getsockname()[1]) for client, _ in pairs}
        # Every connection exactly once, tracked from both directions (the handshake and a byte
        # each way: at least 3 packets from the client and 2 from the server).
        assert sorted((f["src"], f["sport"]) for f in listed) == sorted(mine)
        for f in listed:
            assert f["state"] == "ESTABLISHED" and f["packets"][0] >= 3 and f["packets"][1] >= 2
        queues = {f["src"]: f["queue"] for f in listed}
        assert set(queues.values()) == {0, 1}, f"one worker got every client: {queues}"
        # The one firewall's counters are the sum of both workers'.
        top = fwemu("top", "--once", "--control", str(control_dir))
        assert "queue 0-1 (2 workers)" in top.stdout, top.stdout + top.stderr
        # One worker's socket alone lists that worker's flows only.
        q1 = fwemu("flows", "--json", "--control", str(control_dir / "fw.q1.sock"))
        assert {f["queue"] for f in json.loads(q1.stdout)} == {1}
    finally:
        for client, server in pairs:
            client.close()
            server.close()


def test_a_timer_resets_the_client_whichever_worker_holds_the_flow(
    fw: Firewall, control_dir: Path
) -> None:
    pairs = connect_from_each_client(fw, SHORT_PORT)
    queues = {f["src"]: f["queue"] for f in flows_json(control_dir) if f["dport"] == SHORT_PORT}
    reset_on: set[int] = set()
    try:
        for client, _ in pairs:  # the RST to each client, then what the client sees of it
            fw.wait_for_event(
                "reset", timeout=SHORT + 10, to="client", sport=client.getsockname()[1]
            )
            with pytest.raises(ConnectionResetError) as err:
                client.send(b"after")  # a RST received since makes this fail with ECONNRESET
                client.recv(1)
            assert err.value.errno == errno.ECONNRESET
            reset_on.add(queues[client.getsockname()[0]])
    finally:
        for client, server in pairs:
            client.close()
            server.close()
    assert reset_on == {0, 1}
    expired = [
        e for e in fw.events() if e["event"] == "expire" and e["flow"]["dport"] == SHORT_PORT
    ]
    assert len(expired) == CLIENTS  # each flow expired once, by the one worker that held it


def test_sigterm_stops_every_worker_and_leaves_nothing(control_dir: Path) -> None:
    require_root()
    extra = ["--workers", "2", "--control", str(control_dir / "once.sock")]
    with inline_firewall(toml=POLICY, extra_args=extra) as firewall:
        workers = [int(pid) for pid in _pids(firewall)]
        assert len(workers) == 2 and all(_running(pid) for pid in workers)
        code = firewall.stop()
        rules = firewall.run("fw", ["iptables-save"], check=True).stdout
        rules6 = firewall.run("fw", ["ip6tables-save"], check=True).stdout
        queues = firewall.run("fw", ["cat", "/proc/net/netfilter/nfnetlink_queue"]).stdout
    assert code == 0
    assert "FWEMU" not in rules + rules6 and "NFQUEUE" not in rules + rules6
    assert queues == ""
    assert not any(_running(pid) for pid in workers)
    assert not any(p.name.startswith("once") for p in control_dir.iterdir())  # no socket left
    last = firewall.fwemu.lines[-1]
    assert "fwemu stopped (SIGTERM):" in last and "rules removed, queues unbound" in last


def _pids(firewall: Firewall) -> list[str]:
    line = firewall.fwemu.wait_for("worker pids")
    return line.split("worker pids ", 1)[1].split(")", 1)[0].split(", ")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_killed_worker_stops_the_run_with_exit_status_1(control_dir: Path) -> None:
    require_root()
    extra = ["--workers", "2", "--control", str(control_dir / "killed.sock")]
    with (
        pytest.raises(HarnessError, match="exited with status 1"),
        inline_firewall(toml=POLICY, extra_args=extra) as firewall,
    ):
        victim = int(_pids(firewall)[1])
        os.kill(victim, signal.SIGKILL)
        assert firewall.fwemu.finish() == 1
        rules = firewall.run("fw", ["iptables-save"], check=True).stdout
        assert "FWEMU" not in rules
        assert firewall.fwemu.lines[-1].endswith(
            f"fwemu: the worker of queue 1 (pid {victim}) ended (killed by SIGKILL): "
            "stopped the other workers and removed the rules"
        )
