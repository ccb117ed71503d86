"""Plays a scenario in a lab of its own: fwemu inline, the client and the server each running its
steps in a thread, then checks what they observed and what fwemu did against the scenario.

The server's leading `listen` steps run before either side starts, so a client's first connect
finds the port open. A side stops at its first step that does not go as expected (the steps
after it would mean little); the other side runs on.

A step with a `count` opens (or accepts) that many connections at once and counts how each
ended; those that connected stay open until a close or abort step, or the end.

Each side has one UDP socket: the server's bound by a bind step (a leading one runs first too),
the client's made and connected to the server's port by its first UDP step. A server's send-to
answers the address its latest datagram came from.

A syn-flood step floods the server from the client side (fwemu.lab.flood) and notes what the
server and fwemu made of it; in the background, the steps after it run meanwhile, and it stops
when both sides are done. fwemu's events about the spoofed sources' flows are summed up in one
timeline line instead of one line each.
"""

from __future__ import annotations

import errno
import math
import os
import resource
import select
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from typing import Any

from fwemu.errors import FwemuError
from fwemu.lab.flood import PER_FLOW_EVENTS, FloodError, run_flood
from fwemu.policy import format_duration
from fwemu.scenario.model import (
    SIDES,
    Action,
    Expected,
    Outcome,
    Scenario,
    Side,
    Step,
    flood_spec,
    show_counts,
)
from fwemu.scenario.peer import DatagramPeer, Peer, abort, hear_errors, hostport
from fwemu.scenario.timeline import Entry, Notebook, fwemu_entries, merged
from fwemu.testing import EventTimeout, Firewall, inline_firewall

# fwemu writes an event just after acting on it, so an endpoint may see a RST a moment before the
# event is in the file: wait this long before reading the events of a finished scenario.
SETTLE = 0.2
# How long (wall clock) past its steps' own limits a side may take before the run gives up on it.
_SIDE_GRACE = 30.0
_CASE = 0  # one scenario per notebook: the timeline's case number
# The steps that run before either side starts, when at the top of the server's list: they
# open the server's port, so the client's first connect or datagram finds it open.
_OPENING = (Action.LISTEN, Action.BIND)
# A listen step's backlog: the kernel completes a count step's handshakes into the accept queue
# without the scenario accepting them. Linux caps it at net.core.somaxconn, 4096 by default
# since 5.4 (listen(2)), beyond MAX_COUNT connections of a step.
BACKLOG = 4096

# A Peer's word for what it saw -> the scenario's outcome; anything else is an error.
_OUTCOMES: Mapping[str, Outcome] = {
    "connected": Outcome.OK,
    "sent": Outcome.OK,
    "data": Outcome.OK,
    "nothing": Outcome.OK,
    "ok": Outcome.OK,
    "EOF": Outcome.EOF,
    "readable": Outcome.EOF,  # woken with no error: the peer closed (POLLHUP)
    "ECONNRESET": Outcome.RESET,
    "EPIPE": Outcome.RESET,  # Linux's errno for a RST received in CLOSE_WAIT (see peer.py)
    "ECONNREFUSED": Outcome.REFUSED,
    "echoed": Outcome.OK,
    "unreachable": Outcome.UNREACHABLE,
    "timeout": Outcome.TIMEOUT,
    "ETIMEDOUT": Outcome.TIMEOUT,  # the kernel gave up retransmitting (a count step's connect)
}
# What a close, abort or half-close step notes it did, to one connection and to several.
_CLOSES: Mapping[Action, tuple[str, str]] = {
    Action.HALF_CLOSE: (
        "shutdown(SHUT_WR): sent its FIN, still reading",
        "shutdown(SHUT_WR) x{}: sent their FINs, still reading",
    ),
    Action.CLOSE: ("close(): sent its FIN", "close() x{}: sent their FINs"),
    Action.ABORT: (
        "abort: close() with SO_LINGER 0 (sends a RST)",
        "abort x{}: close() with SO_LINGER 0 (sends RSTs)",
    ),
}


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step observed. `began` is scenario seconds since the scenario began, `took` the
    step's own scenario seconds; `outcome` is None for a step that did not run."""

    step: Step
    outcome: Outcome | None
    detail: str = ""  # the observation itself: "ECONNRESET", "exit status 3", ...
    began: float = 0.0
    took: float = 0.0
    problem: str | None = None
    counts: Mapping[Outcome, int] | None = None  # a count step's: how many connections ended how

    @property
    def ran(self) -> bool:
        return self.outcome is not None


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """A played scenario: each step's result, the problems found, and the merged timeline."""

    scenario: Scenario
    steps: tuple[StepResult, ...]
    problems: tuple[str, ...]
    timeline: tuple[Entry, ...]
    start: float  # wall-clock epoch seconds when the steps began
    seconds: float  # wall-clock duration, lab included
    error: str | None = None  # the run itself failed (fwemu or the lab did not come up)

    @property
    def passed(self) -> bool:
        return not self.problems and self.error is None


