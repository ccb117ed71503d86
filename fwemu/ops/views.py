"""How the troubleshooting commands show flows and events to people (rich renderables and lines).

Everything here takes the control socket's JSON records, so it is pure and testable without a
daemon.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from fwemu.core.events import FlowId
from fwemu.core.states import PHASE_NAME
from fwemu.ops.client import queue_range
from fwemu.ops.filters import DEFAULT_PROTO
from fwemu.policy.model import Protocol

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


def flow_id(record: dict[str, Any]) -> FlowId:
    """The flow of a JSON record (a flow's, or an event's `flow`)."""
    proto = record.get("proto", DEFAULT_PROTO)
    return FlowId(record["src"], record["sport"], record["dst"], record["dport"], proto)


def flow_name(record: dict[str, Any]) -> str:
    """client > server, as `fwemu expire FLOW` takes it; a UDP flow's with "udp " first."""
    return str(flow_id(record))


def by_deadline(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Soonest expiry first; flows without a timer last."""
    return sorted(records, key=lambda r: (r["expires_in"] is None, r["expires_in"] or 0.0))


# The flow table's columns, as shown: header, right-aligned, cell. Within a width, the counters
# and the age go first (bytes, packets, then age), so that the state, the timer, its countdown
# and the rule stay whole. A UDP flow's name starts with "udp" (as events and `fwemu expire`
# print it) rather than every row having a PROTO column: a TCP-only table keeps its width, and
# at 80 columns, where the flows' names are cut at their end, the marker stays.
_COLUMNS: tuple[tuple[str, bool, Callable[[dict[str, Any]], str]], ...] = (
    ("FLOW (client > server)", False, flow_name),
    ("STATE", False, lambda r: str(r["state"])),
    ("TIMER", False, lambda r: str(r["phase"])),
    ("LEFT", False, lambda r: seconds(r["expires_in"])),
    ("RULE", False, lambda r: str(r["rule"])),
    ("PKTS c/s", True, lambda r: "/".join(map(amount, r["packets"]))),
    ("BYTES c/s", True, lambda r: "/".join(map(amount, r["bytes"]))),
    ("AGE", True, lambda r: seconds(r["age"])),
)
_DROPPED_FIRST = (6, 5, 7)  # bytes, packets, age
# Between two columns: padding on both sides of rich's column divider, then on one side only.
_GAP, _NARROW_GAP = 3, 2


def flows_table(records: Sequence[dict[str, Any]], width: int | None = None) -> Table:
    """One row per flow, as `conntrack -L` lists them: who, state, timer, rule, counters, age.
    Narrower than `width` if given: the optional columns go, then the gaps narrow, then the
    flows' names are cut short, so the other cells are never cut."""
    rows = [[cell(r) for _, _, cell in _COLUMNS] for r in records]
    widths = [
        max([len(header), *(len(row[i]) for row in rows)])
        for i, (header, _, _) in enumerate(_COLUMNS)
    ]
    shown, gap = list(range(len(_COLUMNS))), _GAP

    def needed() -> int:
        return sum(widths[i] for i in shown) + gap * (len(shown) - 1)

    flow_width = None
    if width is not None:
        for column in _DROPPED_FIRST:
            if needed() <= width:
                break
            shown.remove(column)
        if needed() > width:
            gap = _NARROW_GAP
        # The flows' names take what is left (at least their first word), cut with an ellipsis.
        flow_width = max(widths[0] - max(needed() - width, 0), 4)
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        padding=(0, 1) if gap == _GAP else (0, 1, 0, 0),
    )
    for i in shown:
        header, right, _ = _COLUMNS[i]
        table.add_column(
            header,
            justify="right" if right else "left",
            no_wrap=True,
            max_width=flow_width if i == 0 else None,
        )
    for row in rows:
        # Text, not markup: "[fd00::1]:80" must not be read as a style tag.
        table.add_row(*(Text(row[i]) for i in shown))
    return table


def flow_count(n: int) -> str:
    """The count of flows, in words: "1 flow", "2 flows"."""
    return f"{n} flow" + ("" if n == 1 else "s")


