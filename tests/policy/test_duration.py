"""Durations: what policy authors may write, what they get told when it is wrong."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fwemu.errors import FwemuError
from fwemu.policy import DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (90, 90.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("5d", 432000.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        (".5s", 0.5),
        ("2h30m15s250ms", 9015.25),
        (" 1h 30m ", 5400.0),
        ("365d", 365 * 86400.0),
        ("never", None),
    ],
)
def test_valid(value: object, seconds: float | None) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "negative duration -1"),
        ("-30s", "negative duration '-30s'"),
        (math.nan, "duration nan is not a finite number"),
        (math.inf, "duration inf is not a finite number"),
        ("366d", "duration '366d' is longer than 365 days (use \"never\" for no timer)"),
        (31_536_001, 'duration 31536001 is longer than 365 days (use "never" for no timer)'),
        ("5min", "unknown unit 'min' in '5min' (did you mean '5m'?)"),
        ("2 hours", "unknown unit 'hours' in '2 hours' (did you mean '2h'?)"),
        ("1h30mins", "unknown unit 'mins' in '1h30mins' (did you mean '1h30m'?)"),
        (
            "10x",
            "unknown unit 'x' in '10x' (use units d h m s ms, largest first, "
            'like "90s", "1h30m" or "250ms")',
        ),
        (
            "30m1h",
            "invalid duration '30m1h': each unit at most once, largest first (use units "
            'd h m s ms, largest first, like "90s", "1h30m" or "250ms")',
        ),
        (
            "1m1m",
            "invalid duration '1m1m': each unit at most once, largest first (use units "
            'd h m s ms, largest first, like "90s", "1h30m" or "250ms")',
        ),
        ("120", "duration '120' has no unit (did you mean '120s'?)"),
        (
            "1h30",
            "missing unit after '30' in '1h30' (use units d h m s ms, largest first, "
            'like "90s", "1h30m" or "250ms")',
        ),
        ("Never", "invalid duration 'Never' (did you mean 'never'?)"),
        ("forever", "invalid duration 'forever' (did you mean 'never'?)"),
        (
            "",
            'empty duration (use units d h m s ms, largest first, like "90s", "1h30m" or "250ms")',
        ),
        (True, 'expected a duration (seconds or a string like "90s"), got a boolean'),
        (["1h"], 'expected a duration (seconds or a string like "90s"), got a list'),
        ({"s": 1}, 'expected a duration (seconds or a string like "90s"), got a table'),
    ],
)
def test_invalid(value: object, message: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


NEVER_HINT = ' (use "never" for no timer)'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(
            10**400,
            f"duration 1{'0' * 36}... is longer than 365 days{NEVER_HINT}",
            id="int-too-large-for-a-float",
        ),
        pytest.param(
            16**4000,
            f"duration 0x1{'0' * 34}... is longer than 365 days{NEVER_HINT}",
            id="int-too-long-for-str",
        ),
        pytest.param(-(10**400), f"negative duration -1{'0' * 35}...", id="huge-negative"),
        pytest.param(
            f"1{'0' * 400}s",
            f"duration '1{'0' * 35}... is longer than 365 days{NEVER_HINT}",
            id="text-too-large-for-a-float",
        ),
        pytest.param(
            "\u0665s", "invalid duration '\u0665s' (write numbers with the digits 0-9)", id="arabic"
        ),
        pytest.param(
            "1h\uff13m",
            "invalid duration '1h\uff13m' (write numbers with the digits 0-9)",
            id="fullwidth",
        ),
    ],
)
def test_huge_and_non_ascii_numbers(value: object, message: str) -> None:
    """Python converts these (or overflows on them); a policy must not."""
    with pytest.raises(DurationError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


def test_duration_errors_are_user_errors() -> None:
    """So a CLI option parsed with parse_duration fails with a message, not a traceback."""
    with pytest.raises(FwemuError):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "never"),
        (0, "0s"),
        (30, "30s"),
        (350, "5m50s"),
        (5400, "1h30m"),
        (432000, "5d"),
        (90061, "1d1h1m1s"),
        (1.5, "1.5s"),
        (0.25, "250ms"),
        (120 / 7, "17.143s"),  # --speed 7 of 2 minutes: rounded to the millisecond
        (60.5, "1m0.5s"),
        (9015.25, "2h30m15.25s"),
        (0.0001, "0.1ms"),
    ],
)
def test_format(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(6.3, "6.3s"), (12.34, "12.3s"), (360.04, "6m"), (7203.0, "2h3s"), (-0.3, "-300ms")],
)
def test_format_to_a_tenth_as_measured_times_are(seconds: float, text: str) -> None:
    assert format_duration(seconds, resolution=0.1) == text


@given(st.integers(min_value=0, max_value=365 * 86400 * 1000))
def test_format_reads_back(millis: int) -> None:
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=1e-9)
