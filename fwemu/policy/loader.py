"""TOML policy files -> the frozen model of `model.py`, or one PolicyError listing every problem.

The only code that sees raw TOML. It reads the whole file before failing, so a user fixes every
mistake in one round, and each problem names the file, line (when known) and key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from fwemu.errors import FwemuError
from fwemu.policy.duration import DurationError, parse_duration, type_name
from fwemu.policy.model import (
    ExpireAction,
    IPNetwork,
    Match,
    OnExpire,
    OutOfState,
    OutOfStateAction,
    Phase,
    Policy,
    PortRange,
    Profile,
    Rule,
    Timeouts,
)

# The conntrack states (fields of Timeouts) each phase covers; a phase name in `[timeouts]` sets
# all of them. SYN_SENT2 shares syn_sent's timer (see Timeouts).
PHASE_STATES: Mapping[Phase, tuple[str, ...]] = {
    Phase.EMBRYONIC: ("syn_sent", "syn_recv"),
    Phase.ESTABLISHED: ("established",),
    Phase.HALF_CLOSED: ("fin_wait", "close_wait"),
    Phase.CLOSING: ("last_ack",),
    Phase.TIME_WAIT: ("time_wait",),
    Phase.CLOSE: ("close",),
}
_SHORTCUTS = {p.value: s for p, s in PHASE_STATES.items() if s != (p.value,)}
_STATES = tuple(f.name for f in dataclasses.fields(Timeouts))

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


class PolicyError(FwemuError):
    """Every problem found in one policy; str() is one line per problem."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """The policy in the TOML file at `path`; problems name the file as given."""
    origin = os.fspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError([Problem(origin, "", f"cannot read: {err.strerror or err}")]) from None
    except UnicodeDecodeError:
        raise PolicyError([Problem(origin, "", "cannot read: not UTF-8 text")]) from None
    return loads_policy(text, origin)


def loads_policy(text: str, origin: str = "<string>", *, default_name: str | None = None) -> Policy:
    """The policy in TOML `text`. `origin` names it in messages; `[policy] name` defaults to
    `default_name`, else to the stem of `origin`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError([_syntax_problem(str(err), text, origin)]) from None
    reader = _Reader(origin, _KeyScanner(text).scan())
    policy = _policy(document, reader, default_name or Path(origin).stem)
    if reader.problems:
        raise PolicyError(sorted(reader.problems, key=lambda p: (p.line is None, p.line or 0)))
    return policy


def _syntax_problem(message: str, text: str, origin: str) -> Problem:
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
class _Issue:
    at: KeyPath  # below the key being converted: list indices
    message: str
    hint: str | None = None


class _Invalid(Exception):
    """Raised by converters; carries every issue found in one value."""

    def __init__(self, *issues: _Issue) -> None:
        super().__init__(issues)
        self.issues = issues


def _fail(message: str, hint: str | None = None) -> NoReturn:
    raise _Invalid(_Issue((), message, hint))


Converter = Callable[[Any], Any]


class _Reader:
    """Collects problems with their line numbers while the document is walked."""

    def __init__(self, origin: str, lines: Mapping[KeyPath, int]) -> None:
        self.origin = origin
        self.lines = lines
        self.problems: list[Problem] = []

    def problem(self, path: KeyPath, message: str, hint: str | None = None) -> None:
        shown = _show(path)
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
            hint = (hints or {}).get(key) or _did_you_mean(key, allowed)
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
            except _Invalid as bad:
                for issue in bad.issues:
                    self.problem((*path, key, *issue.at), issue.message, issue.hint)
        return values


def _did_you_mean(word: str, choices: Collection[str]) -> str | None:
    close = difflib.get_close_matches(word.lower().replace("_", "-"), choices, n=1)
    if not close:
        close = difflib.get_close_matches(word.lower().replace("-", "_"), choices, n=1)
    return f"did you mean {close[0]!r}?" if close else None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _show(path: KeyPath) -> str:
    shown = ""
    for part in path:
        if isinstance(part, int):
            shown += f"[{part + 1}]"
        else:
            key = part if _BARE_KEY.fullmatch(part) else f'"{part}"'
            shown += f".{key}" if shown else key
    return shown


