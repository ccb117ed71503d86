"""The example policies in docs/examples/: each loads and passes `fwemu check`, keeps its product's
defaults (it is a preset plus what an admin configured), and sets what its comments say."""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from fwemu.cli import main
from fwemu.policy import Policy, load_policy, load_preset
from fwemu.policy.model import (
    Dcd,
    FloodAction,
    FloodCount,
    LimitAction,
    Limits,
    Normalise,
    SackBlocks,
    SynFlood,
    SynProxy,
)

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
NAMES = sorted(path.stem for path in EXAMPLES.glob("*.toml"))
INTERCEPT = LimitAction.INTERCEPT
COOKIES = FloodAction.SYN_COOKIES
DESTINATION = FloodCount.DESTINATION

# Each example and the preset it adds to; what it changes is checked by the tests further down.
PRESET_OF = {
    "cisco-asa-intercept": "cisco-asa",
    "cisco-asa-limits": "cisco-asa",
    "cisco-asa-randomisation": "cisco-asa",
    "fortigate-dos": "fortigate",
    "fortigate-dos-periodical": "fortigate",
    "linux-synproxy": "linux",
    "panos-red": "panos",
    "panos-syn-cookies": "panos",
}


def example(name: str) -> Policy:
    return load_policy(EXAMPLES / f"{name}.toml")


def test_every_example_names_its_preset() -> None:
    assert sorted(PRESET_OF) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_under_its_own_name_with_sources(name: str) -> None:
    policy = example(name)
    assert policy.name == name
    assert policy.description
    assert policy.sources
    assert all(s.startswith(("https://", "http://")) for s in policy.sources)


@pytest.mark.parametrize("name", NAMES)
def test_example_passes_fwemu_check_beside_its_preset(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(EXAMPLES / f"{name}.toml"), PRESET_OF[name]]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", NAMES)
def test_example_keeps_its_presets_timers_and_expiry(name: str) -> None:
    """Written out in full, so they can drift from the preset: they must not."""
    mine, preset = example(name), load_preset(PRESET_OF[name])
    for profile in mine.profiles:
        assert profile.timeouts == preset.default.timeouts
        assert profile.on_expire == preset.default.on_expire
    assert mine.limits == preset.limits


@pytest.mark.parametrize("name", [n for n in NAMES if n != "linux-synproxy"])
def test_example_keeps_its_presets_out_of_state_handling(name: str) -> None:
    assert example(name).default.out_of_state == load_preset(PRESET_OF[name]).default.out_of_state


def test_every_example_of_a_syn_defence_says_it_rewrites() -> None:
    """Only the plain limits and rate-only defences leave packets as they are."""
    rewriting = {name for name in NAMES if example(name).rewrites}
    assert rewriting == {
        "cisco-asa-intercept",
        "cisco-asa-limits",
        "cisco-asa-randomisation",
        "linux-synproxy",
        "panos-syn-cookies",
    }


# --- what each one sets ---------------------------------------------------------------------


def test_the_asa_limits_example_is_the_preset_plus_one_class() -> None:
    """conn-max 5000, per-client-max 100, the embryonic limits with TCP Intercept, and DCD's
    defaults on one class."""
    policy, preset = example("cisco-asa-limits"), load_preset("cisco-asa")
    assert policy.default == preset.default
    (rule,) = policy.rules
    assert rule.profile.limits == Limits(
        max_flows=5000,
        per_client=100,
        embryonic=1000,
        per_client_embryonic=20,
        on_embryonic=INTERCEPT,
    )
    assert rule.profile.dcd == Dcd(interval=15.0, retries=5)
    plain = dataclasses.replace(rule.profile, name="default", limits=Limits(), dcd=None)
    assert plain == preset.default


