"""fwemu's iptables rules: TCP and UDP in FORWARD -> NFQUEUE, in a chain of its own so removal
is exact.

Per family (iptables, ip6tables) and queue N, one jump per protocol queued (`fwemu run --proto`)::

    -I FORWARD 1 -p tcp -m comment --comment fwemu:qN -j FWEMU-QN
    -I FORWARD 2 -p udp -m comment --comment fwemu:qN -j FWEMU-QN
    -A FWEMU-QN [-i IF] [-o IF] [-s NET] [-d NET] -j NFQUEUE --queue-num N --queue-bypass

With several queues N..M (`fwemu run --workers`), the target is `NFQUEUE --queue-balance N:M
--queue-bypass` instead: the kernel spreads flows over the queues by a hash of the address pair
that is the same in both directions (docs/performance.md, "Multi-core"); the chain keeps N's name.
The jump goes first in FORWARD so that an earlier ACCEPT cannot hide packets from the state
machine. `--queue-bypass` lets traffic through while no program is bound to the queue (a crashed
or SIGKILLed fwemu), per docs/tcp-rst-and-nfqueue.md §3.3.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
import shlex
import shutil
import socket
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from fwemu.errors import FwemuError
from fwemu.policy.model import IPNetwork, Protocol

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
_BINARY: dict[Family, str] = {4: "iptables", 6: "ip6tables"}


class IptablesError(FwemuError):
    """iptables is missing, refused a rule, or the kernel lacks the NFQUEUE target."""


@dataclass(frozen=True, slots=True)
class Capture:
    """Which forwarded flows go to the queue: those of `protocols` (TCP and UDP unless told,
    in Protocol's order) that the selectors choose; an empty selector tuple means "any".

    The selectors describe one direction of a flow (a client's packets: in on `in_interfaces`,
    from `sources`, ...). A flow is captured whole, both directions: fwemu queues the packets
    that match and those that match reversed (in and out, source and destination swapped);
    with only one direction queued it would see a SYN but never its SYN/ACK. So a flow opened
    the other way round between the same endpoints is captured too.

    Rules are the product of the selectors. A family gets no rules at all when addresses are
    given for the other family only (`--src 10.0.0.0/8` captures no IPv6).
    """

    in_interfaces: tuple[str, ...] = ()
    out_interfaces: tuple[str, ...] = ()
    sources: tuple[IPNetwork, ...] = ()
    destinations: tuple[IPNetwork, ...] = ()
    protocols: tuple[Protocol, ...] = tuple(Protocol)

    def selectors(self, family: Family) -> tuple[tuple[str, ...], ...]:
        """The match arguments of each queueing rule for `family` (possibly none)."""
        src = _of_family(self.sources, family)
        dst = _of_family(self.destinations, family)
        if src == () or dst == ():
            return ()
        forward = list(
            itertools.product(
                self.in_interfaces or (None,),
                self.out_interfaces or (None,),
                src or (None,),
                dst or (None,),
            )
        )
        reverse = [(out_if, in_if, d, s) for in_if, out_if, s, d in forward]
        return tuple(_match(*one) for one in dict.fromkeys(forward + reverse))

    def describe(self) -> str:
        parts = [
            *(f"in {i}" for i in self.in_interfaces),
            *(f"out {i}" for i in self.out_interfaces),
            *(f"src {n}" for n in self.sources),
            *(f"dst {n}" for n in self.destinations),
        ]
        protocols = protocol_names(self.protocols)
        if not parts:
            return f"all forwarded {protocols}"
        return f"{protocols} flows of {', '.join(parts)}, both directions"


def protocol_names(protocols: Iterable[Protocol]) -> str:
    """ "TCP", "UDP" or "TCP and UDP", as log lines and refusals name them."""
    return " and ".join(p.upper() for p in protocols)


def _of_family(nets: tuple[IPNetwork, ...], family: Family) -> tuple[str, ...] | None:
    """The networks of `family` as strings; None when no selector was given at all (= any)."""
    if not nets:
        return None
    return tuple(str(n) for n in nets if n.version == family)


def _match(*values: str | None) -> tuple[str, ...]:
    """iptables' match arguments for (in, out, source, destination); None matches any."""
    pairs = zip(("-i", "-o", "-s", "-d"), values, strict=True)
    return tuple(itertools.chain.from_iterable((flag, v) for flag, v in pairs if v is not None))


def missing_interfaces(capture: Capture) -> list[str]:
    """The capture's interfaces that do not exist in this network namespace (iptables itself
    accepts any name, so a typo would capture nothing, silently). A name ending in '+' is
    iptables' wildcard: it needs one interface it matches."""
    present = [name for _, name in socket.if_nameindex()]
    return [
        name
        for name in dict.fromkeys(capture.in_interfaces + capture.out_interfaces)
        if not any(p.startswith(name[:-1]) if name.endswith("+") else p == name for p in present)
    ]


_CHAIN = "FWEMU-Q"


def chain_name(queue: int) -> str:
    return f"{_CHAIN}{queue}"


def jump_rule(queue: int, protocol: Protocol) -> tuple[str, ...]:
    """The FORWARD rule that sends `protocol` to the chain: match and target (without the verb)."""
    comment = ("-m", "comment", "--comment", f"fwemu:q{queue}")
    return ("-p", protocol.value, *comment, "-j", chain_name(queue))


def queue_target(queue: int, count: int = 1) -> tuple[str, ...]:
    """NFQUEUE to `queue`, or balanced over the `count` queues from `queue` on."""
    if count == 1:
        return ("-j", "NFQUEUE", "--queue-num", str(queue), "--queue-bypass")
    return ("-j", "NFQUEUE", "--queue-balance", f"{queue}:{queue + count - 1}", "--queue-bypass")


@dataclass(frozen=True, slots=True)
class Found:
    """fwemu rules already in this network namespace (another run's, or those a killed run left):
    the queue its chain is named after, the queues its NFQUEUE targets send to, the protocols
    FORWARD jumps to it with, and each rule's match arguments by family, as `Capture.selectors`
    makes them."""

    queue: int
    queues: frozenset[int]
    protocols: frozenset[str]
    matches: tuple[tuple[Family, tuple[str, ...]], ...]

    def shared(self, capture: Capture) -> tuple[Protocol, ...]:
        """The protocols of which a packet both these rules and `capture`'s would queue exists
        (none: they take different flows): the run whose jumps come first in FORWARD (the
        newest) would take it."""
        protocols = tuple(p for p in capture.protocols if p in self.protocols)
        overlap = any(
            _matches_overlap(found, ours)
            for family, found in self.matches
            for ours in capture.selectors(family)
        )
        return protocols if overlap else ()


_JUMP_RE = re.compile(rf"^-A FORWARD .*-j {_CHAIN}(?P<queue>[0-9]+)$")
_TARGET_RE = re.compile(
    r"--queue-(?:num (?P<num>[0-9]+)|balance (?P<first>[0-9]+):(?P<last>[0-9]+))"
)


def found_rules() -> list[Found]:
    """fwemu's chains that FORWARD jumps to in this network namespace, both families together,
    by queue (read with `iptables -S`, which prints what `install` added the kernel's way)."""
    jumps = [(family, queue, rule) for family in FAMILIES for queue, rule in _jumps(family)]
    found = []
    for queue in sorted({queue for _, queue, _ in jumps}):
        protocols = frozenset(p for _, q, rule in jumps if q == queue for p in _protocols(rule))
        targets: set[int] = set()
        matches = []
        for family in FAMILIES:
            for line in _listed(family, chain_name(queue)):
                words = shlex.split(line)
                if words[:2] != ["-A", chain_name(queue)] or "-j" not in words:
                    continue
                matches.append((family, tuple(words[2 : words.index("-j")])))
                if target := _TARGET_RE.search(line):
                    first = int(target["num"] or target["first"])
                    targets.update(range(first, int(target["num"] or target["last"]) + 1))
        found.append(Found(queue, frozenset(targets), protocols, tuple(matches)))
    return found


def _jumps(family: Family) -> list[tuple[int, list[str]]]:
    """FORWARD's rules that jump to a fwemu chain: its queue, and the rule's words after
    "-A FORWARD" (what `-D FORWARD` takes to delete it)."""
    return [
        (int(jump["queue"]), shlex.split(line)[2:])
        for line in _listed(family, "FORWARD")
        if (jump := _JUMP_RE.match(line))
    ]


def _protocols(rule: list[str]) -> tuple[str, ...]:
    """The protocols a jump sends to the chain: its "-p tcp"; all of them without -p (a rule
    someone else added: fwemu's always name one)."""
    return (rule[rule.index("-p") + 1],) if "-p" in rule else tuple(Protocol)


def _listed(family: Family, chain: str) -> list[str]:
    """`iptables -S CHAIN`'s lines; none if there is no such chain."""
    result = _iptables(family, "-S", chain)
    return result.stdout.splitlines() if result.returncode == 0 else []


def _matches_overlap(one: tuple[str, ...], other: tuple[str, ...]) -> bool:
    """Whether some packet satisfies both rules' matches: -i, -o, -s and -d (absent: any)."""
    first, second = _by_flag(one), _by_flag(other)
    return all(_values_overlap(f, first[f], second[f]) for f in first.keys() & second.keys())


def _by_flag(args: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(args[::2], args[1::2], strict=False))  # ("-i", "cli0") pairs


def _values_overlap(flag: str, a: str, b: str) -> bool:
    if flag in ("-i", "-o"):
        return _names_overlap(a, b)
    if flag in ("-s", "-d"):
        return ipaddress.ip_network(a, strict=False).overlaps(ipaddress.ip_network(b, strict=False))
    return True


def _names_overlap(a: str, b: str) -> bool:
    """Whether one interface name matches both iptables names (a '+' at the end: any suffix)."""
    wild_a, wild_b = a.endswith("+"), b.endswith("+")
    a, b = a.removesuffix("+"), b.removesuffix("+")
    if wild_a and wild_b:
        return a.startswith(b) or b.startswith(a)
    if wild_a or wild_b:
        return b.startswith(a) if wild_a else a.startswith(b)
    return a == b


def _iptables(family: Family, *args: str) -> subprocess.CompletedProcess[str]:
    # -w: wait for the xtables lock instead of failing when another tool holds it.
    return subprocess.run(
        [_BINARY[family], "-w", "-t", "filter", *args], capture_output=True, text=True, check=False
    )


def _must(family: Family, *args: str) -> None:
    result = _iptables(family, *args)
    if result.returncode != 0:
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        reason = detail[-1] if detail else f"exit status {result.returncode}"
        raise IptablesError(f"{_BINARY[family]} {' '.join(args)}: {reason}")


def check_available(queue: int, count: int = 1) -> None:
    """Refuse early, changing nothing that stays: both binaries exist and NFQUEUE rules load.

    The NFQUEUE target is probed by adding it to a scratch chain that no packet reaches.
    """
    for family in FAMILIES:
        if shutil.which(_BINARY[family]) is None:
            raise IptablesError(
                f"{_BINARY[family]} not found in PATH: fwemu needs it to install its NFQUEUE "
                "rules (or pass --no-rules and queue the traffic yourself)"
            )
    probe = f"FWEMU-PROBE-Q{queue}"
    for family in FAMILIES:
        _delete_chain(family, probe)
        _must(family, "-N", probe)
        try:
            _must(family, "-A", probe, *queue_target(queue, count))
        except IptablesError as err:
            raise IptablesError(f"the kernel cannot queue packets to userspace ({err})") from None
        finally:
            _delete_chain(family, probe)


def _delete_chain(family: Family, chain: str) -> None:
    if _iptables(family, "-S", chain).returncode == 0:
        _must(family, "-F", chain)
        _must(family, "-X", chain)


def remove(queue: int) -> bool:
    """Delete fwemu's rules for `queue` in both families; True if there was anything to delete.

    Idempotent, and touches only fwemu's chain and the FORWARD rules jumping to it, whichever
    protocols they queue (a killed run's may have queued others than this run does).
    """
    found = False
    for family in FAMILIES:
        for jump_queue, rule in _jumps(family):
            if jump_queue == queue:
                _must(family, "-D", "FORWARD", *rule)
                found = True
        if _iptables(family, "-S", chain_name(queue)).returncode == 0:
            _delete_chain(family, chain_name(queue))
            found = True
    return found


def install(queue: int, capture: Capture, count: int = 1) -> tuple[Family, ...]:
    """Add the rules for `count` queues from `queue` on (replacing any left by a killed fwemu on
    this queue); the families covered.

    On failure nothing is left installed.
    """
    remove(queue)
    families = tuple(f for f in FAMILIES if capture.selectors(f))
    try:
        for family in families:
            _must(family, "-N", chain_name(queue))
            for selector in capture.selectors(family):
                _must(family, "-A", chain_name(queue), *selector, *queue_target(queue, count))
            # The jumps last, in one go at the top: every protocol is queued from then on.
            for position, protocol in enumerate(capture.protocols, 1):
                _must(family, "-I", "FORWARD", str(position), *jump_rule(queue, protocol))
    except BaseException:
        remove(queue)
        raise
    return families


def queued_packets(queue: int) -> int | None:
    """How many packets fwemu's rules for `queue` have sent to the queue: the sum of its chain's
    NFQUEUE rules' own counters in both families, which every protocol's jump leads to; None
    when neither family has the rules."""
    total, found = 0, False
    for family in FAMILIES:
        result = _iptables(family, "-L", chain_name(queue), "-n", "-v", "-x")
        if result.returncode != 0:
            continue
        found = True
        for line in result.stdout.splitlines()[2:]:  # after "Chain ..." and the column names
            cols = line.split()
            if len(cols) > 2 and cols[2] == "NFQUEUE":
                total += int(cols[0])
    return total if found else None


@contextmanager
def installed(queue: int, capture: Capture, count: int = 1) -> Iterator[tuple[Family, ...]]:
    """The rules for the duration of the block, removed on every way out."""
    families = install(queue, capture, count)
    try:
        yield families
    finally:
        remove(queue)
