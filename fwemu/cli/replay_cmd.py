"""`fwemu replay CAPTURE`: what would this policy have done to the traffic in this capture?"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from fwemu.cli.argtypes import number
from fwemu.core.events import FlowId
from fwemu.ops.capture import Capture, open_capture
from fwemu.ops.replay import FlowReport, ReplayReport, Summary, replay
from fwemu.policy import load_policy, load_preset
from fwemu.policy.model import Protocol

ORDER = 60  # place in `fwemu --help`

DESCRIPTION = """\
Run a pcap or pcapng capture through the emulator with the capture's own timestamps, and report
every TCP or UDP flow the policy would have expired, reset or black-holed: when, in which state,
by which timer, the RSTs it would have injected, and what it would have done to each later
packet of the flow (dropped, answered with a RST or an ICMP port unreachable, accepted).

The capture shows what the endpoints sent without this policy in the way, so the packets after
an expiry are the ones the policy would have met. Connections already open when the capture
began are tracked as ESTABLISHED from their first packet (see --no-assume-open); a UDP flow
opens with any datagram, its sender the client.
Link types: Ethernet (VLAN tags too), Linux cooked SLL and SLL2 (tcpdump -i any), raw IP, loopback.
"""

EPILOG = """\
examples:
  fwemu replay traffic.pcap --preset aws-nat-gateway       what an AWS NAT gateway would cut
  fwemu replay lab.pcapng --policy mine.toml --timeline    with every flow's event timeline
  fwemu replay big.pcap --preset cisco-asa --flow 10.0.0.5:5432 --timeline   one server's flows
  fwemu replay traffic.pcap --preset linux --json | jq '.flows[].expired'
  fwemu replay lab.pcap --preset aws-nlb --speed 100    a capture of 'fwemu run --speed 100'

