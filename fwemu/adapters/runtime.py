"""The composition root of `fwemu run`: from a checked RunConfig to the running firewall.

Everything `fwemu run` is made of is built and wired here, once: the engine, the reporter, the
raw-socket injector, the daemon's loop, the control server, the metrics, the queue binding, the
rules and the bypass watch, and for `--workers N` the supervisor and its workers. The command
line only parses (fwemu/cli/run_cmd.py); tests build a RunConfig directly.
"""

from __future__ import annotations

import gc
import os
import signal
import stat
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from fwemu.adapters import host, iptables, nfqueue, peers
from fwemu.adapters.bypass import BypassWatch
from fwemu.adapters.daemon import Counters, Daemon, Signals
from fwemu.adapters.inject import Injector, Sender
from fwemu.adapters.output import Reporter, counted
from fwemu.adapters.queue import Handler, PacketQueue
from fwemu.adapters.workers import Link, Supervisor, tagged, where
from fwemu.clock import Clock
from fwemu.core.engine import Engine
from fwemu.errors import FwemuError
from fwemu.ops.commands import Commands
from fwemu.ops.control import ControlServer, default_path, is_alive
from fwemu.ops.metrics import Metrics
from fwemu.policy import Policy
from fwemu.policy.model import LIMIT_NAMES, NatPool
from fwemu.policy.source import PolicySource

# More workers than CPUs only makes them compete; 64 is far above the machines fwemu runs on.
MAX_WORKERS = 64
LAST_QUEUE = 65535  # NFQUEUE numbers are 16 bits (xt_NFQUEUE's queuenum)


class InternalError(FwemuError):
    """A bug: fwemu stopped after cleaning up."""

    exit_code = 1


ALL_FORWARDED = iptables.Capture()  # every forwarded TCP and UDP flow


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What `fwemu run` was asked to do (its options, already parsed; see `fwemu run --help`)."""

    policy: str | None = None  # a policy file; exactly one of policy and preset
    preset: str | None = None
    queue: int = 0
    workers: int = 1
    speed: float = 1.0
    netns: str | None = None
    events: str | None = None  # a file, "-" for stdout, or None
    state_file: Path | None = None
    control: Path | None = None
    metrics: tuple[str, int] | None = None
    verbose: bool = False
    dry_run: bool = False
    fail_closed: bool = False
    no_rules: bool = False
    capture: iptables.Capture = ALL_FORWARDED  # its protocols too (--proto)

    @property
    def last_queue(self) -> int:
        return self.queue + self.workers - 1


@dataclass(frozen=True, slots=True)
class Setup:
    """What every queue's loop shares, checked once before anything changes."""

    source: PolicySource
    policy: Policy
    clock: Clock
    run: dict[str, Any]  # who belongs to this run, for `status` (see _run_identity)
    kernel: Kernel


@dataclass(frozen=True, slots=True)
class Seat:
    """One queue's place in the run: where its loop serves and writes."""

    queue: int
    control: Path
    state_file: Path | None
    metrics: tuple[str, int] | None


def _check_rules(config: RunConfig) -> None:
    """Refuse, changing nothing, rules that cannot be installed, would capture nothing, or
    would take another fwemu's traffic."""
    iptables.check_available(config.queue, config.workers)
    where = f"network namespace {config.netns}" if config.netns else "this network namespace"
    if missing := iptables.missing_interfaces(config.capture):
        raise FwemuError(
            f"no interface {', '.join(missing)} in {where}; see 'ip link' "
            "(a trailing '+' matches any interface with that prefix)"
        )
    peers.check_overlap(config.queue, config.workers, config.capture, where)


def _bind(
    queue: int, handler: Handler, fail_open: bool, whole_packets: bool
) -> AbstractContextManager[PacketQueue]:
    return nfqueue.bound(queue, handler, fail_open=fail_open, whole_packets=whole_packets)


Rules = Callable[[int, iptables.Capture, int], AbstractContextManager[tuple[iptables.Family, ...]]]


@dataclass(frozen=True, slots=True)
class Kernel:
    """What a run asks of the host, each step its own call: the real ones by default; tests of
    the wiring pass fakes and need no root."""

    require_root: Callable[[str], None] = host.require_root
    enter_netns: Callable[[str], None] = host.enter_netns
    check_rules: Callable[[RunConfig], None] = _check_rules
    ensure_free: Callable[[int], None] = peers.ensure_free
    # (queue, handler, fail_open, whole_packets)
    bind: Callable[[int, Handler, bool, bool], AbstractContextManager[PacketQueue]] = _bind
    rules: Rules = iptables.installed
    injector: Callable[[Callable[[str], None]], AbstractContextManager[Sender]] = Injector
    watch_bypass: bool = True  # needs the rules' counters: off with fake rules


