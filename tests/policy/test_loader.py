"""The loader: defaults, shortcuts, rule merging, matches, and where problems are reported."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from fwemu.policy import (
    AnswerRate,
    ExpireAction,
    Match,
    OnExpire,
    OutOfState,
    OutOfStateAction,
    Phase,
    Policy,
    PolicyError,
    PortRange,
    Problem,
    Timeouts,
    load_policy,
    loads_policy,
    preset_names,
)
from fwemu.policy.model import Dcd
from fwemu.policy.reading import KeyScanner

ASA = """\
[policy]
name = "asa-like"
description = "an ASA-like policy"
sources = ["https://example.com/asa"]

[timeouts]
embryonic = "30s"
established = "1h"
half_closed = "10m"
close_wait = "1m"        # exact names win over the shortcut above
closing = "45s"

[on_expire]
default = "silent"
established = "reset-both"

[out_of_state]
action = "drop"
from_client = "reset"
remember = "5m"

[[rule]]
name = "postgres"
match = { dst = ["10.0.2.0/24", "2001:db8::/32"], dst_port = 5432 }
timeouts = { established = "5m", half_closed = "2m" }
on_expire = { default = "reset-server", time_wait = "silent" }
out_of_state = { action = "reset", pickup = true }

[[rule]]
name = "ephemeral"
match = { src_port = ["32768-60999", 1024] }
timeouts = { time_wait = "never" }

