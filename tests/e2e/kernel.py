"""The real nf_conntrack as an oracle: a lab whose fw namespace only forwards, packets crafted with
raw sockets from its client and server namespaces, and the kernel's verdict on each read back.

Used by tests/e2e/test_kernel_parity.py (scripted and generated conversations),
tests/e2e/test_kernel_parity_udp.py (datagrams on the wall clock) and by
tests/e2e/replay_captures.py (real captures). The client's and server's own stacks drop what
arrives (INPUT DROP: no RST, no ICMP port unreachable), so only our packets cross the fw
namespace.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fwemu.core.decision import Decision, Reason
from fwemu.lab import LabPlan, lab, run_in, socket_in
from fwemu.policy.model import OutOfStateAction, Policy
from tests.core.trace import Trace, make_policy

# Linux-like: pick up mid-stream flows (tcp_loose=1); conntrack itself accepts INVALID packets.
LINUX = make_policy(oos=OutOfStateAction.ACCEPT, pickup=True)
ETH_P_ALL = 0x0003
ARRIVAL_TIMEOUT = 2.0  # seconds; a forwarded packet arrives within microseconds when idle
_LIBERAL = "net.netfilter.nf_conntrack_tcp_be_liberal"


@dataclass
class Verdict:
    """What one side made of one packet: the flow's state after it, and whether it was INVALID."""

    state: str | None
    invalid: bool

    def __str__(self) -> str:
        return f"{self.state}{' INVALID' if self.invalid else ''}"


@dataclass
class Kernel:
    plan: LabPlan
    raw: dict[tuple[str, int], socket.socket]  # (side, ip version) -> raw socket
    sniffers: dict[str, socket.socket]  # side -> what arrives on its eth0
    proc: Path  # /proc/<pid>/net of a process in the fw namespace: its conntrack table and stats

    def send(self, side: str, packet: bytes) -> None:
        """Send `packet` from `side` and return once it came out of the fw namespace at the
        other side: by then the kernel's conntrack has seen it (readiness, not a sleep)."""
        version = packet[0] >> 4
        dst = self.plan.server if side == "client" else self.plan.client
        addr = dst.ipv4 if version == 4 else dst.ipv6
        sniffer = self.sniffers["server" if side == "client" else "client"]
        _drain(sniffer)
        self.raw[(side, version)].sendto(packet, (addr, 0))
        segment = packet[(packet[0] & 0x0F) * 4 if version == 4 else 40 :]
        end = time.monotonic() + ARRIVAL_TIMEOUT
        while (left := end - time.monotonic()) > 0:
            sniffer.settimeout(left)
            try:
                if sniffer.recv(65535).endswith(segment):  # forwarding changes the IP header only
                    return
            except TimeoutError:
                break
        raise AssertionError(f"a packet from the {side} did not cross the fw namespace")

    def states(self) -> list[str]:
        """The state of every TCP entry (IPv4 and IPv6), as /proc/net/nf_conntrack lists them."""
        lines = (self.proc / "nf_conntrack").read_text().splitlines()
        return [fields[5] for line in lines if (fields := line.split())[2] == "tcp"]

    def invalid(self) -> int:
        """The kernel's count of packets conntrack called INVALID (all CPUs)."""
        header, *rows = (self.proc / "stat" / "nf_conntrack").read_text().splitlines()
        column = header.split().index("invalid")
        return sum(int(row.split()[column], 16) for row in rows)

    def flush(self) -> None:
        for family in ("ipv4", "ipv6"):
            run_in(self.plan.name, "fw", ["conntrack", "-F", "-f", family], capture_output=True)

    def liberal(self, on: bool) -> None:
        """nf_conntrack_tcp_be_liberal in the fw namespace: window checks off (RSTs only)."""
        self.sysctl(_LIBERAL, int(on))

    def sysctl(self, key: str, value: int) -> None:
        """Set a sysctl in the fw namespace (conntrack's are per namespace)."""
        _check(run_in(self.plan.name, "fw", ["sysctl", "-qw", f"{key}={value}"]))