HOST = Kernel()


def run(config: RunConfig, kernel: Kernel = HOST) -> int:
    """`fwemu run`: check everything, then serve until SIGINT/SIGTERM (one loop, or a
    supervisor and its workers); 0 then. FwemuError before anything changed if it cannot."""
    # The handlers before anything slow: SIGUSR1 would otherwise terminate fwemu, and a snapshot
    # or a stop asked for while it checks and binds waits in its flag for the loop's first turn.
    with Signals() as signals:
        seats = _seats(config)
        for seat in seats:
            if seat.state_file is not None:
                host.check_writable(seat.state_file, "the state file")
        kernel.require_root("fwemu run")
        if config.netns:
            kernel.enter_netns(config.netns)
        source = PolicySource(config.policy, config.preset, config.speed)
        policy = source.load()
        if not config.no_rules:
            kernel.check_rules(config)
        for seat in seats:
            kernel.ensure_free(seat.queue)
        clock = Clock.start()
        setup = Setup(source, policy, clock, _run_identity(seats, clock), kernel)
        if config.workers == 1:
            return _serve(config, setup, seats[0], signals)
        return _supervise(config, setup, seats, signals)


def _seats(config: RunConfig) -> tuple[Seat, ...]:
    """Each worker's queue, control socket, state file and metrics address; FwemuError if the
    queues or ports run past their range."""
    count = config.workers
    if config.last_queue > LAST_QUEUE:
        raise FwemuError(
            f"--queue {config.queue} with --workers {count} needs queues up to "
            f"{config.last_queue}, but NFQUEUE numbers end at {LAST_QUEUE}"
        )
    if config.metrics and config.metrics[1] and config.metrics[1] + count - 1 > 65535:
        raise FwemuError(
            f"--metrics port {config.metrics[1]} with --workers {count} needs ports up to "
            f"{config.metrics[1] + count - 1}, past 65535"
        )
    several = count > 1
    seats = []
    for i in range(count):
        queue = config.queue + i
        control = config.control or default_path(queue, config.netns)
        state = config.state_file
        if several:
            control = per_queue(control, queue) if config.control else control
            state = state and per_queue(state, queue)
        metrics = config.metrics
        if metrics and metrics[1]:  # port 0 (the kernel picks one) stays 0 for each
            metrics = (metrics[0], metrics[1] + i)
        seats.append(Seat(queue, control, state, metrics))
    return tuple(seats)


def per_queue(path: Path, queue: int) -> Path:
    """A worker's own file next to `path`: /run/fw.sock -> /run/fw.q1.sock."""
    return path.with_name(f"{path.stem}.q{queue}{path.suffix}")


def _run_identity(seats: tuple[Seat, ...], clock: Clock) -> dict[str, Any]:
    """What tells the control sockets of one run apart from another's: the supervisor's pid
    and start, and every worker's queue and socket (a lone fwemu is its own supervisor)."""
    pid = os.getpid()
    return {
        "run": f"{pid}@{clock.wall(Clock.now()):.6f}",
        "supervisor": pid,
        "workers": [{"queue": s.queue, "control": str(s.control)} for s in seats],
    }


