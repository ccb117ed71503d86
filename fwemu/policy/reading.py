"""Reading a TOML document into checked values, with every problem located (file, line, key).

Shared by the policy loader and the scenario loader: tomllib gives no positions, so `KeyScanner`
finds each key's line, and `Reader` walks the document, converting values with converters that
raise `Invalid` (via `fail`) and collecting a `Problem` per mistake instead of stopping at the
first.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from fwemu.errors import FwemuError
from fwemu.policy.duration import DurationError, brief, parse_duration, shorten, type_name

KeyPath = tuple[str | int, ...]  # ("rule", 0, "match", "dst"); ints index arrays, 0-based
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a policy. `path` is the key path as shown ("rule[2].match.dst", 1-based)."""

    origin: str
    path: str
    message: str
    line: int | None = None
    hint: str | None = None

    def __str__(self) -> str:
        where = self.origin if self.line is None else f"{self.origin}:{self.line}"
        what = f"{self.path}: {self.message}" if self.path else self.message
        return f"{where}: {what}" + ("" if self.hint is None else f" ({self.hint})")


class ProblemsError(FwemuError):
    """Every problem found in one document; str() is one line per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


E = TypeVar("E", bound=ProblemsError)


# Policies and scenarios are a few kilobytes; reading stops past this, so a wrong path
# (/dev/zero, a capture file) fails at once instead of filling memory.
MAX_SOURCE_BYTES = 1 << 20


def read_source(path: str | os.PathLike[str], error: type[E]) -> str:
    """The text of the file at `path`, or `error` naming it as given (unreadable, too large,
    not UTF-8)."""
    origin = os.fspath(path)
    try:
        with Path(path).open("rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
    except OSError as err:
        raise error([Problem(origin, "", f"cannot read: {err.strerror or err}")]) from None
    if len(data) > MAX_SOURCE_BYTES:
        raise error([Problem(origin, "", "cannot read: larger than 1 MiB")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error([Problem(origin, "", "cannot read: not UTF-8 text")]) from None


# No policy or scenario nests deeper than 3 (a list in an inline table in a table), by brackets
# or by dotted keys; tomllib recurses once per bracket, so a kilobyte of them would exhaust
# Python's stack, and its time (as the KeyScanner's) grows with the square of a key's parts.
MAX_NESTING = 32


def read_toml(text: str, origin: str, error: type[E]) -> tuple[dict[str, Any], Reader]:
    """The document in TOML `text` and a Reader for it, or `error` with the one problem that
    stops reading it: a syntax error, nesting beyond MAX_NESTING (which tomllib would take
    minutes over, or raise RecursionError for), or an integer of more digits than int() takes
    (tomllib's ValueError)."""
    problem = _beyond_limits(text, origin)
    if problem is not None:
        raise error([problem])
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise error([syntax_problem(str(err), text, origin)]) from None
    except RecursionError:  # within MAX_NESTING, but called on an already deep stack
        raise error([Problem(origin, "", "nested too deeply to read")]) from None
    return document, Reader(origin, KeyScanner(text).scan())


def _beyond_limits(text: str, origin: str) -> Problem | None:
    """The first place where `text` breaks a limit of `_Limits`; where the scanner is lost,
    tomllib reports a syntax error first."""
    limits = _Limits()
    try:
        for token in _tokens(text):
            message = limits.broken_by(token)
            if message is not None:
                return Problem(origin, "", message, token.line)
    except _Confused:
        pass
    return None


class _Limits:
    """Nesting within MAX_NESTING, and no number of more digits than int() converts."""

    def __init__(self) -> None:
        self.depth = 0  # brackets open
        self.dots = 0  # in the current dotted key
        self.digits = sys.get_int_max_str_digits()  # 0: no limit

    def broken_by(self, token: _Token) -> str | None:
        """What limit the next token breaks, if any."""
        if token.kind in ("[", "{"):
            self.depth += 1
            if self.depth > MAX_NESTING:
                return f"arrays and inline tables nested more than {MAX_NESTING} deep"
        elif token.kind in ("]", "}"):
            self.depth = max(0, self.depth - 1)
        if token.kind == ".":
            self.dots += 1
            if self.dots >= MAX_NESTING:
                return f"dotted key of more than {MAX_NESTING} parts"
        elif token.kind != "key":
            self.dots = 0
        elif self.digits and _decimal_digits(token) > self.digits:
            return f"number of more than {self.digits} digits"
        return None


_DECIMAL = re.compile(r"[+-]?[0-9_]+")


def _decimal_digits(token: _Token) -> int:
    """How many digits a decimal integer token has (0 for others). The part of a float before
    its "." counts too: float() has no limit, but no policy needs such a float either."""
    if token.string or not _DECIMAL.fullmatch(token.text):
        return 0
    return sum(map(str.isdigit, token.text))


def syntax_problem(message: str, text: str, origin: str) -> Problem:
    """tomllib's message ends with "(at line L, column C)" or "(at end of document)"."""
    found = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", message)
    if found is not None:
        line, column = int(found[2]), int(found[3])
        lines = text.splitlines()
        hint = _unquoted_duration(lines[line - 1], column) if line <= len(lines) else None
        return Problem(origin, "", f"invalid TOML at column {column}: {found[1]}", line, hint)
    found = re.fullmatch(r"(.*) \(at end of document\)", message)
    if found is not None:
        end = max(1, len(text.splitlines()))
        return Problem(origin, "", f"invalid TOML at end of file: {found[1]}", end)
    return Problem(origin, "", f"invalid TOML: {message}")


_UNQUOTED = re.compile(r"=\s*(\d[\d.]*[a-z][a-z\d.]*)")


def _unquoted_duration(line: str, column: int) -> str | None:
    """A hint when the error sits in an unquoted duration like `established = 1h`, the likeliest
    syntax error in a policy."""
    for found in _UNQUOTED.finditer(line):
        if found.start(1) < column <= found.end(1):
            return f'a duration with a unit is a string: "{found[1]}"'
    return None


# --- reading the document -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Issue:
    at: KeyPath  # below the key being converted: list indices
    message: str
    hint: str | None = None


class Invalid(Exception):
    """Raised by converters; carries every issue found in one value."""

    def __init__(self, *issues: Issue) -> None:
        super().__init__(issues)
        self.issues = issues


def fail(message: str, hint: str | None = None) -> NoReturn:
    raise Invalid(Issue((), message, hint))


Converter = Callable[[Any], Any]


class Reader:
    """Collects problems with their line numbers while the document is walked."""

    def __init__(self, origin: str, lines: Mapping[KeyPath, int]) -> None:
        self.origin = origin
        self.lines = lines
        self.problems: list[Problem] = []

    def problem(self, path: KeyPath, message: str, hint: str | None = None) -> None:
        shown = show_path(path)
        self.problems.append(Problem(self.origin, shown, message, self.lines.get(path), hint))

    def section(self, parent: Mapping[str, Any], key: str, path: KeyPath) -> dict[str, Any]:
        """The table `parent[key]`, or an empty one when it is absent or not a table."""
        value = parent.get(key, {})
        if isinstance(value, dict):
            return value
        self.problem((*path, key), f"expected a table, got {type_name(value)}")
        return {}

    def known_keys(
        self,
        table: Mapping[str, Any],
        path: KeyPath,
        allowed: Collection[str],
        hints: Mapping[str, str] | None = None,
    ) -> None:
        for key, value in table.items():
            if key in allowed:
                continue
            noun = "table" if isinstance(value, dict) else "key"
            hint = (hints or {}).get(key) or did_you_mean(key, allowed)
            self.problem((*path, key), f"unknown {noun}", hint)

    def read(
        self,
        table: Mapping[str, Any],
        path: KeyPath,
        converters: Mapping[str, Converter],
        hints: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """Each known key of `table`, converted; unknown keys and bad values become problems."""
        self.known_keys(table, path, converters, hints)
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key not in converters:
                continue
            try:
                values[key] = converters[key](value)
            except Invalid as bad:
                for issue in bad.issues:
                    self.problem((*path, key, *issue.at), issue.message, issue.hint)
        return values


def did_you_mean(word: str, choices: Collection[str]) -> str | None:
    close = difflib.get_close_matches(word.lower().replace("_", "-"), choices, n=1)
    if not close:
        close = difflib.get_close_matches(word.lower().replace("-", "_"), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def show_path(path: KeyPath) -> str:
    shown = ""
    for part in path:
        if isinstance(part, int):
            shown += f"[{part + 1}]"
        else:
            short = shorten(part)  # a key of a thousand characters would flood the message
            key = short if _BARE_KEY.fullmatch(short) else _quoted(short)
            shown += f".{key}" if shown else key
    return shown


def _quoted(key: str) -> str:
    """`key` as a TOML basic string: it reaches terminals and logs in messages, so what is not
    printable is escaped."""
    return '"' + "".join(map(_escaped, key)) + '"'


def _escaped(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    return f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}"


# --- converters: raw TOML value -> model value, or Invalid ---------------------------------


def as_text(value: Any) -> str:
    if not isinstance(value, str):
        fail(f"expected a string, got {type_name(value)}")
    return value


def as_line(value: Any) -> str:
    """A name, a description, a source: one line of printable text. Control characters (ESC,
    newline) and other non-printable ones are refused here, so no terminal or log downstream
    ever shows them."""
    text = as_text(value)
    for char in text:
        if not char.isprintable():
            fail(
                f"non-printable character U+{ord(char):04X} in {brief(text)}",
                "use one line of printable text",
            )
    return text


def as_name(value: Any) -> str:
    name = as_line(value)
    if not name.strip():
        fail("must not be empty")
    return name


def as_lines(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        fail(f"expected a list of strings, got {type_name(value)}")
    return each(value, as_line)


def as_flag(value: Any) -> bool:
    if not isinstance(value, bool):
        fail(f"expected true or false, got {type_name(value)}")
    return value


def as_duration(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except DurationError as err:
        fail(err.message, err.hint)


def as_finite_duration(value: Any) -> float:
    seconds = as_duration(value)
    if seconds is None:
        fail('must be a finite duration, not "never"')
    return seconds


def choice_of(kind: type[StrEnum], noun: str) -> Converter:
    """A converter to one member of `kind`, suggesting the closest on a typo."""
    choices = [member.value for member in kind]
    listing = "choose from " + ", ".join(choices)

    def convert(value: Any) -> StrEnum:
        if not isinstance(value, str):
            fail(f"expected an {noun} ({', '.join(choices)}), got {type_name(value)}")
        if value not in choices:
            fail(f"unknown {noun} {brief(value)}", did_you_mean(value, choices) or listing)
        return kind(value)

    return convert


def one_or_many(convert: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    """A converter for one value or a non-empty list of them."""

    def convert_all(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            return (convert(value),)
        if not value:
            fail("empty list", "leave the key out to match anything")
        return each(value, convert)

    return convert_all


def each(values: list[Any], convert: Callable[[Any], T]) -> tuple[T, ...]:
    """Every element converted, or Invalid with the issues of every bad element."""
    results: list[T] = []
    issues: list[Issue] = []
    for index, value in enumerate(values):
        try:
            results.append(convert(value))
        except Invalid as bad:
            issues.extend(dataclasses.replace(i, at=(index, *i.at)) for i in bad.issues)
    if issues:
        raise Invalid(*issues)
    return tuple(results)


# --- where keys are: tomllib reports no positions, so a small scanner finds them -------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "key" (a bare word or a string), "nl", or the punctuation character itself
    text: str
    line: int
    string: bool = False  # a key token that was quoted: never a number


class _Confused(Exception):
    """The scanner met something it does not understand; the lines found so far stand."""


_PUNCTUATION = frozenset("[]{}=,.")
_WORD = re.compile(r"[^\s#\[\]{}=,.\"']+")
_STRING = re.compile(  # multi-line forms first; a closing run may hold up to two extra quotes
    r'"""(?:[^\\]|\\.)*?"{3,5}|' r"'''.*?'{3,5}|" r'"(?:[^"\\\n]|\\.)*"|' r"'[^'\n]*'",
    re.DOTALL,
)


def _tokens(text: str) -> Iterator[_Token]:
    line, at = 1, 0
    while at < len(text):
        char = text[at]
        if char == "\n":
            yield _Token("nl", char, line)
            line, at = line + 1, at + 1
        elif char in " \t\r":
            at += 1
        elif char == "#":
            end = text.find("\n", at)
            at = len(text) if end < 0 else end
        elif char in _PUNCTUATION:
            yield _Token(char, char, line)
            at += 1
        else:
            found = (_STRING if char in "\"'" else _WORD).match(text, at)
            if found is None:
                raise _Confused(f"line {line}")
            word = found[0]
            quoted = word[0] in "\"'" and not word.startswith(('"""', "'''"))
            yield _Token("key", word[1:-1] if quoted else word, line, string=word[0] in "\"'")
            line, at = line + word.count("\n"), found.end()


class KeyScanner:
    """Maps each key path (and table header, and array element) to the line it starts on.

    Only ever run on text tomllib accepted; on anything surprising it stops and keeps what it
    found, so a problem then has no line rather than a wrong one.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[_Token] = []
        self.at = 0
        self.lines: dict[KeyPath, int] = {}
        self.arrays: dict[KeyPath, int] = {}  # [[array]] path -> index of its current table

    def scan(self) -> dict[KeyPath, int]:
        try:
            self.tokens = list(_tokens(self.text))
            table: KeyPath = ()
            while self.at < len(self.tokens):
                kind = self.tokens[self.at].kind
                if kind == "nl":
                    self.at += 1
                elif kind == "[":
                    table = self._header()
                else:
                    self._key_value(table)
                    if self.at < len(self.tokens):
                        self._expect("nl")
        except _Confused:
            pass
        return self.lines

    def _next(self) -> _Token:
        if self.at >= len(self.tokens):
            raise _Confused("end of text")
        self.at += 1
        return self.tokens[self.at - 1]

    def _peek_kind(self) -> str:
        return self.tokens[self.at].kind if self.at < len(self.tokens) else ""

    def _expect(self, kind: str) -> _Token:
        token = self._next()
        if token.kind != kind:
            raise _Confused(f"line {token.line}: {token.text!r} where {kind!r} belongs")
        return token

    def _key(self) -> KeyPath:
        parts: KeyPath = (self._expect("key").text,)
        while self._peek_kind() == ".":
            self._next()
            parts = (*parts, self._expect("key").text)
        return parts

    def _header(self) -> KeyPath:
        opening = self._expect("[")
        is_array = self._peek_kind() == "["
        if is_array:
            self._next()
        keys = self._key()
        self._expect("]")
        if is_array:
            self._expect("]")
        path = (*self._resolve(keys[:-1]), keys[-1])
        if is_array:
            self.arrays[path] = self.arrays.get(path, -1) + 1
            path = (*path, self.arrays[path])
        self.lines.setdefault(path, opening.line)
        return path

    def _resolve(self, keys: KeyPath) -> KeyPath:
        """`keys` with the current index inserted after each array of tables."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            if path in self.arrays:
                path = (*path, self.arrays[path])
        return path

    def _key_value(self, table: KeyPath) -> None:
        line = self.tokens[self.at].line if self.at < len(self.tokens) else 0
        path = (*table, *self._key())
        self._expect("=")
        for end in range(len(table) + 1, len(path) + 1):
            self.lines.setdefault(path[:end], line)
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        token = self._next()
        if token.kind == "{":
            if self._peek_kind() == "}":
                self._next()
                return
            while True:
                self._key_value(path)
                if self._closes("}"):
                    return
        elif token.kind == "[":
            index = 0
            while True:
                self._skip_newlines()
                if self._peek_kind() == "]":
                    self._next()
                    return
                self.lines.setdefault((*path, index), self.tokens[self.at].line)
                self._value((*path, index))
                index += 1
                self._skip_newlines()
                if self._closes("]"):
                    return
        elif token.kind == "key":
            while self._peek_kind() in ("key", "."):  # 1.5, 1979-05-27 07:32:00.5
                self._next()
        else:
            raise _Confused(f"line {token.line}: {token.text!r} where a value belongs")

    def _closes(self, closing: str) -> bool:
        """After an element: True at the closing bracket, False at a comma."""
        token = self._next()
        if token.kind not in (closing, ","):
            raise _Confused(f"line {token.line}: {token.text!r} after an element")
        return token.kind == closing

    def _skip_newlines(self) -> None:
        while self._peek_kind() == "nl":
            self._next()
