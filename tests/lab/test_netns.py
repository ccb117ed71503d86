"""Real labs: namespaces, forwarding through fw, idempotent up, down, isolation (needs root)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from pyroute2 import netns as pr_netns

from fwemu.lab import (
    LabError,
    LabPlan,
    Side,
    down,
    exec_in,
    lab,
    list_labs,
    processes_in,
    run_in,
    socket_in,
    up,
)
from fwemu.lab import netns as lab_netns

from .helpers import DEAF, SLEEPER, ping, root_network

pytestmark = pytest.mark.usefixtures("needs_root")


def _namespaces(lab: str) -> set[str]:
    """Lab `lab`'s namespaces that exist (other tests may be creating labs meanwhile)."""
    return {ns for ns in pr_netns.listnetns() if ns.startswith(f"{lab}-")}


def _ns_inodes(plan: LabPlan) -> list[int]:
    return [os.stat(f"/run/netns/{ns}").st_ino for ns in plan.namespaces]


def test_up_creates_three_namespaces_and_leaves_root_alone(lab_name: Callable[[], str]) -> None:
    before = root_network()
    plan = LabPlan.create(lab_name(), index=11)
    up(plan)
    assert _namespaces(plan.name) == set(plan.namespaces)
    assert root_network() == before


@pytest.mark.parametrize("version", [4, 6])
def test_client_reaches_server_via_fw(make_lab: Callable[[], LabPlan], version: int) -> None:
    plan = make_lab()
    server = plan.server.ipv4 if version == 4 else plan.server.ipv6
    client = plan.client.ipv4 if version == 4 else plan.client.ipv6
    assert ping(plan.client.namespace, server)
    assert ping(plan.server.namespace, client)
    # Both really go through fw: its own addresses answer too, and it forwards.
    assert ping(plan.client.namespace, plan.fw_server_side.ipv4)


def test_without_forwarding_in_fw_client_cannot_reach_server(
    make_lab: Callable[[], LabPlan],
) -> None:
    plan = make_lab()
    fw_down = run_in(plan.name, "fw", ["sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"])
    assert fw_down.returncode == 0
    assert not ping(plan.client.namespace, plan.server.ipv4, timeout=0.5)


_ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.bind((sys.argv[1], 7000)); s.listen()
print("ready", flush=True)
c, _ = s.accept()
c.sendall(c.recv(100).upper())
"""
_ECHO_CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7000), timeout=5)
c.sendall(b"hello through fw")
print(c.recv(100).decode())
"""