[[rule]]
name = "rest"
match = {}
"""


def problems(text: str) -> list[str]:
    """The problem lines for `text` loaded as "p.toml"."""
    with pytest.raises(PolicyError) as caught:
        loads_policy(text, "p.toml")
    return str(caught.value).splitlines()


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


# --- defaults ---------------------------------------------------------------------------------


def test_empty_policy_is_linux_defaults() -> None:
    policy = loads_policy("", "plain.toml")
    assert policy == Policy(
        name="plain",
        default=policy.default,
        origin="plain.toml",
    )
    assert policy.default.name == "default"
    assert policy.default.timeouts == Timeouts()
    assert policy.default.timeouts.established == 432000  # 5 days, nf_conntrack's default
    assert policy.default.on_expire == OnExpire()
    assert policy.default.out_of_state == OutOfState()


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-firewall.toml"
    path.write_text('[timeouts]\nestablished = "1h"\n')
    policy = load_policy(path)
    assert (policy.name, policy.origin) == ("my-firewall", str(path))
    assert loads_policy("", "x.toml", default_name="preset-name").name == "preset-name"


def test_metadata() -> None:
    policy = loads_policy(ASA, "asa.toml")
    assert policy.name == "asa-like"
    assert policy.description == "an ASA-like policy"
    assert policy.sources == ("https://example.com/asa",)


# --- the policy's own tables --------------------------------------------------------------------


def test_shortcuts_and_exact_names() -> None:
    timeouts = loads_policy(ASA).default.timeouts
    assert timeouts == Timeouts(
        syn_sent=30,
        syn_recv=30,
        established=3600,
        fin_wait=600,
        close_wait=60,
        last_ack=45,
        time_wait=120,  # not given: Linux's default
        close=10,
    )


def test_exact_name_wins_whatever_the_order() -> None:
    text = '[timeouts]\nsyn_recv = "5s"\nembryonic = "30s"\n'
    timeouts = loads_policy(text).default.timeouts
    assert (timeouts.syn_sent, timeouts.syn_recv) == (30, 5)


def test_never_and_zero() -> None:
    timeouts = loads_policy('[timeouts]\nestablished = "never"\ntime_wait = 0\n').default.timeouts
    assert (timeouts.established, timeouts.time_wait) == (None, 0)


def test_on_expire_default_fills_unnamed_phases() -> None:
    on_expire = loads_policy('[on_expire]\ndefault = "reset-both"\nclose = "silent"\n').default
    assert on_expire.on_expire == OnExpire(
        embryonic=ExpireAction.RESET_BOTH,
        established=ExpireAction.RESET_BOTH,
        half_closed=ExpireAction.RESET_BOTH,
        closing=ExpireAction.RESET_BOTH,
        time_wait=ExpireAction.RESET_BOTH,
        close=ExpireAction.SILENT,
        lifetime=ExpireAction.RESET_BOTH,  # an expiry too, though not a phase
    )


def test_lifetime_and_dcd() -> None:
    policy = loads_policy(
        '[timeouts]\nlifetime = "4h"\ndcd = { retries = 2 }\n'
        '[[rule]]\nname = "db"\nmatch = {}\ntimeouts = { dcd = false }\n'
    )
    assert policy.default.timeouts.lifetime == 14400
    assert policy.default.dcd == Dcd(15.0, 2)  # the ASA's interval
    assert policy.rules[0].profile.dcd is None
    assert policy.rules[0].profile.timeouts.lifetime == 14400  # inherited, as timers are
    assert policy.scaled(10).default.dcd == Dcd(1.5, 2)


def test_out_of_state() -> None:
    oos = loads_policy(ASA).default.out_of_state
    assert oos == OutOfState(
        action=OutOfStateAction.DROP, from_client=OutOfStateAction.RESET, remember=300
    )
    assert oos.for_side(True) is OutOfStateAction.RESET
    assert oos.for_side(False) is OutOfStateAction.DROP


def test_the_answer_rate_is_read_from_the_top_level_out_of_state() -> None:
    assert loads_policy("").answer_rate == AnswerRate(per_source=100, total=1000)
    policy = loads_policy("[out_of_state]\naction = 'reset'\nrate_per_source = 5\n")
    assert policy.answer_rate == AnswerRate(per_source=5, total=1000)
    assert policy.default.out_of_state.action is OutOfStateAction.RESET


# --- rules --------------------------------------------------------------------------------------


def test_rule_profile_is_merged_over_the_default() -> None:
    policy = loads_policy(ASA)
    postgres = policy.rules[0].profile
    assert postgres.name == "postgres"
    assert postgres.timeouts == dataclasses.replace(
        policy.default.timeouts, established=300, fin_wait=120, close_wait=120
    )
    # the rule's own default covers every phase it does not name, even ones the policy named
    assert postgres.on_expire.for_phase(Phase.ESTABLISHED) is ExpireAction.RESET_SERVER
    assert postgres.on_expire.for_phase(Phase.TIME_WAIT) is ExpireAction.SILENT
    assert postgres.on_expire.for_phase(Phase.CLOSE) is ExpireAction.RESET_SERVER
    # only the keys the rule gives override the policy's out_of_state
    assert postgres.out_of_state == dataclasses.replace(
        policy.default.out_of_state, action=OutOfStateAction.RESET, pickup=True
    )


def test_rule_without_tables_inherits_everything() -> None:
    policy = loads_policy(ASA)
    rest = policy.rules[2].profile
    assert rest == dataclasses.replace(policy.default, name="rest")
    assert policy.rules[2].match == Match()


def test_rule_inherits_on_expire_without_a_default() -> None:
    text = '[on_expire]\nestablished = "reset-both"\n[[rule]]\nname = "r"\nmatch = {}\n'
    text += 'on_expire = { close = "reset-client" }\n'
    on_expire = loads_policy(text).rules[0].profile.on_expire
    assert on_expire == OnExpire(
        established=ExpireAction.RESET_BOTH, close=ExpireAction.RESET_CLIENT
    )


def test_match_parsing() -> None:
    policy = loads_policy(ASA)
    assert policy.rules[0].match == Match(
        dst=(ipaddress.ip_network("10.0.2.0/24"), ipaddress.ip_network("2001:db8::/32")),
        dst_port=(PortRange(5432, 5432),),
    )
    assert policy.rules[1].match == Match(src_port=(PortRange(32768, 60999), PortRange(1024, 1024)))


def test_bare_address_is_a_host_network() -> None:
    text = '[[rule]]\nname = "h"\nmatch = { src = "192.0.2.7", dst = "::1" }\n'
    match = loads_policy(text).rules[0].match
    assert [str(n) for n in (*match.src, *match.dst)] == ["192.0.2.7/32", "::1/128"]


@pytest.mark.parametrize(
    ("src", "sport", "dst", "dport", "profile"),
    [
        ("192.0.2.1", 40000, "10.0.2.9", 5432, "postgres"),
        ("192.0.2.1", 40000, "2001:db8::5", 5432, "postgres"),
        ("192.0.2.1", 40000, "10.0.3.9", 5432, "ephemeral"),  # outside the /24
        ("192.0.2.1", 1024, "10.0.2.9", 5433, "ephemeral"),
        ("192.0.2.1", 22, "10.0.2.9", 22, "rest"),
    ],
)
def test_first_matching_rule_wins(src: str, sport: int, dst: str, dport: int, profile: str) -> None:
    assert loads_policy(ASA).profile_for(ip(src), sport, ip(dst), dport).name == profile


def test_profiles_are_rules_then_default() -> None:
    names = [p.name for p in loads_policy(ASA).profiles]
    assert names == ["postgres", "ephemeral", "rest", "default"]


def test_scaled() -> None:
    policy = loads_policy(ASA)
    fast = policy.scaled(10)
    assert fast.default.timeouts.established == 360
    assert fast.default.out_of_state.remember == 30
    assert fast.rules[0].profile.timeouts.established == 30
    assert fast.rules[1].profile.timeouts.time_wait is None  # "never" stays never
    assert fast.rules[0].match == policy.rules[0].match
    assert policy.scaled(1) is policy


# --- problems and where they are --------------------------------------------------------------


def test_problem_format() -> None:
    problem = Problem("asa.toml", "timeouts.half_closd", "unknown key", 7, "did you mean 'x'?")
    assert str(problem) == "asa.toml:7: timeouts.half_closd: unknown key (did you mean 'x'?)"
    assert str(Problem("nope.toml", "", "cannot read: gone")) == "nope.toml: cannot read: gone"


def test_error_lists_every_problem() -> None:
    with pytest.raises(PolicyError) as caught:
        loads_policy('[timeouts]\nestablished = "1x"\nclose = -1\n', "p.toml")
    assert [(p.path, p.line) for p in caught.value.problems] == [
        ("timeouts.established", 2),
        ("timeouts.close", 3),
    ]


def test_missing_file() -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy("nope.toml")
    assert str(caught.value) == "nope.toml: cannot read: No such file or directory"


def test_directory_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r": cannot read: Is a directory$"):
        load_policy(tmp_path)
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe[timeouts]\n")
    with pytest.raises(PolicyError, match=r"b\.toml: cannot read: not UTF-8 text$"):
        load_policy(binary)


def test_endless_and_huge_files(tmp_path: Path) -> None:
    """A wrong path (a device, a capture) fails at once, without filling memory."""
    with pytest.raises(PolicyError) as caught:
        load_policy("/dev/zero")
    assert str(caught.value) == "/dev/zero: cannot read: larger than 1 MiB"
    big = tmp_path / "big.toml"
    big.write_text("#" * (1 << 20) + "\n")
    with pytest.raises(PolicyError, match=r"big\.toml: cannot read: larger than 1 MiB$"):
        load_policy(big)


def test_long_keys_are_shortened_and_control_characters_escaped() -> None:
    assert problems(f'[timeouts]\n{"x" * 5000} = 1\n"\\u0007\\"\\U0010fffd" = 2\n') == [
        f'p.toml:2: timeouts."{"x" * 37}...": unknown key',
        'p.toml: timeouts."\\u0007\\"\\U0010fffd": unknown key',
    ]


def test_lines_of_dotted_keys_and_sub_tables() -> None:
    text = """\