def test_the_asa_intercept_example_answers_past_an_embryonic_limit() -> None:
    policy, preset = example("cisco-asa-intercept"), load_preset("cisco-asa")
    assert policy.default == preset.default
    (rule,) = policy.rules
    assert rule.profile.limits == Limits(embryonic=200, on_embryonic=INTERCEPT)
    assert rule.profile.syn_proxy == SynProxy(mss=1460, wscale=7, sack_perm=True)
    assert not rule.profile.syn_flood.active  # TCP Intercept counts handshakes, not a rate


def test_the_asa_randomisation_example_breaks_sack_but_not_bgp() -> None:
    policy = example("cisco-asa-randomisation")
    assert policy.default.normalise == Normalise(
        isn_randomisation=True, sack_blocks=SackBlocks.KEEP, mss=1380
    )
    (bgp,) = policy.rules  # merged over the policy's: only the randomisation is off
    assert bgp.profile.normalise == Normalise(sack_blocks=SackBlocks.KEEP, mss=1380)


def test_the_asa_presets_normaliser_is_the_randomisation_example() -> None:
    """The ASA's normaliser defaults are the preset's, and exactly what the example sets."""
    example_table = tomllib.loads((EXAMPLES / "cisco-asa-randomisation.toml").read_text())
    preset = load_preset("cisco-asa").default.normalise
    assert example_table["normalise"] == {
        "isn_randomisation": True,
        "sack_blocks": "keep",
        "mss": 1380,
    }
    assert example("cisco-asa-randomisation").default.normalise == preset


def test_panos_syn_cookies_answer_every_syn_from_the_first() -> None:
    """Activate 0 is PAN-OS's default for SYN Cookies; the zone counts all its SYNs together."""
    policy = example("panos-syn-cookies")
    assert policy.syn_flood == SynFlood(alarm=10000, activate=0, action=COOKIES)
    assert policy.default.syn_proxy == SynProxy()
    assert policy.rules == ()


def test_panos_red_drops_half_the_syns_halfway_to_maximum() -> None:
    """Activate 10,000 is PAN-OS's default for Random Early Drop; the drop probability rises
    linearly to 100 % at maximum."""
    flood = example("panos-red").syn_flood
    assert flood.action == FloodAction.RANDOM_EARLY_DROP and flood.count == FloodCount.TOTAL
    assert flood.activate == 10000
    assert flood.alarm is not None and flood.maximum is not None
    assert flood.alarm <= flood.activate < flood.maximum
    assert (25000 - flood.activate) / (flood.maximum - flood.activate) == 0.5


@pytest.mark.parametrize(
    ("name", "action"),
    [("fortigate-dos", FloodAction.BLOCK), ("fortigate-dos-periodical", FloodAction.PERIODICAL)],
)
def test_fortigate_tcp_syn_flood_counts_per_destination(name: str, action: FloodAction) -> None:
    """threshold 2000, the default; block under anomaly-mode continuous or periodical."""
    policy = example(name)
    assert not policy.syn_flood.active  # a DoS policy covers its own traffic only
    (rule,) = policy.rules
    assert rule.profile.syn_flood == SynFlood(
        alarm=2000, activate=2000, action=action, count=DESTINATION
    )


def test_linux_synproxy_answers_the_web_servers_syns_with_its_options() -> None:
    """--sack-perm --wscale 7 --mss 1460 (no timestamps: not emulated), tcp_loose off."""
    policy, preset = example("linux-synproxy"), load_preset("linux")
    assert policy.default.syn_proxy == SynProxy(mss=1460, wscale=7, sack_perm=True)
    assert policy.default.out_of_state == dataclasses.replace(
        preset.default.out_of_state, pickup=False
    )
    (web,) = policy.rules
    assert web.profile.syn_flood == SynFlood(activate=0, action=COOKIES)
    assert not policy.syn_flood.active  # only the rule's SYNs go to SYNPROXY


def test_the_presets_readme_names_every_example() -> None:
    readme = resources.files("fwemu.presets").joinpath("README.md").read_text()
    assert [name for name in NAMES if f"`{name}`" not in readme] == []
