"""Replaying captures: expiries at the capture's exact times, late packets and what the policy
does to them, every link layer and both file formats, corrupt files, the CLI, and captures taken
behind fwemu (sped up, showing its own RSTs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fwemu.cli import main
from fwemu.ops.capture import CaptureError, open_capture
from fwemu.ops.replay import ReplayReport, replay
from fwemu.policy import resolve_policy
from tests.replay.captures import (
    CLIENT4,
    CLIENT6,
    LINKS,
    SERVER4,
    SERVER6,
    T0,
    Conversation,
    Datagrams,
    merged,
    write,
)
from tests.replay.policies import (
    LATE_RESET,
    RESET_BOTH,
    SILENT,
    UDP_REJECT,
    UDP_SHORT,
    policy,
)


def run(path: Path, text: str = SILENT, **kw: object) -> ReplayReport:
    capture = open_capture(path)
    try:
        return replay(capture, policy(text), **kw)  # type: ignore[arg-type]
    finally:
        capture.close()


def idle_then_late(v6: bool = False) -> tuple[Conversation, Conversation]:
    """An idle flow (last packet at +0.502 s, late data at +5 s) and one that stays active."""
    idle = Conversation(v6=v6).handshake(0).exchange(0.5)
    idle.client(5.0, "PA", b"late")
    active = Conversation(sport=40001, v6=v6).handshake(0)
    for t in (1.0, 2.5, 4.0, 5.5):
        active.exchange(t)
    return idle, active


@pytest.mark.parametrize("link", sorted(LINKS))
@pytest.mark.parametrize("pcapng", [False, True], ids=["pcap", "pcapng"])
def test_idle_flow_expires_at_the_exact_capture_time_in_every_format(
    tmp_path: Path, link: str, pcapng: bool
) -> None:
    idle, active = idle_then_late()
    report = run(write(tmp_path / "c", merged(idle, active), link, pcapng=pcapng))

    [flow] = report.flows
    assert (flow.flow.sport, flow.flow.dport) == (40000, 8080)
    assert flow.expired is not None
    assert flow.expired.ts == pytest.approx(T0 + 0.502 + 2.0, abs=1e-6)
    assert (flow.expired.state, flow.expired.phase, flow.expired.timeout) == (
        "ESTABLISHED",
        "established",
        2.0,
    )
    assert report.summary.flows == 2
    assert [info.flow.sport for info in report.alive] == [40001]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_black_holed_flow_lists_its_later_packets_as_dropped(tmp_path: Path, v6: bool) -> None:
    idle, active = idle_then_late(v6)
    idle.client(5.2, "PA", b"again")
    report = run(write(tmp_path / "c.pcap", merged(idle, active)))

    [flow] = report.flows
    assert flow.expired is not None and flow.expired.action == "silent"
    assert [(round(p.ts - T0, 6), p.side, p.outcome, p.length) for p in flow.late] == [
        (5.0, "client", "dropped", 4),
        (5.2, "client", "dropped", 5),
    ]
    assert flow.resets == ()


def test_out_of_state_reset_policy_lists_the_rsts_it_would_send(tmp_path: Path) -> None:
    idle, active = idle_then_late()
    report = run(write(tmp_path / "c.pcap", merged(idle, active)), LATE_RESET)

    [flow] = report.flows
    [late] = flow.late
    assert late.outcome == "answered with a RST"
    assert late.reset is not None
    # The RST answers the late segment: its seq is the segment's ack (RFC 9293 §3.10.7.1).
    assert (late.reset.to, late.reset.seq) == ("client", late.ack)


def test_reset_both_expiry_names_both_rsts_and_recognises_its_own_rst_in_the_capture(
    tmp_path: Path,
) -> None:
    idle, active = idle_then_late()
    # A capture taken behind a live firewall shows the RST it injected into the client.
    rst = Conversation(sport=40000, client_seq=idle.client_seq, server_seq=idle.server_seq)
    rst.server(2.503, "R")
    report = run(write(tmp_path / "c.pcap", merged(idle, active, rst)), RESET_BOTH)

    [flow] = report.flows
    assert [(r.to, r.seq, r.ack) for r in flow.resets] == [
        ("client", idle.server_seq, idle.client_seq - 4),
        ("server", idle.client_seq - 4, idle.server_seq),
    ]
    assert [t - T0 for t in flow.echoes] == [pytest.approx(2.503)]
    assert [p.ts - T0 for p in flow.late] == [pytest.approx(5.0)]  # the late data, not the RST


def test_flow_that_stays_active_or_closes_normally_is_not_reported(tmp_path: Path) -> None:
    _, active = idle_then_late()
    closed = Conversation(sport=40002).handshake(0).exchange(0.5)
    closed.client(0.6, "FA")
    closed.server(0.601, "FA")
    closed.client(0.602, "A")
    closed.client(5.0, "S")  # later, the next connection on the same port
    report = run(write(tmp_path / "c.pcap", merged(active, closed)))

    assert report.flows == ()
    assert report.summary.flows == 3


def test_flows_open_before_the_capture_are_tracked_from_their_first_packet(
    tmp_path: Path,
) -> None:
    ongoing = Conversation().exchange(0.0)  # no handshake in the capture
    ongoing.client(3.0, "PA", b"late")
    report = run(write(tmp_path / "c.pcap", merged(ongoing)))

    [flow] = report.flows
    assert flow.already_open
    assert flow.expired is not None
    assert flow.expired.ts - T0 == pytest.approx(0.002 + 2.0)
    assert [p.outcome for p in flow.late] == ["dropped"]

    fresh = run(tmp_path / "c.pcap", assume_open=False)
    [flow] = fresh.flows
    assert flow.opened is None and flow.expired is None
    assert [p.outcome for p in flow.late] == ["dropped"] * 4


def test_frames_of_other_protocols_and_not_ip_are_skipped_and_counted(tmp_path: Path) -> None:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import ARP, Ether

    idle, _ = idle_then_late()
    path = write(tmp_path / "c.pcap", [*idle.packets, (T0 + 6, bytes(IP() / ICMP()))])
    import dpkt

    with open(path, "ab") as f:  # an ARP frame appended to the Ethernet capture
        frame = bytes(Ether(src="02:00:00:00:00:01", dst="ff:ff:ff:ff:ff:ff") / ARP())
        f.write(dpkt.pcap.LEPktHdr(tv_sec=int(T0) + 7, caplen=len(frame), len=len(frame)).pack())
        f.write(frame)
    summary = run(path).summary
    assert (summary.packets, summary.not_ip, summary.other_protocol, summary.tracked_packets) == (
        len(idle.packets) + 2,
        1,
        1,
        len(idle.packets),
    )


def test_nanosecond_pcap_keeps_the_exact_times(tmp_path: Path) -> None:
    idle, active = idle_then_late()
    [flow] = run(write(tmp_path / "c.pcap", merged(idle, active), nano=True)).flows
    assert flow.expired is not None
    assert flow.expired.ts == pytest.approx(T0 + 2.502, abs=1e-6)


def test_packets_out_of_time_order_replay_at_the_previous_time_and_are_counted(
    tmp_path: Path,
) -> None:
    idle, active = idle_then_late()
    packets = merged(idle, active)
    packets[5], packets[6] = packets[6], packets[5]
    report = run(write(tmp_path / "c.pcap", packets))
    assert report.summary.out_of_order == 1
    assert [f.flow.sport for f in report.flows] == [40000]


def test_truncated_snaplen_captures_still_replay(tmp_path: Path) -> None:
    idle, active = idle_then_late()
    cut = [(ts, ip[:40]) for ts, ip in merged(idle, active)]  # headers only, like -s 54
    [flow] = run(write(tmp_path / "c.pcap", cut, "raw")).flows
    assert flow.late[0].length == 4  # from the IP header, not the captured bytes


# --- bad files --------------------------------------------------------------------------------


def test_wrong_magic_is_refused_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a capture\n")
    with pytest.raises(CaptureError, match=r"notes\.txt: not a pcap or pcapng file"):
        open_capture(path)


def test_empty_and_missing_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.pcap").write_bytes(b"")
    with pytest.raises(CaptureError, match="not a capture file"):
        open_capture(tmp_path / "empty.pcap")
    with pytest.raises(CaptureError, match=r"cannot read .*missing\.pcap"):
        open_capture(tmp_path / "missing.pcap")


def test_unsupported_link_type_is_refused(tmp_path: Path) -> None:
    import dpkt

    path = tmp_path / "wifi.pcap"
    with open(path, "wb") as f:
        dpkt.pcap.Writer(f, linktype=105)
    with pytest.raises(CaptureError, match="link type 105 is not supported"):
        open_capture(path)


def test_corrupt_record_length_names_the_packet(tmp_path: Path) -> None:
    idle, _ = idle_then_late()
    path = write(tmp_path / "c.pcap", idle.packets)
    data = bytearray(path.read_bytes())
    # Third record's caplen: the file header is 24 bytes, each record 16 + its frame.
    at = 24
    for _ in range(2):
        at += 16 + int.from_bytes(data[at + 8 : at + 12], "little")
    data[at + 8 : at + 12] = (0x7FFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match=r"c\.pcap: corrupt at packet 3: record length"):
        run(path)


def test_corrupt_pcapng_block_is_refused(tmp_path: Path) -> None:
    idle, _ = idle_then_late()
    path = write(tmp_path / "c.pcapng", idle.packets, pcapng=True)
    data = bytearray(path.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"  # the last block's trailing length
    path.write_bytes(bytes(data))
    with pytest.raises(CaptureError, match="mismatched lengths"):
        run(path)


@pytest.mark.parametrize("pcapng", [False, True], ids=["pcap", "pcapng"])
def test_capture_cut_mid_packet_replays_what_is_complete_and_warns(
    tmp_path: Path, pcapng: bool
) -> None:
    idle, active = idle_then_late()
    path = write(tmp_path / "c", merged(idle, active), pcapng=pcapng)
    path.write_bytes(path.read_bytes()[:-30])  # as when tcpdump is killed mid-write
    report = run(path)
    assert report.summary.packets == len(merged(idle, active)) - 1
    assert any("ends in the middle of" in w for w in report.summary.warnings)


# --- the CLI ----------------------------------------------------------------------------------


def test_cli_json_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    idle, active = idle_then_late()
    path = write(tmp_path / "c.pcap", merged(idle, active))
    policy_file = tmp_path / "p.toml"
    policy_file.write_text(SILENT)

    assert main(["replay", str(path), "--policy", str(policy_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["flows"] == 2
    assert doc["summary"]["skipped"] == {"not_ip": 0, "other_protocol": 0}
    assert doc["summary"]["protocols"] == {"tcp": 2, "udp": 0}
    [flow] = doc["flows"]
    assert flow["flow"] == {
        "src": "10.9.0.2",
        "sport": 40000,
        "dst": "10.9.1.2",
        "dport": 8080,
        "proto": "tcp",
    }
    assert flow["expired"]["phase"] == "established"
    assert flow["expired"]["ts"] == pytest.approx(T0 + 2.502)
    assert [p["outcome"] for p in flow["late_packets"]] == ["dropped"]
    assert [e["event"] for e in flow["events"]] == [
        "new",
        "state",
        "state",
        "expire",
        "out_of_state",
    ]
    assert [a["flow"]["sport"] for a in doc["alive_at_end"]] == [40001]


def test_cli_readable_report_and_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idle, active = idle_then_late()
    path = write(tmp_path / "c.pcap", merged(idle, active))

    assert main(["replay", str(path), "--preset", "linux"]) == 0
    assert "No flow was expired, reset or black-holed." in capsys.readouterr().out

    policy_file = tmp_path / "p.toml"
    policy_file.write_text(SILENT)
    assert main(["replay", str(path), "--policy", str(policy_file), "--timeline"]) == 0
    out = capsys.readouterr().out
    assert "10.9.0.2:40000 > 10.9.1.2:8080" in out
    assert "forgotten silently (black hole)" in out
    assert "after 2.000s idle, by the established timer (2s): silent" in out
    assert "timeline:" in out and "SYN_RECV -> ESTABLISHED" in out


def test_cli_flow_selects_flows_affected_or_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idle, active = idle_then_late()
    path = write(tmp_path / "c.pcap", merged(idle, active))
    assert main(["replay", str(path), "--preset", "linux", "--flow", ":40001", "--json"]) == 0
    [flow] = json.loads(capsys.readouterr().out)["flows"]
    assert (flow["flow"]["sport"], flow["affected"]) == (40001, False)


def test_cli_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"\x00" * 64)
    assert main(["replay", str(bad), "--preset", "linux"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fwemu: ") and "bad.pcap" in err and err.count("\n") == 1
    assert main(["replay", str(bad), "--preset", "no-such-preset"]) == 2


def test_cli_warns_about_a_cut_capture_and_still_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    idle, active = idle_then_late()
    path = write(tmp_path / "c.pcap", merged(idle, active))
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["replay", str(path), "--preset", "linux"]) == 0
    captured = capsys.readouterr()
    assert "fwemu: warning:" in captured.err and "ends in the middle of" in captured.err
    assert captured.out.startswith("capture ")


def test_connections_a_limit_would_have_refused_are_reported_with_their_later_packets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pool of two ports: the third connection's SYN and all it sent after are refused or
    out of state, never taken for a connection open before the capture."""
    conversations = [
        Conversation(sport=40000 + i).handshake(0.1 * i).exchange(1.0) for i in range(3)
    ]
    path = write(tmp_path / "c.pcap", merged(*conversations))
    text = '[limits]\nports_per_destination = 2\non_exhausted = "reset"\n'
    report = run(path, text)

    [flow] = report.flows
    assert flow.flow.sport == 40002 and flow.opened is None
    [refusal] = flow.refused
    assert (refusal.limit, refusal.value, refusal.count, refusal.action) == (
        "ports_per_destination",
        2,
        2,
        "reset",
    )
    assert {p.outcome for p in flow.late} == {"dropped"}  # its SYN/ACK, ACKs and data: no flow
    assert report.summary.refusals == 1
    assert [info.flow.sport for info in report.alive] == [40000, 40001]

    policy_file = tmp_path / "p.toml"
    policy_file.write_text(text)
    assert main(["replay", str(path), "--policy", str(policy_file)]) == 0
    out = capsys.readouterr().out
    assert "1 new flow refused by a limit" in out
    assert "refused by a limit (ports_per_destination 2): reset" in out
    assert "ports_per_destination = 2 reached by client 10.9.0.2 to 10.9.1.2:8080" in out