@pytest.mark.parametrize("version", [4, 6])
def test_tcp_connection_from_client_to_server(
    make_lab: Callable[[], LabPlan], version: int
) -> None:
    plan = make_lab()
    address = plan.server.ipv4 if version == 4 else plan.server.ipv6
    python = sys.executable
    server = exec_in(
        plan.name,
        "server",
        [python, "-c", _ECHO_SERVER, address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n"
        client = run_in(
            plan.name,
            "client",
            [python, "-c", _ECHO_CLIENT, address],
            capture_output=True,
            text=True,
        )
        assert server.wait(timeout=10) == 0
    finally:
        server.kill()  # a no-op once it has exited; otherwise it would wait in accept() forever
        server.communicate()
    assert client.stdout == "HELLO THROUGH FW\n"


def test_socket_in_makes_sockets_that_live_in_the_namespace(
    make_lab: Callable[[], LabPlan],
) -> None:
    plan = make_lab()
    own_ns = os.readlink("/proc/thread-self/ns/net")
    with (
        socket_in(plan.server.namespace) as listener,
        socket_in(plan.client.namespace) as client,
    ):
        listener.bind((plan.server.ipv4, 0))  # EADDRNOTAVAIL anywhere but NAME-server
        listener.listen()
        client.settimeout(5)
        client.connect(listener.getsockname())
        accepted, peer = listener.accept()
        with accepted:
            assert peer[0] == plan.client.ipv4
            client.sendall(b"ping")
            assert accepted.recv(4) == b"ping"
    assert os.readlink("/proc/thread-self/ns/net") == own_ns


@pytest.mark.parametrize("version", [4, 6])
def test_extra_client_addresses_reach_the_server(lab_name: Callable[[], str], version: int) -> None:
    plan = LabPlan.create(lab_name(), index=12, clients=3)
    up(plan)
    up(plan)  # complete as planned: left alone
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    server = plan.server.ipv4 if version == 4 else plan.server.ipv6
    with socket_in(plan.server.namespace, family) as listener:
        listener.bind((server, 0))
        listener.listen()
        listener.settimeout(5)
        # Each address when bound to; the first when not (the kernel's choice).
        sources = [pair[version // 6] for pair in plan.client.pairs]
        for source in [*sources, None]:
            with socket_in(plan.client.namespace, family) as client:
                client.settimeout(5)
                if source is not None:
                    client.bind((source, 0))
                client.connect(listener.getsockname())
                accepted, peer = listener.accept()
                accepted.close()
                assert peer[0] == source or sources[0]


def test_socket_in_an_unknown_namespace_is_a_lab_error() -> None:
    with pytest.raises(LabError, match="fwemu-no-such-ns does not exist"):
        socket_in("fwemu-no-such-ns", socket.AF_INET6)


def test_second_up_changes_nothing(make_lab: Callable[[], LabPlan]) -> None:
    plan = make_lab()
    inodes = _ns_inodes(plan)
    assert up(plan) is False
    assert _ns_inodes(plan) == inodes


def test_up_rebuilds_a_partial_lab(make_lab: Callable[[], LabPlan]) -> None:
    plan = make_lab()
    pr_netns.remove(plan.server.namespace)  # as if a previous `up` had crashed
    assert not next(info for info in list_labs() if info.name == plan.name).up
    up(plan)
    assert ping(plan.client.namespace, plan.server.ipv6)


def test_up_refuses_to_replace_a_lab_with_another_index(make_lab: Callable[[], LabPlan]) -> None:
    plan = make_lab()
    with pytest.raises(LabError, match=f"already up with index {plan.index}"):
        up(LabPlan.create(plan.name, index=plan.index % 250 + 1))
    assert ping(plan.client.namespace, plan.server.ipv4)


def test_failed_up_leaves_nothing_behind(
    lab_name: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = LabPlan.create(lab_name())

    def fail(plan: LabPlan, namespace: str) -> None:
        raise LabError("injected failure")

    # The last step, when everything else has been created.
    monkeypatch.setattr(lab_netns, "_wait_until_running_here", fail)
    with pytest.raises(LabError, match="injected failure"):
        up(plan)
    assert not _namespaces(plan.name)


def test_lab_calls_never_signal_a_child(
    lab_name: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that cleans up on SIGTERM (like `fwemu demo`) must not see that cleanup run.

    pyroute2's IPRoute(netns=...) forks a child and stops it with SIGTERM; the child inherits
    Python handlers, so when it has not exited yet (a race, lost under load) it runs this one
    and tears the lab down from inside `up`. Spying on os.kill makes the race deterministic.
    """
    sent: list[int] = []
    real_kill = os.kill

    def spy(pid: int, signum: int) -> None:
        sent.append(signum)
        real_kill(pid, signum)

    monkeypatch.setattr(os, "kill", spy)
    plan = LabPlan.create(lab_name())
    previous = signal.signal(signal.SIGTERM, lambda *_: down(plan.name))
    try:
        up(plan)
        labs = list_labs()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert next(info for info in labs if info.name == plan.name).up
    assert signal.SIGTERM not in sent


def test_down_removes_everything_and_reports_it(make_lab: Callable[[], LabPlan]) -> None:
    plan = make_lab()
    assert down(plan.name) is True
    assert not _namespaces(plan.name)
    assert down(plan.name) is False


def test_two_labs_do_not_interfere(make_lab: Callable[[], LabPlan]) -> None:
    first, second = make_lab(), make_lab()
    assert ping(first.client.namespace, first.server.ipv4)
    assert ping(second.client.namespace, second.server.ipv4)
    assert not ping(first.client.namespace, second.server.ipv4, timeout=0.5)
    down(first.name)
    assert ping(second.client.namespace, second.server.ipv6)


def test_labs_sharing_an_index_are_still_isolated(lab_name: Callable[[], str]) -> None:
    first, second = LabPlan.create(lab_name(), 42), LabPlan.create(lab_name(), 42)
    up(first)
    up(second)
    with socket_in(second.server.namespace) as listener:
        listener.bind((second.server.ipv4, 0))
        listener.listen()
        with socket_in(first.client.namespace) as client:
            client.settimeout(2)
            with pytest.raises(ConnectionRefusedError):  # first's server has no listener
                client.connect(listener.getsockname())


def test_list_labs_shows_state_and_addresses(make_lab: Callable[[], LabPlan]) -> None:
    plan = make_lab()
    info = next(info for info in list_labs() if info.name == plan.name)
    assert (info.index, info.up, info.namespaces) == (plan.index, True, ("client", "fw", "server"))
    assert info.to_dict()["addresses"] == {
        "client": list(plan.client.addresses),
        "fw": [*plan.fw_client_side.addresses, *plan.fw_server_side.addresses],
        "server": list(plan.server.addresses),
    }


def test_lab_context_manager_removes_the_lab_even_on_error(lab_name: Callable[[], str]) -> None:
    name = lab_name()
    with pytest.raises(RuntimeError), lab(name, index=12) as plan:
        assert ping(plan.client.namespace, plan.server.ipv4)
        raise RuntimeError("test body failed")
    assert not _namespaces(plan.name)


def test_reap_orphans_removes_a_dead_runs_lab_and_what_runs_in_it(
    lab_name: Callable[[], str],
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    orphan = LabPlan.create(f"fwemu-t{gone.pid}-9", index=12)
    kept = LabPlan.create(lab_name(), index=13)  # this process's: alive
    up(orphan)
    up(kept)
    try:
        with _started(orphan, "fw", SLEEPER) as leaked:
            assert lab_netns.reap_orphans() == [orphan.name]
            assert leaked.wait(timeout=5) == -signal.SIGTERM
            assert not _namespaces(orphan.name)
            assert _namespaces(kept.name) == set(kept.namespaces)
    finally:
        down(orphan.name)


# Blocks SIGTERM, says it is ready, then prints the pid that sent it SIGTERM and exits.
CHILD = (
    "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
    "print('ready', flush=True); print(signal.sigwaitinfo({signal.SIGTERM}).si_pid)"
)
# Stops its child on SIGTERM, as fwemu's supervisor stops its workers; passes on its output.
PARENT = f"""
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", {CHILD!r}], stdout=subprocess.PIPE, text=True)
signal.signal(signal.SIGTERM, lambda *_: child.terminate())
print(child.stdout.readline(), end="", flush=True)
print(child.stdout.read(), end="", flush=True)
sys.exit(child.wait())
"""


@contextmanager
def _started(plan: LabPlan, side: Side, argv: list[str]) -> Iterator[subprocess.Popen[str]]:
    """`argv` running in the lab once it printed its first line; killed at the end, if need be."""
    with exec_in(plan.name, side, argv, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert process.stdout.readline() == "ready\n"
            yield process
        finally:
            process.kill()


def test_stop_processes_kills_what_outlives_sigterm(make_lab: Callable[[], LabPlan]) -> None:
    plan = make_lab()
    with _started(plan, "server", SLEEPER) as polite, _started(plan, "client", DEAF) as deaf:
        stopped = lab_netns.stop_processes(plan.name, grace=0.2)
        assert [
            (s.process.pid, s.process.namespace, s.process.command, s.signal) for s in stopped
        ] == sorted(
            [
                (polite.pid, plan.server.namespace, " ".join(SLEEPER), signal.SIGTERM),
                (deaf.pid, plan.client.namespace, " ".join(DEAF), signal.SIGKILL),
            ]
        )
        assert (polite.wait(5), deaf.wait(5)) == (-signal.SIGTERM, -signal.SIGKILL)
        assert processes_in(plan.name) == []
    assert lab_netns.stop_processes(plan.name) == []


def test_stop_processes_lets_a_parent_stop_its_children(make_lab: Callable[[], LabPlan]) -> None:
    """SIGTERM goes to the outermost process: fwemu's workers stopping before their supervisor
    knew it should stop would look to it like a crash."""
    plan = make_lab()
    with _started(plan, "fw", [sys.executable, "-c", PARENT]) as parent:
        (child,) = (p for p in processes_in(plan.name) if p.pid != parent.pid)
        stopped = lab_netns.stop_processes(plan.name)
        assert [(s.process.pid, s.signal) for s in stopped] == sorted(
            [(parent.pid, signal.SIGTERM), (child.pid, signal.SIGTERM)]
        )
        assert parent.stdout is not None
        assert parent.stdout.read() == f"{parent.pid}\n"  # the child's SIGTERM came from it
        assert parent.wait(5) == 0


def test_up_refuses_to_rebuild_a_partial_lab_something_runs_in(
    make_lab: Callable[[], LabPlan],
) -> None:
    """Removing its namespaces would leave the process running in a namespace with no name."""
    plan = make_lab()
    with _started(plan, "fw", SLEEPER) as sleeper:
        pr_netns.remove(plan.server.namespace)
        with pytest.raises(LabError) as refused:
            up(plan)
        assert str(refused.value) == (
            f"lab {plan.name} is incomplete (namespace {plan.server.namespace} is missing) and "
            f"processes run in it (pid {sleeper.pid} in {plan.fw_client_side.namespace}: "
            f"{' '.join(SLEEPER)}); 'fwemu lab down {plan.name}' stops them and removes the lab"
        )
        assert down(plan.name) is True
        assert sleeper.wait(5) == -signal.SIGTERM
    assert up(plan) is True
    assert ping(plan.client.namespace, plan.server.ipv4)