exit status: 0 when the capture was replayed (whatever it found), 2 when the capture or policy
cannot be read (a capture cut off mid-packet is replayed up to there, with a warning).
"""

_PIPE_WIDTH = 120  # output width when stdout is not a terminal (a timeline line fits)
_LATE_SHOWN = 20  # later packets listed per flow in the readable report (all are in --json)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="replay a capture through a policy: which flows would it have expired or cut?",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("capture", metavar="CAPTURE", help="a pcap or pcapng file")
    which = parser.add_argument_group("policy (exactly one)").add_mutually_exclusive_group(
        required=True
    )
    which.add_argument("--policy", metavar="FILE", help="a policy TOML file")
    which.add_argument("--preset", metavar="NAME", help="a shipped preset, e.g. linux")
    parser.add_argument(
        "--speed",
        type=number("speed", 0),
        default=1.0,
        metavar="F",
        help="run every policy timer F times faster, as 'fwemu run --speed F' did while the "
        "capture was taken (default: 1)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the whole report as one JSON document"
    )
    parser.add_argument(
        "--timeline", action="store_true", help="list each reported flow's events in order"
    )
    parser.add_argument(
        "--flow",
        action="append",
        default=[],
        metavar="ENDPOINT",
        type=_endpoint,
        help=(
            "report only flows with this endpoint (ADDR, ADDR:PORT, [ADDR6]:PORT or :PORT), "
            "affected or not; repeatable"
        ),
    )
    parser.add_argument(
        "--no-assume-open",
        dest="assume_open",
        action="store_false",
        help=(
            "meet connections already open when the capture began as a freshly started firewall "
            "would (the policy's pickup and out-of-state rules) instead of as ESTABLISHED flows"
        ),
    )
    parser.set_defaults(func=_run)


# --- --flow -------------------------------------------------------------------------------

Endpoint = tuple[str | None, int | None]  # (normalised address or None, port or None)


def _endpoint(text: str) -> Endpoint:
    """ADDR, ADDR:PORT, [ADDR6]:PORT or :PORT."""
    try:
        return (str(ipaddress.ip_address(text)), None)
    except ValueError:
        pass
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
        address = str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        port = -1
    if not sep or not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"not an endpoint: {text!r} (use ADDR, ADDR:PORT, [ADDR6]:PORT or :PORT)"
        )
    return (address, port)


def _selector(endpoints: list[Endpoint]) -> Callable[[FlowId], bool] | None:
    if not endpoints:
        return None

    def select(flow: FlowId) -> bool:
        ends = ((flow.src, flow.sport), (flow.dst, flow.dport))
        return any(
            (address is None or address == a) and (port is None or port == p)
            for address, port in endpoints
            for a, p in ends
        )

    return select


# --- running -------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy) if args.policy else load_preset(args.preset)
    capture = open_capture(args.capture)
    try:
        with _progress(capture):
            report = replay(
                capture,
                policy,
                speed=args.speed,
                assume_open=args.assume_open,
                select=_selector(args.flow),
            )
    finally:
        capture.close()
    for warning in report.summary.warnings:
        print(f"fwemu: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = _PIPE_WIDTH
    _print_report(console, report, timeline=args.timeline, selected=bool(args.flow))
    return 0


@contextmanager
def _progress(capture: Capture) -> Iterator[None]:
    """A progress bar on stderr (by bytes read), only when stderr is a terminal."""
    console = Console(file=sys.stderr)
    if not console.is_terminal:
        yield
        return
    columns = (
        TextColumn("replaying"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("replay", total=capture.size)
        capture.on_progress = lambda done: bar.update(task, completed=done)
        yield


# --- the readable report --------------------------------------------------------------------


def _clock(ts: float) -> str:
    """Local time of day with microseconds, as tcpdump prints it."""
    seconds, micros = divmod(round(ts * 1e6), 1_000_000)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{micros:06d}"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _date(ts: float) -> str:
    return time.strftime("%Y-%m-%d ", time.localtime(round(ts))) + _clock(ts)


def _print_report(
    console: Console, report: ReplayReport, *, timeline: bool, selected: bool
) -> None:
    s = report.summary
    for line in _summary_lines(s, report):
        console.print(line, soft_wrap=True)
    for flow in report.flows:
        console.print()
        _print_flow(console, flow, s, timeline=timeline)
    if not report.flows:
        console.print()
        console.print(
            "No flow matches --flow." if selected else "No flow was expired, reset or black-holed."
        )


def _summary_lines(s: Summary, report: ReplayReport) -> list[Text]:
    lines = [Text.assemble(("capture ", "bold"), f"{s.capture} ({s.format}, {s.link or '?'})")]
    if s.first_ts is None or s.last_ts is None:
        lines.append(Text(f"        {s.packets:,} packets, none of them IP"))
    else:
        lines.append(
            Text(
                f"        {s.packets:,} packets from {_date(s.first_ts)} to {_clock(s.last_ts)}"
                f" ({s.duration:.3f} s)"
            )
        )
    protocols = ", ".join(f"{n:,} {proto.upper()}" for proto, n in s.protocols.items() if n)
    split = f" ({protocols})" if protocols else ""
    skipped = f"; skipped {s.not_ip:,} not IP, {s.other_protocol:,} not TCP or UDP"
    lines.append(
        Text(
            f"        {_count(s.tracked_packets, 'packet')} tracked in "
            f"{_count(s.flows, 'flow')}{split}{skipped}"
        )
    )
    if s.out_of_order:
        lines.append(
            Text(f"        {s.out_of_order:,} packets out of time order (replayed in file order)")
        )
    speed = f", every timer {s.speed:g} times faster (--speed)" if s.speed != 1 else ""
    lines.append(Text.assemble(("policy  ", "bold"), f"{s.policy} ({s.policy_origin}){speed}"))
    if s.refusals:
        lines.append(Text(f"        {_count(s.refusals, 'new flow')} refused by a limit"))
    affected = [f for f in report.flows if f.affected]
    states = Counter(info.state for info in report.alive)
    alive = ", ".join(f"{n:,} {state}" for state, n in states.most_common()) or "none"
    lines.append(
        Text.assemble(
            ("result  ", "bold"),
            (_count(len(affected), "flow") + " affected", "bold red" if affected else "bold green"),
            f"; still tracked at the last packet: {alive}",
        )
    )
    return lines


def _headline(flow: FlowReport) -> str:
    expired = flow.expired
    udp = flow.flow.proto == Protocol.UDP
    if expired is not None:
        if udp:  # a UDP flow's end: harmful only to the datagrams after it
            return f"forgotten by its {expired.phase} timer"
        silent = expired.action == "silent"
        return (
            "forgotten silently (black hole)" if silent else f"expired and reset ({expired.action})"
        )
    if flow.refused:
        first = flow.refused[0]
        return f"refused by a limit ({first.limit} {first.value:,}): {first.action}"
    if flow.gone_at is not None:
        return "late datagrams after its timer ran out" if udp else "late packets after it ended"
    if flow.opened is None:
        return "never tracked: its packets are out of state"
    return "packets rejected" if flow.affected else "not affected"


def _print_late(console: Console, flow: FlowReport, at: Callable[[float], str]) -> None:
    """The flow's packets after it expired, the first _LATE_SHOWN of them."""
    console.print(f"  {_count(len(flow.late), 'later packet')} in the capture:")
    for p in flow.late[:_LATE_SHOWN]:
        rst = ""
        if p.reset is not None:
            ack = "" if p.reset.ack is None else f" ack {p.reset.ack}"
            rst = f" seq {p.reset.seq}{ack}"
        side = p.side or "?"
        console.print(
            f"    {at(p.ts)}  from {side:<6} {p.packet}: {p.outcome}{rst} ({p.reason})",
            soft_wrap=True,
        )
    if len(flow.late) > _LATE_SHOWN:
        console.print(f"    ... and {len(flow.late) - _LATE_SHOWN} more (see --json)")