def run_scenario(scenario: Scenario, *, lab: str | None = None) -> ScenarioResult:
    """Play `scenario` in a lab of its own (named `lab`, else a unique name), removed after."""
    began = time.monotonic()
    play: _Play | None = None
    if any(step.count for side in SIDES for step in scenario.steps(side)):
        _more_descriptors()
    try:
        with inline_firewall(
            scenario.policy_ref,
            toml=scenario.policy_toml,
            speed=scenario.speed,
            name=lab,
            clients=scenario.clients,
        ) as fw:
            play = _Play(scenario, fw)
            play.run()
        return play.result(time.monotonic() - began)
    except FwemuError as err:
        return ScenarioResult(
            scenario,
            play.step_results() if play else (),
            (),
            tuple(play.timeline) if play else (),
            play.start if play else time.time(),
            time.monotonic() - began,
            error=str(err),
        )


def run_scenarios(
    scenarios: Sequence[Scenario],
    *,
    jobs: int = 1,
    started: Callable[[Scenario], None] | None = None,
    finished: Callable[[ScenarioResult], None] | None = None,
) -> list[ScenarioResult]:
    """Each scenario in its own lab, `jobs` at a time; results in the order given. `started` and
    `finished` are called (from worker threads) as each one starts and ends."""

    def one(scenario: Scenario) -> ScenarioResult:
        if started:
            started(scenario)
        return run_scenario(scenario)

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="scenario") as pool:
        futures = {pool.submit(one, s): i for i, s in enumerate(scenarios)}
        results: list[ScenarioResult | None] = [None] * len(scenarios)
        for future in as_completed(futures):
            result = future.result()
            results[futures[future]] = result
            if finished:
                finished(result)
    return [r for r in results if r is not None]


class _Endpoint:
    """One side's state while its steps run: its listener, the connections it holds, the
    latest connect or accept step with the connections it made (those that use a connection use
    these), and its UDP socket."""

    def __init__(self, play: _Play, side: Side) -> None:
        self.play = play
        self.side = side
        self.latest: tuple[Step, list[Peer]] | None = None
        self.held: list[Peer] = []
        self.listener: socket.socket | None = None
        self.udp: DatagramPeer | None = None
        self.note = partial(play.notebook.note, _CASE, side)

    def adopt(self, step: Step, sock: socket.socket) -> Peer:
        peer = self.hold(sock)
        self.latest = (step, [peer])
        return peer

    def hold(self, sock: socket.socket) -> Peer:
        self.play.cleanup.callback(abort, sock)
        peer = Peer(sock, self.note)
        self.held.append(peer)
        return peer