timeouts.established = "1h"
timeouts.clos = "1s"

[[rule]]
name = "a"
match.dst_port = 0

[[rule]]
name = "b"

[rule.match]
dst_port = "x"

[rule.timeouts]
time_wait = "2q"
"""
    assert problems(text) == [
        "p.toml:2: timeouts.clos: unknown key (did you mean 'close'?)",
        "p.toml:12: rule[2].match.dst_port: expected a port or a range like \"8000-8100\", got 'x'",
        "p.toml:15: rule[2].timeouts.time_wait: unknown unit 'q' in '2q' (use units d h m s ms, "
        'largest first, like "90s", "1h30m" or "250ms")',
    ]


def test_lines_inside_inline_and_multiline_values() -> None:
    text = """\
rule = [
    { name = "a", match = {} },
    { name = "a", match = { dst = "10.0.0.1/8" } },
]

[policy]
description = '''
established = this is text, not a key
'''
sources = [
    "https://a.example",  # a comment with = and [brackets]
    7,
]
"""
    assert problems(text) == [
        "p.toml:3: rule[2].name: duplicate rule name 'a' (rule[1] has it too)",
        "p.toml:3: rule[2].match.dst: '10.0.0.1/8' has host bits set (did you mean '10.0.0.0/8'?)",
        "p.toml:7: policy.description: non-printable character U+000A in "
        "'established = this is text, not a ke... (use one line of printable text)",
        "p.toml:12: policy.sources[2]: expected a string, got an integer",
    ]


def test_quoted_keys_are_found_and_shown_quoted() -> None:
    assert problems('[timeouts]\n"half closed" = "1m"\n') == [
        "p.toml:2: timeouts.\"half closed\": unknown key (did you mean 'half_closed'?)"
    ]


def test_on_expire_rejects_state_names_with_the_phase() -> None:
    assert problems('[on_expire]\nlast_ack = "reset-both"\n') == [
        "p.toml:2: on_expire.last_ack: unknown key (on_expire is per phase: did you mean "
        "'closing'?)"
    ]


def test_remember_cannot_be_never_and_pickup_is_a_boolean() -> None:
    assert problems('[out_of_state]\nremember = "never"\npickup = 1\n') == [
        'p.toml:2: out_of_state.remember: must be a finite duration, not "never"',
        "p.toml:3: out_of_state.pickup: expected true or false, got an integer",
    ]


def test_unknown_action_without_a_close_match_lists_the_choices() -> None:
    assert problems('[out_of_state]\nfrom_server = "xyzzy"\n') == [
        "p.toml:2: out_of_state.from_server: unknown action 'xyzzy' "
        "(choose from drop, reset, accept)"
    ]


def test_syntax_error_at_end_of_document() -> None:
    assert problems("[timeouts]\nestablished =") == [
        "p.toml:2: invalid TOML at end of file: Invalid value"
    ]


def _leaves(
    value: object, path: tuple[str | int, ...] = ()
) -> list[tuple[tuple[str | int, ...], str]]:
    """Every scalar in a TOML document, with its path."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, i))]
    return [(path, str(value))]


@pytest.mark.parametrize("name", ["asa-example", *preset_names()])
def test_every_key_line_holds_that_key(name: str) -> None:
    """The line scanner, on real policies: each key's line names the key (an array element's
    line holds the element)."""
    preset = resources.files("fwemu.presets").joinpath(f"{name}.toml")
    text = ASA if name == "asa-example" else preset.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = KeyScanner(text).scan()
    for path, value in _leaves(tomllib.loads(text)):
        line = lines[found[path] - 1]
        last = path[-1]
        assert re.search(rf"\b{last}\s*=", line) if isinstance(last, str) else value in line
