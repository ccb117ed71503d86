"""Hypothesis strategies that break good TOML documents the ways a stress run broke the presets
(issue 19): characters changed, inserted and deleted, values swapped for other types, arrays
nested hundreds deep, numbers of thousands of digits, control characters and odd Unicode."""

from __future__ import annotations

import re
from collections.abc import Sequence

from hypothesis import strategies as st
from hypothesis.strategies import DrawFn

# What TOML and the loaders give meaning to, and what Python reads more loosely than a firewall:
# control characters (NUL, ESC, DEL, C1 CSI), invisible ones (zero width space, right-to-left
# override, no-break space, line separator, BOM), digits that are not ASCII (Arabic-Indic five,
# fullwidth three), a character outside the BMP.
SYNTAX = list("[]{}=,.\"'#\n\\ \t0123456789_-+:xesmhd")
ODD = [
    *"\x00\x1b\x7f\x9b\r\x0b",
    *"\u200b\u202e\u00a0\u2028\ufeff",
    *"\u0665\uff13",
    "\U0001f525",
]
# Values of every TOML type, and numbers at the edges of what Python converts.
LITERALS = [
    "true",
    "[]",
    "{}",
    "[[]]",
    "{ a = 1 }",
    '""',
    "''",
    "'''\nx\n'''",
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "inf",
    "-inf",
    "nan",
    "-0",
    "1e400",
    "-1",
    "1.5",
    "0x7fffffffffffffffffff",
    '"never"',
    '"0"',
    '"1h30"',
    '"\\u0665s"',
    '"65536"',
    '"80-\\uff18"',
    '"10.0.0.0/33"',
    '"\\u001b[2J"',
]
MAX_NESTING = 600  # past tomllib's recursion limit (~330 arrays)
MAX_DIGITS = 5000  # past Python's int() limit (4300)

_VALUE = re.compile(r"=[ \t]*([^\n]*)")
_ANY = st.sampled_from(SYNTAX + ODD) | st.characters(codec="utf-8")  # no lone surrogates


def _position(draw: DrawFn, text: str) -> int:
    return draw(st.integers(0, len(text)))


def _value_span(draw: DrawFn, text: str) -> tuple[int, int]:
    """Where one value (what follows an "=", to the end of its line) is, or the end of text."""
    spans = [found.span(1) for found in _VALUE.finditer(text)]
    return draw(st.sampled_from(spans)) if spans else (len(text), len(text))


def _replace_char(draw: DrawFn, text: str) -> str:
    at = _position(draw, text)
    char = draw(_ANY)
    return f"{text[:at]}{char}{text[at + 1 :]}"


def _insert_text(draw: DrawFn, text: str) -> str:
    at = _position(draw, text)
    inserted = draw(st.text(_ANY, max_size=8))
    return f"{text[:at]}{inserted}{text[at:]}"


def _delete_span(draw: DrawFn, text: str) -> str:
    at = _position(draw, text)
    length = draw(st.integers(1, 40))
    return text[:at] + text[at + length :]


def _nest(draw: DrawFn, text: str) -> str:
    """Arrays or inline tables nested deep, closed or not, in place of a value."""
    start, end = _value_span(draw, text)
    depth = draw(st.integers(1, MAX_NESTING))
    opening, closing = draw(st.sampled_from([("[", "]"), ("{ a = ", " }"), ("[{ a = ", " }]")]))
    inner = draw(st.sampled_from(["", "1", '"x"']))
    closed = draw(st.booleans())
    nested = f"{opening * depth}{inner}{closing * depth if closed else ''}"
    return text[:start] + nested + text[end:]


def _dotted_key(draw: DrawFn, text: str) -> str:
    """A line with a key of up to MAX_NESTING parts (tomllib takes seconds over 10,000)."""
    at = text.find("\n", _position(draw, text)) + 1
    parts = draw(st.integers(2, MAX_NESTING))
    return f"{text[:at]}{'.'.join(['a'] * parts)} = 1\n{text[at:]}"


def _huge_number(draw: DrawFn, text: str) -> str:
    """A number of up to MAX_DIGITS digits in place of a value: bare, in a string (a port, a
    duration), signed, in hex, octal or binary."""
    start, end = _value_span(draw, text)
    count = draw(st.integers(20, MAX_DIGITS))
    prefix, digit = draw(
        st.sampled_from([("", "9"), ("-", "9"), ("0x", "f"), ("0o", "7"), ("0b", "1")])
    )
    number = f"{prefix}1{digit * count}"
    shape = draw(st.sampled_from(["{}", '"{}"', '"{}s"', '"1-{}"', "{}.5", "[{}]"]))
    return text[:start] + shape.format(number) + text[end:]


def _swap_value(draw: DrawFn, text: str) -> str:
    start, end = _value_span(draw, text)
    return text[:start] + draw(st.sampled_from(LITERALS)) + text[end:]


def _duplicate_line(draw: DrawFn, text: str) -> str:
    lines = text.splitlines(keepends=True) or [""]
    at = draw(st.integers(0, len(lines) - 1))
    return "".join([*lines[: at + 1], lines[at], *lines[at + 1 :]])


MUTATIONS = [
    _replace_char,
    _insert_text,
    _delete_span,
    _nest,
    _dotted_key,
    _huge_number,
    _swap_value,
    _duplicate_line,
]


@st.composite
def mutated(draw: DrawFn, seeds: Sequence[str], most: int = 4) -> str:
    """One of `seeds` with 1 to `most` mutations applied, in order."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, most))):
        mutation = draw(st.sampled_from(MUTATIONS))
        text = mutation(draw, text)
    return text


@st.composite
def mutated_bytes(draw: DrawFn, seeds: Sequence[str]) -> bytes:
    """A mutated document as UTF-8, with up to 2 bytes then changed (not UTF-8 any more, maybe)."""
    data = bytearray(draw(mutated(seeds)).encode())
    for _ in range(draw(st.integers(0, 2))):
        if data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
    return bytes(data)
