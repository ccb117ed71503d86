"""Drive fwemu from tests: a lab with `fwemu run` inline in it, and what the endpoints see.

    from fwemu.testing import inline_firewall

    with inline_firewall(toml='[timeouts]\\nestablished = "1s"\\n') as fw:
        server = fw.server_socket(); server.bind((fw.server_address(), 8080)); server.listen()
        client = fw.client_socket(); client.connect((fw.server_address(), 8080))
        fw.wait_for_event("expire", dport=8080)
        udp = fw.client_socket(type=socket.SOCK_DGRAM)  # UDP flows cross fwemu too

Needs root (namespaces, iptables, NFQUEUE). Importing this module needs neither root nor pytest.
Every error is a `HarnessError` (a FwemuError) with a one-line message.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any, TypeVar

from fwemu.errors import FwemuError
from fwemu.lab import (
    SIDES,
    LabPlan,
    Side,
    call_in_netns,
    exec_in,
    lab,
    namespace_name,
    reap_orphans,
    run_in,
    socket_in,
)
from fwemu.lab.plan import MAX_INDEX, MIN_INDEX
from fwemu.ops.client import request as control_request
from fwemu.ops.filters import parse_selector
from fwemu.ops.protocol import Request
from fwemu.policy import ExpireAction

T = TypeVar("T")

# The command that runs fwemu's CLI as a child: this interpreter, so a virtualenv carries over.
FWEMU_COMMAND: tuple[str, ...] = (sys.executable, "-m", "fwemu")
# Generous for a busy 2-CPU VM (a start takes ~0.3 s there); waits end as soon as they can.
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
STARTED = "fwemu started"  # the log line `fwemu run` prints once its rules and queue are up
POLL_INTERVAL = 0.01
# How many of fwemu's last stderr lines an error message quotes.
_TAIL = 3
_SHOWN_EVENTS = 30  # ... and how many of the latest events a timeout's message lists

_labs = itertools.count()


class HarnessError(FwemuError):
    """fwemu or its lab did not do what the harness needed (start, stay up, answer, stop)."""


class EventTimeout(HarnessError, TimeoutError):
    """An awaited event did not come in time; the message lists the events that did."""


class FwemuProcess:
    """A `fwemu` child process whose stderr is collected line by line as it comes.

    stdout goes wherever `start` sends it; when piped, `stop`/`finish` collect it into `stdout`.
    """

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.stdout = ""
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, name="fwemu-stderr", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        args: Sequence[str],
        *,
        stdout: int | IO[str] | None = subprocess.DEVNULL,
        command: Sequence[str] = FWEMU_COMMAND,
    ) -> FwemuProcess:
        """`fwemu ARGS` (e.g. ["run", "--preset", "linux"]); `command` is what runs fwemu."""
        process = subprocess.Popen(
            [*command, *args], stdout=stdout, stderr=subprocess.PIPE, text=True
        )
        return cls(process)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line.rstrip("\n"))

    @property
    def lines(self) -> list[str]:
        """fwemu's log (stderr) so far, one entry per line."""
        return list(self._lines)

    @property
    def stderr(self) -> str:
        return "".join(f"{line}\n" for line in self._lines)

    def wait_for(self, text: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """The first log line containing `text`; HarnessError if fwemu exits or times out first."""
        end = time.monotonic() + timeout
        while True:
            ended = not self._reader.is_alive()  # read before scanning: no line can slip by
            for line in self.lines:
                if text in line:
                    return line
            if ended:
                raise HarnessError(
                    f"fwemu exited with status {self.process.wait()} before logging "
                    f"{text!r}: {self.tail()}"
                )
            if time.monotonic() >= end:
                raise HarnessError(f"fwemu did not log {text!r} within {timeout:g}s: {self.tail()}")
            time.sleep(POLL_INTERVAL)

    def check_running(self) -> None:
        """HarnessError if fwemu has exited."""
        code = self.process.poll()
        if code is not None:
            self._reader.join(STOP_TIMEOUT)
            raise HarnessError(f"fwemu exited unexpectedly with status {code}: {self.tail()}")

    def stop(self, signum: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send `signum` unless fwemu has already exited; SIGKILL if it is still up after
        `timeout`. Returns the exit status (negative: killed by that signal)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.finish()

    def finish(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for fwemu to exit by itself; then `stdout` holds what it wrote there (if piped)."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise HarnessError(
                f"fwemu did not exit within {timeout:g}s, killed it: {self.tail()}"
            ) from None
        self._reader.join(timeout)
        out, err = self.process.stdout, self.process.stderr
        if out is not None and not out.closed:
            self.stdout += out.read()
            out.close()
        if err is not None:
            err.close()
        return code

    def records(self) -> list[dict[str, Any]]:
        """The JSON-lines events it wrote on a piped stdout (`--events -`), after it stopped."""
        return [json.loads(line) for line in self.stdout.splitlines()]

    def tail(self) -> str:
        """fwemu's last few log lines, on one line, for error messages."""
        return " | ".join(self._lines[-_TAIL:]) or "(no output)"


class Firewall:
    """A running `fwemu run` in the fw namespace of `plan`; see `inline_firewall`."""

    def __init__(
        self,
        plan: LabPlan,
        fwemu: FwemuProcess,
        events_file: Path,
        *,
        speed: float = 1.0,
        control: Path | None = None,
    ) -> None:
        self.plan = plan
        self.fwemu = fwemu
        self.speed = speed
        self._events_file = events_file
        self._control = control
        self._events: list[dict[str, Any]] = []
        self._events_read = 0  # bytes of the events file already parsed
        self._lock = threading.Lock()  # endpoints' threads and the test read events at once
        self._children: list[subprocess.Popen[Any]] = []

    @property
    def process(self) -> subprocess.Popen[str]:
        return self.fwemu.process

    # --- endpoints ------------------------------------------------------------------------

    def client_socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket in the client namespace (its traffic to the server crosses fwemu): TCP
        unless `type` is socket.SOCK_DGRAM (UDP), IPv4 unless `family` is socket.AF_INET6."""
        return socket_in(self.plan.client.namespace, family, type)

    def server_socket(
        self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM
    ) -> socket.socket:
        """A socket in the server namespace (family and type as for client_socket)."""
        return socket_in(self.plan.server.namespace, family, type)

    def client_address(self, v6: bool = False) -> str:
        return self.plan.client.ipv6 if v6 else self.plan.client.ipv4

    def server_address(self, v6: bool = False) -> str:
        return self.plan.server.ipv6 if v6 else self.plan.server.ipv4

    def run(self, side: str, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run `argv` in the client, fw or server namespace; output is captured as text.

        subprocess.run keywords pass through; `check=True` raises HarnessError on failure.
        """
        check = kw.pop("check", False)
        result: subprocess.CompletedProcess[str] = run_in(
            self.plan.name, _side(side), argv, **{"capture_output": True, "text": True, **kw}
        )
        if check and result.returncode != 0:
            why = (result.stderr or "").strip().replace("\n", " | ")
            raise HarnessError(
                f"{' '.join(argv)} failed in {self.plan.name}-{side} "
                f"with status {result.returncode}" + (f": {why}" if why else "")
            )
        return result

    def call(self, side: str, fn: Callable[[], T]) -> T:
        """`fn()` run in the client, fw or server namespace (in a short-lived thread): what it
        creates there, such as sockets or a connection pool, stays there."""
        return call_in_netns(self._namespace(side), fn)

    def spawn(self, side: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` in the client, fw or server namespace and go on; it gets SIGTERM (then
        SIGKILL) when the firewall stops. subprocess.Popen keywords pass through."""
        child: subprocess.Popen[Any] = exec_in(self.plan.name, _side(side), argv, **kw)
        self._children.append(child)
        return child

    def stop_children(self) -> None:
        """Stop what `spawn` started (also done when the firewall stops)."""
        for child in self._children:
            if child.poll() is None:
                child.terminate()
        for child in self._children:
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self._children.clear()

    def stop(self) -> int:
        """Stop what `spawn` started, then fwemu; its exit status."""
        self.stop_children()
        return self.fwemu.stop()

    def scaled(self, seconds: float) -> float:
        """Policy time -> wall-clock time at this firewall's speed (350 s at speed 100: 3.5)."""
        return seconds / self.speed

    def _namespace(self, side: str) -> str:
        return namespace_name(self.plan.name, _side(side))

    # --- what fwemu says ------------------------------------------------------------------

    def stderr_lines(self) -> list[str]:
        return self.fwemu.lines

    def events(self) -> list[dict[str, Any]]:
        """Every event fwemu has written so far (`ts` is wall-clock epoch seconds)."""
        with self._lock:
            try:
                with open(self._events_file, "rb") as f:
                    f.seek(self._events_read)
                    data = f.read()
            except FileNotFoundError:
                return list(self._events)
            complete = data[: data.rfind(b"\n") + 1]  # a line being written waits for next time
            self._events_read += len(complete)
            self._events += [json.loads(line) for line in complete.splitlines()]
            return list(self._events)

    def wait_for_event(self, event: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        """The first event of kind `event` whose fields equal `match` (top-level fields such as
        state, action, to, side; or the flow's src, sport, dst, dport).

        Raises EventTimeout, listing the events seen, if none comes within `timeout`."""
        end = time.monotonic() + timeout
        while True:
            for record in self.events():
                if record["event"] == event and _matches(record, match):
                    return record
            self.fwemu.check_running()
            if time.monotonic() >= end:
                wanted = " ".join([event, *(f"{k}={v!r}" for k, v in match.items())])
                raise EventTimeout(
                    f"no event {wanted} within {timeout:g}s; events: {_summary(self._events)}"
                )
            time.sleep(POLL_INTERVAL)

    def expire(
        self, match: str = "", *, action: ExpireAction | str | None = None
    ) -> list[dict[str, Any]]:
        """Expire flows now, as if their timers had run out (`fwemu expire`): those `match`
        selects (e.g. "dport=8080", "state=established"; "" for every flow), with the policy's
        action for their phase or `action` ("silent", "reset-both", ...). The events it caused.
        """
        try:
            chosen = None if action is None else ExpireAction(action)
        except ValueError:
            names = ", ".join(a.value for a in ExpireAction)
            raise HarnessError(f"no expiry action {action!r}: use one of {names}") from None
        req = Request(
            "expire", selector=parse_selector(match), all=not match.strip(), action=chosen
        )
        return [r["event"] for r in self._request(req) if "event" in r]

    def bypassed(self) -> int:
        """How many packets went past fwemu unseen (its queue overflowed), as it last logged;
        0 also where it cannot tell (--workers, --no-rules)."""
        for line in reversed(self.fwemu.lines):
            if found := _BYPASSED.search(line):
                return int(found[1])
        return 0

    def status(self) -> dict[str, Any]:
        """fwemu's `status` (`fwemu top`'s header): its counters, policy, flow count."""
        [reply] = self._request(Request("status"))
        return reply

    def flows(self) -> list[dict[str, Any]]:
        """fwemu's live flow table, as `fwemu flows --json` lists it: one flat record a flow
        (src, sport, dst, dport client first, state, phase, expires_in, rule, ...)."""
        return [r["flow"] for r in self._request(Request("flows")) if "flow" in r]

    def _request(self, req: Request) -> list[dict[str, Any]]:
        if self._control is None:
            raise HarnessError(f"this fwemu has no control socket to ask for {req.command}")
        return list(control_request(self._control, req))


# fwemu's warning (adapters/daemon.py): "... more packets bypassed fwemu (<total> in all) ..."
_BYPASSED = re.compile(r"packets bypassed fwemu \((\d+) in all\)")


def _side(side: str) -> Side:
    for known in SIDES:
        if side == known:
            return known
    raise HarnessError(f"no side {side!r} in a lab: use one of {', '.join(SIDES)}")


def _matches(record: dict[str, Any], match: dict[str, Any]) -> bool:
    flow = record.get("flow") or {}
    return all((record[k] if k in record else flow.get(k)) == v for k, v in match.items())


def _summary(records: list[dict[str, Any]]) -> str:
    shown = "; ".join(_describe(r) for r in records[-_SHOWN_EVENTS:]) or "none"
    earlier = len(records) - _SHOWN_EVENTS
    return f"({earlier} earlier) {shown}" if earlier > 0 else shown


def _describe(record: dict[str, Any]) -> str:
    flow = record.get("flow") or {}
    proto = "udp " if flow.get("proto") == "udp" else ""
    where = f"{proto}{flow.get('src')}:{flow.get('sport')}>{flow.get('dst')}:{flow.get('dport')}"
    details = [f"{k}={record[k]}" for k in ("state", "action", "to", "side") if record.get(k)]
    return " ".join([record["event"], where, *details])


def _policy_args(policy: str | Path | None, toml: str | None, workdir: Path) -> list[str]:
    """--policy/--preset for a preset name, a file, or TOML text (written to `workdir`)."""
    if toml is not None:
        if policy is not None:
            raise HarnessError("give a policy (preset name or file) or toml text, not both")
        path = workdir / "inline.toml"  # the policy's name, unless it sets one
        path.write_text(toml, encoding="utf-8")
        return ["--policy", str(path)]
    if policy is None:
        return ["--preset", "linux"]
    if isinstance(policy, Path) or "/" in policy or policy.endswith(".toml"):
        return ["--policy", str(policy)]
    return ["--preset", policy]


def _lab_identity(name: str | None, index: int | None) -> tuple[str, int]:
    """A name unique on the host and an index unique in this process, unless given.

    The first lab of a process first removes those of harness runs that died unable to."""
    n = next(_labs)
    if n == 0:
        reap_orphans()
    pid = os.getpid()
    if index is None:
        index = MIN_INDEX + (pid + n) % (MAX_INDEX - MIN_INDEX + 1)
    return (name or f"fwemu-{pid}-{n}", index)


@contextmanager
def inline_firewall(
    policy: str | Path | None = None,
    *,
    toml: str | None = None,
    speed: float = 1.0,
    name: str | None = None,
    index: int | None = None,
    clients: int = 1,
    extra_args: Sequence[str] = (),
) -> Iterator[Firewall]:
    """A lab with `fwemu run` inline in its fw namespace, for the duration of a `with` block.

    `policy` is a preset name (default "linux") or a policy file; `toml` is policy text instead.
    The lab is named "fwemu-<pid>-<n>" unless `name` is given; its client namespace has
    `clients` addresses of each family (`plan.client.pairs`). fwemu runs as a child process
    with its events file and control socket (unless `extra_args` names one) in a
    temporary directory; the block starts once fwemu is running. On exit, even on an exception,
    fwemu gets SIGTERM (SIGKILL if it hangs) and the lab is removed. A clean exit of the block
    raises HarnessError if fwemu did not exit 0.
    """
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fwemu-testing-")))
        policy_args = _policy_args(policy, toml, workdir)
        plan = stack.enter_context(lab(*_lab_identity(name, index), clients))
        events_file = workdir / "events.jsonl"
        given = [Path(v) for k, v in itertools.pairwise(extra_args) if k == "--control"]
        control_args = [] if given else ["--control", str(workdir / "control.sock")]
        control = given[-1] if given else workdir / "control.sock"
        fw = Firewall(
            plan,
            FwemuProcess.start(
                [
                    "run",
                    "--netns",
                    plan.fw_client_side.namespace,
                    *policy_args,
                    "--speed",
                    repr(speed),
                    "--events",
                    str(events_file),
                    *control_args,
                    *extra_args,
                ]
            ),
            events_file,
            speed=speed,
            control=control,
        )
        stack.callback(fw.stop)
        fw.fwemu.wait_for(STARTED)
        yield fw
        code = fw.stop()
        bypassed = fw.bypassed()
        if code != 0:
            raise HarnessError(f"fwemu exited with status {code} on SIGTERM: {fw.fwemu.tail()}")
        if bypassed:
            raise HarnessError(
                f"{bypassed} packets bypassed fwemu: its queue overflowed and the kernel let "
                "them through unseen, so what it did to their flows is not what the policy says"
            )


def tcp_exchange(plan: LabPlan, payload: bytes = b"ping", *, ipv6: bool = False) -> bytes:
    """Connect from the lab's client to its server, send `payload`; what the server echoed."""
    family = socket.AF_INET6 if ipv6 else socket.AF_INET
    address = plan.server.ipv6 if ipv6 else plan.server.ipv4
    with socket_in(plan.server.namespace, family) as server:
        server.settimeout(5)
        server.bind((address, 0))
        server.listen()
        port = server.getsockname()[1]

        def echo() -> None:
            # A failure shows on the client side; the thread just ends.
            with suppress(OSError):
                conn, _ = server.accept()
                with conn:
                    conn.sendall(conn.recv(1024))

        thread = threading.Thread(target=echo)
        thread.start()
        try:
            with socket_in(plan.client.namespace, family) as client:
                client.settimeout(5)
                client.connect((address, port))
                client.sendall(payload)
                return client.recv(1024)
        finally:
            thread.join(5)
