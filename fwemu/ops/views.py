"""How the troubleshooting commands show flows and events to people (rich renderables and lines).

Everything here takes the control socket's JSON records, so it is pure and testable without a
daemon.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from fwemu.core.events import FlowId
from fwemu.core.states import PHASE_OF

_NEVER = "never"  # a state without a timer


def seconds(value: float | None) -> str:
    """A duration for a table cell: 4.2s, 3m05s, 2h07m, 5d00h; 'never' for None."""
    if value is None:
        return _NEVER
    value = max(value, 0.0)
    if value < 60:
        return f"{value:.1f}s"
    whole = int(value)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}{whole % size // sub_size:02d}{sub}"
    return f"{whole // 60}m{whole % 60:02d}s"


def amount(value: int) -> str:
    """A byte or packet count in 4 characters or so: 512, 1.5k, 23M."""
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if value >= size:
            scaled = value / size
            return f"{scaled:.1f}{unit}" if scaled < 10 else f"{scaled:.0f}{unit}"
    return str(value)


def flow_name(record: dict[str, Any]) -> str:
    """client > server, as `fwemu expire FLOW` takes it."""
    return str(FlowId(record["src"], record["sport"], record["dst"], record["dport"]))


def by_deadline(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Soonest expiry first; flows without a timer last."""
    return sorted(records, key=lambda r: (r["expires_in"] is None, r["expires_in"] or 0.0))


def flows_table(records: Sequence[dict[str, Any]]) -> Table:
    """One row per flow, as `conntrack -L` lists them: who, state, timer, rule, counters, age."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header in ("FLOW (client > server)", "STATE", "TIMER", "LEFT", "RULE"):
        table.add_column(header, no_wrap=True)
    for header in ("PKTS c/s", "BYTES c/s", "AGE"):
        table.add_column(header, justify="right", no_wrap=True)
    for r in records:
        (pc, ps), (bc, bs) = r["packets"], r["bytes"]
        cells = (
            flow_name(r),
            r["state"],
            r["phase"],
            seconds(r["expires_in"]),
            r["rule"],
            f"{amount(pc)}/{amount(ps)}",
            f"{amount(bc)}/{amount(bs)}",
            seconds(r["age"]),
        )
        # Text, not markup: "[fd00::1]:80" must not be read as a style tag.
        table.add_row(*map(Text, cells))
    return table


def state_counts(records: Iterable[dict[str, Any]]) -> Text:
    """`ESTABLISHED 12  TIME_WAIT 3` in the order states come in a connection's life."""
    counts = Counter(r["state"] for r in records)
    parts = [f"{state.name} {counts[state.name]}" for state in PHASE_OF if counts[state.name]]
    return Text("  ".join(parts) or "no flows")


def _timer(record: dict[str, Any]) -> str:
    """The timer an expiry names: "established timer", "established timer (lifetime)"."""
    capped = f" ({record['capped_by']})" if record.get("capped_by") else ""
    return f"{record['phase']} timer{capped}"


def event_line(record: dict[str, Any]) -> str:
    """One event record as a readable line (local time, kind, flow, what happened)."""
    ts = record["ts"]
    stamp = time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    flow = record["flow"]
    kind = record["event"]
    details = {
        "new": lambda: f"{record['state']} (rule {record['rule']})",
        "state": lambda: f"{record['old_state']} -> {record['state']}",
        "expire": lambda: (
            f"{record['state']} after {record['idle']:.1f}s idle "
            f"({'forced' if record.get('forced') else _timer(record)}): "
            f"{record['action']}"
        ),
        "reset": lambda: (
            f"RST to {record['to']} seq {record['seq']}"
            + ("" if record.get("ack") is None else f" ack {record['ack']}")
        ),
        "out_of_state": lambda: f"{record['reason']}: {record['action']}",
        "delete": lambda: f"{record['state']}: {record['reason']}",
        "syn_flood": lambda: f"{record['rate']} SYN/s, past the alarm rate {record['alarm']}",
        "probe": lambda: (
            f"dead connection detection: probes {record['round']} of {record['retries']}"
        ),
        "out_of_state_summary": lambda: (
            f"{record['packets']} more from {record['source']} past the answer rate: "
            f"{record['action']}"
        ),
        "limit": lambda: (
            f"refused: {record['limit']} {record['value']} reached by {record['counted']}: "
            f"{record['action']}"
        ),
        "limit_summary": lambda: (
            f"{record['packets']} more refused by {record['limit']} past the answer rate: "
            f"{record['action']}"
        ),
    }.get(kind, lambda: "")()
    who = FlowId(flow["src"], flow["sport"], flow["dst"], flow["dport"])
    return f"{stamp} {kind:<12} {who} {details}".rstrip()