# --- captures taken behind fwemu ----------------------------------------------------------

FWEMU = str(Path(sys.executable).with_name("fwemu"))  # the console script, as users run it


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FWEMU, "replay", *argv], capture_output=True, text=True, check=False, timeout=60
    )


def quick_then_late() -> Conversation:
    """Idle for 0.2 s, then data: within a 2 s timer, past it 100 times faster."""
    flow = Conversation().handshake(0)
    flow.client(0.2, "PA", b"late")
    return flow


def test_a_capture_of_a_sped_up_run_replays_with_its_speed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.pcap", merged(quick_then_late()))
    assert run(path).flows == ()

    report = run(path, speed=100)
    [flow] = report.flows
    assert flow.expired is not None
    assert flow.expired.ts - T0 == pytest.approx(0.002 + 2.0 / 100, abs=1e-6)
    assert flow.expired.timeout == pytest.approx(0.02)
    assert [p.outcome for p in flow.late] == ["dropped"]
    assert report.summary.speed == 100


def test_cli_speed_scales_the_policy_and_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "c.pcap", merged(quick_then_late()))
    policy_file = tmp_path / "p.toml"
    policy_file.write_text(SILENT)
    argv = [str(path), "--policy", str(policy_file), "--speed", "100"]

    done = cli(*argv, "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["summary"]["speed"] == 100
    [flow] = doc["flows"]
    assert flow["expired"]["ts"] == pytest.approx(T0 + 0.022)

    done = cli(*argv)
    assert "silent-2s (" in done.stdout and "every timer 100 times faster" in done.stdout
    done = cli(*argv[:-1], "0")
    assert done.returncode == 2 and "speed must be a number > 0, not '0'" in done.stderr


def test_the_rst_a_live_firewall_sent_to_a_late_packet_is_recognised_not_listed(
    tmp_path: Path,
) -> None:
    idle, active = idle_then_late()
    # Behind a live fwemu, the client's late data at +5 s got a RST, spoofed from the server,
    # its seq the late segment's ack (which is the server's next seq).
    answer = Conversation(client_seq=idle.client_seq, server_seq=idle.server_seq)
    answer.server(5.0005, "R")
    path = write(tmp_path / "c.pcap", merged(idle, active, answer))
    report = run(path, LATE_RESET)

    [flow] = report.flows
    [late] = flow.late
    assert (late.ts - T0, late.outcome) == (pytest.approx(5.0), "answered with a RST")
    assert [t - T0 for t in flow.echoes] == [pytest.approx(5.0005)]
    assert [e.kind for e in flow.events][-2:] == ["out_of_state", "reset"]

    policy_file = tmp_path / "p.toml"
    policy_file.write_text(LATE_RESET)
    out = cli(str(path), "--policy", str(policy_file), "--timeline").stdout
    assert "1 later packet in the capture:" in out
    assert "the capture shows the policy's own RST at" in out
    assert "[R] " not in out  # the RST itself is neither a late packet nor in the timeline


def test_the_rst_a_live_firewall_sent_to_a_refused_syn_is_recognised(tmp_path: Path) -> None:
    """Behind a live fwemu the third connection is refused: its SYN answered by a RST (seq 0,
    acknowledging the SYN), after which the client gives up."""
    conversations = [Conversation(sport=40000 + i).handshake(0.1 * i) for i in range(2)]
    refused = Conversation(sport=40002, server_seq=0)
    refused.client(0.2, "S")
    refused.server(0.2005, "RA")
    path = write(tmp_path / "c.pcap", merged(*conversations, refused))
    report = run(path, '[limits]\nports_per_destination = 2\non_exhausted = "reset"\n')

    [flow] = report.flows
    assert flow.flow.sport == 40002
    assert [r.limit for r in flow.refused] == ["ports_per_destination"]
    assert flow.late == ()
    assert [t - T0 for t in flow.echoes] == [pytest.approx(0.2005)]
    assert [e.kind for e in flow.events] == ["limit", "reset"]


def test_a_policy_that_rewrites_packets_is_replayed_without_rewriting(tmp_path: Path) -> None:
    """The capture holds the endpoints' own numbers: the ASA's sequence randomisation must not
    turn every later packet into an invalid one."""
    _, active = idle_then_late()
    capture = open_capture(write(tmp_path / "c.pcap", merged(active)))
    try:
        report = replay(capture, resolve_policy("cisco-asa"))
    finally:
        capture.close()
    assert report.flows == () and report.summary.flows == 1
    assert any("rewrites packets" in w for w in report.summary.warnings)


# --- UDP ----------------------------------------------------------------------------------


def dns_then_late(v6: bool = False) -> Datagrams:
    """A query answered at once, a second one 0.2 s later, then an answer 2 s after that: past
    the 1 s udp timer (the flow never became a stream: both within udp_stream_after)."""
    dns = Datagrams(v6=v6)
    dns.client(0.0)
    dns.server(0.01)
    dns.client(0.2)
    dns.server(2.2, b"late answer")
    return dns


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_late_udp_answer_after_the_udp_timer_is_dropped(tmp_path: Path, v6: bool) -> None:
    report = run(write(tmp_path / "c.pcap", merged(dns_then_late(v6))), UDP_SHORT)

    [flow] = report.flows
    assert (flow.flow.proto, flow.flow.sport, flow.flow.dport) == ("udp", 40000, 53)
    assert flow.affected
    assert flow.gone_at == pytest.approx(T0 + 1.2) and flow.gone_phase == "udp"
    [late] = flow.late
    assert (late.ts - T0, late.side, late.outcome, late.length) == (
        pytest.approx(2.2),
        "server",
        "dropped",
        len(b"late answer"),
    )
    assert late.reason == "no flow (expired)"
    assert (late.flags, late.seq, late.ack) == (None, None, None)
    server, client = (SERVER6, CLIENT6) if v6 else (SERVER4, CLIENT4)
    ends = f"[{server}]:53 > [{client}]:40000" if v6 else f"{server}:53 > {client}:40000"
    assert late.packet == f"udp {ends} len 11"
    assert report.summary.protocols == {"tcp": 0, "udp": 1}
    assert report.summary.tracked_packets == 4


def test_a_rejecting_firewall_answers_the_late_datagram_with_an_icmp_port_unreachable(
    tmp_path: Path,
) -> None:
    report = run(write(tmp_path / "c.pcap", merged(dns_then_late())), UDP_REJECT)

    [flow] = report.flows
    [late] = flow.late
    assert late.outcome == "answered with an ICMP port unreachable" and late.reset is None
    assert [e.kind for e in flow.events] == ["out_of_state", "unreachable"]
    [oos, unreachable] = [e.to_dict() for e in flow.events]
    assert (oos["action"], oos["side"]) == ("icmp-unreachable", "server")
    assert (unreachable["to"], unreachable["cause"]) == ("server", "out_of_state")


def test_udp_flows_become_streams_and_expire_by_the_stream_timer(tmp_path: Path) -> None:
    stream = Datagrams(sport=51820, dport=51820)  # WireGuard-like: both ways, every 0.4 s
    for i in range(5):
        stream.client(0.4 * i, b"keepalive")
        stream.server(0.4 * i + 0.01, b"keepalive")
    stream.server(5.0, b"handshake")  # the server side, 3.4 s after the last datagram
    path = write(tmp_path / "c.pcap", merged(stream))
    report = run(path, UDP_SHORT, select=lambda flow: flow.proto == "udp")

    [flow] = report.flows
    assert flow.opened == pytest.approx(T0)
    assert flow.expired is not None
    assert (flow.expired.state, flow.expired.phase, flow.expired.action) == (
        "STREAM",
        "udp_stream",
        "silent",
    )
    assert flow.expired.ts == pytest.approx(T0 + 1.61 + 3.0)
    assert [(p.side, p.outcome) for p in flow.late] == [("server", "dropped")]
    assert [e.kind for e in flow.events] == ["new", "state", "state", "expire", "out_of_state"]
    assert [e.to_dict()["state"] for e in flow.events[1:3]] == ["REPLIED", "STREAM"]


def test_a_client_datagram_after_expiry_opens_a_new_flow_unharmed(tmp_path: Path) -> None:
    """udp_from_client = "new" (the default, as Linux): the flow is forgotten, nothing is lost."""
    dns = Datagrams()
    dns.client(0.0)
    dns.server(0.01)
    dns.client(3.0)
    dns.server(3.01)
    path = write(tmp_path / "c.pcap", merged(dns))
    report = run(path, UDP_SHORT)
    assert report.flows == ()
    assert report.summary.protocols == {"tcp": 0, "udp": 2}
    assert [(i.flow.proto, i.state) for i in report.alive] == [("udp", "REPLIED")]

    [old, new] = run(path, UDP_SHORT, select=lambda flow: True).flows
    assert old.expired is not None and not old.affected
    [late] = old.late
    assert (late.side, late.outcome, late.reason) == (
        "client",
        "opened a new flow",
        "udp_from_client = new",
    )
    assert new.opened == pytest.approx(T0 + 3.0) and new.late == ()


def test_tcp_and_udp_flows_of_the_same_ends_are_kept_apart(tmp_path: Path) -> None:
    """DNS over both: a TCP connection from the UDP flow's port to the same server port."""
    tcp = Conversation(sport=40000, dport=53).handshake(0).exchange(0.1)
    tcp.client(5.0, "PA", b"late")  # past the established timer (2 s)
    udp = Datagrams(sport=40000, dport=53)
    for t in (0.0, 1.0, 2.0, 3.0, 4.0, 5.0):
        udp.client(t)
        udp.server(t + 0.01)
    text = '[timeouts]\nestablished = "2s"\nudp = "2s"\n'
    report = run(write(tmp_path / "c.pcap", merged(tcp, udp)), text)

    [flow] = report.flows
    assert flow.flow.proto == "tcp" and [p.outcome for p in flow.late] == ["dropped"]
    assert report.summary.protocols == {"tcp": 1, "udp": 1}
    assert [(i.flow.proto, i.state) for i in report.alive] == [("udp", "STREAM")]


def test_cli_reports_udp_flows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scapy.layers.inet import ICMP, IP

    ping = [(T0 + 0.5, bytes(IP(src=CLIENT4, dst=SERVER4) / ICMP()))]
    path = write(tmp_path / "c.pcap", merged(dns_then_late(), extra=ping))
    policy_file = tmp_path / "p.toml"
    policy_file.write_text(UDP_REJECT)

    assert main(["replay", str(path), "--policy", str(policy_file), "--timeline"]) == 0
    out = capsys.readouterr().out
    assert "4 packets tracked in 1 flow (1 UDP); skipped 0 not IP, 1 not TCP or UDP" in out
    assert (
        "udp 10.9.0.2:40000 > 10.9.1.2:53  rule default: late datagrams after its timer ran" in out
    )
    assert "its udp timer had run out at" in out
    assert (
        "from server udp 10.9.1.2:53 > 10.9.0.2:40000 len 11: answered with an ICMP port "
        "unreachable (no flow (expired))"
    ) in out
    assert "ICMP port unreachable to server (out_of_state)" in out  # the timeline's event

    assert main(["replay", str(path), "--policy", str(policy_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"]["tracked_packets"] == 4
    assert doc["summary"]["skipped"] == {"not_ip": 0, "other_protocol": 1}
    [flow] = doc["flows"]
    assert flow["flow"]["proto"] == "udp"
    [late] = flow["late_packets"]
    assert (late["flags"], late["seq"], late["ack"], late["len"]) == (None, None, None, 11)
