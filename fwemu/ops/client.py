"""The client side of the control socket: find the running fwemu, send a request, read replies.

One `fwemu run --workers N` has N control sockets, one per worker. Their `status` replies name
the run they belong to, so the tools treat them as one firewall: `running` lists the runs,
`find_run` picks one (by network namespace and queue), and `request_all`/`merged_events` ask
each of its workers. `Fwemu` is the same for Python code: docs/control-protocol.md.

    from fwemu.ops.client import Fwemu

    fw = Fwemu(netns="lab1-fw")                 # or Fwemu() for the only one running
    fw.status()["flows"]
    for flow in fw.flows("dport=5432"):
        print(flow["state"], flow["expires_in"])
    fw.expire("dport=5432", action="reset-both")
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import queue
import shlex
import socket
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path
from time import monotonic, sleep
from typing import Any

from fwemu.ops.control import CONTROL_DIR, CONTROL_SUFFIX, ControlError, is_alive
from fwemu.ops.filters import EVENT_KEYS, parse_selector
from fwemu.ops.protocol import DEFAULT_HISTORY, ProtocolError, Request, parse_action
from fwemu.policy import ExpireAction

# Seconds to wait for each part of a reply: the daemon answers between packet batches, within
# milliseconds; this only catches a daemon that is stopped (SIGSTOP) or wedged.
REPLY_TIMEOUT = 10.0
# Seconds to keep trying while the daemon's queue of connections is full (EAGAIN): it accepts
# a few per loop turn, so a flood of other clients drains within milliseconds.
CONNECT_PATIENCE = 2.0
FIRST_PAUSE, LONGEST_PAUSE = 0.005, 0.1  # seconds between tries, doubling
# What --netns and --queue default to, so that a shell (a lab's) can choose its fwemu once.
ENV_NETNS, ENV_QUEUE = "FWEMU_NETNS", "FWEMU_QUEUE"
NETNS_DIR = Path("/run/netns")  # where `ip netns add` keeps named namespaces
LAST_QUEUE = 65535  # NFQUEUE numbers are 16 bits
# The counters of `status` that add up over the workers of a run.
SUMMED = (
    "packets", "accepted", "dropped", "resets", "rewritten", "errors", "bypassed", "expired",
    "out_of_state", "flows",
)  # fmt: skip


def add_control_argument(parser: argparse.ArgumentParser) -> None:
    """--netns, --queue and --control: which fwemu an ops command asks (see `chosen_run`)."""
    parser.add_argument(
        "--netns",
        metavar="NS",
        help="the fwemu running in network namespace NS ('fwemu run --netns NS', or started "
        "inside it; '' for the host's own), all the workers of its run as one (default: "
        f"${ENV_NETNS}, else the only fwemu running; 'fwemu ps' lists them)",
    )
    parser.add_argument(
        "--queue",
        metavar="N",
        help=f"the fwemu serving NFQUEUE N (with --workers, its whole run) (default: ${ENV_QUEUE})",
    )
    parser.add_argument(
        "--control",
        metavar="PATH",
        type=Path,
        help=f"the control socket of the fwemu to ask, or a directory holding the sockets of "
        f"one run, instead of looking in {CONTROL_DIR}",
    )


def chosen_run(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> tuple[Target, ...]:
    """The workers of the run the command line chose: --control, --netns and --queue, the last
    two defaulting to $FWEMU_NETNS and $FWEMU_QUEUE (unless --control names one socket)."""
    netns, number = args.netns, args.queue
    where = "--queue"
    if args.control is None or _is_dir(args.control):
        if netns is None:
            netns = environ.get(ENV_NETNS) or None  # an empty variable is no choice
        if number is None and environ.get(ENV_QUEUE):
            number, where = environ[ENV_QUEUE], f"${ENV_QUEUE}"
    return find_run(args.control, netns=netns, queue=_queue(number, where))


def _queue(text: str | None, where: str) -> int | None:
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= LAST_QUEUE:
        raise ControlError(f"{where} must be a queue number 0..{LAST_QUEUE}, not {text!r}")
    return number


@dataclass(frozen=True, slots=True)
class Target:
    """One control socket to ask; `queue` is set when it is one worker of several."""

    path: Path
    queue: int | None = None

    @property
    def tag(self) -> str:
        """What prefixes this worker's lines of output: "[q1] ", or nothing."""
        return "" if self.queue is None else f"[q{self.queue}] "


