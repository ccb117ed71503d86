"""Scenario files -> Scenario, and the messages a user sees for broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from fwemu.scenario.loader import ScenarioError, load_scenario, loads_scenario
from fwemu.scenario.model import Action, EventPattern, Outcome

SHIPPED = sorted((Path(__file__).parent.parent / "scenarios").glob("*.toml"))

MINIMAL = """\
[scenario]
policy = "aws-nlb"
speed = 100

[[server]]
do = "listen"

[[client]]
do = "connect"
[[client]]
do = "send"
bytes = 3
[[client]]
do = "recv"
expect = "reset"
within = "1s"

[[event]]
event = "reset"
to = "client"
after = "5m"
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        loads_scenario(text, "s.toml")
    return str(caught.value).splitlines()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.client and scenario.server
    assert scenario.events or scenario.no_events


def test_there_is_a_shipped_scenario_per_preset() -> None:
    from fwemu.policy import preset_names

    used = {load_scenario(path).policy.name for path in SHIPPED}
    assert set(preset_names()) <= used


def test_a_minimal_scenario() -> None:
    scenario = loads_scenario(MINIMAL, "dir/nlb.toml")
    assert (scenario.name, scenario.policy.name, scenario.speed) == ("nlb", "aws-nlb", 100)
    assert scenario.policy_ref == "aws-nlb"
    assert scenario.port == 8080
    assert [s.action for s in scenario.client] == [Action.CONNECT, Action.SEND, Action.RECV]
    send, recv = scenario.client[1:]
    assert send.data == b"xxx" and send.expect is Outcome.OK
    assert (recv.expect, recv.within, recv.line) == (Outcome.RESET, 1.0, 13)
    assert scenario.events == (EventPattern("reset", {"to": "client"}, after=300.0, line=18),)
    # Twice the policy's longest timer (350 s), but at least 10 minutes.
    assert scenario.timeout == 700.0
    assert scenario.real(350) == 3.5


def test_a_policy_file_is_found_next_to_the_scenario(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text('[timeouts]\nestablished = "3s"\n')
    (tmp_path / "s.toml").write_text('[scenario]\npolicy = "mine.toml"\n[[client]]\ndo = "close"\n')
    scenario = load_scenario(tmp_path / "s.toml")
    assert scenario.policy.default.timeouts.established == 3.0
    assert scenario.policy_ref == tmp_path / "mine.toml"


def test_inline_policy_text() -> None:
    text = '[scenario]\npolicy_toml = """\n[timeouts]\ntime_wait = "30s"\n"""\n'
    scenario = loads_scenario(text + '[[client]]\ndo = "close"\n', "s.toml")
    assert scenario.policy.default.timeouts.time_wait == 30.0
    assert scenario.policy_toml is not None and scenario.policy_ref is None


def test_every_problem_is_listed_with_its_line() -> None:
    text = """\
[scenario]
policy = "aws-nbl"
sped = 100

[[server]]
do = "lisen"

[[client]]
do = "connect"
for = "1s"
[[client]]
do = "send"
[[client]]
do = "recv"
expect = "reseted"
[[client]]
do = "listen"

[[event]]
event = "expired"
"""
    assert problems(text) == [
        "s.toml:2: scenario.policy: no policy file or preset named 'aws-nbl' "
        "(did you mean 'aws-nlb'?); presets: " + _presets(),
        "s.toml:3: scenario.sped: unknown key (did you mean 'speed'?)",
        "s.toml:6: server[1].do: unknown action 'lisen' (did you mean 'listen'?)",
        "s.toml:10: client[1].for: connect does not take 'for' "
        "(it takes timeout, keepalive, count, source)",
        's.toml:11: client[2]: send needs either data or bytes (data = "GET /" or bytes = 100)',
        "s.toml:15: client[3].expect: unknown outcome 'reseted' (did you mean 'reset'?)",
        "s.toml:17: client[4].do: only the server can listen",
        "s.toml:20: event[1].event: unknown event 'expired' (did you mean 'expire'?)",
    ]


def test_a_broken_policy_reports_its_own_lines() -> None:
    text = '[scenario]\npolicy_toml = """\n[timeouts]\nestablished = 5h\n"""\n'
    (line,) = problems(text + '[[client]]\ndo = "close"\n')
    assert line.startswith("s.toml: scenario.policy_toml:2: invalid TOML")


def test_syntax_errors_and_empty_scenarios() -> None:
    assert problems('[[client]]\ndo = "sleep"\nfor = 5m\n') == [
        "s.toml:3: invalid TOML at column 8: Expected newline or end of document after a "
        'statement (a duration with a unit is a string: "5m")'
    ]
    assert problems("") == ["s.toml: no steps (add [[client]] and [[server]] steps)"]
    assert problems('[[client]]\ndo = "sleep"\n[[server]]\nexpect = "ok"\n') == [
        "s.toml:1: client[1]: sleep needs 'for'",
        "s.toml:3: server[1]: missing 'do' (what the step does: listen, accept, connect, send, "
        "recv, sleep, idle, half-close, close, abort, run, wait, syn-flood, bind, send-to, "
        "recv-from, echo)",
    ]


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"nope.toml: cannot read: No such file"):
        load_scenario(tmp_path / "nope.toml")


