"""The shipped presets: each loads, and each says what its product does by default."""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import dataclass
from importlib import resources

import pytest

from fwemu.policy import (
    PHASE_STATES,
    ExpireAction,
    OutOfStateAction,
    Phase,
    Policy,
    load_preset,
    preset_names,
)
from fwemu.policy.model import TIMEOUT_CAPS, Limits, NatPool, UdpAction

PRESETS = (
    "linux",
    "pf",
    "cisco-asa",
    "panos",
    "fortigate",
    "checkpoint",
    "juniper-srx",
    "aws-nlb",
    "aws-nat-gateway",
    "azure-lb",
    "azure-lb-tcp-reset",
    "azure-nat-gateway",
    "gcp-cloud-nat",
    "kube-proxy",
)

SILENT = ExpireAction.SILENT
RESET_BOTH = ExpireAction.RESET_BOTH
DROP = OutOfStateAction.DROP
RESET = OutOfStateAction.RESET


def _file(name: str) -> str:
    return resources.files("fwemu.presets").joinpath(name).read_text(encoding="utf-8")


def test_the_presets_are_the_fourteen_products() -> None:
    assert sorted(preset_names()) == sorted(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_under_its_own_name_with_sources(name: str) -> None:
    policy = load_preset(name)
    assert policy.name == name
    assert policy.description
    assert policy.sources
    assert all(s.startswith(("https://", "http://")) for s in policy.sources)


@dataclass(frozen=True, slots=True)
class Headline:
    """One preset's defining numbers and actions, as the model reports them."""

    syn_sent: float | None
    established: float | None
    fin_wait: float | None
    last_ack: float | None
    time_wait: float | None
    close: float | None
    on_established_expiry: ExpireAction
    late_from_client: OutOfStateAction
    late_from_server: OutOfStateAction
    pickup: bool

    @classmethod
    def of(cls, policy: Policy) -> Headline:
        t, oos = policy.default.timeouts, policy.default.out_of_state
        return cls(
            t.syn_sent,
            t.established,
            t.fin_wait,
            t.last_ack,
            t.time_wait,
            t.close,
            policy.default.on_expire.established,
            oos.for_side(True),
            oos.for_side(False),
            oos.pickup,
        )


# fmt: off
HEADLINES = {
    # columns: syn_sent, established, fin_wait, last_ack, time_wait, close (seconds);
    # expiry action in ESTABLISHED; late packet from the client, from the server; pickup
    "linux":              Headline(120, 432000,  120,  30, 120,  10, SILENT, DROP, DROP, True),
    "kube-proxy":         Headline(120,  86400,  120,  30, 120,  10, SILENT, DROP, DROP, True),
    "pf":                 Headline(120,  86400,  900,  45,  90,  90, SILENT, DROP, DROP, False),
    "cisco-asa":          Headline( 30,   3600,  600, 600,   0,   0, SILENT, DROP, DROP, False),
    "panos":              Headline(  5,   3600,  120,  15,  15,  15, SILENT, DROP, DROP, False),
    "fortigate":          Headline( 10,   3600,  120, 120,   1,   5, SILENT, DROP, DROP, False),
    "checkpoint":         Headline( 25,   3600, 3600,   5,   5,   5, SILENT, DROP, DROP, False),
    "juniper-srx":        Headline( 20,   1800, 1800,  10,  10,  10, SILENT, DROP, DROP, False),
    "aws-nlb":            Headline(350,    350,  350, 350, 350, 350, SILENT, RESET, RESET, False),
    "aws-nat-gateway":    Headline(350,    350,  350, 350, 350, 350, SILENT, RESET, DROP, False),
    "azure-lb":           Headline(240,    240,  240, 240, 240, 240, SILENT, DROP, DROP, False),
    "azure-lb-tcp-reset": Headline(240,    240,  240, 240, 240, 240, RESET_BOTH, DROP, DROP, False),
    "azure-nat-gateway":  Headline( 30,    240,  240,  65,  65,  16, SILENT, RESET, RESET, False),
    "gcp-cloud-nat":      Headline( 30,   1200,   30,  30,  30,  30, SILENT, DROP, DROP, False),
}
# fmt: on


def test_every_preset_has_a_headline_row() -> None:
    assert sorted(HEADLINES) == sorted(PRESETS)


@pytest.mark.parametrize(("name", "expected"), HEADLINES.items(), ids=list(HEADLINES))
def test_headline_numbers_and_actions(name: str, expected: Headline) -> None:
    assert Headline.of(load_preset(name)) == expected


@pytest.mark.parametrize(("name", "syn_recv", "close_wait"), [
    ("linux", 60, 60),
    ("kube-proxy", 60, 3600),  # kube-proxy's 1 h CLOSE_WAIT, Linux's own SYN_RECV
    ("pf", 30, 900),  # tcp.opening after the SYN/ACK; tcp.closing for the whole half-close
    ("panos", 10, 120),  # TCP Handshake after the SYN/ACK
])  # fmt: skip
def test_states_that_differ_within_a_phase(name: str, syn_recv: float, close_wait: float) -> None:
    timeouts = load_preset(name).default.timeouts
    assert (timeouts.syn_recv, timeouts.close_wait) == (syn_recv, close_wait)


@pytest.mark.parametrize("name", PRESETS)
def test_only_azure_lb_tcp_reset_sends_anything_at_expiry(name: str) -> None:
    on_expire = load_preset(name).default.on_expire
    resetting = {p for p in Phase if on_expire.for_phase(p) is not SILENT}
    assert resetting == ({Phase.ESTABLISHED} if name == "azure-lb-tcp-reset" else set())


# Sequence/ACK window checks and the max_retrans, unacknowledged caps (seconds, None: no cap). Only
# Linux has the caps; the window check is off where the product documents none (the cloud) or
# defaults to logging only (Check Point).
# fmt: off
WINDOWS = {
    "linux":              (True,  300, 300),
    "kube-proxy":         (True,  300, 300),
    "pf":                 (True,  None, None),
    "cisco-asa":          (True,  None, None),
    "panos":              (True,  None, None),
    "fortigate":          (True,  None, None),
    "checkpoint":         (False, None, None),
    "juniper-srx":        (True,  None, None),
    "aws-nlb":            (False, None, None),
    "aws-nat-gateway":    (False, None, None),
    "azure-lb":           (False, None, None),
    "azure-lb-tcp-reset": (False, None, None),
    "azure-nat-gateway":  (False, None, None),
    "gcp-cloud-nat":      (False, None, None),
}
# fmt: on


def test_every_preset_has_a_windows_row() -> None:
    assert sorted(WINDOWS) == sorted(PRESETS)


@pytest.mark.parametrize(("name", "expected"), WINDOWS.items(), ids=list(WINDOWS))
def test_window_check_and_caps(
    name: str, expected: tuple[bool, float | None, float | None]
) -> None:
    profile = load_preset(name).default
    timeouts = profile.timeouts
    assert (profile.out_of_state.window_check, timeouts.max_retrans, timeouts.unacknowledged) == (
        expected
    )


# UDP: a flow's timer, a stream's, the grace before a flow may become one (seconds), and what a
# late datagram from the client, from the server meets. One timer where the product has one (no
# grace); Linux's late reply is a NEW entry, every other product drops it.
NEW, UDP_DROP = UdpAction.NEW, UdpAction.DROP
# fmt: off
UDP = {
    "linux":              (30, 120, 2, NEW, NEW),
    "kube-proxy":         (30, 120, 2, NEW, NEW),
    "pf":                 (30,  60, 0, NEW, UDP_DROP),
    "cisco-asa":          (120, 120, 0, NEW, UDP_DROP),
    "panos":              (30,  30, 0, NEW, UDP_DROP),
    "fortigate":          (180, 180, 0, NEW, UDP_DROP),
    "checkpoint":         (40,  40, 0, NEW, UDP_DROP),
    "juniper-srx":        (60,  60, 0, NEW, UDP_DROP),
    "aws-nlb":            (120, 120, 0, NEW, UDP_DROP),
    "aws-nat-gateway":    (350, 350, 0, NEW, UDP_DROP),
    "azure-lb":           (240, 240, 0, NEW, UDP_DROP),
    "azure-lb-tcp-reset": (240, 240, 0, NEW, UDP_DROP),
    "azure-nat-gateway":  (240, 240, 0, NEW, UDP_DROP),
    "gcp-cloud-nat":      (30,  30, 0, NEW, UDP_DROP),
}
# fmt: on
UDP_TIMEOUTS = ("udp", "udp_stream", "udp_stream_after")
UDP_OUT_OF_STATE = ("udp_from_client", "udp_from_server")


def test_every_preset_has_a_udp_row() -> None:
    assert sorted(UDP) == sorted(PRESETS)


@pytest.mark.parametrize(("name", "expected"), UDP.items(), ids=list(UDP))
def test_udp_timers_and_late_datagrams(
    name: str, expected: tuple[float, float, float, UdpAction, UdpAction]
) -> None:
    profile = load_preset(name).default
    timeouts, oos = profile.timeouts, profile.out_of_state
    assert (
        *(getattr(timeouts, key) for key in UDP_TIMEOUTS),
        oos.udp_from_client,
        oos.udp_from_server,
    ) == expected


@pytest.mark.parametrize("name", PRESETS)
def test_every_udp_key_is_set_in_the_file_with_a_comment(name: str) -> None:
    """Each product says what it does with UDP, rather than inheriting Linux's defaults."""
    text = _file(f"{name}.toml")
    document = tomllib.loads(text)
    assert [k for k in UDP_TIMEOUTS if k not in document["timeouts"]] == []
    assert [k for k in UDP_OUT_OF_STATE if k not in document["out_of_state"]] == []
    lines = [line for line in text.splitlines() if line.startswith(UDP_OUT_OF_STATE)]
    assert [line for line in lines if "#" not in line] == []


# What each product holds at once by default: its table size, and its NAT ports per destination.
# The rest set none: unlimited by default (the ASA), or not documented.
SHARED = NatPool.SHARED
# fmt: off
LIMITS = {
    "linux":              Limits(max_flows=262144, early_drop=True),
    "kube-proxy":         Limits(max_flows=131072, early_drop=True),
    "aws-nat-gateway":    Limits(ports_per_destination=55000, nat_pool=SHARED),
    "azure-lb":           Limits(ports_per_destination=1024),
    "azure-lb-tcp-reset": Limits(ports_per_destination=1024),
    "azure-nat-gateway":  Limits(ports_per_destination=50000, nat_pool=SHARED),
    "gcp-cloud-nat":      Limits(ports_per_destination=64),
}
# fmt: on


@pytest.mark.parametrize("name", PRESETS)
def test_limits(name: str) -> None:
    assert load_preset(name).limits == LIMITS.get(name, Limits())


@pytest.mark.parametrize("name", sorted(LIMITS))
def test_what_happens_at_a_limit_is_set_in_the_file(name: str) -> None:
    """A preset with a limit states its action (and pool) rather than take fwemu's default; a NAT
    says what its port_reuse is, even where it leaves it at 0."""
    text = _file(f"{name}.toml")
    limits = tomllib.loads(text)["limits"]
    if "max_flows" in limits:
        assert {"on_full", "early_drop"} <= set(limits)
    else:
        assert {"on_exhausted", "nat_pool"} <= set(limits)
        assert "# port_reuse" in text


@pytest.mark.parametrize("name", PRESETS)
def test_no_preset_has_an_absolute_lifetime_or_dcd(name: str) -> None:
    profile = load_preset(name).default
    assert (profile.timeouts.lifetime, profile.dcd) == (None, None)


def test_cisco_asa_says_dcd_is_off_and_there_is_no_lifetime() -> None:
    timeouts = tomllib.loads(_file("cisco-asa.toml"))["timeouts"]
    assert (timeouts["dcd"], timeouts["lifetime"]) == (False, "never")


# --- SYN floods: every product ships its defences off, and each file says so ---------------------


@pytest.mark.parametrize("name", PRESETS)
def test_no_preset_turns_on_a_syn_flood_defence_and_only_the_asa_rewrites(name: str) -> None:
    """PAN-OS, FortiGate, Check Point and the SRX need a profile, policy or screen; Linux and pf a
    rule; the ASA's TCP Intercept waits behind unlimited embryonic limits. Only the ASA rewrites
    packets out of the box: its sequence randomisation and MSS clamp are on by default."""
    policy = load_preset(name)
    assert not policy.syn_flood.active
    assert [p.name for p in policy.profiles if p.syn_flood.active] == []
    assert policy.rewrites == (name == "cisco-asa")


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_says_what_it_does_against_syn_floods(name: str) -> None:
    assert "\n# SYN floods: " in _file(f"{name}.toml")


def test_aws_nat_gateway_remembers_a_flow_past_a_default_keepalive_probe() -> None:
    """Linux's tcp_keepalive_time (7200 s) after expiry must still be known as the client's late
    packet, or the documented RST to the inside never shows."""
    oos = load_preset("aws-nat-gateway").default.out_of_state
    assert oos.remember >= 7200
    assert oos.for_side(None) is DROP  # a packet from no remembered flow: side unknown


# --- the files themselves: every timer explicit and sourced ---------------------------------

_ENTRY = re.compile(r"^(\w+)\s*=")


@pytest.mark.parametrize("name", PRESETS)
def test_every_state_timer_is_set_in_the_file(name: str) -> None:
    """A preset never inherits Linux's defaults by leaving a timer out."""
    timeouts = tomllib.loads(_file(f"{name}.toml"))["timeouts"]
    missing = [
        state
        for phase, states in PHASE_STATES.items()
        for state in states
        if state not in timeouts and phase.value not in timeouts
    ]
    assert missing == []


@pytest.mark.parametrize("name", PRESETS)
def test_window_check_and_caps_are_set_in_the_file(name: str) -> None:
    """Each product says what it does here, rather than inheriting Linux's defaults."""
    document = tomllib.loads(_file(f"{name}.toml"))
    assert [cap for cap in TIMEOUT_CAPS if cap not in document["timeouts"]] == []
    assert "window_check" in document["out_of_state"]


@pytest.mark.parametrize("name", PRESETS)
def test_window_check_carries_a_comment(name: str) -> None:
    lines = _file(f"{name}.toml").splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("window_check"))
    assert "#" in lines[index] or lines[index - 1].startswith("#")


@pytest.mark.parametrize(
    ("name", "table"),
    [*((n, "[timeouts]") for n in PRESETS), *((n, "[limits]") for n in sorted(LIMITS))],
)
def test_every_timer_and_limit_carries_a_comment(name: str, table: str) -> None:
    """Each `[timeouts]` and `[limits]` entry has a comment on its line or right above it (its
    source)."""
    lines = _file(f"{name}.toml").splitlines()
    start = lines.index(table)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    uncommented = [
        line
        for above, line in itertools.pairwise(lines[start:end])
        if _ENTRY.match(line) and "#" not in line and not above.startswith("#")
    ]
    assert uncommented == []


def test_readme_has_a_row_per_preset() -> None:
    readme = _file("README.md")
    assert [n for n in PRESETS if f"| `{n}` |" not in readme] == []