class _Play:
    def __init__(self, scenario: Scenario, fw: Firewall) -> None:
        self.scenario = scenario
        self.fw = fw
        self.notebook = Notebook()
        self.cleanup = ExitStack()
        self.results: dict[Side, list[StepResult]] = {side: [] for side in SIDES}
        self.endpoints = {side: _Endpoint(self, side) for side in SIDES}
        self.family = socket.AF_INET6 if scenario.ipv6 else socket.AF_INET
        self.address = (fw.server_address(scenario.ipv6), scenario.port)
        self.start = time.time()
        self.began = time.monotonic()
        self.end = self.start
        self.timeline: list[Entry] = []
        self.events: list[dict[str, Any]] = []
        self.floods: list[tuple[threading.Event, threading.Thread]] = []  # in the background
        self.spoofed: set[str] = set()  # the addresses the floods spoofed

    # --- playing ----------------------------------------------------------------------------

    def run(self) -> None:
        with self.cleanup:
            self.start, self.began = time.time(), time.monotonic()
            server = self.scenario.server
            leading = next((i for i, s in enumerate(server) if s.action not in _OPENING), None)
            first = len(server) if leading is None else leading
            if self._steps(server[:first]):
                threads = [
                    threading.Thread(target=self._steps, args=(steps,), daemon=True)
                    for steps in (self.scenario.client, server[first:])
                ]
                for thread in threads:
                    thread.start()
                limit = self._limit()
                for thread in threads:
                    thread.join(limit)
                    if thread.is_alive():
                        raise FwemuError(f"{self.scenario.name}: a side hung past {limit:.0f}s")
            self._stop_floods()
            self.end = time.time()
            time.sleep(SETTLE)
            self.events = self.fw.events()
        self.fw.stop_children()
        self.timeline = merged(
            self.notebook.entries(_CASE),
            fwemu_entries(
                self.events, _CASE, None, self.start, self.end + SETTLE, spoofed=self.spoofed
            ),
        )

    def _limit(self) -> float:
        """Wall-clock seconds the sides may take: every step waiting as long as it may."""
        scenario = self.scenario
        total = sum(
            scenario.real(s.duration or _timeout(scenario, s)) for s in scenario.client
        ) + sum(scenario.real(s.duration or _timeout(scenario, s)) for s in scenario.server)
        return total + _SIDE_GRACE

    def _steps(self, steps: Iterable[Step]) -> bool:
        """Run `steps` in order until one goes wrong; True if all went as expected."""
        for step in steps:
            began = time.monotonic()
            counts: Counter[Outcome] | None = None
            try:
                if step.counts is None:
                    word, detail = self._do(step)
                else:
                    counts = self._many(step)
                    word, detail = "ok", show_counts(counts)
            except OSError as err:  # e.g. the port is taken: the step's outcome, not a crash
                word, detail = "error", str(err)
            took = (time.monotonic() - began) * self.scenario.speed
            outcome = _OUTCOMES.get(word, Outcome.ERROR)
            result = StepResult(
                step,
                outcome,
                detail or word,
                (began - self.began) * self.scenario.speed,
                took,
                _judge(self.scenario, step, outcome, detail or word, took, counts),
                counts,
            )
            self.results[step.side].append(result)
            if result.problem is not None:
                self.endpoints[step.side].note(f"(stops here: {result.problem})")
                return False
        return True

    def _do(self, step: Step) -> tuple[str, str]:  # noqa: PLR0911 - one return per step kind
        """Carry out `step`: (the Peer-style word for what happened, an optional detail)."""
        end = self.endpoints[step.side]
        real = self.scenario.real
        timeout = real(_timeout(self.scenario, step))
        match step.action:
            case Action.LISTEN:
                listener = self.fw.server_socket(self.family)
                self.cleanup.callback(abort, listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(self.address)
                listener.listen(BACKLOG)
                end.listener = listener
                end.note(f"listening on {hostport(self.address)}")
                return "ok", ""
            case Action.ACCEPT:
                if end.listener is None:
                    return "error", "no listening socket: add a listen step first"
                end.listener.settimeout(timeout)
                try:
                    conn, peer_address = end.listener.accept()
                except TimeoutError:
                    end.note(f"accept: no connection within {format_duration(timeout)}")
                    return "timeout", ""
                end.adopt(step, conn)
                end.note(f"accepted {hostport(peer_address)}")
                return "ok", ""
            case Action.CONNECT:
                peer = end.adopt(step, self.fw.client_socket(self.family))
                if said := self._prepare(step, peer.sock):
                    end.note(said)
                return peer.connect(self.address, timeout), ""
            case Action.SLEEP:
                assert step.duration is not None  # the loader requires it
                end.note(f"sleeps for {format_time(step.duration)}")
                time.sleep(real(step.duration))
                return "ok", ""
            case Action.RUN:
                return self._run(step, timeout)
            case Action.WAIT:
                return self._wait(step, timeout)
            case Action.SYN_FLOOD:
                return self._flood(step)
            case Action.BIND:
                return self._bind(end)
            case Action.SEND_TO | Action.RECV_FROM | Action.ECHO:
                return self._on_datagrams(step, end, timeout)
        return self._on_connections(step, end, timeout)

    def _bind(self, end: _Endpoint) -> tuple[str, str]:
        """The server's UDP socket on its address and port, hearing of ICMP errors as a
        connected socket would (so a scenario sees fwemu's port unreachable)."""
        sock = self.fw.server_socket(self.family, socket.SOCK_DGRAM)
        self.cleanup.callback(sock.close)
        hear_errors(sock)
        sock.bind(self.address)
        end.udp = DatagramPeer(sock, end.note)
        end.note(f"UDP socket bound to {hostport(self.address)}")
        return "ok", ""

    def _on_datagrams(self, step: Step, end: _Endpoint, timeout: float) -> tuple[str, str]:
        """A step on the side's UDP socket; the client's first makes it."""
        if end.udp is None:
            if end.side == "server":
                return "error", f"no UDP socket to {step.action}: add a bind step first"
            sock = self.fw.client_socket(self.family, socket.SOCK_DGRAM)
            self.cleanup.callback(sock.close)
            sock.connect(self.address)  # sends nothing: fixes its port, hears ICMP errors
            end.udp = DatagramPeer(sock, end.note)
            end.note(
                f"UDP socket connected to {hostport(self.address)} "
                f"from {hostport(sock.getsockname())}"
            )
        peer = end.udp
        match step.action:
            case Action.SEND_TO:
                assert step.data is not None  # the loader makes one
                to = self.address if end.side == "client" else peer.sender
                if to is None:
                    return "error", "no datagram to answer: recv-from or echo first"
                return peer.send_to(step.data, to), ""
            case Action.RECV_FROM:
                return peer.recv_from(timeout), ""
        assert step.duration is not None  # echo: the loader requires it
        word, echoed = peer.echo(self.scenario.real(step.duration))
        return word, f"{echoed} echoed"

    def _on_connections(self, step: Step, end: _Endpoint, timeout: float) -> tuple[str, str]:
        """A step on what the latest connect or accept step made; with `all`, on every
        connection the side still holds open."""
        if end.latest is None:
            return "error", f"no connection to {step.action}: connect or accept first"
        made, peers = end.latest
        if step.every:
            peers = [peer for peer in end.held if peer.sock.fileno() != -1]
        if step.action in _CLOSES:
            return _close(step.action, peers, end.note)
        if made.count is not None:
            return "error", f"{step.action} takes one connection, not {made.describe()}'s"
        return self._on_connection(step, peers[0], timeout)

    def _prepare(self, step: Step, sock: socket.socket) -> str | None:
        """What a connect step does to its socket before it connects: bind it to the step's
        `source`, turn on keepalive (what it notes of that)."""
        source = self._source(step)
        if source is not None:
            # The port is chosen at connect(), as for an unbound socket, not at bind(), which
            # would give each socket a port of its own across all destinations (ip(7)).
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        if step.keepalive is None:
            return None
        return _keepalive(sock, self.scenario.real(step.keepalive))

    def _source(self, step: Step) -> str | None:
        """The client address a connect step binds to, None for the kernel's choice."""
        if step.source is None:
            return None
        ipv4, ipv6 = self.fw.plan.client.pairs[step.source - 1]
        return ipv6 if self.scenario.ipv6 else ipv4

    def _on_connection(self, step: Step, peer: Peer, timeout: float) -> tuple[str, str]:
        match step.action:
            case Action.SEND:
                assert step.data is not None  # the loader requires it
                return peer.send(step.data), ""
            case Action.RECV:
                return peer.recv(timeout, step.size), ""
            case Action.IDLE:
                assert step.duration is not None
                peer.note(f"idle for {format_time(step.duration)}, watching the socket")
                return peer.quiet(threading.Event(), self.scenario.real(step.duration)), ""
        raise AssertionError(step.action)  # every action is handled above or in _do

    def _many(self, step: Step) -> Counter[Outcome]:
        """A count step: its connections made at once, counted by how each ended."""
        assert step.count is not None
        end = self.endpoints[step.side]
        timeout = self.scenario.real(_timeout(self.scenario, step))
        if step.action is Action.CONNECT:
            counts = self._connect_many(step, step.count, timeout)
        elif end.listener is None:
            counts = Counter({Outcome.ERROR: step.count})
            end.note("accept: no listening socket: add a listen step first")
        else:
            counts = self._accept_many(step, end.listener, step.count, timeout)
        end.note(f"{step.action} x{step.count}: {show_counts(counts)}")
        return counts

    def _connect_many(self, step: Step, count: int, timeout: float) -> Counter[Outcome]:
        """`count` non-blocking connects, all started before any is waited for; those still
        connecting after `timeout` count as timeouts. Only those that connected stay open."""
        end = self.endpoints[step.side]
        socks = self.fw.call("client", partial(_sockets, self.family, count))
        for sock in socks:
            self.cleanup.callback(abort, sock)
        ended: dict[socket.socket, Outcome] = {}
        poller = select.poll()
        pending: dict[int, socket.socket] = {}
        started = time.monotonic()
        said = None  # the same for every socket
        for sock in socks:
            said = self._prepare(step, sock)
            sock.setblocking(False)
            code = sock.connect_ex(self.address)
            if code in (0, errno.EINPROGRESS):
                pending[sock.fileno()] = sock
                poller.register(sock, select.POLLOUT)
            else:
                ended[sock] = _errno_outcome(code)
        source = self._source(step)
        end.note(
            f"connect() x{count} to {hostport(self.address)}"
            + ("" if source is None else f" from {source}")
            + f": all started within {(time.monotonic() - started) * 1000:.1f} ms"
        )
        if said is not None:
            end.note(said)
        deadline = started + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(math.ceil(left * 1000)):
                sock = pending.pop(fd)
                poller.unregister(fd)
                ended[sock] = _errno_outcome(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
        ended.update(dict.fromkeys(pending.values(), Outcome.TIMEOUT))
        held: list[Peer] = []
        for sock, outcome in ended.items():
            if outcome is Outcome.OK:
                sock.setblocking(True)
                held.append(end.hold(sock))
            else:
                abort(sock)  # no SYN retransmission of a timed-out connect runs into later steps
        end.latest = (step, held)
        return Counter(ended.values())

    def _accept_many(
        self, step: Step, listener: socket.socket, count: int, timeout: float
    ) -> Counter[Outcome]:
        """Up to `count` connections accepted within `timeout`; the rest count as timeouts."""
        end = self.endpoints[step.side]
        held: list[Peer] = []
        deadline = time.monotonic() + timeout
        while len(held) < count and (left := deadline - time.monotonic()) > 0:
            listener.settimeout(left)
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                break
            held.append(end.hold(conn))
        end.latest = (step, held)
        return +Counter({Outcome.OK: len(held), Outcome.TIMEOUT: count - len(held)})  # no 0s

    def _run(self, step: Step, timeout: float) -> tuple[str, str]:
        assert step.command is not None  # the loader requires it
        argv = ["sh", "-c", step.command] if isinstance(step.command, str) else step.command
        shown = step.command if isinstance(step.command, str) else " ".join(step.command)
        end = self.endpoints[step.side]
        env = {**os.environ, **self._environment()}
        if step.background:
            child = self.fw.spawn(
                step.side, argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            end.note(f"started `{shown}` (pid {child.pid})")
            return "ok", ""
        try:
            done = self.fw.run(step.side, argv, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            end.note(f"`{shown}` still running after {format_duration(timeout)}: killed")
            return "timeout", ""
        output = (done.stdout + done.stderr).strip().splitlines()
        said = f": {output[-1]}" if output else ""
        end.note(f"ran `{shown}`: exit status {done.returncode}{said}")
        return ("ok", "") if done.returncode == 0 else ("error", f"exit status {done.returncode}")

    def _environment(self) -> dict[str, str]:
        """What `run` commands find in their environment: the lab's addresses and the port."""
        return {
            "FWEMU_CLIENT": self.fw.client_address(self.scenario.ipv6),
            "FWEMU_SERVER": self.fw.server_address(self.scenario.ipv6),
            "FWEMU_PORT": str(self.scenario.port),
        }

    def _wait(self, step: Step, timeout: float) -> tuple[str, str]:
        assert step.wait_for is not None  # the loader requires it
        pattern = step.wait_for
        end = self.endpoints[step.side]
        end.note(f"waits for fwemu: {pattern.describe()}")
        try:
            self.fw.wait_for_event(pattern.event, timeout, **pattern.fields)
        except EventTimeout:
            end.note(f"no {pattern.describe()} within {format_duration(timeout)}")
            return "timeout", ""
        return "ok", ""

    def _flood(self, step: Step) -> tuple[str, str]:
        """A syn-flood step: the flood from the client side, its report noted when it ends."""
        scenario, end = self.scenario, self.endpoints[step.side]
        spec = flood_spec(step, scenario.port, scenario.ipv6, scenario.speed)  # checked at load
        stop = threading.Event()

        def flood() -> str:
            try:
                # The scenario's own steps listen and connect: the flood neither listens nor
                # runs a legit client of its own.
                report = run_flood(
                    self.fw.plan, spec, fwemu=_FirewallView(self.fw), listen=False, stop=stop
                )
            except (FloodError, OSError) as err:
                end.note(f"syn-flood failed: {err}")
                return "error"
            self.spoofed.update(report.sources.addresses)
            end.note(f"syn-flood: {report.summary()}")
            return "ok"

        end.note(
            f"syn-flood: {spec.count:,} SYNs at {spec.rate:,.0f}/s to {hostport(self.address)}"
            + (", in the background" if step.background else "")
        )
        if not step.background:
            return flood(), ""
        thread = threading.Thread(target=flood, name="syn-flood", daemon=True)
        self.floods.append((stop, thread))
        thread.start()
        return "ok", ""

    def _stop_floods(self) -> None:
        """End the floods still running in the background, and let them report."""
        for stop, _ in self.floods:
            stop.set()
        for _, thread in self.floods:
            thread.join(_SIDE_GRACE)

    # --- judging ----------------------------------------------------------------------------

    def step_results(self) -> tuple[StepResult, ...]:
        """Every step in file order per side, client first; those that did not run included."""
        out: list[StepResult] = []
        for side in SIDES:
            done = {r.step.number: r for r in self.results[side]}
            out += [done.get(s.number, StepResult(s, None)) for s in self.scenario.steps(side)]
        return tuple(out)

    def result(self, seconds: float) -> ScenarioResult:
        steps = self.step_results()
        problems = [f"{r.step.describe()}: {r.problem}" for r in steps if r.problem]
        problems += [
            f"{r.step.describe()}: did not run" for r in steps if not r.ran and not problems
        ]
        problems += self._event_problems()
        return ScenarioResult(
            self.scenario, steps, tuple(problems), tuple(self.timeline), self.start, seconds
        )

    def _event_problems(self) -> Iterator[str]:
        speed, slack = self.scenario.speed, self.scenario.tolerance * self.scenario.speed
        seen = [(record, (record["ts"] - self.start) * speed) for record in self.events]
        for pattern in self.scenario.events:
            times = [t for record, t in seen if pattern.matches(record)]
            if not any(_in_window(t, pattern.after, pattern.within, slack) for t in times):
                window = _window(pattern.after, pattern.within)
                instead = f"; it came at {', '.join(map(format_time, times))}" if times else ""
                yield f"expected event {pattern.describe()}{window}, none came{instead}"
        for pattern in self.scenario.no_events:
            for record, t in seen:
                if pattern.matches(record):
                    yield f"unexpected event {pattern.describe()} at {format_time(t)}"


class _FirewallView:
    """The scenario's fwemu as a flood watches it: its status through the control socket, its
    events read back from its events file (`fwemu.lab.flood.FwemuView`)."""

    def __init__(self, fw: Firewall) -> None:
        self.fw = fw
        self.where = fw.plan.fw_client_side.namespace
        self.cut: str | None = None
        self._since = math.inf

    def status(self) -> Mapping[str, Any]:
        return self.fw.status()

    def follow(self) -> None:
        self._since = time.time()

    def events(self) -> Mapping[str, int]:
        kinds = Counter(
            str(record["event"])
            for record in self.fw.events()
            if record["ts"] >= self._since and record["event"] not in PER_FLOW_EVENTS
        )
        return dict(kinds)


def _timeout(scenario: Scenario, step: Step) -> float:
    """How long (scenario seconds) a blocking step waits before its outcome is "timeout"."""
    if step.timeout is not None:
        return step.timeout
    if step.within is not None:
        return step.within + scenario.tolerance * scenario.speed
    return scenario.timeout


def _judge(
    scenario: Scenario,
    step: Step,
    outcome: Outcome,
    detail: str,
    took: float,
    counts: Mapping[Outcome, int] | None = None,
) -> str | None:
    """Why the step did not go as expected, or None if it did."""
    if step.counts is not None and counts is not None:
        if not _counted_as(step.counts, counts):
            return (
                f"expected {show_counts(step.counts)}, got {show_counts(counts)} "
                f"after {format_time(took)}"
            )
    elif outcome is not step.expect:
        said = "" if detail == outcome else f" ({detail})"
        wanted = step.expect if step.counts is None else show_counts(step.counts)
        return f"expected {wanted}, got {outcome}{said} after {format_time(took)}"
    if not _in_window(took, step.after, step.within, scenario.tolerance * scenario.speed):
        return (
            f"{outcome} came after {format_time(took)}, expected{_window(step.after, step.within)}"
        )
    return None


def _counted_as(expected: Expected, counts: Mapping[Outcome, int]) -> bool:
    """Whether every outcome's count is in its expected range (0 for one not named)."""
    return all(
        low <= counts.get(outcome, 0) <= high
        for outcome in {*expected, *counts}
        for low, high in [expected.get(outcome, (0, 0))]
    )


def _in_window(t: float, after: float | None, within: float | None, slack: float) -> bool:
    return (after is None or t >= after - slack) and (within is None or t <= within + slack)


def _window(after: float | None, within: float | None) -> str:
    parts = ([f"after {format_time(after)}"] if after is not None else []) + (
        [f"within {format_time(within)}"] if within is not None else []
    )
    return f" ({' and '.join(parts)})" if parts else ""


def format_time(seconds: float) -> str:
    """Scenario time for people, measured, so to a tenth of a second: "3.5s", "5m51.2s",
    "2h3s" (the one duration format, fwemu.policy.format_duration)."""
    return format_duration(seconds, resolution=0.1)


def _close(action: Action, peers: Sequence[Peer], note: Callable[[str], None]) -> tuple[str, str]:
    """Half-close, close or abort each of `peers`: noted once, the first failure's word."""
    for peer in peers:
        try:
            if action is Action.HALF_CLOSE:
                peer.sock.shutdown(socket.SHUT_WR)
            elif action is Action.CLOSE:
                peer.sock.close()
            else:
                abort(peer.sock)
        except OSError as err:
            return peer.failed("shutdown" if action is Action.HALF_CLOSE else "close", err, 0), ""
    one, several = _CLOSES[action]
    note(one if len(peers) == 1 else several.format(len(peers)))
    return "ok", ""


def _sockets(family: int, count: int) -> list[socket.socket]:
    return [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]


def _errno_outcome(code: int) -> Outcome:
    """A connect's SO_ERROR as a count step counts it (0: connected)."""
    return _OUTCOMES.get(errno.errorcode.get(code, "") if code else "ok", Outcome.ERROR)


def _more_descriptors() -> None:
    """Raise this process's soft limit on open files to its hard limit (as Go's runtime does
    since 1.19): count steps hold up to MAX_COUNT sockets each, past the usual soft 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _keepalive(sock: socket.socket, seconds: float) -> str:
    """Turn on TCP keepalive, first probe and interval after `seconds` (wall clock) rounded up:
    TCP_KEEPIDLE and TCP_KEEPINTVL take whole seconds, at least 1 (tcp(7))."""
    whole = max(1, math.ceil(seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, whole)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, whole)
    return f"TCP keepalive on: a probe after {whole}s idle, then every {whole}s"
