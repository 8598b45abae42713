r"""Path patterns: a script's PATH_IN / PATH_OUT, forwards (record -> paths) and backwards.

A pattern is a tuple of path parts relative to the dataset folder; parts may hold the
placeholders ``{id}`` and ``{task}``. Matching works part by part, so a record ID can never
span a folder separator, whatever regex `id_pattern` is.

Matching a name is bounded work, because names come from whoever can drop a file in the
dataset. Python's `re` backtracks: with `id_pattern = 'REC-([a-z0-9]+-?)+'` a crafted
28-character name takes seconds to refuse, four times longer per two more characters, and
one such file would stall discovery and the daemon. So names are matched with RE2
(`google-re2`), in time linear in their length, and so are record IDs a user types (both
must agree). RE2 has no lookaround and no backreferences: `check_linear` says so for an
`id_pattern` that uses them (the configuration refuses it at load), and a placeholder
repeated within one part (`{id}_{id}.csv`) is matched as two groups that must then hold the
same text. RE2's `\d`, `\w`, `\s` and `\b` are ASCII, as with Python's `re.ASCII`.

A name longer than `NAME_MAX` bytes names no record (no file system holds one). A name that
is not valid UTF-8 never becomes a record ID, since an ID ends up in JSON, SQLite and
terminals; discovery reports one that would match as a `PathProblem` instead.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import stat as stat_module
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import re2

from .errors import ConfigError, RecordIdError, SinagotError

FIELDS = ("id", "task")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

#: Prefix of the temporary names outputs are written under before their atomic rename.
TEMP_PREFIX = ".sinagot-tmp-"

#: The longest file name, in bytes, that Linux file systems hold: longer names are no record's.
NAME_MAX = 255


# -- paths that exist but cannot be read ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathProblem:
    """A dataset path that exists but cannot be read, and why, for a user to see."""

    path: str  # dataset-relative, printable (see `printable`)
    error: str  # one line


class PathUnreadable(SinagotError):
    """A path exists but cannot be read (a link loop, no permission, a FIFO where a file is
    expected): raised by lookups so that planning can say so for that unit alone."""

    def __init__(self, path: str, error: str) -> None:
        super().__init__(f"{path} cannot be read: {error}")
        self.path = path
        self.error = error

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.path, self.error)  # a worker's error must unpickle

    @property
    def problem(self) -> PathProblem:
        return PathProblem(self.path, self.error)


def printable(path: str) -> str:
    """`path` as one printable line: undecodable bytes as \\xNN, control characters escaped.

    Names listed from the file system may hold bytes that are not UTF-8 (surrogate-escaped
    in `str`) or newlines; either would break a JSON event, a log line or a terminal.
    """
    try:
        data = os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate that no file name decodes to
        data = path.encode("utf-8", "backslashreplace")
    text = data.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


_OS_REASONS = {
    errno.ELOOP: "symbolic link loop",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.ENAMETOOLONG: "name too long",
}


def os_reason(exc: OSError) -> str:
    """A short, lower-case reason for an OS error, without the path it names."""
    if exc.errno in _OS_REASONS:
        return _OS_REASONS[exc.errno]
    text = exc.strerror or type(exc).__name__
    return text[:1].lower() + text[1:]


# -- bounded matching ------------------------------------------------------------------------

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # RE2 would print each refused pattern on stderr
_BOTH = re2._Anchor.ANCHOR_BOTH
_LOOKAROUND = ("(?=", "(?!", "(?<=", "(?<!")
_EMPTY_MIN = re.compile(r"(?<!\\)\{,\d*\}")


def check_linear(id_pattern: str) -> str | None:
    """Why `id_pattern` cannot be matched in linear time (RE2), or None when it can.

    For the configuration, so that such a pattern is refused at load, in words, rather
    than when the first file name is matched.
    """
    why = None
    if _EMPTY_MIN.search(id_pattern):
        why = "write {0,n} for 'at most n': RE2 reads {,n} as literal text"
    else:
        try:
            _compile(f"(?P<id>{embeddable(id_pattern)})(?P<task>x)")
        except re2.error as exc:
            why = _re2_reason(exc)
    if why is None:
        return None
    return (
        f"{id_pattern!r} cannot be matched in bounded time: {why} (file names are matched "
        "with RE2, in time linear in their length, so that no file name can stall sinagot)"
    )


def _re2_reason(exc: re2.error) -> str:
    text = exc.args[0].decode(errors="replace") if exc.args else "refused"
    operator = text.rpartition(": ")[2]
    if operator.startswith(_LOOKAROUND):
        return "RE2 has no lookahead or lookbehind ((?=, (?!, (?<=, (?<!)"
    if operator.startswith("(?P") or operator[:2] in {f"\\{d}" for d in "123456789"}:
        return "RE2 has no backreferences"
    if operator.startswith("(?") and text.startswith("invalid perl operator"):
        return (
            f"RE2 does not know {operator}; its flags are i, m, s and U, and its \\d, \\w, "
            "\\s and \\b are ASCII already"
        )
    return f"RE2 refuses it ({text})"


def _compile(pattern: str):  # RE2's compiled program: it has no public type
    """RE2's compiled program for `pattern`, matched on UTF-8 bytes.

    The program's own `Match` is called rather than `re2.compile(...).fullmatch`: the
    wrapper builds a generator and a match object per call, 20 times the cost of `re`, and
    discovery matches every name in a folder.
    """
    return re2.compile(pattern.encode(), _OPTIONS)._regexp


class PartRegex:
    """One path part holding placeholders, compiled by RE2: a name -> its fields, or None.

    `pieces` are the part's literal text and placeholders (`'{id}'`), `bodies` the regex of
    each field. A field twice in one part (`{id}_{id}.csv`) would need a backreference, which
    RE2 lacks: each copy is its own group, and when RE2's split of a name gives the copies
    different text, the splits that give them equal lengths are tried, longest first field
    first as a backtracking engine would (one per length: at most NAME_MAX + 1).
    """

    __slots__ = (
        "_checks", "_ends", "_fields", "_match", "bodies", "names", "pattern", "pieces",
    )  # fmt: skip

    def __init__(self, pieces: Sequence[str], bodies: Mapping[str, str]) -> None:
        self.pieces = tuple(pieces)
        self.bodies = dict(bodies)
        self.names = tuple(p[1:-1] for p in self.pieces if p in _FIELD_PIECES)
        groups, out = [], []
        for piece in self.pieces:
            if piece in _FIELD_PIECES:
                name = piece[1:-1]
                group = f"{name}__{len(groups)}" if name in self.names[: len(groups)] else name
                groups.append((name, group))
                out.append(f"(?P<{group}>{self.bodies[name]})")
            else:
                out.append(re2.escape(piece))
        self.pattern = "".join(out)
        # Its literal start and end: most names that do not match are told by them alone,
        # without a call into RE2 (which releases the GIL and waits to get it back).
        self._ends = (
            self.pieces[0] if self.pieces[0] not in _FIELD_PIECES else "",
            self.pieces[-1] if self.pieces[-1] not in _FIELD_PIECES else "",
        )
        program = _checked(self.pattern)
        index = {name.decode(): i for name, i in program.NamedCapturingGroups()}
        self._fields = tuple((name, index[group]) for name, group in groups)
        self._match = program.Match
        self._checks = (
            {name: _checked(self.bodies[name]).Match for name in self.names}
            if len(set(self.names)) < len(self.names)
            else {}
        )

    def __reduce__(self) -> tuple[type, tuple[tuple[str, ...], dict[str, str]]]:
        return type(self), (self.pieces, self.bodies)

    def fullmatch(self, name: str) -> dict[str, str] | None:
        """The fields `name` binds when it matches as a whole."""
        start, end = self._ends
        if not (name.startswith(start) and name.endswith(end)):
            return None
        try:
            data = name.encode()
        except UnicodeEncodeError:
            return None  # not UTF-8: never an ID (see `undecodable_match`)
        if len(data) > NAME_MAX:
            return None
        spans = self._match(_BOTH, data, 0, len(data))
        if spans[0][0] < 0:
            return None
        bound: dict[str, str] = {}
        for field_name, index in self._fields:
            start, end = spans[index]
            value = data[start:end].decode()
            if bound.setdefault(field_name, value) != value:
                return self._agreeing_split(name)
        return bound

    def undecodable_match(self, name: str) -> bool:
        """Would a name that is not UTF-8 match if its odd bytes were ordinary characters?"""
        data = os.fsencode(name).decode("utf-8", "replace").encode()
        return len(data) <= NAME_MAX and self._match(_BOTH, data, 0, len(data))[0][0] >= 0

    def _agreeing_split(self, name: str) -> dict[str, str] | None:
        counts = {field_name: self.names.count(field_name) for field_name in self.names}
        first, *others = counts  # id and task are the only fields: at most one other
        free = len(name) - sum(len(p) for p in self.pieces if p not in _FIELD_PIECES)
        for length in range(free // counts[first], -1, -1):
            lengths = {first: length}
            left = free - counts[first] * length
            for other in others:
                lengths[other], left = divmod(left, counts[other])
            if not left and (bound := self._cut(name, lengths)) is not None:
                return bound
        return None

    def _cut(self, name: str, lengths: Mapping[str, int]) -> dict[str, str] | None:
        """The fields of `name` cut at these lengths, if the literals and copies agree."""
        bound: dict[str, str] = {}
        at = 0
        for piece in self.pieces:
            if piece in _FIELD_PIECES:
                field_name = piece[1:-1]
                value = name[at : at + lengths[field_name]]
                if bound.setdefault(field_name, value) != value:
                    return None
                at += lengths[field_name]
            elif name.startswith(piece, at):
                at += len(piece)
            else:
                return None
        for field_name, value in bound.items():
            data = value.encode()
            if self._checks[field_name](_BOTH, data, 0, len(data))[0][0] < 0:
                return None
        return bound


_FIELD_PIECES = frozenset(f"{{{name}}}" for name in FIELDS)


def _checked(pattern: str):  # RE2's compiled program: it has no public type
    try:
        return _compile(pattern)
    except re2.error as exc:
        raise ConfigError(f"{pattern!r} cannot be matched: {_re2_reason(exc)}") from None


@functools.lru_cache(maxsize=64)
def _id_program(id_pattern: str) -> PartRegex:
    return PartRegex(("{id}",), {"id": embeddable(id_pattern)})


def _contextual(embedded: str) -> bool:
    """May the ID group match text that `id_pattern` alone would not? Only if it asserts
    something about its surroundings (anchors, word boundaries): checked conservatively."""
    return any(token in embedded for token in ("^", "$", "\\b", "\\B", "\\A", "\\z"))


def check_record_id(record_id: object, id_regex: re.Pattern[str]) -> str:
    """Return `record_id` if it is a valid ID; raise `RecordIdError` naming it otherwise."""
    if not isinstance(record_id, str):
        raise RecordIdError(f"record ID {record_id!r} is not a string")
    if record_id in ("", ".", "..") or any(c in record_id for c in "/\\\0"):
        raise RecordIdError(
            f"record ID {record_id!r} could reach outside the data folder "
            "(it is empty, '.', '..', or holds a path separator)"
        )
    if len(record_id.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise RecordIdError(
            f"record ID {printable(record_id)[:40]!r}... is longer than {NAME_MAX} bytes, "
            "the longest file name"
        )
    if _id_program(id_regex.pattern).fullmatch(record_id) is None:
        raise RecordIdError(
            f"record ID {record_id!r} does not match id_pattern {id_regex.pattern!r}"
        )
    return record_id


_LEADING_FLAGS = re.compile(r"\(\?([aiLmsux]+)\)")


def embeddable(id_pattern: str) -> str:
    """`id_pattern` rewritten to sit inside a larger regex with the same meaning.

    IDs are always matched whole, so anchors go; leading global flags such as `(?i)` become
    a scoped group `(?i:...)`, since Python refuses global flags mid-expression.
    """
    flags = ""
    while m := _LEADING_FLAGS.match(id_pattern):
        flags += m.group(1)
        id_pattern = id_pattern[m.end() :]
    for anchor in ("^", "\\A"):
        if id_pattern.startswith(anchor):
            id_pattern = id_pattern[len(anchor) :]
    for anchor in ("$", "\\Z", "\\z"):
        if id_pattern.endswith(anchor) and not id_pattern.endswith("\\" + anchor):
            id_pattern = id_pattern[: -len(anchor)]
    return f"(?{flags}:{id_pattern})" if flags else f"(?:{id_pattern})"


def _split_part(part: str) -> list[str]:
    """Split one part into literal text and field names, validating the placeholders."""
    pieces: list[str] = []
    last = 0
    for m in _PLACEHOLDER.finditer(part):
        if m.group(1) not in FIELDS:
            raise ValueError(
                f"unknown placeholder {{{m.group(1)}}} in {part!r} (use {{id}} or {{task}})"
            )
        pieces.extend((part[last : m.start()], "{" + m.group(1) + "}"))
        last = m.end()
    pieces.append(part[last:])
    if any("{" in p or "}" in p for p in pieces if not (p.startswith("{") and p.endswith("}"))):
        raise ValueError(f"stray brace in {part!r}")
    return [p for p in pieces if p]


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One path, relative to the dataset folder, as a tuple of parts."""

    parts: tuple[str, ...]
    template: str = field(init=False, repr=False, compare=False)
    has_task: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "template", "/".join(self.parts))
        object.__setattr__(self, "has_task", "{task}" in self.template)

    @classmethod
    def parse(cls, value: object) -> PathPattern:
        """Build a pattern from a script's tuple of strings; `ValueError` says what is wrong."""
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, tuple | list) or not value:
            raise ValueError(f"expected a tuple of path parts, found {value!r}")
        parts: list[str] = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"path part {item!r} is not a string")
            if item.startswith(("/", "\\")) or Path(item).is_absolute():
                raise ValueError(f"{tuple(value)!r} is absolute; paths are relative to the dataset")
            for part in item.replace("\\", "/").split("/"):
                if part in ("", "."):
                    continue
                if part == "..":
                    raise ValueError(f"'..' in {tuple(value)!r} would leave the dataset folder")
                _split_part(part)
                parts.append(part)
        if not parts:
            raise ValueError(f"empty path {tuple(value)!r}")
        if Path(value[0]).is_absolute():
            raise ValueError(f"{tuple(value)!r} is absolute; paths are relative to the dataset")
        return cls(tuple(parts))

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(m for p in self.parts for m in _PLACEHOLDER.findall(p))

    def __str__(self) -> str:
        return "/".join(self.parts)

    def relative(self, record_id: str, task: str | None) -> str:
        """The concrete path, relative to the dataset folder, with '/' separators."""
        text = self.template.replace("{id}", record_id)
        if self.has_task:
            if task is None:
                raise ValueError(f"pattern {self} needs a task, and this unit has none")
            text = text.replace("{task}", task)
        return text

    def resolve(self, root: Path, record_id: str, task: str | None) -> Path:
        return root / self.relative(record_id, task)

    def glob(self, task: str | None = None) -> str:
        """A glob (relative to the dataset folder) matching this pattern for any record."""
        text = str(self).replace("{id}", "*")
        return text.replace("{task}", task if task is not None else "*")

    def part_regexes(
        self, id_regex: re.Pattern[str], tasks: Iterable[str] | None = None
    ) -> tuple[PartRegex | str, ...]:
        """One compiled regex per part holding a placeholder; literal parts stay strings."""
        task_alt = "|".join(re2.escape(t) for t in tasks) if tasks is not None else r"[^/]+"
        bodies = {"id": embeddable(id_regex.pattern), "task": task_alt}
        compiled: list[PartRegex | str] = []
        for part in self.parts:
            pieces = _split_part(part)
            if any(p in _FIELD_PIECES for p in pieces):
                compiled.append(PartRegex(pieces, bodies))
            else:
                compiled.append(part)
        return tuple(compiled)

    def compile(self, id_regex: re.Pattern[str], tasks: Iterable[str] | None = None) -> Matcher:
        return Matcher(self, self.part_regexes(id_regex, tasks), id_regex)


