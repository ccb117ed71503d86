"""Overload: a flood of junk from the client side must not change what the policy does to a
live connection, and where the queue truly overflows, fwemu must say so.

A stress run once saw a ~48k packets/s flood of malformed and out-of-state packets handled at
~5k/s (a log line and a RST each), the overflowing queue's fail-open let the live connections'
packets past fwemu, and their idle timers ran out mid-flood.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from subprocess import PIPE, Popen

import pytest

from fwemu.testing import Firewall, HarnessError, inline_firewall

from .conftest import report_figures, require_root

pytestmark = pytest.mark.e2e

FLOOD = Path(__file__).with_name("flood.py")
IDLE = 3.0  # the live connection's idle timer, seconds
POLICY = f"""\
[policy]
name = "flood"

[timeouts]
established = "{IDLE:g}s"

[on_expire]
default = "reset-both"

[out_of_state]
action = "reset"     # the expensive answer: a RST for every packet of no flow
"""
PORT = 9300


@contextmanager
def connection(fw: Firewall) -> Iterator[tuple[socket.socket, socket.socket]]:
    with closing(fw.server_socket()) as listener:
        listener.bind((fw.server_address(), PORT))
        listener.listen()
        client = fw.client_socket()
        client.settimeout(2)
        client.connect((fw.server_address(), PORT))
        server, _ = listener.accept()
    server.settimeout(2)
    with closing(client), closing(server):
        yield client, server


def start_flood(fw: Firewall, rate: float, seconds: float, live: int | None = None) -> Popen[str]:
    """The flood, from the client namespace (`flood.py`; stopped with the firewall)."""
    argv = [sys.executable, str(FLOOD), fw.client_address(), fw.server_address(), str(PORT + 1)]
    argv += ["--rate", str(rate), "--seconds", str(seconds)]
    argv += [] if live is None else ["--live", str(live)]
    return fw.spawn("client", argv, stdout=PIPE, text=True)


def sent_by(sender: Popen[str]) -> str:
    """What the finished flood says it sent."""
    out, _ = sender.communicate(timeout=10)
    assert sender.returncode == 0
    sent = json.loads(out)
    return f"{sent['sent']:,} packets in {sent['seconds']} s"


@pytest.mark.timeout(60)
def test_a_junk_flood_leaves_a_live_connection_alone_and_its_timer_exact(
    request: pytest.FixtureRequest,
) -> None:
    require_root()
    with inline_firewall(toml=POLICY) as fw, connection(fw) as (client, server):
        sport = client.getsockname()[1]
        pings = 0
        # Longer than the idle timer: had its packets gone past fwemu, the flow would expire.
        sender = start_flood(fw, rate=30_000, seconds=IDLE + 1.5, live=sport)
        while sender.poll() is None:
            client.sendall(b"p")
            assert server.recv(1) == b"p"
            server.sendall(b"q")
            assert client.recv(1) == b"q"
            last = time.time()
            pings += 1
            time.sleep(0.1)
        flooded = sent_by(sender)
        assert pings >= 30
        expired = fw.wait_for_event("expire", timeout=IDLE + 5, sport=sport)
        # The idle timer after the last ping (whose last ACK came a few ms later at most).
        assert expired["state"] == "ESTABLISHED" and expired["timeout"] == IDLE
        assert IDLE - 0.01 <= expired["ts"] - last <= IDLE + 0.5
        for sock in (client, server):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        events = fw.events()
        mine = [e for e in events if e["flow"]["sport"] == sport and e["event"] == "expire"]
        assert mine == [expired]  # not expired mid-flood
        summaries = [e for e in events if e["event"] == "out_of_state_summary"]
        answered = sum(e["event"] == "reset" and e["cause"] == "out_of_state" for e in events)
        withheld = sum(e["resets_withheld"] for e in summaries)
        assert summaries and withheld > 10 * answered  # the flood cost no RST storm
    # inline_firewall raised on exit had any packet bypassed fwemu.
    report_figures(
        request.config,
        f"flood of {flooded}: live connection kept ({pings} pings), expired "
        f"{expired['ts'] - last:.3f} s after its last ping (timer {IDLE:g} s); "
        f"{answered} RSTs answered, {withheld} withheld",
    )


@pytest.mark.timeout(60)
def test_an_overflowing_queue_is_reported_and_fails_the_harness() -> None:
    require_root()
    failed = pytest.raises(HarnessError, match=r"\d+ packets bypassed fwemu")
    with failed, inline_firewall(toml=POLICY) as fw:
        fw.process.send_signal(signal.SIGSTOP)  # a stalled fwemu: its queue fills up
        try:
            sent_by(start_flood(fw, rate=20_000, seconds=1.0))
        finally:
            fw.process.send_signal(signal.SIGCONT)
        warning = fw.fwemu.wait_for("packets bypassed fwemu", timeout=10)
        assert "cannot be trusted" in warning
        assert fw.status()["bypassed"] > 0
    bypassed = int(str(failed.excinfo.value).split()[0])
    assert bypassed >= 20_000 - 8192  # the queue holds 8192 (nfqueue.MAX_LEN); the rest bypassed