@contextmanager
def kernel_lab(name: str, index: int) -> Iterator[Kernel]:
    """A lab whose fw namespace runs only the kernel's conntrack, removed on exit."""
    with lab(name, index) as plan:

        def sh(side: str, *argv: str) -> None:
            _check(run_in(plan.name, side, argv, capture_output=True))  # type: ignore[arg-type]

        for tool in ("iptables", "ip6tables"):
            # Any rule that uses conntrack registers its hooks in the fw namespace.
            sh(
                "fw",
                tool,
                "-A",
                "FORWARD",
                "-m",
                "conntrack",
                "--ctstate",
                "INVALID",
                "-j",
                "ACCEPT",
            )
            for side in ("client", "server"):
                for proto in ("tcp", "udp"):
                    sh(side, tool, "-A", "INPUT", "-p", proto, "-j", "DROP")
        raw = {
            (side, v): socket_in(f"{plan.name}-{side}", fam, socket.SOCK_RAW, socket.IPPROTO_RAW)
            for side in ("client", "server")
            for v, fam in ((4, socket.AF_INET), (6, socket.AF_INET6))
        }
        sniffers = {
            side: socket_in(
                f"{plan.name}-{side}", socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL)
            )
            for side in ("client", "server")
        }
        for side, sniffer in sniffers.items():
            sniffer.bind((getattr(plan, side).ifname, 0))
        # A process living in the fw namespace: its /proc/<pid>/net is that namespace's.
        anchor = subprocess.Popen(["ip", "netns", "exec", f"{plan.name}-fw", "sleep", "infinity"])
        try:
            proc = Path(f"/proc/{anchor.pid}/net")
            deadline = time.monotonic() + 10
            while not (proc / "nf_conntrack").exists() or _netns(anchor.pid) == _netns("self"):
                if time.monotonic() > deadline:
                    raise AssertionError("the fw namespace's anchor process did not start")
                time.sleep(0.01)  # polling for the exec into the namespace, not a fixed wait
            yield Kernel(plan, raw, sniffers, proc)
        finally:
            anchor.kill()
            anchor.wait()
            for s in [*raw.values(), *sniffers.values()]:
                s.close()


def _check(done: subprocess.CompletedProcess[bytes]) -> None:
    if done.returncode:
        raise AssertionError(f"{' '.join(map(str, done.args))} failed: {done.stderr!r}")


def _netns(pid: int | str) -> str:
    try:
        return str(Path(f"/proc/{pid}/ns/net").readlink())
    except OSError:
        return ""


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while sock.recv(65535):
            pass
    except BlockingIOError:
        pass


Step = tuple[str, Verdict, Verdict]  # (what was sent, kernel's verdict, fwemu's verdict)


def engine_invalid(decision: Decision) -> bool:
    """Whether fwemu called the packet out-of-state: the kernel's INVALID."""
    return decision.reason in (Reason.OUT_OF_STATE, Reason.PAST_ANSWER_RATE)


def run_both(
    kernel: Kernel,
    steps: Callable[[Trace], None],
    *,
    v6: bool = False,
    policy: Policy = LINUX,
) -> list[Step]:
    """Play `steps` through kernel and engine: what each made of every packet."""
    kernel.flush()
    log: list[Step] = []
    plan = kernel.plan
    client = plan.client.ipv6 if v6 else plan.client.ipv4
    server = plan.server.ipv6 if v6 else plan.server.ipv4
    t = Trace(
        policy, v6=v6, client_addr=client, server_addr=server, tap=kernel.send, count_invalid=False
    )
    original_send = t._send

    def send_and_compare(src, dst, flags, length, at, seq, ack, window=0xFFFF, options=b""):  # type: ignore[no-untyped-def]
        before = kernel.invalid()
        decision = original_send(src, dst, flags, length, at, seq, ack, window, options)
        states = kernel.states()
        theirs = Verdict(states[0] if states else None, kernel.invalid() > before)
        ours = Verdict(t.state(), engine_invalid(decision))
        log.append((f"{'client' if src is t.c else 'server'} {flags or '-'}", theirs, ours))
        return decision

    t._send = send_and_compare  # type: ignore[method-assign]
    steps(t)
    return log


def report(log: Sequence[tuple[str, object, object]]) -> str:
    return "\n".join(f"{step:14} kernel={k!s:22} fwemu={e}" for step, k, e in log)


def assert_same(log: Sequence[tuple[str, object, object]]) -> None:
    """Kernel and fwemu made the same of every step (what was sent, theirs, ours)."""
    first = next((i for i, (_, k, e) in enumerate(log) if k != e), None)
    assert first is None, f"step {(first or 0) + 1} diverges first:\n{report(log)}"
