"""The troubleshooting tools against a real fwemu inline in a lab: what an engineer sees and
what the endpoints then experience."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwemu.lab import call_in_netns
from fwemu.testing import Firewall, inline_firewall
from tests.e2e.conftest import require_root

from .conftest import Cli

pytestmark = pytest.mark.e2e

METRICS_PORT = 9187  # in the lab's own fw namespace: nothing else listens there
POLICY = """\
[policy]
name = "{name}"

[timeouts]
established = "{established}"

[on_expire]
default = "silent"
"""


def policy_text(established: str, name: str = "live") -> str:
    return POLICY.format(established=established, name=name)


class Conn:
    """A connected client/server socket pair across the firewall."""

    def __init__(self, fw: Firewall, port: int) -> None:
        self.port = port
        with fw.server_socket() as listener:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((fw.server_address(), port))
            listener.listen()
            self.client = fw.client_socket()
            self.client.settimeout(2)
            self.client.connect((fw.server_address(), port))
            self.server, _ = listener.accept()
        self.server.settimeout(2)
        self.client.sendall(b"hello")
        assert self.server.recv(5) == b"hello"
        self.sport = self.client.getsockname()[1]

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Firewall, Path]]:
    """One fwemu for the read-mostly tests: Linux timers, a control socket and metrics."""
    require_root()
    control = tmp_path_factory.mktemp("control") / "fw.sock"
    extra = ["--control", str(control), "--metrics", f":{METRICS_PORT}"]
    with inline_firewall("linux", extra_args=extra) as fw:
        yield fw, control


@pytest.fixture
def conns() -> Iterator[list[Conn]]:
    made: list[Conn] = []
    yield made
    for conn in made:
        conn.close()


def flows_json(cli: Cli, control: Path, *args: str) -> list[dict[str, Any]]:
    result = cli("flows", "--control", str(control), "--json", *args)
    assert result.code == 0, result.err
    records: list[dict[str, Any]] = json.loads(result.out)
    return records


def the_flow(cli: Cli, control: Path, conn: Conn) -> dict[str, Any]:
    [flow] = flows_json(cli, control, "--match", f"sport={conn.sport} dport={conn.port}")
    return flow


def test_flows_shows_a_live_flow_with_a_countdown(
    live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]
) -> None:
    fw, control = live
    conns.append(conn := Conn(fw, 8101))
    first = the_flow(fwemu, control, conn)
    assert first["src"] == fw.client_address() and first["dst"] == fw.server_address()
    assert (first["sport"], first["dport"]) == (conn.sport, 8101)
    assert (first["state"], first["phase"], first["rule"]) == (
        "ESTABLISHED",
        "established",
        "default",
    )
    assert 432000 - 5 < first["expires_in"] <= 432000  # Linux's 5 days
    assert first["packets"][0] >= 3 and first["bytes"] == [5, 0]
    time.sleep(0.3)
    later = the_flow(fwemu, control, conn)
    assert later["expires_in"] < first["expires_in"] - 0.2
    assert later["age"] > first["age"]

    table = fwemu("flows", "--control", str(control))
    assert table.code == 0
    row = next(line for line in table.out.splitlines() if f":{conn.sport} >" in line)
    assert "ESTABLISHED" in row and "established" in row and "4d23h" in row


class Datagrams:
    """A UDP client and server across the firewall that have exchanged a query and its answer
    (the flow is REPLIED)."""

    def __init__(self, fw: Firewall, port: int) -> None:
        self.port = port
        self.server = fw.server_socket(type=socket.SOCK_DGRAM)
        self.server.bind((fw.server_address(), port))
        self.server.settimeout(2)
        self.client = fw.client_socket(type=socket.SOCK_DGRAM)
        self.client.settimeout(2)
        self.client.connect((fw.server_address(), port))
        self.client.send(b"query")
        data, self.peer = self.server.recvfrom(100)
        assert data == b"query"
        self.answer()
        assert self.client.recv(100) == b"answer"
        self.sport = self.client.getsockname()[1]

    def answer(self) -> None:
        self.server.sendto(b"answer", self.peer)

    def close(self) -> None:
        self.client.close()
        self.server.close()


@pytest.fixture
def datagrams() -> Iterator[list[Datagrams]]:
    made: list[Datagrams] = []
    yield made
    for pair in made:
        pair.close()


def test_flows_top_and_expire_show_a_live_udp_flow(
    live: tuple[Firewall, Path], fwemu: Cli, datagrams: list[Datagrams]
) -> None:
    fw, control = live
    datagrams.append(dns := Datagrams(fw, 5301))
    client, server = fw.client_address(), fw.server_address()
    [flow] = flows_json(fwemu, control, "--match", "proto=udp dport=5301")
    assert (flow["src"], flow["sport"], flow["dst"], flow["proto"]) == (
        client,
        dns.sport,
        server,
        "udp",
    )
    assert (flow["state"], flow["phase"]) == ("REPLIED", "udp")
    assert 25 < flow["expires_in"] <= 30  # Linux's nf_conntrack_udp_timeout
    assert flows_json(fwemu, control, "--match", "proto=tcp dport=5301") == []

    name = f"udp {client}:{dns.sport} > {server}:5301"
    table = fwemu("flows", "--control", str(control), "--match", "proto=udp")
    assert table.code == 0, table.err
    row = next(line for line in table.out.splitlines() if line.startswith(name))
    cells = row.split()
    assert (cells[4], cells[5], cells[7]) == ("REPLIED", "udp", "default")
    assert "(udp " in table.out.splitlines()[-1]
    summary = json.loads(fwemu("flows", "--control", str(control), "--summary", "--json").out)
    assert summary["protocols"]["udp"] >= 1 and summary["states"]["REPLIED"] >= 1
    screen = fwemu("top", "--control", str(control), "--once")
    assert name in screen.out and "REPLIED" in screen.out

    # Forgotten silently whatever --action says; the server's late answer then opens a new
    # flow, the server its client (the preset's udp_from_server = "new", as Linux).
    done = fwemu("expire", "--control", str(control), name, "--action", "reset-both")
    assert done.code == 0, done.err
    assert f"expire       {name} REPLIED after" in done.out and "(forced): silent" in done.out
    assert "expired 1 flow, injected 0 RSTs" in done.out
    dns.answer()
    assert dns.client.recv(100) == b"answer"
    [reopened] = flows_json(fwemu, control, "--match", "proto=udp port=5301")
    assert (reopened["src"], reopened["sport"], reopened["state"]) == (server, 5301, "UNREPLIED")
    event = fw.wait_for_event("expire", dport=5301)
    assert (event["flow"]["proto"], event["action"], event["forced"]) == ("udp", "silent", True)


def test_top_shows_the_daemon_its_flows_and_events(
    live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]
) -> None:
    fw, control = live
    conns.append(conn := Conn(fw, 8102))
    screen = fwemu("top", "--control", str(control), "--once")
    assert screen.code == 0, screen.err
    assert f"netns {fw.plan.fw_client_side.namespace} queue 0  policy linux" in screen.out
    assert "ESTABLISHED" in screen.out and "recent events" in screen.out
    assert f"{fw.client_address()}:{conn.sport} > {fw.server_address()}:8102" in screen.out


def test_flows_filters_by_state_and_match(
    live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]
) -> None:
    fw, control = live
    conns.extend([Conn(fw, 8111), Conn(fw, 8112)])
    assert [f["dport"] for f in flows_json(fwemu, control, "--match", "dport=8112")] == [8112]
    both = flows_json(fwemu, control, "--match", f"dst={fw.server_address()} port=8111-8112")
    assert sorted(f["dport"] for f in both) == [8111, 8112]
    assert flows_json(fwemu, control, "--state", "time_wait", "--match", "dport=8111") == []
    assert len(flows_json(fwemu, control, "--state", "ESTABLISHED", "--match", "dport=8111")) == 1
    bad = fwemu("flows", "--control", str(control), "--match", "dport=http")
    assert bad.code == 2 and bad.err.count("\n") == 1 and "dport" in bad.err


def test_expire_match_resets_the_client_at_once_and_forgets_the_flow(
    live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]
) -> None:
    fw, control = live
    conns.extend([conn := Conn(fw, 8121), other := Conn(fw, 8122)])
    result = fwemu(
        "expire", "--control", str(control), "--match", "dport=8121", "--action", "reset-both"
    )
    assert result.code == 0, result.err
    assert "expired 1 flow, injected 2 RSTs" in result.out
    assert f":{conn.sport} > {fw.server_address()}:8121" in result.out
    assert "RST to client" in result.out and "RST to server" in result.out
    started = time.monotonic()
    with pytest.raises(ConnectionResetError):
        conn.client.recv(1)
    assert time.monotonic() - started < 0.5  # the RST was already there, no timer involved
    assert flows_json(fwemu, control, "--match", "dport=8121") == []
    # The other flow is untouched.
    other.client.sendall(b"x")
    assert other.server.recv(1) == b"x"
    assert fw.wait_for_event("expire", dport=8121)["forced"] is True


def test_expire_a_flow_by_name_and_nothing_matched(
    live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]
) -> None:
    fw, control = live
    conns.append(conn := Conn(fw, 8131))
    name = f"{fw.client_address()}:{conn.sport}>{fw.server_address()}:8131"
    result = fwemu("expire", "--control", str(control), name, "--action", "reset-client", "--json")
    assert result.code == 0, result.err
    kinds = [(r["event"], r.get("to")) for r in map(json.loads, result.out.splitlines())]
    assert kinds == [("expire", None), ("reset", "client")]
    with pytest.raises(ConnectionResetError):
        conn.client.recv(1)
    again = fwemu("expire", "--control", str(control), name)
    assert (again.code, again.out.strip()) == (1, "no flow matched: nothing expired")


def test_expire_all(live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]) -> None:
    fw, control = live
    conns.extend(made := [Conn(fw, 8161), Conn(fw, 8162)])
    result = fwemu("expire", "--control", str(control), "--all", "--action", "reset-client")
    assert result.code == 0, result.err
    for conn in made:
        with pytest.raises(ConnectionResetError):
            conn.client.recv(1)
    assert flows_json(fwemu, control) == []


def test_expire_in_sets_an_idle_flow_s_timer(
    live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]
) -> None:
    fw, control = live
    conns.append(conn := Conn(fw, 8171))
    name = f"{fw.client_address()}:{conn.sport}>{fw.server_address()}:8171"
    asked = time.monotonic()
    result = fwemu("expire", "--control", str(control), name, "--in", "1s")
    assert result.code == 0, result.err
    assert f"retimed  {name.replace('>', ' > ')} ESTABLISHED: expires in" in result.out
    assert "set the timers of 1 flow to run out in 1s, unless a packet comes first" in result.out
    assert 0 < the_flow(fwemu, control, conn)["expires_in"] <= 1.0  # Linux's would be 5 days
    event = fw.wait_for_event("expire", timeout=5, dport=8171, capped_by="fwemu expire --in")
    assert (event["timeout"], event["forced"]) == (1.0, False)
    assert time.monotonic() - asked >= 1.0
    assert flows_json(fwemu, control, "--match", "dport=8171") == []


def test_events_follow_receives_a_live_event(
    live: tuple[Firewall, Path], conns: list[Conn]
) -> None:
    fw, control = live
    conns.append(earlier := Conn(fw, 8141))
    argv = ["events", "--control", str(control), "--follow", "--history", "1"]
    argv += ["--filter", "event=new dport=8141"]
    with subprocess.Popen(
        [sys.executable, "-m", "fwemu", *argv], stdout=subprocess.PIPE, text=True
    ) as follower:
        try:
            lines = _lines(follower)
            # The history comes in the same reply that subscribes: once it is here, we follow.
            assert json.loads(lines.get(timeout=30))["flow"]["sport"] == earlier.sport
            conns.append(conn := Conn(fw, 8141))
            record = json.loads(lines.get(timeout=10))
            assert record["event"] == "new" and record["flow"]["sport"] == conn.sport
            assert record["state"] == "SYN_SENT" and isinstance(record["ts"], float)
        finally:
            follower.terminate()


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's output lines as they come, to wait for with a timeout."""
    lines: queue.Queue[str] = queue.Queue()
    assert process.stdout is not None
    stdout = process.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    return lines