# --- converters: raw TOML value -> model value, or _Invalid ---------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        _fail(f"expected a string, got {type_name(value)}")
    return value


def _name(value: Any) -> str:
    name = _text(value)
    if not name.strip():
        _fail("must not be empty")
    return name


def _texts(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        _fail(f"expected a list of strings, got {type_name(value)}")
    return _each(value, _text)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(f"expected true or false, got {type_name(value)}")
    return value


def _duration(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except DurationError as err:
        _fail(err.message, err.hint)


def _finite_duration(value: Any) -> float:
    seconds = _duration(value)
    if seconds is None:
        _fail('must be a finite duration, not "never"')
    return seconds


def _choice(kind: type[StrEnum], noun: str) -> Converter:
    """A converter to one member of `kind`, suggesting the closest on a typo."""
    choices = [member.value for member in kind]
    listing = "choose from " + ", ".join(choices)

    def convert(value: Any) -> StrEnum:
        if not isinstance(value, str):
            _fail(f"expected an {noun} ({', '.join(choices)}), got {type_name(value)}")
        if value not in choices:
            _fail(f"unknown {noun} {value!r}", _did_you_mean(value, choices) or listing)
        return kind(value)

    return convert


_expire_action = _choice(ExpireAction, "action")
_oos_action = _choice(OutOfStateAction, "action")


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        _fail(f'expected an IP network like "10.0.0.0/24", got {type_name(value)}')
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        _fail(f"{value!r} is not an IP network", 'use CIDR like "10.0.0.0/24" or "2001:db8::/32"')
    _fail(f"{value!r} has host bits set", f"did you mean '{loose}'?")


_PORT_TEXT = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")
_MAX_PORT = 65535


def _port_range(value: Any) -> PortRange:
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and (found := _PORT_TEXT.fullmatch(value)):
        low, high = int(found[1]), int(found[2] or found[1])
    else:
        shown = repr(value) if isinstance(value, str) else type_name(value)
        _fail(f'expected a port or a range like "8000-8100", got {shown}')
    for port in (low, high):
        if not 0 <= port <= _MAX_PORT:
            _fail(f"port {port} is out of range 0-{_MAX_PORT}")
    if low > high:
        _fail(f"port range {value!r} is reversed", f"did you mean '{high}-{low}'?")
    return PortRange(low, high)


def _one_or_many(convert: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    """A converter for one value or a non-empty list of them."""

    def convert_all(value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            return (convert(value),)
        if not value:
            _fail("empty list", "leave the key out to match anything")
        return _each(value, convert)

    return convert_all


def _each(values: list[Any], convert: Callable[[Any], T]) -> tuple[T, ...]:
    """Every element converted, or _Invalid with the issues of every bad element."""
    results: list[T] = []
    issues: list[_Issue] = []
    for index, value in enumerate(values):
        try:
            results.append(convert(value))
        except _Invalid as bad:
            issues.extend(dataclasses.replace(i, at=(index, *i.at)) for i in bad.issues)
    if issues:
        raise _Invalid(*issues)
    return tuple(results)


# --- the schema -----------------------------------------------------------------------------

_TOP_LEVEL = ("policy", "timeouts", "on_expire", "out_of_state", "rule")
_RULE_KEYS = ("name", "match", "timeouts", "on_expire", "out_of_state")
_META: Mapping[str, Converter] = {"name": _name, "description": _text, "sources": _texts}
_TIMEOUTS: Mapping[str, Converter] = dict.fromkeys((*_SHORTCUTS, *_STATES), _duration)
_ON_EXPIRE: Mapping[str, Converter] = dict.fromkeys(("default", *Phase), _expire_action)
_ON_EXPIRE_HINTS = {
    state: f"on_expire is per phase: did you mean {phase.value!r}?"
    for phase, states in PHASE_STATES.items()
    for state in states
    if state != phase.value
}
_OUT_OF_STATE: Mapping[str, Converter] = {
    "action": _oos_action,
    "from_client": _oos_action,
    "from_server": _oos_action,
    "pickup": _flag,
    "remember": _finite_duration,
}
_MATCH: Mapping[str, Converter] = {
    "src": _one_or_many(_network),
    "dst": _one_or_many(_network),
    "src_port": _one_or_many(_port_range),
    "dst_port": _one_or_many(_port_range),
}


def _policy(document: dict[str, Any], reader: _Reader, default_name: str) -> Policy:
    reader.known_keys(document, (), _TOP_LEVEL)
    meta = reader.read(reader.section(document, "policy", ()), ("policy",), _META)
    linux = Profile("default", Timeouts(), OnExpire(), OutOfState())
    default = _profile("default", document, (), linux, reader)
    return Policy(
        name=meta.get("name", default_name),
        default=default,
        rules=_rules(document.get("rule"), default, reader),
        description=meta.get("description", ""),
        sources=meta.get("sources", ()),
        origin=reader.origin,
    )


def _profile(
    name: str, tables: Mapping[str, Any], path: KeyPath, base: Profile, reader: _Reader
) -> Profile:
    """`base` with the `timeouts`, `on_expire` and `out_of_state` tables in `tables` over it."""

    def read(key: str, converters: Mapping[str, Converter], **hints: str) -> dict[str, Any]:
        table = reader.section(tables, key, path)
        return reader.read(table, (*path, key), converters, hints)

    timeouts = read("timeouts", _TIMEOUTS)
    states = {s: timeouts[p] for p, ss in _SHORTCUTS.items() if p in timeouts for s in ss}
    states.update((s, timeouts[s]) for s in _STATES if s in timeouts)  # exact names win

    on_expire = read("on_expire", _ON_EXPIRE, **_ON_EXPIRE_HINTS)
    fallback = on_expire.get("default")
    phases = {
        p.value: on_expire.get(
            p.value, base.on_expire.for_phase(p) if fallback is None else fallback
        )
        for p in Phase
    }
    return Profile(
        name=name,
        timeouts=dataclasses.replace(base.timeouts, **states),
        on_expire=OnExpire(**phases),
        out_of_state=dataclasses.replace(base.out_of_state, **read("out_of_state", _OUT_OF_STATE)),
    )


def _rules(value: Any, default: Profile, reader: _Reader) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        reader.problem(("rule",), f"expected an array of tables ([[rule]]), got {type_name(value)}")
        return ()
    first_index: dict[str, int] = {}
    rules = []
    for index, table in enumerate(value):
        path: KeyPath = ("rule", index)
        reader.known_keys(table, path, _RULE_KEYS)
        name = _rule_name(table, index, first_index, reader)
        if "match" not in table:
            reader.problem(path, "missing 'match'", "use match = {} to match every flow")
        match = reader.read(reader.section(table, "match", path), (*path, "match"), _MATCH)
        rules.append(Rule(Match(**match), _profile(name, table, path, default, reader)))
    return tuple(rules)


def _rule_name(
    table: Mapping[str, Any], index: int, first_index: dict[str, int], reader: _Reader
) -> str:
    """The rule's name, checked for presence and uniqueness (a stand-in when it is bad)."""
    path: KeyPath = ("rule", index)
    if "name" not in table:
        reader.problem(path, "missing 'name'", 'every rule needs a unique name, like name = "web"')
        return _show(path)
    name: str | None = reader.read({"name": table["name"]}, path, {"name": _name}).get("name")
    if name is None:
        return _show(path)
    if name == "default":
        reader.problem((*path, "name"), "'default' is the name of the policy's own profile")
    elif name in first_index:
        first = _show(("rule", first_index[name]))
        reader.problem((*path, "name"), f"duplicate rule name {name!r}", f"{first} has it too")
    else:
        first_index[name] = index
    return name


# --- where keys are: tomllib reports no positions, so a small scanner finds them -------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "key" (a bare word or a string), "nl", or the punctuation character itself
    text: str
    line: int


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
            yield _Token("key", word[1:-1] if quoted else word, line)
            line, at = line + word.count("\n"), found.end()


class _KeyScanner:
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