def _presets() -> str:
    from fwemu.policy import preset_names

    return ", ".join(preset_names())


# --- input that used to crash the loader (issue 19) -------------------------------------------

STEPS = '[[client]]\ndo = "close"\n'
HUGE = 16**4000  # too large for a float, and for str(): only a hex literal writes it
BIG = "1" + "0" * 36 + "..."


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param(
            "x = " + "[" * 500 + "]" * 500 + "\n" + STEPS,
            "s.toml:1: arrays and inline tables nested more than 32 deep",
            id="deep-nesting",
        ),
        pytest.param(
            f"[scenario]\nspeed = 1{'0' * 4400}\n{STEPS}",
            "s.toml:2: number of more than 4300 digits",
            id="int-too-long-for-int",
        ),
        pytest.param(
            f"[scenario]\nspeed = {HUGE:#x}\n{STEPS}",
            f"s.toml:2: scenario.speed: 0x1{'0' * 34}... is too large",
            id="speed-too-large-for-a-float",
        ),
        pytest.param(
            f"[scenario]\ntolerance = 1{'0' * 400}\n{STEPS}",
            f"s.toml:2: scenario.tolerance: {BIG} is too large",
            id="tolerance-too-large-for-a-float",
        ),
        pytest.param(
            f'[[client]]\ndo = "send"\nbytes = 1{"0" * 20}\n',
            f"s.toml:3: client[1].bytes: must be at most 16777216, not 1{'0' * 20}",
            id="bytes-too-many-to-send",
        ),
        pytest.param(
            f'{STEPS}[[event]]\nevent = "new"\ndport = {HUGE:#x}\n',
            f"s.toml:5: event[1].dport: 0x1{'0' * 34}... is too large to compare with",
            id="field-too-large-to-print",
        ),
        pytest.param(
            f'[scenario]\nname = "a\\u001b[2J"\n{STEPS}',
            "s.toml:2: scenario.name: non-printable character U+001B in 'a\\x1b[2J' "
            "(use one line of printable text)",
            id="control-character-in-name",
        ),
        pytest.param(
            f'[[client]]\ndo = "connect"\ncount = 2\nexpect = {{ ok = {HUGE:#x} }}\n',
            f"s.toml:4: client[1].expect.ok: must be at most 1000, not 0x1{'0' * 34}...",
            id="count-too-large-to-print",
        ),
        pytest.param(
            f'[[client]]\ndo = "connect"\ncount = 2\nexpect = {{ ok = "1..{"9" * 5000}" }}\n',
            "s.toml:4: client[1].expect.ok: expected a number of connections or a range, got "
            '\'1..999999999999999999999999999999999... (like ok = 64 or ok = "60..64")',
            id="range-too-long-for-int",
        ),
        pytest.param(
            f'[scenario]\npolicy = "fw\\u0000.toml"\n{STEPS}',
            "s.toml:2: scenario.policy: non-printable character U+0000 in 'fw\\x00.toml' "
            "(use one line of printable text)",
            id="nul-in-policy-path",
        ),
    ],
)
def test_hostile_values_are_problems(text: str, message: str) -> None:
    assert problems(text) == [message]