def _print_flow(console: Console, flow: FlowReport, s: Summary, *, timeline: bool) -> None:
    start = s.first_ts or 0.0

    def at(ts: float) -> str:
        return f"{_clock(ts)} (+{ts - start:.3f}s)"

    console.print(
        Text.assemble(
            (str(flow.flow), "bold"),
            f"  rule {flow.rule}: ",
            (_headline(flow), "bold red" if flow.affected else "green"),
        ),
        soft_wrap=True,
    )
    if flow.already_open:
        console.print(f"  already open when the capture began; tracked from {at(flow.opened or 0)}")
    elif flow.opened is not None:
        console.print(f"  opened {at(flow.opened)}")
    if (e := flow.expired) is not None:
        timer = f"the {e.phase} timer ({e.timeout:g}s)" if e.timeout is not None else "force"
        console.print(
            f"  expired {at(e.ts)} in {e.state} after {e.idle:.3f}s idle, by {timer}: {e.action}",
            soft_wrap=True,
        )
    if flow.gone_at is not None:
        console.print(
            f"  its {flow.gone_phase} timer had run out at {at(flow.gone_at)}", soft_wrap=True
        )
    for refusal in flow.refused[:_LATE_SHOWN]:
        console.print(
            f"  refused {at(refusal.ts)}: {refusal.limit} = {refusal.value:,} reached by "
            f"{refusal.counted} ({refusal.limits}): {refusal.action}",
            soft_wrap=True,
        )
    for r in flow.resets:
        ack = "" if r.ack is None else f" ack {r.ack}"
        console.print(f"  RST to {r.to}: seq {r.seq}{ack}")
    for ts in flow.echoes:
        console.print(
            f"  the capture shows the policy's own RST at {at(ts)} "
            "(taken behind a firewall that sent it): not a late packet",
            soft_wrap=True,
        )
    if flow.late:
        _print_late(console, flow, at)
    if timeline:
        console.print("  timeline:")
        if flow.already_open:
            console.print(f"    {at(flow.opened or 0)}  (already open: tracked as ESTABLISHED)")
        for event in flow.events:
            console.print(f"    {at(event.ts)}  {event.describe(at)}", soft_wrap=True)