@dataclass(frozen=True, slots=True)
class Run:
    """One running fwemu as the tools see it: a lone `fwemu run`, or the workers of one
    `fwemu run --workers N`; each worker's control socket and `status` reply, in queue order."""

    targets: tuple[Target, ...]
    statuses: tuple[dict[str, Any], ...]
    netns: str | None  # its network namespace's name; None for the host's (or a nameless one)

    @property
    def queues(self) -> tuple[int, ...]:
        return tuple(int(status["queue"]) for status in self.statuses)

    @property
    def status(self) -> dict[str, Any]:
        """Its `status`, the workers' summed up as one firewall's."""
        return {**merged_status(self.statuses), "netns": self.netns}

    def selected(self, netns: str | None, queue: int | None) -> bool:
        """Whether --netns `netns` ('' for the host's) and --queue `queue` choose this run."""
        in_netns = netns is None or netns == (self.netns or "")
        return in_netns and (queue is None or queue in self.queues)

    def choice(self, runs: Sequence[Run]) -> str:
        """The options that choose this run among `runs`: its netns if that is enough, else its
        queue, else both (--control as the last resort)."""
        netns = f"--netns {shlex.quote(self.netns or '')}"
        queue = f"--queue {self.queues[0]}"
        tries = [((self.netns or "", None), netns), ((None, self.queues[0]), queue)]
        if self.netns is None:
            tries.reverse()  # the host's: '--queue 0' reads better than "--netns ''"
        tries.append(((self.netns or "", self.queues[0]), f"{netns} {queue}"))
        for (ns, number), options in tries:
            if [run for run in runs if run.selected(ns, number)] == [self]:
                return options
        return f"--control {shlex.quote(str(self.targets[0].path))}"

    def describe(self, runs: Sequence[Run]) -> str:
        """How an error message lists it: what to type, then what it is."""
        queues = f"queue{'s' if len(self.queues) > 1 else ''} {queue_range(self.queues)}"
        return f"{self.choice(runs)} ({queues}, policy {self.statuses[0]['policy']})"


def queue_range(queues: Sequence[int]) -> str:
    """A run's queues as people read them: "0", or "0-3" (workers take consecutive queues)."""
    return str(queues[0]) if len(queues) == 1 else f"{queues[0]}-{queues[-1]}"


