"""Path patterns: a script's PATH_IN / PATH_OUT, forwards (record -> paths) and backwards.

A pattern is a tuple of path parts relative to the dataset folder; parts may hold the
placeholders ``{id}`` and ``{task}``. Matching works part by part, so a record ID can never
span a folder separator, whatever regex `id_pattern` is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RecordIdError

FIELDS = ("id", "task")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

#: Prefix of the temporary names outputs are written under before their atomic rename.
TEMP_PREFIX = ".sinagot-tmp-"


def check_record_id(record_id: object, id_regex: re.Pattern[str]) -> str:
    """Return `record_id` if it is a valid ID; raise `RecordIdError` naming it otherwise."""
    if not isinstance(record_id, str):
        raise RecordIdError(f"record ID {record_id!r} is not a string")
    if record_id in ("", ".", "..") or any(c in record_id for c in "/\\\0"):
        raise RecordIdError(
            f"record ID {record_id!r} could reach outside the data folder "
            "(it is empty, '.', '..', or holds a path separator)"
        )
    if not id_regex.fullmatch(record_id):
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
    ) -> tuple[re.Pattern[str] | str, ...]:
        """One compiled regex per part holding a placeholder; literal parts stay strings."""
        task_alt = "|".join(re.escape(t) for t in tasks) if tasks is not None else r"[^/]+"
        compiled: list[re.Pattern[str] | str] = []
        for part in self.parts:
            pieces = _split_part(part)
            if not any(p in ("{id}", "{task}") for p in pieces):
                compiled.append(part)
                continue
            seen: set[str] = set()
            out = []
            for piece in pieces:
                if piece in ("{id}", "{task}"):
                    name = piece[1:-1]
                    if name in seen:
                        out.append(f"(?P={name})")
                    else:
                        seen.add(name)
                        body = embeddable(id_regex.pattern) if name == "id" else task_alt
                        out.append(f"(?P<{name}>{body})")
                else:
                    out.append(re.escape(piece))
            compiled.append(re.compile("".join(out)))
        return tuple(compiled)

    def compile(self, id_regex: re.Pattern[str], tasks: Iterable[str] | None = None) -> Matcher:
        return Matcher(self, self.part_regexes(id_regex, tasks), id_regex)


@dataclass(frozen=True, slots=True)
class Match:
    record_id: str
    task: str | None
    relative: str


class Matcher:
    """A pattern compiled against `id_pattern` and the known tasks: maps paths back to records."""

    __slots__ = ("_id_regex", "_parts", "pattern")

    def __init__(
        self,
        pattern: PathPattern,
        parts: tuple[re.Pattern[str] | str, ...],
        id_regex: re.Pattern[str],
    ) -> None:
        self.pattern = pattern
        self._parts = parts
        self._id_regex = id_regex

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
        if record_id is None:
            return None
        try:
            check_record_id(record_id, self._id_regex)
        except RecordIdError:
            return None
        return Match(record_id, bound.get("task"), relative)

    def scan(self, root: Path) -> Iterator[Match]:
        """Every existing path under `root` that matches, listing each folder once."""
        yield from self._scan(str(root), 0, {}, [])

    def record_ids(self, root: Path) -> Iterator[str]:
        """The record IDs of `scan`, fast when only the file name holds a placeholder
        (`raw/{id}-raw.csv`): one `os.listdir` and one regex per name."""
        *folders, last = self._parts
        if any(not isinstance(p, str) for p in folders) or last.groupindex.keys() != {"id"}:
            yield from (m.record_id for m in self.scan(root))
            return
        try:
            names = os.listdir(os.path.join(root, *folders))
        except (FileNotFoundError, NotADirectoryError):
            return
        fullmatch, valid = last.fullmatch, self._id_regex.fullmatch
        for name in names:
            m = fullmatch(name)
            if m is None or name.startswith(TEMP_PREFIX):
                continue
            record_id = m.group("id")
            if valid(record_id) and record_id not in (".", "..") and "\\" not in record_id:
                yield record_id

    def _scan(self, folder: str, depth: int, bound: dict[str, str], rel: list[str]):
        part = self._parts[depth]
        last = depth == len(self._parts) - 1
        if isinstance(part, str):
            path = os.path.join(folder, part)
            if last:
                if os.path.lexists(path) and (m := self._to_match(bound, "/".join([*rel, part]))):
                    yield m
            elif os.path.isdir(path):
                yield from self._scan(path, depth + 1, bound, [*rel, part])
            return
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return
        with entries:
            for entry in entries:
                name = entry.name
                if name.startswith(TEMP_PREFIX):
                    continue
                here = dict(bound)
                if not _bind(part, name, here):
                    continue
                if last:
                    if m := self._to_match(here, "/".join([*rel, name])):
                        yield m
                elif entry.is_dir():
                    yield from self._scan(entry.path, depth + 1, here, [*rel, name])


def _bind(regex: re.Pattern[str], name: str, bound: dict[str, str]) -> bool:
    """Match one path part, adding its fields to `bound`; False on a clash with earlier parts."""
    m = regex.fullmatch(name)
    if m is None:
        return False
    return all(bound.setdefault(key, value) == value for key, value in m.groupdict().items())
