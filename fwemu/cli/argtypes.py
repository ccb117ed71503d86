"""Number arguments for argparse: one checked parser per option, with a message naming it."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(what: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """A parser for a whole number in [low, high] (no upper bound when high is None)."""
    bound = f">= {low}" if high is None else f"{low}..{high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{what} must be a whole number {bound}, not {text!r}")
        return value

    return parse


def number(
    what: str, low: float, high: float = math.inf, *, unit: str = ""
) -> Callable[[str], float]:
    """A parser for a finite number in (0, high] when low is 0, else [low, high]."""
    if low == 0:
        bound = "> 0" if high == math.inf else f"in (0, {high:g}]"
    else:
        bound = f">= {low:g}" if high == math.inf else f"{low:g}..{high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        inside = (value > 0 if low == 0 else low <= value) and value <= high
        if not inside or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{what} must be a number {bound}{unit}, not {text!r}")
        return value

    return parse


def duration(what: str, high: float) -> Callable[[str], float]:
    """A parser for a duration as policies write them ("30s", "1m30s", "0"), at most `high`
    seconds; "never" is refused."""
    from fwemu.policy.duration import DurationError, format_duration, parse_duration

    def parse(text: str) -> float:
        try:
            value = parse_duration(text)
        except DurationError as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None
        if value is None or value > high:
            limit = format_duration(high)
            raise argparse.ArgumentTypeError(
                f"{what} must be a duration up to {limit}, not {text!r}"
            )
        return value

    return parse