def merged_status(statuses: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The `status` of one fwemu, or the workers of one run as one: counters summed, the
    supervisor's pid, and the queues as a range ("0-3 (4 workers)")."""
    if len(statuses) == 1:
        return statuses[0]
    queues = sorted(int(s["queue"]) for s in statuses)
    return {
        **statuses[0],
        **{key: sum(int(s.get(key, 0)) for s in statuses) for key in SUMMED},
        "pid": statuses[0].get("supervisor", statuses[0]["pid"]),
        "queue": f"{queue_range(queues)} ({len(queues)} workers)",
    }


def find_run(
    control: Path | None = None,
    directory: Path = CONTROL_DIR,
    *,
    netns: str | None = None,
    queue: int | None = None,
) -> tuple[Target, ...]:
    """`control` if it is a socket; else the workers of the one run in `control` (a directory)
    or `directory` that `netns` ('' for the host's namespace) and `queue` choose, or of the only
    run there when they are None. ControlError says which runs there are otherwise, and what to
    type to choose one."""
    if control is not None and not _is_dir(control):
        if netns is not None or queue is not None:
            raise ControlError(
                f"--control {control} is one fwemu's socket: it takes no --netns or --queue"
            )
        return (Target(control),)
    where = control or directory
    if netns is None and queue is None:
        live = _live(where)
        if len(live) == 1:  # the usual case, without asking anything
            return (Target(live[0]),)
        runs = _runs(live)
    else:
        runs = running(where)
    if not runs:
        raise ControlError("no running fwemu found (is 'fwemu run' running?)")
    picked = [run for run in runs if run.selected(netns, queue)]
    if len(picked) == 1:
        return picked[0].targets
    if not picked:
        listed = ", ".join(run.describe(runs) for run in runs)
        raise ControlError(f"no fwemu {_wanted(netns, queue)} is running; running: {listed}")
    listed = ", ".join(run.describe(runs) for run in picked)
    raise ControlError(f"{len(picked)} fwemus are running; choose one: {listed}")


def _wanted(netns: str | None, queue: int | None) -> str:
    where = "" if netns is None else f"in netns {netns}" if netns else "in the host's namespace"
    serving = "" if queue is None else f"serving queue {queue}"
    return " ".join(part for part in (where, serving) if part)


def running(directory: Path = CONTROL_DIR) -> list[Run]:
    """Every fwemu whose control socket is in `directory`, a run of workers as one, in the
    order of their network namespaces and queues (`fwemu ps`)."""
    return _runs(_live(directory))


def _live(directory: Path) -> list[Path]:
    """The control sockets in `directory` that a process serves."""
    try:
        candidates = sorted(p for p in directory.iterdir() if p.name.endswith(CONTROL_SUFFIX))
    except FileNotFoundError:
        candidates = []
    except PermissionError:
        raise ControlError(f"cannot read {directory}: it is root's; run this with sudo") from None
    except OSError as err:
        raise ControlError(f"cannot read {directory}: {err.strerror or err}") from None
    return [path for path in candidates if is_alive(path)]


def _runs(live: Sequence[Path]) -> list[Run]:
    """The control sockets grouped by the run their `status` names."""
    workers: dict[str, list[tuple[int, Path, dict[str, Any]]]] = {}
    for path in live:
        status = _status(path)
        if status is None:
            continue
        # A fwemu from before --workers has no run: it is a run of its own.
        key = str(status.get("run", path))
        workers.setdefault(key, []).append((int(status["queue"]), path, status))
    runs = []
    for members in workers.values():
        members.sort(key=lambda member: member[0])
        several = len(members) > 1
        targets = tuple(Target(path, number if several else None) for number, path, _ in members)
        statuses = tuple(status for _, _, status in members)
        first = statuses[0]
        netns = first.get("netns") or _netns_of(int(first["pid"]))
        runs.append(Run(targets, statuses, netns))
    return sorted(runs, key=lambda run: (run.netns or "", run.queues))


def _status(path: Path) -> dict[str, Any] | None:
    """The `status` of the fwemu at `path`, or None if it stopped while asked (another fwemu
    on the host stopping must not fail this command); asked once more if it still serves."""
    for last in (False, True):
        try:
            return list(request(path, Request("status")))[-1]
        except ControlError:
            if not is_alive(path):
                return None
            if last:
                raise
    return None  # not reached: the loop returns or raises


def _netns_of(pid: int) -> str | None:
    """The name of the network namespace process `pid` runs in, as `ip netns identify` finds
    it (a fwemu started with `ip netns exec`); None for ours, or one without a name."""
    try:
        seen = os.stat(f"/proc/{pid}/ns/net")
        if _same(seen, os.stat("/proc/self/ns/net")):
            return None
        names = sorted(NETNS_DIR.iterdir())
    except OSError:
        return None
    for name in names:
        try:
            if _same(seen, name.stat()):
                return name.name
        except OSError:
            continue
    return None


def _same(one: os.stat_result, other: os.stat_result) -> bool:
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


class Fwemu:
    """A running fwemu, for tests and scripts that would otherwise run `fwemu flows` & co.: the
    one chosen by `netns` ('' for the host's namespace) and `queue`, or the only one running,
    or the one at `control` (a socket, or a directory of one run's sockets). The workers of a
    `--workers N` run are one firewall: each call asks them all.

    MATCH strings are `fwemu flows --match` filters ("dport=5432 state=established"); "" is
    every flow. Records are the control socket's (docs/control-protocol.md). A fwemu that cannot
    be found or asked raises ControlError; a bad filter, FilterError; both are FwemuErrors.
    """

    def __init__(
        self,
        netns: str | None = None,
        queue: int | None = None,
        *,
        control: str | os.PathLike[str] | None = None,
        directory: Path = CONTROL_DIR,
    ) -> None:
        path = None if control is None else Path(control)
        self.targets = find_run(path, directory, netns=netns, queue=queue)

    def status(self) -> dict[str, Any]:
        """Its `status`: pid, queue, netns, policy, counters (summed over the workers), ..."""
        return merged_status([record for _, record in request_all(self.targets, Request("status"))])

    def flows(self, match: str = "") -> list[dict[str, Any]]:
        """The tracked flows MATCH selects (src, sport, dst, dport client first, state, phase,
        expires_in, rule, age, idle, packets, bytes, queue)."""
        req = Request("flows", selector=parse_selector(match))
        return [record["flow"] for _, record in request_all(self.targets, req) if "flow" in record]

    def events(
        self, match: str = "", *, history: int = DEFAULT_HISTORY, follow: bool = False
    ) -> Iterator[dict[str, Any]]:
        """The latest `history` events MATCH selects (its keys include `event`: "event=expire"),
        oldest first; with `follow`, then every new one as it comes, until fwemu stops or the
        caller closes the iterator (which hangs up)."""
        req = Request(
            "events",
            selector=parse_selector(match, EVENT_KEYS),
            history=history,
            follow=follow,
        )
        return merged_events(self.targets, req)

    def expire(
        self, match: str = "", *, action: ExpireAction | str | None = None
    ) -> list[dict[str, Any]]:
        """Expire the flows MATCH selects now, as if their timers ran out, with the policy's
        on_expire for their phase or `action` ("silent", "reset-both", ...): the events it
        caused (expire, reset)."""
        req = Request(
            "expire",
            selector=parse_selector(match),
            all=not match.strip(),
            action=None if action is None else parse_action(str(action)),
        )
        return [
            record["event"] for _, record in request_all(self.targets, req) if "event" in record
        ]

    def retime(self, match: str, seconds: float) -> list[dict[str, Any]]:
        """Set the timers of the flows MATCH selects to run out `seconds` from now (`fwemu
        expire --in`), until their next packet: those flows, re-timed."""
        req = Request(
            "expire", selector=parse_selector(match), all=not match.strip(), seconds=seconds
        )
        return [record["flow"] for _, record in request_all(self.targets, req) if "flow" in record]

    def reload(
        self, policy: str | os.PathLike[str] | None = None, preset: str | None = None
    ) -> str:
        """Re-read its policy file, or switch to `policy` (a file) or `preset`, keeping every
        flow: what it said (a line per worker). ControlError if a worker rejected it."""
        path = None if policy is None else os.path.abspath(policy)
        said, rejected = reload_each(self.targets, Request("reload", policy=path, preset=preset))
        if rejected:
            raise ControlError("\n".join(rejected))
        return "\n".join(said)


def reload_each(targets: Sequence[Target], req: Request) -> tuple[list[str], list[str]]:
    """A `reload` to every worker, each reloading on its own: what those that reloaded said,
    and the rejections, each line tagged with its worker's queue when there are several."""
    said, rejected = [], []
    for target in targets:
        try:
            said += [target.tag + record["message"] for record in request(target.path, req)]
        except ControlError as err:
            rejected.append(f"{target.tag}{err}")
    return said, rejected


def _is_dir(path: Path) -> bool:
    """`path.is_dir()`, which raises PermissionError for a path in a directory this user may not
    search (/run/fwemu is root's): the error says so."""
    try:
        return path.is_dir()
    except PermissionError:
        raise ControlError(
            f"no permission to use {path}: it is root's; run this with sudo"
        ) from None
    except OSError as err:
        raise ControlError(_connect_problem(path, err)) from None


def request_all(targets: Sequence[Target], req: Request) -> Iterator[tuple[Target, dict[str, Any]]]:
    """`request` to each target in turn; each reply record with the target it came from."""
    for target in targets:
        for record in request(target.path, req):
            yield target, record


def merged_events(targets: Sequence[Target], req: Request) -> Iterator[dict[str, Any]]:
    """An `events` request to every target at once: the event records of their histories in
    time order (the latest `req.history` of them), then, if `req.follow`, live events as they
    come until every target has stopped. It returns once every target has sent its history:
    then every later event is in the stream. Closing the iterator hangs up on every target."""
    batches = _single(targets[0], req) if len(targets) == 1 else _several(targets, req)
    history = next(batches)
    return _unbatched(history, batches)


# Event records in lists: first the history (all at once), then each live event in its own.
_Batches = Generator[list[dict[str, Any]], None, None]


def _unbatched(history: list[dict[str, Any]], batches: _Batches) -> Iterator[dict[str, Any]]:
    try:
        yield from history
        for batch in batches:
            yield from batch
    finally:
        batches.close()


def _single(target: Target, req: Request) -> _Batches:
    with closing(request(target.path, req)) as records:
        history = []
        for record in records:
            if "event" not in record:
                break  # the {"ok": true} after the history
            history.append(record["event"])
        yield history
        for record in records:
            yield [record["event"]]


_Inbox = queue.Queue[tuple[int, dict[str, Any] | BaseException | None]]


def _several(targets: Sequence[Target], req: Request) -> _Batches:
    """A thread per target (a pump) reads its replies into one inbox."""
    inbox: _Inbox = queue.Queue()
    socks: list[socket.socket] = []
    try:
        for index, target in enumerate(targets):
            socks.append(sock := _connect(target.path))
            pump = threading.Thread(
                target=_pump, args=(index, sock, target.path, req, inbox), daemon=True
            )
            pump.start()
        yield from _merged(inbox, len(targets), req.history)
    finally:
        for sock in socks:  # wakes the pumps still reading: they end
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _merged(inbox: _Inbox, count: int, history: int) -> _Batches:
    """What `count` pumps put in `inbox`: their histories merged, then their live events."""
    events: list[dict[str, Any]] = []
    answered: set[int] = set()
    running = count
    while len(answered) < count:
        index, item = inbox.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            running -= 1
            answered.add(index)
        elif "event" in item:
            events.append(item["event"])
        else:
            answered.add(index)  # the {"ok": true} after a history
    events.sort(key=lambda event: float(event["ts"]))
    yield events[max(len(events) - history, 0) :] if history else []
    while running:
        index, item = inbox.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            running -= 1
        elif "event" in item:
            yield [item["event"]]


def _pump(index: int, sock: socket.socket, path: Path, req: Request, inbox: _Inbox) -> None:
    """One target's records into `inbox`, then None (or the error that ended them)."""
    try:
        for record in _replies(sock, path, req):
            inbox.put((index, record))
    except BaseException as err:
        inbox.put((index, err))
        return
    inbox.put((index, None))


def request(path: Path, req: Request) -> Generator[dict[str, Any], None, None]:
    """Send `req` to the fwemu at `path`; its reply records, the final {"ok": true} one included
    (then, for a followed stream, the live events until the daemon stops). A {"ok": false}
    reply raises ControlError with the daemon's message."""
    with _connect(path) as sock:
        yield from _replies(sock, path, req)


def _replies(sock: socket.socket, path: Path, req: Request) -> Iterator[dict[str, Any]]:
    """`request` over `sock`, a connection to `path`."""
    finished = False
    with sock.makefile("rb") as lines:
        try:
            sock.sendall(req.encode())
            for line in lines:
                record = _decode(line, path)
                if record.get("ok") is False:
                    raise ControlError(str(record.get("error", "the request failed")))
                finished = finished or "ok" in record
                yield record
                if finished and not req.follow:
                    return
                if finished:
                    sock.settimeout(None)  # live events come when they come
        except TimeoutError:
            raise ControlError(
                f"the fwemu at {path} did not answer within {REPLY_TIMEOUT:g}s"
            ) from None
        except OSError as err:
            raise ControlError(f"lost the connection to {path}: {err.strerror or err}") from None
    if not finished:
        raise ControlError(f"the fwemu at {path} closed the connection without answering")


def _connect(path: Path) -> socket.socket:
    """A connection to the daemon at `path`, tried again for a while if its queue is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_TIMEOUT)  # which makes connect() non-blocking: EAGAIN, not a wait
    give_up, pause = monotonic() + CONNECT_PATIENCE, FIRST_PAUSE
    while True:
        try:
            sock.connect(os.fspath(path))
        except OSError as err:
            if isinstance(err, BlockingIOError) and monotonic() < give_up:
                sleep(pause)
                pause = min(2 * pause, LONGEST_PAUSE)
                continue
            sock.close()
            raise ControlError(_connect_problem(path, err)) from None
        return sock


def _connect_problem(path: Path, err: OSError) -> str:
    if err.errno == errno.EAGAIN:
        return f"the fwemu at {path} is too busy: no room to connect for {CONNECT_PATIENCE:g}s"
    if err.errno == errno.ENOENT:
        return f"no control socket {path} (is 'fwemu run' running?)"
    if err.errno == errno.ECONNREFUSED:
        return f"no fwemu is serving {path} (a stale socket: is 'fwemu run' running?)"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to use {path}: the control socket is root's; run this with sudo"
    return f"cannot connect to {path}: {err.strerror or err}"


def _decode(line: bytes, path: Path) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise ProtocolError(f"the fwemu at {path} sent something that is not a reply: {line!r}")
    return record