def state_counts(records: Iterable[dict[str, Any]]) -> Text:
    """`ESTABLISHED 12  TIME_WAIT 3  UNREPLIED 2` in the order states come in a connection's
    life, TCP's then UDP's."""
    counts = Counter(r["state"] for r in records)
    parts = [f"{state.name} {counts[state.name]}" for state in PHASE_NAME if counts[state.name]]
    return Text("  ".join(parts) or "no flows")


def protocol_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Flows per protocol, every protocol named (for scripts: `fwemu flows --summary --json`)."""
    counts = Counter(r.get("proto", DEFAULT_PROTO) for r in records)
    return {proto.value: counts[proto.value] for proto in Protocol}


def flows_line(records: Sequence[dict[str, Any]]) -> str:
    """`3 flows: ESTABLISHED 2  TIME_WAIT 1`, with the count per protocol once there is UDP:
    `5 flows (tcp 3, udp 2): ESTABLISHED 2  TIME_WAIT 1  UNREPLIED 1  STREAM 1`."""
    protocols = protocol_counts(records)
    split = ""
    if protocols[DEFAULT_PROTO] != len(records):
        split = " (" + ", ".join(f"{p} {n}" for p, n in protocols.items() if n) + ")"
    return f"{flow_count(len(records))}{split}: {state_counts(records)}"


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
        "unreachable": lambda: f"ICMP port unreachable to {record['to']} ({record['cause']})",
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
    return f"{stamp} {kind:<12} {flow_id(flow)} {details}".rstrip()


def limits_table(usages: Sequence[dict[str, Any]], busiest: int, width: int | None = None) -> Table:
    """Each limit set against its count: the table's, or its `busiest` clients, servers or
    pools (most first), and the new flows it refused. Whose count it is comes last: narrowed
    to `width`, only that is cut, never a number."""
    rows: list[tuple[str, ...]] = []
    for usage in usages:
        owner = usage["limits"]
        refused = usage["refused"]
        for limit, value in usage["values"].items():
            counts = usage["counts"][limit][:busiest] or [("", 0)]
            for index, (who, count) in enumerate(counts):
                first = index == 0
                rows.append(
                    (
                        owner if first else "",
                        limit if first else "",
                        f"{count:,}",
                        f"{value:,}" if first else "",
                        f"{refused.get(limit, 0):,}" if first else "",
                        "" if who == "table" else who,
                    )
                )
            owner = ""
    headers = ("LIMITS", "LIMIT", "COUNT", "OF", "REFUSED", "WHOSE")
    return _cut_last(headers, rows, width, right=(2, 3, 4))


def runs_table(records: Sequence[dict[str, Any]], width: int | None = None) -> Table:
    """`fwemu ps`: one row per run (its `--json` records), its workers' sockets as the first
    and how many more; narrowed to `width`, only the socket's path is cut."""
    rows = []
    for r in records:
        sockets = [w["control"] for w in r["workers"]]
        more = f" +{len(sockets) - 1}" if len(sockets) > 1 else ""
        rows.append(
            (
                r["netns"] or "-",
                queue_range(r["queues"]),
                _policy_of(r) + ("  DRY RUN" if r["dry_run"] else ""),
                ",".join(r.get("protocols", ("tcp",))) or "-",  # a fwemu from before UDP: TCP
                f"{r['flows']:,}",
                seconds(r["uptime"]),
                str(r["pid"]),
                sockets[0] + more,
            )
        )
    headers = ("NETNS", "QUEUE", "POLICY", "PROTO", "FLOWS", "UP", "PID", "CONTROL")
    return _cut_last(headers, rows, width, right=(4, 5, 6), also=(2, 0))


def _policy_of(record: dict[str, Any]) -> str:
    """A run's policy and where it came from, unless that is the preset of its name."""
    policy, origin = record["policy"], record["origin"]
    return policy if origin == f"preset:{policy}" else f"{policy} ({origin})"