@dataclass(frozen=True, slots=True)
class Match:
    record_id: str
    task: str | None
    relative: str


class Matcher:
    """A pattern compiled against `id_pattern` and the known tasks: maps paths back to records.

    Discovery (`scan`, `record_ids`) never raises for an odd entry: a folder it cannot list,
    or a name that is not UTF-8 but would match, is appended to `problems` when the caller
    passes a list (the daemon reports them), and skipped.
    """

    __slots__ = ("_check_id", "_parts", "pattern")

    def __init__(
        self,
        pattern: PathPattern,
        parts: tuple[PartRegex | str, ...],
        id_regex: re.Pattern[str],
    ) -> None:
        self.pattern = pattern
        self._parts = parts
        # The ID group matched id_pattern already, unless the pattern looks at its
        # surroundings (anchors, word boundaries): only then is the ID checked alone.
        self._check_id = (
            _id_program(id_regex.pattern).fullmatch
            if _contextual(embeddable(id_regex.pattern))
            else None
        )

    def reaches(self, names: Sequence[str]) -> bool:
        """Could a path this pattern matches lie in or below the folder these names lead to
        (dataset-relative, one name a level), or be that folder, or be a folder holding it?
        A name matches a part as `match` would match it, each part on its own: an answer
        errs only towards yes. What sinagotd watches (`Layout.may_hold`)."""
        for name, part in zip(names, self._parts, strict=False):
            if isinstance(part, str):
                if name != part:
                    return False
            elif part.fullmatch(name) is None and not part.undecodable_match(name):
                return False
        return True

    def match(self, relative: str) -> Match | None:
        """Map a dataset-relative path ('raw/REC-1-raw.csv') back to its record and task."""
        names = relative.split("/")
        if len(names) != len(self._parts):
            return None
        if any(name.startswith(TEMP_PREFIX) for name in names):
            return None  # a step's output on its way in, not data
        bound: dict[str, str] = {}
        for name, part in zip(names, self._parts, strict=True):
            if isinstance(part, str):
                if name != part:
                    return None
            elif not _bind(part, name, bound):
                return None
        return self._to_match(bound, relative)

    def _to_match(self, bound: Mapping[str, str], relative: str) -> Match | None:
        record_id = bound.get("id")
        if record_id is None or not self._valid(record_id):
            return None
        return Match(record_id, bound.get("task"), relative)

    def _valid(self, record_id: str) -> bool:
        if record_id in _NOT_IDS or "\\" in record_id or "\0" in record_id:
            return False
        return self._check_id is None or self._check_id(record_id) is not None

    def scan(self, root: Path, problems: list[PathProblem] | None = None) -> Iterator[Match]:
        """Every existing path under `root` that matches, listing each folder once."""
        yield from self._scan(str(root), 0, {}, [], problems)

    def record_ids(self, root: Path, problems: list[PathProblem] | None = None) -> Iterator[str]:
        """The record IDs of `scan`, fast when only the file name holds a placeholder
        (`raw/{id}-raw.csv`): one `os.listdir` and one match per name, no `stat`."""
        *folders, last = self._parts
        if (
            isinstance(last, str)
            or any(not isinstance(p, str) for p in folders)
            or last.names != ("id",)
        ):
            yield from (m.record_id for m in self.scan(root, problems))
            return
        try:
            names = os.listdir(os.path.join(root, *folders))
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            _note(problems, "/".join(folders) or ".", f"cannot list the folder: {os_reason(exc)}")
            return
        match, check = last._match, self._check_id
        ((_, index),) = last._fields
        for name in names:  # the hot loop of discovery: inlined, no call but RE2's
            try:
                data = name.encode()
            except UnicodeEncodeError:
                if problems is not None and last.undecodable_match(name):
                    _note(problems, "/".join([*folders, name]), _NOT_UTF8)
                continue
            spans = match(_BOTH, data, 0, len(data))  # listed names are <= NAME_MAX bytes
            if spans[0][0] < 0 or name.startswith(TEMP_PREFIX):
                continue
            start, end = spans[index]
            record_id = data[start:end].decode()
            if (
                record_id not in _NOT_IDS
                and "\\" not in record_id
                and (check is None or check(record_id) is not None)
            ):
                yield record_id

    def _scan(
        self,
        folder: str,
        depth: int,
        bound: dict[str, str],
        rel: list[str],
        problems: list[PathProblem] | None,
    ) -> Iterator[Match]:
        part = self._parts[depth]
        last = depth == len(self._parts) - 1
        if isinstance(part, str):
            path, here = os.path.join(folder, part), [*rel, part]
            try:
                st = os.lstat(path) if last else os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            except OSError as exc:
                _note(problems, "/".join(here), os_reason(exc))
                return
            if last:
                if m := self._to_match(bound, "/".join(here)):
                    yield m
            elif stat_module.S_ISDIR(st.st_mode):
                yield from self._scan(path, depth + 1, bound, here, problems)
            return
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            _note(problems, "/".join(rel) or ".", f"cannot list the folder: {os_reason(exc)}")
            return
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TEMP_PREFIX):
                    continue
                here = dict(bound)
                if not _bind(part, name, here):
                    if problems is not None and _undecodable(name) and part.undecodable_match(name):
                        _note(problems, "/".join([*rel, name]), _NOT_UTF8)
                    continue
                if last:
                    if m := self._to_match(here, "/".join([*rel, name])):
                        yield m
                    continue
                try:
                    is_dir = entry.is_dir()
                except OSError as exc:
                    _note(problems, "/".join([*rel, name]), os_reason(exc))
                    continue
                if is_dir:
                    yield from self._scan(entry.path, depth + 1, here, [*rel, name], problems)


_NOT_IDS = frozenset(("", ".", ".."))
_NOT_UTF8 = "the name is not valid UTF-8, so it cannot be a record's"


def _undecodable(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:
        return True
    return False


def _note(problems: list[PathProblem] | None, relative: str, error: str) -> None:
    if problems is not None:
        problems.append(PathProblem(printable(relative), error))


def _bind(regex: PartRegex, name: str, bound: dict[str, str]) -> bool:
    """Match one path part, adding its fields to `bound`; False on a clash with earlier parts."""
    fields = regex.fullmatch(name)
    if fields is None:
        return False
    return all(bound.setdefault(key, value) == value for key, value in fields.items())