# --- count steps: many connections at once (issue 13) ----------------------------------------

COUNTS = """\
[scenario]
clients = 2

[[server]]
do = "listen"
[[server]]
do = "accept"
count = 64

[[client]]
do = "connect"
count = 100
source = 2
expect = { ok = 64, timeout = "30..36" }
[[client]]
do = "connect"
count = 5
expect = "refused"
[[client]]
do = "connect"
source = 1
[[client]]
do = "close"
all = true
"""


def test_count_steps() -> None:
    scenario = loads_scenario(COUNTS, "s.toml")
    assert scenario.clients == 2
    pool, refused, plain, close = scenario.client
    assert (pool.count, pool.source, pool.expect, pool.line) == (100, 2, Outcome.OK, 10)
    assert pool.counts == {Outcome.OK: (64, 64), Outcome.TIMEOUT: (30, 36)}
    assert pool.describe() == "client step 1 (connect x100)"
    assert refused.counts == {Outcome.REFUSED: (5, 5)}
    assert (plain.count, plain.counts, plain.source) == (None, None, 1)
    assert plain.describe() == "client step 3 (connect)"
    assert close.every
    # Without an expectation every connection must connect.
    assert scenario.server[1].counts == {Outcome.OK: (64, 64)}
    assert loads_scenario(MINIMAL, "s.toml").clients == 1


def test_broken_count_steps_are_located() -> None:
    text = """\
[scenario]
clients = 2
[[client]]
do = "connect"
count = 1001
[[client]]
do = "connect"
count = 10
expect = { ok = 6, timeout = 3 }
[[client]]
do = "connect"
count = 10
expect = { okay = 10, reset = "5..1", refused = -1 }
[[client]]
do = "connect"
expect = { ok = 1 }
[[client]]
do = "connect"
count = 3
source = 3
expect = "eof"
[[client]]
do = "send"
count = 2
data = "x"
[[client]]
do = "close"
all = "yes"
[[client]]
do = "connect"
count = 10
expect = { ok = "1..4", timeout = "2..5" }
[[client]]
do = "connect"
count = 2
expect = {}
"""
    assert problems(text) == [
        "s.toml:5: client[1].count: must be at most 1000, not 1001",
        "s.toml:9: client[2].expect: ok 6, timeout 3 makes 9 connections, not count = 10 "
        "(an outcome not named must have none)",
        "s.toml:13: client[3].expect.okay: unknown outcome 'okay' (did you mean 'ok'?)",
        "s.toml:13: client[3].expect.reset: empty range '5..1' (write it low first: \"1..5\")",
        "s.toml:13: client[3].expect.refused: expected a number of connections or a range, "
        'got -1 (like ok = 64 or ok = "60..64")',
        "s.toml:16: client[4].expect: a table of counts needs count (count = 100)",
        "s.toml:20: client[5].source: there is no client 3: the scenario has clients = 2 "
        "(set clients = 3 in [scenario])",
        "s.toml:21: client[5].expect: a connection of a count step cannot end in eof "
        "(expect ok, refused, timeout, reset, error, or a table of counts)",
        "s.toml:24: client[6].count: send does not take 'count' (it takes data, bytes)",
        "s.toml:28: client[7].all: expected true or false, got a string",
        "s.toml:32: client[8].expect: ok 1..4, timeout 2..5 makes 3..9 connections, not "
        "count = 10 (an outcome not named must have none)",
        "s.toml:36: client[9].expect: no counts (like expect = { ok = 64, timeout = 36 })",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scenario]\nclients = 254\n", "s.toml:2: scenario.clients: must be at most 253, not 254"),
        ("[scenario]\nclients = 0\n", "s.toml:2: scenario.clients: must be at least 1, not 0"),
        (
            '[[client]]\ndo = "connect"\nsource = 2\n',
            "s.toml:3: client[1].source: there is no client 2: the scenario has clients = 1 "
            "(set clients = 2 in [scenario])",
        ),
        (
            '[[server]]\ndo = "listen"\ncount = 2\n',
            "s.toml:3: server[1].count: listen does not take 'count' "
            "(it takes nothing but do, expect, after, within)",
        ),
        (
            '[[server]]\ndo = "accept"\nsource = 2\n',
            "s.toml:3: server[1].source: accept does not take 'source' (it takes timeout, count)",
        ),
    ],
)
def test_clients_and_sources(text: str, message: str) -> None:
    assert problems(text + STEPS) == [message]