def limits_table(usages: Sequence[dict[str, Any]], busiest: int) -> Table:
    """Each limit set against its count: the table's, or its `busiest` clients, servers or
    pools (most first), and the new flows it refused."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header in ("LIMITS", "LIMIT", "COUNT"):
        table.add_column(header, no_wrap=True)
    for header in ("OF", "REFUSED"):
        table.add_column(header, justify="right", no_wrap=True)
    for usage in usages:
        owner = usage["limits"]
        refused = usage["refused"]
        for limit, value in usage["values"].items():
            counts = usage["counts"][limit][:busiest] or [("", 0)]
            for index, (who, count) in enumerate(counts):
                first = index == 0
                shown = f"{count:,}" if who == "table" else f"{who}: {count:,}" if who else "0"
                table.add_row(
                    Text(owner if first else ""),
                    Text(limit if first else ""),
                    Text(shown),
                    f"{value:,}" if first else "",
                    f"{refused.get(limit, 0):,}" if first else "",
                )
            owner = ""
    return table


# The counters of `status` that add up over the workers of a run.
SUMMED = ("packets", "accepted", "dropped", "resets", "rewritten", "errors", "bypassed", "flows")


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
        "queue": f"{queues[0]}-{queues[-1]} ({len(queues)} workers)",
    }


def top_view(
    status: dict[str, Any],
    flows: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    rows: int,
) -> RenderableType:
    """`fwemu top`'s screen: a header, counts per state, the flows that expire soonest (at most
    `rows`), the latest events."""
    where = f" netns {status['netns']}" if status.get("netns") else ""
    dry = "  DRY RUN" if status.get("dry_run") else ""
    rewritten = f"  rewritten {n}" if (n := status.get("rewritten")) else ""
    header = Text(
        f"fwemu pid {status['pid']}{where} queue {status['queue']}  policy {status['policy']} "
        f"({status['origin']}) x{status['speed']:g}{dry}\n"
        f"packets {status['packets']}  accepted {status['accepted']}  dropped "
        f"{status['dropped']}  injected {status['resets']}{rewritten}  flows {status['flows']}",
        style="bold",
    )
    if bypassed := status.get("bypassed"):
        header.append(
            f"\nBYPASSED {bypassed} packets: the queue overflowed, timers cannot be trusted",
            style="bold red",
        )
    parts: list[RenderableType] = [header, state_counts(flows)]
    if usages := status.get("limits"):
        parts.append(limits_table(usages, busiest=1))
        rows -= 2 + sum(len(u["values"]) for u in usages)  # its head, rule and a row per limit
    ordered = by_deadline(flows)
    shown = ordered[: max(rows, 0)]
    more = len(ordered) - len(shown)
    parts.append(flows_table(shown))
    if more:
        parts.append(Text(f"... and {more} more flows (fwemu flows lists them all)"))
    parts.append(Text("recent events", style="bold"))
    parts.extend(Text(event_line(e)) for e in events)
    parts.append(Text("q or Ctrl-C quits", style="dim"))
    return Group(*parts)


# Output width when stdout is not a terminal: wide enough for an IPv6 flow row without wrapping.
PIPE_WIDTH = 160


def stdout_console() -> Console:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console