def test_events_history_is_the_events_file_json(live: tuple[Firewall, Path], fwemu: Cli) -> None:
    fw, control = live
    result = fwemu("events", "--control", str(control), "--filter", "event=new", "--history", "3")
    assert result.code == 0
    records = [json.loads(line) for line in result.out.splitlines()]
    written = [r for r in fw.events() if r["event"] == "new"][-3:]
    assert records == written


def test_metrics_scrape_cleanly_with_the_right_counters(
    live: tuple[Firewall, Path], fwemu: Cli, conns: list[Conn]
) -> None:
    fw, control = live
    conns.extend([Conn(fw, 8151), Conn(fw, 8152)])
    fwemu("expire", "--control", str(control), "--match", "dport=8151", "--action", "reset-both")
    fw.wait_for_event("reset", dport=8151, to="server")

    def scrape() -> tuple[int, str, str]:
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()

    status, kind, text = call_in_netns(fw.plan.fw_client_side.namespace, scrape)
    assert status == 200 and kind.startswith("text/plain")
    values = _samples(text)
    assert values['fwemu_expiries_total{action="reset-both",phase="established"}'] >= 1
    assert values["fwemu_resets_injected_total"] >= 2
    assert values['fwemu_packets_total{verdict="accept"}'] >= 10
    flows = flows_json(fwemu, control)
    established = sum(f["state"] == "ESTABLISHED" for f in flows)
    assert values['fwemu_flows{proto="tcp",state="ESTABLISHED"}'] == established >= 1
    assert values["fwemu_flows_tracked"] == len(flows)
    assert values["fwemu_verdict_latency_seconds_count"] >= 1
    assert values["fwemu_queue_dropped_total"] == 0
    assert values["fwemu_queue_user_dropped_total"] == 0
    assert 'fwemu_out_of_state_packets_total{action="drop"}' in values