# --- UDP steps (issue 17) ---------------------------------------------------------------------

UDP = """\
[scenario]
ipv6 = true

[[server]]
do = "bind"
[[server]]
do = "recv-from"
timeout = "5s"
[[server]]
do = "send-to"
bytes = 512
[[server]]
do = "echo"
for = "2m"

[[client]]
do = "send-to"
data = "query"
[[client]]
do = "recv-from"
expect = "unreachable"
within = "1s"
[[client]]
do = "send-to"

[[event]]
event = "unreachable"
proto = "udp"
to = "client"
"""


def test_udp_steps() -> None:
    scenario = loads_scenario(UDP, "s.toml")
    assert [s.action for s in scenario.server] == [
        Action.BIND,
        Action.RECV_FROM,
        Action.SEND_TO,
        Action.ECHO,
    ]
    _bind, recv, answer, echo = scenario.server
    assert (recv.timeout, answer.data, echo.duration) == (5.0, b"x" * 512, 120.0)
    query, unreachable, plain = scenario.client
    assert query.data == b"query"
    assert (unreachable.expect, unreachable.within) == (Outcome.UNREACHABLE, 1.0)
    # A send-to without data or bytes sends its own name, so a timeline tells datagrams apart.
    assert plain.data == b"client step 3"
    assert scenario.events == (
        EventPattern("unreachable", {"proto": "udp", "to": "client"}, line=26),
    )


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        pytest.param(
            '[[client]]\ndo = "bind"\n',
            "s.toml:2: client[1].do: only the server can bind",
            id="bind-on-the-client",
        ),
        pytest.param(
            '[[client]]\ndo = "echo"\nfor = "1m"\n',
            "s.toml:2: client[1].do: only the server can echo",
            id="echo-on-the-client",
        ),
        pytest.param(
            '[[server]]\ndo = "echo"\n',
            "s.toml:1: server[1]: echo needs 'for'",
            id="echo-without-for",
        ),
        pytest.param(
            '[[client]]\ndo = "send-to"\ndata = "x"\nbytes = 3\n',
            "s.toml:1: client[1]: send-to takes data or bytes, not both",
            id="send-to-data-and-bytes",
        ),
        pytest.param(
            '[[client]]\ndo = "send-to"\nbytes = 65508\n',
            "s.toml:3: client[1].bytes: must be at most 65507, not 65508",
            id="send-to-more-than-a-datagram",
        ),
        pytest.param(
            '[[client]]\ndo = "recv-from"\nbytes = 10\n',
            "s.toml:3: client[1].bytes: recv-from does not take 'bytes' (it takes timeout)",
            id="recv-from-bytes",
        ),
        pytest.param(
            '[[client]]\ndo = "recv-from"\nexpect = "reset"\n',
            "s.toml:3: client[1].expect: recv-from cannot end in reset "
            "(expect ok, timeout, unreachable, error)",
            id="recv-from-reset",
        ),
        pytest.param(
            '[[client]]\ndo = "send-to"\nexpect = "timeout"\n',
            "s.toml:3: client[1].expect: send-to cannot end in timeout "
            "(expect ok, unreachable, error)",
            id="send-to-timeout",
        ),
        pytest.param(
            '[[server]]\ndo = "bind"\nexpect = "unreachable"\n',
            "s.toml:3: server[1].expect: bind cannot end in unreachable (expect ok, error)",
            id="bind-unreachable",
        ),
        pytest.param(
            '[[client]]\ndo = "recv"\nexpect = "unreachable"\n',
            "s.toml:3: client[1].expect: recv cannot end in unreachable "
            "(only a UDP socket's send-to, recv-from, echo can)",
            id="tcp-step-unreachable",
        ),
        pytest.param(
            '[[client]]\ndo = "send_to"\n',
            "s.toml:2: client[1].do: unknown action 'send_to' (did you mean 'send-to'?)",
            id="send_to-spelt-as-in-python",
        ),
    ],
)
def test_broken_udp_steps(steps: str, message: str) -> None:
    assert problems(steps) == [message]