def _serve(
    config: RunConfig, setup: Setup, seat: Seat, signals: Signals, link: Link | None = None
) -> int:
    """One queue's loop until SIGINT/SIGTERM: the whole of a lone `fwemu run` (with its rules),
    or one worker of several (no rules: the supervisor's; it reports to `link`)."""
    worker = link is not None
    with ExitStack() as stack:
        events = _open_events(config.events, stack, shared=worker)
        log = tagged(sys.stderr, seat.queue) if worker else sys.stderr
        reporter = Reporter(
            setup.clock, log, events, dry_run=config.dry_run, verbose=config.verbose
        )
        # A seed of the kernel's randomness: the cookies' secret, randomised sequence numbers
        # and random early drop differ per run, as a firewall's per boot.
        engine, counters = Engine(setup.policy, int.from_bytes(os.urandom(8))), Counters()
        # Chosen once, by the policy it starts with: a reload cannot change the binding.
        whole_packets = setup.policy.rewrites
        metrics = None
        if seat.metrics:
            metrics = Metrics(counters, engine, partial(nfqueue.read_queue_counters, seat.queue))
            reporter.watch(metrics.on_event)
        if worker:
            # A terminal's Ctrl-C reaches the whole process group: the supervisor alone decides.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        kernel = setup.kernel
        injector = stack.enter_context(kernel.injector(reporter.error))
        # Only the process that owns the rules can compare their counters with what it took.
        bypass = None
        if not (worker or config.no_rules) and kernel.watch_bypass:
            bypass = BypassWatch(seat.queue, lambda: counters.packets)
        daemon = Daemon(
            engine,
            reporter,
            injector,
            setup.source,
            dry_run=config.dry_run,
            state_file=seat.state_file,
            counters=counters,
            metrics=metrics,
            bypass=bypass,
            whole_packets=whole_packets,
        )
        control = ControlServer(
            seat.control, Commands(daemon, _status(config, seat, setup)), reporter
        )
        stack.callback(control.close)
        served = ""
        if metrics is not None and seat.metrics is not None:
            # After enter_netns: the server's threads live in fwemu's namespace.
            served = _metrics_line(config, seat.metrics[0], metrics.serve(*seat.metrics))
            stack.callback(metrics.close)
        packets = stack.enter_context(
            kernel.bind(seat.queue, daemon.on_packet, not config.fail_closed, whole_packets)
        )
        if link is not None:
            link.ready()
            reporter.line(f"worker bound queue {seat.queue}; control socket {seat.control}{served}")
        else:
            rules = (
                ()
                if config.no_rules
                else stack.enter_context(kernel.rules(seat.queue, config.capture, 1))
            )
            reporter.line(_start_line(config, setup, rules))
            reporter.line(f"control socket {seat.control}{served}")
            if bypass is not None:
                bypass.start()
                stack.callback(bypass.close)
        # Everything made so far (modules, the policy, the flow table's containers) leaves the
        # cyclic GC's view: a full collection then walks only what came later, e.g. 3.5 instead
        # of 12 ms with 100k expired flows remembered (docs/performance.md, "Scale").
        gc.freeze()
        try:
            daemon.run(packets, signals, control)
        except Exception as err:
            stack.close()
            raise InternalError(
                f"internal error, stopped after removing the rules: {where(err)}"
            ) from err
    totals = {**daemon.counters.as_dict(), "flows": daemon.flow_count()}
    cause = signals.stop.name if signals.stop else "stop"
    if link is not None:
        link.stopped(totals)
    reporter.line(
        _stop_line("worker" if worker else "fwemu", cause, totals, config, rules=not worker)
    )
    return 0


def _supervise(config: RunConfig, setup: Setup, seats: tuple[Seat, ...], signals: Signals) -> int:
    """Fork a worker per seat, install the balancing rules once all are bound, and supervise
    them until SIGINT/SIGTERM; everything is undone on every way out."""
    if config.events not in (None, "-"):
        with ExitStack() as stack:  # start the shared file empty, as a lone fwemu does
            _open_events(config.events, stack, shared=False)
    by_queue = {seat.queue: seat for seat in seats}

    def work(queue: int, link: Link) -> int:
        with Signals() as own:  # the worker's: the supervisor's wake-up socket is not for it
            return _serve(config, setup, by_queue[queue], own, link)

    reporter = Reporter(setup.clock, sys.stderr)
    with ExitStack() as stack:
        stack.callback(_remove_dead_sockets, seats)
        supervisor = stack.enter_context(Supervisor((s.queue for s in seats), work, signals))
        started = supervisor.wait_ready()  # False: stopped by a signal before that
        if started:
            rules = (
                ()
                if config.no_rules
                else stack.enter_context(
                    setup.kernel.rules(config.queue, config.capture, config.workers)
                )
            )
            pids = ", ".join(str(w.pid) for w in supervisor.workers)
            reporter.line(_start_line(config, setup, rules, f" (worker pids {pids})"))
            reporter.line(f"control sockets {', '.join(str(s.control) for s in seats)}")
            try:
                supervisor.run()
            except FwemuError:
                raise
            except Exception as err:
                stack.close()
                raise InternalError(
                    f"internal error, stopped after removing the rules: {where(err)}"
                ) from err
        stack.close()  # rules first, then the workers, whose totals the last line sums
        cause = signals.stop.name if signals.stop else "stop"
        reporter.line(_stop_line("fwemu", cause, supervisor.totals(), config, rules=started))
    return 0


def _remove_dead_sockets(seats: tuple[Seat, ...]) -> None:
    """A killed worker cannot remove its control socket; once all are stopped, nobody serves it."""
    for seat in seats:
        with suppress(FileNotFoundError):
            if stat.S_ISSOCK(seat.control.lstat().st_mode) and not is_alive(seat.control):
                seat.control.unlink()