def _cut_last(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int | None,
    right: tuple[int, ...],
    also: tuple[int, ...] = (),
) -> Table:
    """A table whose columns are as wide as their cells (`right` ones right-justified), but the
    last: narrowed to fit `width`, only it is cut (with an ellipsis), then the `also` ones if
    need be, never a number. Rich would narrow every column instead."""
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers)]
    for cut in (-1, *also):  # the last column first, then `also`, each down to 5 at most
        if width is not None:  # the columns' widths and the 3-space gap between each two
            over = sum(widths) + 3 * (len(headers) - 1) - width
            widths[cut] = max(widths[cut] - max(over, 0), min(widths[cut], 5))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for i, header in enumerate(headers):
        justify: Literal["left", "right"] = "right" if i in right else "left"
        table.add_column(header, justify=justify, no_wrap=True, width=widths[i])
    for row in rows:
        table.add_row(*(Text(cell, overflow="ellipsis", no_wrap=True) for cell in row))
    return table


# Lines of `fwemu top` besides the header, the limits and the flow rows: the counts per state,
# the flow table's head (2), its "... and N more", the events' title, and the footer.
_TOP_CHROME = 6
RECENT_EVENTS = 8  # at most, and a third of the lines left after the chrome


def top_view(
    status: dict[str, Any],
    flows: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    width: int,
    height: int,
) -> RenderableType:
    """`fwemu top`'s screen within `width` x `height`: a header with the counters, counts per
    state, the flows that expire soonest (as many as fit), the latest events."""
    where = f" netns {status['netns']}" if status.get("netns") else ""
    dry = "  DRY RUN" if status.get("dry_run") else ""
    rewritten = f"  rewritten {n}" if (n := status.get("rewritten")) else ""
    lines = [
        f"fwemu pid {status['pid']}{where} queue {status['queue']}  policy {status['policy']} "
        f"({status['origin']}) x{status['speed']:g}{dry}",
        f"packets {status['packets']}  accepted {status['accepted']}  dropped "
        f"{status['dropped']}{rewritten}  flows {status['flows']}",
        # An older fwemu's status lacks the last two.
        f"injected {status['resets']}  expired {status.get('expired', 0)}  out-of-state "
        f"{status.get('out_of_state', 0)}",
    ]
    header = Text("\n".join(lines), style="bold")
    if bypassed := status.get("bypassed"):
        lines.append(f"BYPASSED {bypassed} packets: the queue overflowed, timers cannot be trusted")
        header.append(f"\n{lines[-1]}", style="bold red")
    # The header wraps; the rest is one line each.
    left = height - _TOP_CHROME - sum(-(-max(len(line), 1) // width) for line in lines)
    parts: list[RenderableType] = [header, state_counts(flows)]
    if usages := status.get("limits"):
        parts.append(limits_table(usages, busiest=1, width=width))
        left -= 2 + sum(len(u["values"]) for u in usages)  # its head, rule and a row per limit
    recent = list(events)[max(len(events) - min(RECENT_EVENTS, max(left, 0) // 3), 0) :]
    ordered = by_deadline(flows)
    shown = ordered[: max(left - len(recent), 0)]
    parts.append(flows_table(shown, width))
    if more := len(ordered) - len(shown):
        parts.append(Text(f"... and {more} more (fwemu flows lists them all)"))
    parts.append(Text("recent events", style="bold"))
    parts.extend(Text(event_line(e), no_wrap=True, overflow="ellipsis") for e in recent)
    parts.append(Text("q or Ctrl-C quits", style="dim"))
    return Group(*parts)


def waiting_view(reason: str) -> RenderableType:
    """`fwemu top`'s screen while no fwemu answers (it stopped, or is restarting)."""
    return Group(
        Text("waiting for fwemu...", style="bold"),
        Text(reason),
        Text("q or Ctrl-C quits", style="dim"),
    )


# Output width when stdout is not a terminal: wide enough for an IPv6 flow row without wrapping.
PIPE_WIDTH = 160


def stdout_console() -> Console:
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = PIPE_WIDTH
    return console
