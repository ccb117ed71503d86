"""Durations as policies write them ("90s", "1h30m", 5, "never") and as fwemu prints them."""

from __future__ import annotations

import difflib
import itertools
import math
import re

from fwemu.errors import FwemuError

# Largest unit first: the order components must appear in, and the order `format_duration` uses.
_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}

_UNIT_ORDER = list(_UNITS)

# Spellings people reach for, mapped to ours, so the hint can offer a fix.
_UNIT_ALIASES: dict[str, str] = {
    **dict.fromkeys(("day", "days"), "d"),
    **dict.fromkeys(("hr", "hrs", "hour", "hours"), "h"),
    **dict.fromkeys(("min", "mins", "minute", "minutes"), "m"),
    **dict.fromkeys(("sec", "secs", "second", "seconds"), "s"),
    **dict.fromkeys(("msec", "msecs", "millisecond", "milliseconds"), "ms"),
}

# No firewall keeps an idle flow for over a year: such a value is a slip (a wrong unit), and
# "never" says "no timer" explicitly.
MAX_SECONDS = 365 * 86400.0

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_COMPONENT = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*")
_BARE_NUMBER = re.compile(rf"[+-]?{_NUMBER}")

_EXPECTED = 'a duration (seconds or a string like "90s")'


class DurationError(FwemuError):
    """A value that is not a usable duration; `hint` suggests a fix when one is obvious."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.message = message
        self.hint = hint


def type_name(value: object) -> str:
    """How a TOML value's type reads in a message ("a list", "a boolean", ...)."""
    match value:
        case bool():
            return "a boolean"
        case int():
            return "an integer"
        case float():
            return "a float"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "a table"
        case _:
            return "a date/time"


def parse_duration(value: object) -> float | None:
    """Seconds for a TOML duration value, or None for "never"; raise DurationError otherwise.

    Numbers are seconds; strings are unit components in descending order ("1h30m", "1.5s",
    "250ms"), "0", or "never".
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError(f"expected {_EXPECTED}, got {type_name(value)}")
    if isinstance(value, str):
        return _parse_text(value)
    return _checked(float(value), repr(value))


def _parse_text(text: str) -> float | None:
    stripped = text.strip()
    if stripped == "never":
        return None
    if stripped.startswith("-"):
        raise DurationError(f"negative duration {text!r}")
    if _BARE_NUMBER.fullmatch(stripped):
        if float(stripped) == 0:
            return 0.0
        raise DurationError(
            f"duration {text!r} has no unit", f"did you mean '{stripped.lstrip('+')}s'?"
        )
    components = _components(text)
    seconds = sum(float(number) * _UNITS[unit] for number, unit in components)
    return _checked(seconds, repr(text))


def _components(text: str) -> list[tuple[str, str]]:
    """The (number, unit) pairs of `text`, each unit known and used in descending order."""
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        found = _COMPONENT.match(text, position)
        if found is None:
            never = difflib.get_close_matches(text.strip().lower(), ["never"], n=1)
            hint = "did you mean 'never'?" if never else _FORMAT_HINT
            raise DurationError(f"invalid duration {text!r}", hint)
        number, unit = found[1], found[2]
        if not unit:
            raise DurationError(f"missing unit after {number!r} in {text!r}", _FORMAT_HINT)
        if unit not in _UNITS:
            raise DurationError(f"unknown unit {unit!r} in {text!r}", _unit_hint(text, unit))
        pairs.append((number, unit))
        position = found.end()
    if not pairs:
        raise DurationError("empty duration", _FORMAT_HINT)
    ranks = [_UNIT_ORDER.index(unit) for _, unit in pairs]
    if any(later <= earlier for earlier, later in itertools.pairwise(ranks)):
        raise DurationError(
            f"invalid duration {text!r}: each unit at most once, largest first", _FORMAT_HINT
        )
    return pairs


_FORMAT_HINT = 'use units d h m s ms, largest first, like "90s", "1h30m" or "250ms"'


def _unit_hint(text: str, unit: str) -> str:
    """Offer `text` with the unknown unit replaced, when the intended unit is clear."""
    guess = _UNIT_ALIASES.get(unit.lower())
    if guess is None:
        close = difflib.get_close_matches(unit.lower(), [*_UNITS, *_UNIT_ALIASES], n=1)
        guess = _UNIT_ALIASES.get(close[0], close[0]) if close else None
    if guess is None:
        return _FORMAT_HINT
    fixed = re.sub(rf"(?<=[\d.])\s*{re.escape(unit)}\b", guess, text.strip())
    return f"did you mean {fixed!r}?"


def _checked(seconds: float, shown: str) -> float:
    if math.isnan(seconds) or math.isinf(seconds):
        raise DurationError(f"duration {shown} is not a finite number")
    if seconds < 0:
        raise DurationError(f"negative duration {shown}")
    if seconds > MAX_SECONDS:
        raise DurationError(f"duration {shown} is longer than 365 days", 'use "never" for no timer')
    return seconds


def format_duration(seconds: float | None) -> str:
    """The canonical readable form, which `parse_duration` reads back: "1h30m", "5m50s",
    "1s500ms", "never". Sub-millisecond parts (only from `--speed` scaling) are rounded."""
    if seconds is None:
        return "never"
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s" if seconds == 0 else f"{seconds * 1000:.3g}ms"
    parts: list[str] = []
    for unit, size in _UNITS.items():
        count, millis = divmod(millis, round(size * 1000))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