def _status(config: RunConfig, seat: Seat, setup: Setup) -> dict[str, Any]:
    """What `fwemu top` and `status` show about this queue's loop that never changes."""
    return {
        "queue": seat.queue,
        "netns": config.netns,
        "speed": config.speed,
        "dry_run": config.dry_run,
        "control": str(seat.control),
        "started": round(setup.clock.wall(Clock.now()), 3),
        # What fwemu's rules queue; none with --no-rules (whoever queues traffic chooses).
        "protocols": [] if config.no_rules else [p.value for p in config.capture.protocols],
        **setup.run,
    }


def _metrics_line(config: RunConfig, host: str, port: int) -> str:
    where = f" in netns {config.netns}" if config.netns else ""
    return f"; metrics on http://{f'[{host}]' if ':' in host else host}:{port}/metrics{where}"


def _open_events(path: str | None, stack: ExitStack, *, shared: bool) -> TextIO | None:
    """The events output. `shared` (a worker's): every worker appends whole lines, each in one
    write(2), so that lines from several processes never mix (O_APPEND; a pipe below PIPE_BUF)."""
    if path is None:
        return None
    if path == "-":
        if shared:
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        return sys.stdout
    try:
        if shared:
            return stack.enter_context(open(path, "a", encoding="utf-8", buffering=1))
        return stack.enter_context(open(path, "w", encoding="utf-8"))
    except OSError as err:
        raise FwemuError(f"cannot open the events file {path}: {err.strerror}") from None


def _start_line(
    config: RunConfig, setup: Setup, rules: tuple[iptables.Family, ...], workers: str = ""
) -> str:
    where = f" in netns {config.netns}" if config.netns else ""
    if config.no_rules:
        installed = "no rules installed (--no-rules)"
    elif rules:
        binaries = " and ".join("iptables" if f == 4 else "ip6tables" for f in rules)
        installed = (
            f"rules in {binaries} chain {iptables.chain_name(config.queue)} "
            f"({config.capture.describe()})"
        )
    else:
        installed = "no rules installed: the capture selectors match neither IPv4 nor IPv6"
    queues = (
        f"queue {config.queue}"
        if config.workers == 1
        else f"{config.workers} workers on queues {config.queue}-{config.last_queue}"
        f"{workers}, balanced by address pair"
    )
    policy = setup.policy
    mode = ", fail-closed" if config.fail_closed else ""
    mode += ", copying whole packets (the policy rewrites them)" if policy.rewrites else ""
    sent = "injecting or rewriting" if policy.rewrites else "injecting"
    dry = f", DRY RUN (accepting everything, {sent} nothing)" if config.dry_run else ""
    split = _split_limits(policy) if config.workers > 1 else []
    per_worker = f"; each worker counts its own flows against {', '.join(split)}" if split else ""
    return (
        f"fwemu started{where}: {queues}, policy {policy.name} ({policy.origin}), "
        f"speed x{config.speed:g}{mode}{dry}; {installed}{per_worker}"
    )


def _split_limits(policy: Policy) -> list[str]:
    """The limits `--workers` splits: every one but a client pool's ports_per_destination,
    whose flows all share one address pair (and so one worker)."""
    split = {
        name
        for limits in (policy.limits, *(rule.profile.limits for rule in policy.rules))
        for name in LIMIT_NAMES
        if getattr(limits, name) is not None
        and not (name == "ports_per_destination" and limits.nat_pool == NatPool.CLIENT)
    }
    return [name for name in LIMIT_NAMES if name in split]


def _stop_line(
    who: str, cause: str, totals: dict[str, int], config: RunConfig, *, rules: bool
) -> str:
    """The last log line: what was counted (summed over the workers) and what was undone."""
    c = Counters(**{k: v for k, v in totals.items() if k != "flows"})
    verb = "would have " if config.dry_run else ""
    removed = "rules removed, " if rules and not config.no_rules else ""
    rewritten = f" ({verb}rewritten {c.rewritten})" if c.rewritten else ""
    errors = f", {c.errors} engine errors" if c.errors else ""
    errors += f", {c.bypassed} BYPASSED fwemu unseen" if c.bypassed else ""
    unbound = "queue unbound" if config.workers == 1 or who == "worker" else "queues unbound"
    return (
        f"{who} stopped ({cause}): {counted(c.packets, 'packet')}, {c.accepted} accepted"
        f"{rewritten}, {verb}dropped {c.dropped}, {verb}injected {counted(c.resets, 'packet')}"
        f"{errors}, {counted(totals.get('flows', 0), 'flow')} tracked; {removed}{unbound}"
    )
