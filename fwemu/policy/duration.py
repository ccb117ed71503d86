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

# ASCII digits only: \d (and float()) would read "\u0665s" (an Arabic-Indic five) as 5 s.
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_COMPONENT = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*", re.ASCII)
_BARE_NUMBER = re.compile(rf"[+-]?{_NUMBER}")

_EXPECTED = 'a duration (seconds or a string like "90s")'


class DurationError(FwemuError):
    """A value that is not a usable duration; `hint` suggests a fix when one is obvious."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message if hint is None else f"{message} ({hint})")
        self.message = message
        self.hint = hint


# bool before int: a bool is an int in Python.
_TYPE_NAMES = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a float"),
    (str, "a string"),
    (list, "a list"),
    (dict, "a table"),
)


def type_name(value: object) -> str:
    """How a TOML value's type reads in a message ("a list", "a boolean", ...)."""
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), "a date/time")


def brief(value: object) -> str:
    """repr(value), shortened: a value echoed in a message must not flood it. An int past
    Python's limit for str() (written in hex, octal or binary) shows in hex; a list holding one,
    by its type."""
    try:
        return shorten(repr(value))
    except ValueError:
        return shorten(hex(value)) if isinstance(value, int) else type_name(value)


def shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def parse_duration(value: object) -> float | None:
    """Seconds for a TOML duration value, or None for "never"; raise DurationError otherwise.

    Numbers are seconds; strings are unit components in descending order ("1h30m", "1.5s",
    "250ms"), "0", or "never".
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DurationError(f"expected {_EXPECTED}, got {type_name(value)}")
    if isinstance(value, str):
        return _parse_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise DurationError(f"duration {value!r} is not a finite number")
    return _checked(value, brief(value))


def _parse_text(text: str) -> float | None:
    stripped = text.strip()
    if stripped == "never":
        return None
    if stripped.startswith("-"):
        raise DurationError(f"negative duration {brief(text)}")
    if _BARE_NUMBER.fullmatch(stripped):
        if float(stripped) == 0:
            return 0.0
        raise DurationError(
            f"duration {brief(text)} has no unit", f"did you mean '{stripped.lstrip('+')}s'?"
        )
    components = _components(text)
    seconds = sum(float(number) * _UNITS[unit] for number, unit in components)
    return _checked(seconds, brief(text))


def _components(text: str) -> list[tuple[str, str]]:
    """The (number, unit) pairs of `text`, each unit known and used in descending order."""
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        found = _COMPONENT.match(text, position)
        if found is None:
            raise DurationError(f"invalid duration {brief(text)}", _invalid_hint(text))
        number, unit = found[1], found[2]
        if not unit:
            raise DurationError(
                f"missing unit after {brief(number)} in {brief(text)}", _FORMAT_HINT
            )
        if unit not in _UNITS:
            raise DurationError(
                f"unknown unit {brief(unit)} in {brief(text)}", _unit_hint(text, unit)
            )
        pairs.append((number, unit))
        position = found.end()
    if not pairs:
        raise DurationError("empty duration", _FORMAT_HINT)
    ranks = [_UNIT_ORDER.index(unit) for _, unit in pairs]
    if any(later <= earlier for earlier, later in itertools.pairwise(ranks)):
        raise DurationError(
            f"invalid duration {brief(text)}: each unit at most once, largest first", _FORMAT_HINT
        )
    return pairs


_FORMAT_HINT = 'use units d h m s ms, largest first, like "90s", "1h30m" or "250ms"'


def _invalid_hint(text: str) -> str:
    if any(char.isdigit() and not char.isascii() for char in text):
        return "write numbers with the digits 0-9"
    never = difflib.get_close_matches(text.strip().lower(), ["never"], n=1)
    return "did you mean 'never'?" if never else _FORMAT_HINT


def _unit_hint(text: str, unit: str) -> str:
    """Offer `text` with the unknown unit replaced, when the intended unit is clear."""
    guess = _UNIT_ALIASES.get(unit.lower())
    if guess is None:
        close = difflib.get_close_matches(unit.lower(), [*_UNITS, *_UNIT_ALIASES], n=1)
        guess = _UNIT_ALIASES.get(close[0], close[0]) if close else None
    if guess is None:
        return _FORMAT_HINT
    fixed = re.sub(rf"(?<=[0-9.])\s*{re.escape(unit)}\b", guess, text.strip())
    return f"did you mean {brief(fixed)}?"


def _checked(seconds: float, shown: str) -> float:
    """`seconds` (an int of any size, or a float that may be inf) as a float within range;
    compared before it is converted, since float() overflows on a huge int."""
    if seconds < 0:
        raise DurationError(f"negative duration {shown}")
    if seconds > MAX_SECONDS:
        raise DurationError(f"duration {shown} is longer than 365 days", 'use "never" for no timer')
    return float(seconds)


def format_duration(seconds: float | None, resolution: float = 0.001) -> str:
    """A duration for people, in the one form fwemu prints (and `parse_duration` reads back):
    "1h30m", "5m50s", "1.5s", "250ms", "never". Rounded to `resolution` seconds (a measured time
    to a tenth, say); below a millisecond (only from `--speed` scaling) three digits of ms."""
    if seconds is None:
        return "never"
    if seconds < 0:
        return f"-{format_duration(-seconds, resolution)}"
    millis = round(round(seconds / resolution) * resolution * 1000)
    if millis == 0:
        return "0s" if seconds == 0 else f"{seconds * 1000:.3g}ms"
    if millis < 1000:
        return f"{millis}ms"
    parts: list[str] = []
    for unit in ("d", "h", "m"):
        count, millis = divmod(millis, round(_UNITS[unit] * 1000))
        if count:
            parts.append(f"{count}{unit}")
    if millis:
        whole, fraction = divmod(millis, 1000)
        parts.append(f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s")
    return "".join(parts)