def _samples(text: str) -> dict[str, float]:
    """name{labels} -> value, for every sample line of a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_a_bad_request_gets_an_error_and_the_daemon_serves_on(
    live: tuple[Firewall, Path], fwemu: Cli
) -> None:
    _, control = live
    for request in (b"not json\n", b'{"cmd": "explode"}\n', b'{"cmd": "flows", "x": 1}\n'):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(control))
            sock.sendall(request)
            reply = json.loads(sock.makefile().readline())
            assert reply["ok"] is False and reply["error"]
    with socket.socket(socket.AF_UNIX) as silent:  # connects and says nothing
        silent.connect(str(control))
        assert fwemu("flows", "--control", str(control)).code == 0


def test_clients_without_a_daemon_exit_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fwemu", "flows", "--control", str(tmp_path / "none.sock")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == f"fwemu: no control socket {tmp_path / 'none.sock'} (is 'fwemu run' running?)\n"
    )


def test_reload_retimes_flows_and_rejects_an_invalid_policy(
    tmp_path: Path, fwemu: Cli, conns: list[Conn]
) -> None:
    require_root()
    policy, control = tmp_path / "fw.toml", tmp_path / "fw.sock"
    policy.write_text(policy_text("1h"))
    with inline_firewall(policy, extra_args=["--control", str(control)]) as fw:
        conns.append(conn := Conn(fw, 8201))
        assert the_flow(fwemu, control, conn)["expires_in"] > 3500

        # Long enough that the flow is still there for the listings below on a busy machine (each
        # CLI call takes ~0.5 s); a 3 s timer made this test flaky under load.
        policy.write_text(policy_text("8s", name="short"))
        done = fwemu("reload", "--control", str(control))
        assert done.code == 0 and "reloaded policy short" in done.out and "1 flow kept" in done.out
        flow = the_flow(fwemu, control, conn)  # still tracked, re-timed from its last packet
        assert flow["state"] == "ESTABLISHED" and 0 < flow["expires_in"] <= 8

        policy.write_text('[timeouts]\nestablished = "soon"\n')
        rejected = fwemu("reload", "--control", str(control))
        assert rejected.code == 2
        assert "reload rejected, policy short" in rejected.err and "established" in rejected.err
        # Logged too: the harness reads fwemu's stderr as it comes, so wait for the line.
        fw.fwemu.wait_for("reload rejected", timeout=5)
        expired = fw.wait_for_event("expire", dport=8201, timeout=10)
        assert (expired["rule"], expired["timeout"]) == ("default", 8.0)


def test_sighup_reloads_the_policy_file(tmp_path: Path, fwemu: Cli, conns: list[Conn]) -> None:
    require_root()
    policy, control = tmp_path / "fw.toml", tmp_path / "fw.sock"
    policy.write_text(policy_text("1h"))
    with inline_firewall(policy, extra_args=["--control", str(control)]) as fw:
        conns.append(conn := Conn(fw, 8301))
        policy.write_text("[timeouts\n")
        fw.process.send_signal(signal.SIGHUP)
        fw.fwemu.wait_for("reload rejected", timeout=5)
        assert the_flow(fwemu, control, conn)["expires_in"] > 3500

        policy.write_text(policy_text("2s", name="hup"))
        fw.process.send_signal(signal.SIGHUP)
        fw.fwemu.wait_for("reloaded policy hup", timeout=5)
        assert 0 < the_flow(fwemu, control, conn)["expires_in"] <= 2
        assert fw.wait_for_event("expire", dport=8301, timeout=4)["timeout"] == 2.0
