"""A timeline of what each endpoint saw and what fwemu did, one entry per happening.

Shared by `fwemu demo` (where `case` numbers its cases) and `fwemu test` (one scenario per
notebook, case 0).

Endpoint entries are noted by the scripted sockets as their calls return; fwemu entries come
from its JSON events (`fwemu run --events`). Both carry wall-clock epoch seconds, so they merge
into one order.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Who = Literal["client", "server", "fwemu"]

_OUT_OF_STATE_ACTIONS = {
    "drop": "dropped",
    "reset": "answered with a RST",
    "accept": "accepted",
    "icmp-unreachable": "answered with an ICMP port unreachable",
}
_RESET_CAUSES = {
    "expire": "on expiry",
    "out_of_state": "for the out-of-state packet",
    "limit": "refusing a new flow over a limit",
    "proxy": "the server refused the SYN proxy",
}


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing that happened. `ts` is wall-clock epoch seconds; `event` is fwemu's record."""

    ts: float
    case: int
    who: Who
    what: str
    event: Mapping[str, Any] | None = None

    def to_dict(self, start: float) -> dict[str, Any]:
        """The `fwemu demo --json` form: `t` is seconds since the demo started."""
        out: dict[str, Any] = {
            "t": round(self.ts - start, 3),
            "case": self.case,
            "who": self.who,
            "what": self.what,
        }
        if self.event is not None:
            out["event"] = dict(self.event)
        return out


class Notebook:
    """Collects endpoint entries from several threads (a case's client and server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Entry] = []

    def note(self, case: int, who: Who, what: str) -> None:
        entry = Entry(time.time(), case, who, what)
        with self._lock:
            self._entries.append(entry)

    def entries(self, case: int) -> list[Entry]:
        with self._lock:
            return [e for e in self._entries if e.case == case]


def fwemu_entries(
    events: Iterable[Mapping[str, Any]],
    case: int,
    port: int | None,
    start: float,
    end: float,
    *,
    spoofed: Collection[str] = (),
) -> list[Entry]:
    """fwemu's events about connections to `port` (None: any) between `start` and `end`.

    Events after `end` are left out: they come from closing the sockets afterwards. Those about
    flows from `spoofed` addresses (a SYN flood's: a few for each of thousands of SYNs) become
    one entry, at the last of them, counting them by kind.
    """
    entries, flooded = [], []
    for record in events:
        flow = record["flow"]
        if (port is not None and port not in (flow["sport"], flow["dport"])) or not (
            start <= record["ts"] <= end
        ):
            continue
        if flow["src"] in spoofed:
            flooded.append(record)
        else:
            entries.append(Entry(record["ts"], case, "fwemu", describe(record), record))
    if flooded:
        kinds = Counter(str(record["event"]) for record in flooded)
        flows = len({(r["flow"]["src"], r["flow"]["sport"]) for r in flooded})
        listed = ", ".join(f"{kind} {count:,}" for kind, count in kinds.most_common())
        what = f"the flood's {flows:,} spoofed {_plural(flows, 'flow')}: {listed}"
        entries.append(Entry(max(r["ts"] for r in flooded), case, "fwemu", what))
    return entries


def merged(*parts: Iterable[Entry]) -> list[Entry]:
    """All entries in time order; fwemu first on a tie, since it acts before endpoints see it.

    A line that repeats the one before it (a retransmission dropped again) says so.
    """
    ordered = sorted((e for part in parts for e in part), key=lambda e: (e.ts, e.who != "fwemu"))
    return [
        dataclasses.replace(entry, what=f"{entry.what} (again)")
        if i and (ordered[i - 1].who, ordered[i - 1].what) == (entry.who, entry.what)
        else entry
        for i, entry in enumerate(ordered)
    ]


def describe(record: Mapping[str, Any]) -> str:  # noqa: PLR0911, PLR0912 - one per event kind
    """One readable line for a JSON event of `fwemu run --events`."""
    kind = record["event"]
    flow = record["flow"]
    udp = flow.get("proto") == "udp"
    if kind == "new":
        return (
            f"new {'UDP ' if udp else ''}flow {_hostport(flow['src'], flow['sport'])} > "
            f"{_hostport(flow['dst'], flow['dport'])}: {record['state']} (rule {record['rule']})"
        )
    if kind == "state":
        return f"{record['old_state']} -> {record['state']}"
    if kind == "expire":
        why = (
            "forced" if record.get("forced") else f"{record['phase']} timer {record['timeout']:g}s"
        )
        if record.get("capped_by"):
            why += f", {record['capped_by']}"
        if record.get("silent"):
            why += f": the {record['silent']} end never answered"
        return (
            f"expire {record['state']} after {record['idle']:.2f}s idle ({why}): {record['action']}"
        )
    if kind == "reset":
        ack = "" if record["ack"] is None else f" ack {record['ack']}"
        cause = _RESET_CAUSES.get(record["cause"], record["cause"])
        return f"RST to {record['to']} seq {record['seq']}{ack} ({cause})"
    if kind == "out_of_state":
        side = record["side"] or "an unknown side"
        action = _OUT_OF_STATE_ACTIONS.get(record["action"], record["action"])
        packet = "datagram" if udp else "packet"
        return f"out-of-state {packet} from {side}, {record['reason']}: {action}"
    if kind == "unreachable":
        cause = _RESET_CAUSES.get(record["cause"], record["cause"])
        return f"ICMP port unreachable to {record['to']} ({cause})"
    if kind == "delete":
        return f"flow deleted in {record['state']}: {record['reason']}"
    if kind == "out_of_state_summary":
        action = _OUT_OF_STATE_ACTIONS.get(record["action"], record["action"])
        return (
            f"{record['packets']} more out-of-state {_plural(record['packets'], 'packet')} from "
            f"{record['source']} past the answer rate: {action}, unanswered"
        )
    if kind == "limit":
        return (
            f"new flow refused: {record['limit']} = {record['value']} reached by "
            f"{record['counted']}: {record['action']}"
        )
    if kind == "limit_summary":
        return (
            f"{record['packets']} more new {_plural(record['packets'], 'flow')} refused by "
            f"{record['limit']} past the answer rate: {record['action']}"
        )
    if kind == "syn_flood":
        where = "to this destination" if record["per_destination"] else "in total"
        return f"SYN flood: {record['rate']} SYN/s {where}, past the alarm rate {record['alarm']}"
    if kind == "probe":
        return f"dead connection detection: probes {record['round']} of {record['retries']} sent"
    return f"{kind} {record}"


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{noun}s"


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
