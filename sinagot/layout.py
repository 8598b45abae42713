"""Which units exist and which steps each runs: the validated config and script patterns.

`Scope` is a value (task, modality); `Layout` answers "which names narrow this scope" and
"which steps does this unit have". Nothing here reads or writes the data; the one file
written is a cache of the scripts' patterns in the state folder (below).

A step script with a syntax error does not stop a workspace from loading: one broken step
must not keep `sinagot status` or the daemon from the others. Its `StepSpec.broken` says
why, in one line, and its patterns are recovered in two ways, in this order:

1. from the source as it is now: the lines the parser rejects are blanked until the rest
   parses, and PATH_IN and PATH_OUT (with PATH_CONTROL, if stated) are taken if they are
   literals of the `Script` class that no blanked line touches. The file itself is the
   user's latest word, so this comes first (the patterns may have been edited together
   with the slip);
2. from the last good read: `<state_dir>/patterns.json`, which the workspace's writer (the
   daemon, a `sinagot run`) rewrites when it changed, so that a script whose class line
   itself is broken, or whose patterns are computed, is still known. Readers (`status`,
   `--dry-run`) never write it.

When neither knows the patterns, the load is refused, naming the file and the line.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from .config import Config
from .errors import ConfigError, ScriptError
from .patterns import Matcher, PathPattern, PathProblem
from .scripts import PATTERN_NAMES, read_patterns

#: The dataset's folder of per-record logs (`<dataset>/LOG/<id>.log`, see `recordlog`),
#: where sinagot 0.3 put them.
LOG_FOLDER = "LOG"
#: A unit key: (task, modality), either None where the config has none.
Key = tuple[str | None, str | None]


@dataclass(frozen=True, slots=True)
class Scope:
    task: str | None = None
    modality: str | None = None

    def describe(self) -> str:
        return f"task: {self.task}, modality: {self.modality}"

    @property
    def empty(self) -> bool:
        return self.task is None and self.modality is None


class Unit(NamedTuple):
    """One (record, task, modality): the thing whose steps run in order.

    A NamedTuple rather than a dataclass: planning builds one per unit, 100,000 at a time.
    """

    record_id: str
    task: str | None = None
    modality: str | None = None

    @property
    def key(self) -> str:
        """A readable, unique name: 'REC-1', 'REC-1-RS-EEG'."""
        if not self.task and not self.modality:  # most workspaces: asked for at every job
            return self.record_id
        return "-".join(p for p in (self.record_id, self.task, self.modality) if p)


@dataclass(frozen=True)
class Patterns:
    """A script's PATH_IN or PATH_OUT: one pattern, or a dict of labelled patterns."""

    items: tuple[tuple[str, PathPattern], ...]
    single: bool

    @classmethod
    def parse(cls, value: object) -> Patterns:
        if isinstance(value, dict):
            if not value:
                raise ValueError("empty dict")
            return cls(tuple((str(k), PathPattern.parse(v)) for k, v in value.items()), False)
        return cls((("", PathPattern.parse(value)),), True)

    @property
    def patterns(self) -> tuple[PathPattern, ...]:
        return tuple(p for _, p in self.items)

    def to_json(self) -> list[str] | dict[str, list[str]]:
        """The value `parse` takes back, as JSON can hold it."""
        if self.single:
            return list(self.items[0][1].parts)
        return {label: list(pattern.parts) for label, pattern in self.items}

    def relative(self, record_id: str, task: str | None) -> tuple[str, ...]:
        if self.single:
            return (self.items[0][1].relative(record_id, task),)
        return tuple(p.relative(record_id, task) for _, p in self.items)

    def shape(self, paths: tuple[Path, ...]) -> Path | dict[str, Path]:
        """Give paths back the shape the script declared: a Path or a dict of Paths."""
        if self.single:
            return paths[0]
        return {label: path for (label, _), path in zip(self.items, paths, strict=True)}


@dataclass(frozen=True)
class StepSpec:
    """One step as data: what a Dask worker needs to run it, and nothing that cannot pickle."""

    name: str
    modality: str | None
    script: Path
    inputs: Patterns
    outputs: Patterns
    broken: str | None = None  # one line: why its script cannot run ('x.py, line 3: ...')
    #: PATH_CONTROL (sinagot 0.3): paths the script may write besides its outputs; neither
    #: inputs nor outputs for staleness. None: the script declares none.
    control: Patterns | None = None

    @property
    def script_key(self) -> str:
        """The script's path as a string: the key of its code hash."""
        return str(self.script)


PATTERNS_FILE = "patterns.json"


class Layout:
    """The units and steps a config describes, with each step's patterns read once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._specs: dict[tuple[str | None, str], StepSpec] = {}
        self._units: dict[tuple[str | None, str | None], tuple[StepSpec, ...]] = {}
        if config.steps is not None:
            self._units[(None, None)] = tuple(self._spec(None, n) for n in config.steps)
        else:
            for task, modalities in config.tasks.items():
                for mod in modalities:
                    spec = config.modalities[mod]
                    names = (*spec.scripts, *spec.task_scripts.get(task, ()))
                    self._units[(task, mod)] = tuple(self._spec(mod, n) for n in names)
        for (task, _), steps in self._units.items():
            self._check_unit(task, steps)
        self._check_collisions()

    def _spec(self, modality: str | None, name: str) -> StepSpec:
        if (modality, name) not in self._specs:
            folder = self.config.scripts if modality is None else self.config.scripts / modality
            path = folder / f"{name}.py"
            raw, broken = _script_patterns(path)
            if raw is None:
                raw = self._remembered.get(str(path))
            if raw is None:
                raise ConfigError(
                    f"{broken} (its PATH_IN and PATH_OUT are known neither from the rest of "
                    "the file nor from an earlier load)"
                )
            raw_in, raw_out, raw_control = raw
            try:
                inputs = Patterns.parse(raw_in)
            except ValueError as exc:
                raise ConfigError(f"{path}: PATH_IN: {exc}") from None
            try:
                outputs = Patterns.parse(raw_out)
            except ValueError as exc:
                raise ConfigError(f"{path}: PATH_OUT: {exc}") from None
            try:
                control = None if raw_control is None else Patterns.parse(raw_control)
            except ValueError as exc:
                raise ConfigError(f"{path}: PATH_CONTROL: {exc}") from None
            for label, pattern in outputs.items:
                if "id" not in pattern.fields:
                    raise ConfigError(
                        f"{path}: {_where('PATH_OUT', label)} {pattern} must hold {{id}}"
                    )
            spec = StepSpec(name, modality, path, inputs, outputs, broken, control)
            self._specs[(modality, name)] = spec
        return self._specs[(modality, name)]

    @cached_property
    def _remembered(self) -> dict[str, tuple[object, object, object]]:
        """Script path -> (PATH_IN, PATH_OUT, PATH_CONTROL) of the last good read; only
        valid entries (PATH_CONTROL None when absent: a cache written before it existed)."""
        try:
            entries = json.loads((self.config.state_dir / PATTERNS_FILE).read_bytes())["scripts"]
            items = list(entries.items())
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return {}
        found = {}
        for script, entry in items:
            try:
                raw = entry["PATH_IN"], entry["PATH_OUT"], entry.get("PATH_CONTROL")
                for value in raw[:2] if raw[2] is None else raw:
                    Patterns.parse(value)
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
            found[script] = raw
        return found

    def remember_patterns(self) -> None:
        """Keep every step's patterns in `<state_dir>/patterns.json`, so that a later load
        knows them while a script does not parse. Does nothing without a state folder; a
        cache that cannot be written only makes that recovery less able."""
        folder = self.config.state_dir
        if not folder.is_dir():
            return
        scripts = {
            str(spec.script): {
                "PATH_IN": spec.inputs.to_json(),
                "PATH_OUT": spec.outputs.to_json(),
                **({"PATH_CONTROL": spec.control.to_json()} if spec.control is not None else {}),
            }
            for spec in self._specs.values()
        }
        text = json.dumps({"scripts": scripts}, indent=1, sort_keys=True) + "\n"
        target = folder / PATTERNS_FILE
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if target.read_text(encoding="utf-8") == text:
                return
        _write_atomically(target, text)

    def _check_unit(self, task: str | None, steps: tuple[StepSpec, ...]) -> None:
        for step in steps:
            control = step.control.patterns if step.control is not None else ()
            for pattern in (*step.inputs.patterns, *step.outputs.patterns, *control):
                if task is None and "task" in pattern.fields:
                    raise ConfigError(
                        f"{step.script}: {pattern} uses {{task}}, but this workspace has no tasks"
                    )
        if steps and not any("id" in p.fields for p in steps[0].inputs.patterns):
            raise ConfigError(
                f"{steps[0].script}: PATH_IN of a unit's first step must hold {{id}}, "
                "so that records can be found"
            )
        self._check_flow(task, steps)

    def _check_flow(self, task: str | None, steps: tuple[StepSpec, ...]) -> None:
        """Refuse a step that writes its own input (it would rerun forever), an input of an
        earlier step of its unit (a loop), or the recording (the first step's input)."""
        reads = [_concrete(step.inputs, "PATH_IN", task) for step in steps]
        for i, step in enumerate(steps):
            for path, (where, pattern) in _concrete(step.outputs, "PATH_OUT", task).items():
                if path in reads[i]:
                    own = reads[i][path][0]
                    raise ConfigError(
                        f"{step.script}: {where} {pattern} is also its {own} ({path}): "
                        "the step would rerun forever on its own output"
                    )
                for j in range(i):
                    if path in reads[j]:
                        declared, read_as = f"{where} {pattern}", reads[j][path][0]
                        raise ConfigError(_loop(step, declared, path, steps[j], read_as, j == 0))

    def _check_collisions(self) -> None:
        """Refuse two steps (of one unit or of two) that write the same file for a record.

        Templates are compared as text with the unit's task filled in. What this cannot
        see: two different templates that some record IDs make equal (`{id}-pre.csv` for
        the ID `R-1` and `{id}.csv` for `R-1-pre`; `a{id}` and `{id}a`), and two names that
        one file on disk answers to (a case-insensitive file system, a symlinked folder).
        """
        writers: dict[str, Writer] = {}
        for key, steps in self._units.items():
            for step in steps:
                for where, pattern in _labelled(step.outputs, "PATH_OUT"):
                    path = _concrete_one(pattern, key[0])
                    if path in writers:
                        raise ConfigError(
                            _collision(writers[path], (key, step, where, pattern), path)
                        )
                    writers[path] = (key, step, where, pattern)

    # -- scopes -------------------------------------------------------------------------

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.config.tasks)

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.config.modalities)

    def narrow(self, scope: Scope, name: str, owner: str) -> Scope:
        """The scope `owner.<name>` selects; `AttributeError` listing valid names otherwise."""
        if name in self.config.tasks and scope.task is None:
            new = Scope(name, scope.modality)
        elif name in self.config.modalities and scope.modality is None:
            new = Scope(scope.task, name)
        else:
            new = None
        if new is None or not self.unit_keys(new):
            valid = [n for n in (*self.tasks, *self.modalities) if self._can_narrow(scope, n)]
            hint = f"valid here: {', '.join(valid)}" if valid else "nothing narrows it further"
            raise AttributeError(f"{owner} has no attribute {name!r} ({scope.describe()}; {hint})")
        return new

    def scope(self, task: str | None = None, modality: str | None = None) -> Scope:
        """The scope named by a task and a modality (either may be None), as a command line
        or a run request gives them; `ValueError` naming the valid names otherwise."""
        scope = Scope()
        for name in (task, modality):
            if name is not None:
                try:
                    scope = self.narrow(scope, name, "workspace")
                except AttributeError as exc:
                    message = str(exc).replace("has no attribute", "has no task or modality")
                    raise ValueError(message) from None
        return scope

    def _can_narrow(self, scope: Scope, name: str) -> bool:
        if name in self.config.tasks and scope.task is None:
            return bool(self.unit_keys(Scope(name, scope.modality)))
        if name in self.config.modalities and scope.modality is None:
            return bool(self.unit_keys(Scope(scope.task, name)))
        return False

    def unit_keys(self, scope: Scope) -> list[tuple[str | None, str | None]]:
        """The (task, modality) pairs inside a scope, in config order."""
        return [
            (t, m)
            for (t, m) in self._units
            if scope.task in (None, t) and scope.modality in (None, m)
        ]

    def steps(self, task: str | None, modality: str | None) -> tuple[StepSpec, ...]:
        return self._units[(task, modality)]

    def step_names(self, scope: Scope) -> list[str]:
        names: dict[str, None] = {}
        for key in self.unit_keys(scope):
            names.update(dict.fromkeys(s.name for s in self._units[key]))
        return list(names)

    def specs(self, scope: Scope, name: str) -> list[StepSpec]:
        found = {
            s.script: s for k in self.unit_keys(scope) for s in self._units[k] if s.name == name
        }
        return list(found.values())

    def uses_script(self, script: Path) -> list[tuple[str | None, str | None]]:
        return [k for k, steps in self._units.items() if any(s.script == script for s in steps)]

    # -- records ---------------------------------------------------------------------------

    @cached_property
    def _discovery(self) -> list[tuple[Matcher, set[tuple[str | None, str | None]]]]:
        """Matchers for the inputs of each unit's first step (they tell which records exist),
        each with the units it serves."""
        found: dict[tuple[PathPattern, str | None], tuple[Matcher, set]] = {}
        for key, steps in self._units.items():
            for pattern in steps[0].inputs.patterns if steps else ():
                if "id" in pattern.fields:
                    task = key[0] if "task" in pattern.fields else None
                    if (pattern, task) not in found:
                        tasks = None if task is None else (task,)
                        matcher = pattern.compile(self.config.id_regex, tasks)
                        found[(pattern, task)] = (matcher, set())
                    found[(pattern, task)][1].add(key)
        return list(found.values())

    def discover(self, scope: Scope, problems: list[PathProblem] | None = None) -> Iterator[str]:
        """Record IDs that have first-step inputs in this scope, in file-system order, once
        each; entries that cannot be read are added to `problems`, if given."""
        seen: set[str] = set()
        keys = set(self.unit_keys(scope))
        for matcher, served in self._discovery:
            if not keys & served:
                continue
            for record_id in matcher.record_ids(self.config.dataset, problems):
                if record_id not in seen:
                    seen.add(record_id)
                    yield record_id

    @cached_property
    def watched(self) -> tuple[tuple[PathPattern, str | None], ...]:
        """Every pattern a step reads, writes or is controlled by, and the `ready_when`
        marker, once each with its task (None: any): what `may_hold` answers for. A
        reload that changes them changes what sinagotd watches."""
        found: dict[tuple[PathPattern, str | None], None] = {}
        for (task, _), steps in self._units.items():
            for step in steps:
                control = step.control.patterns if step.control is not None else ()
                for pattern in (*step.inputs.patterns, *step.outputs.patterns, *control):
                    found[(pattern, task if pattern.has_task else None)] = None
        if self.config.ready_when is not None:
            found[(self.config.ready_when, None)] = None
        return tuple(found)

    @cached_property
    def _reach(self) -> tuple[Matcher, ...]:
        id_regex = self.config.id_regex
        return tuple(
            pattern.compile(id_regex, None if task is None else (task,))
            for pattern, task in self.watched
        )

    def may_hold(self, folder: str) -> bool:
        """Can a path a step reads or writes (or the `ready_when` marker) be this
        dataset-relative folder ('raw', 'raw/REC-1'), or lie in or below it? sinagotd
        watches no other folder of the dataset: a scratch folder, a copy of last year's
        data beside the records, make no event to read (none to lose in a queue overflow),
        and at start the watcher lists no folder it has no use for."""
        names = folder.split("/")
        return any(matcher.reaches(names) for matcher in self._reach)

    @cached_property
    def _compiled(self) -> list[tuple[Matcher, Key, bool]]:
        """Every pattern (with `{id}`) a unit key's steps read or write, compiled once for
        that key: (matcher, key, read by one of its steps)."""
        out = []
        for key, steps in self._units.items():
            tasks = None if key[0] is None else (key[0],)
            read: dict[PathPattern, bool] = {}  # in the order first met
            for step in steps:
                for pattern in step.inputs.patterns:
                    if "id" in pattern.fields:
                        read[pattern] = True
                for pattern in step.outputs.patterns:
                    if "id" in pattern.fields:
                        read.setdefault(pattern, False)
            out.extend((p.compile(self.config.id_regex, tasks), key, r) for p, r in read.items())
        return out

    @cached_property
    def matchers(self) -> list[tuple[Matcher, Key]]:
        """Every input and output pattern of every unit, for mapping a path back to units."""
        return [(matcher, key) for matcher, key, _ in self._compiled]

    @cached_property
    def _other_inputs(self) -> dict[Key, list[tuple[Matcher, Key]]]:
        """Each unit key -> the input patterns of the other keys."""
        inputs = [(matcher, key) for matcher, key, read in self._compiled if read]
        return {key: [(m, k) for m, k in inputs if k != key] for key in self._units}

    def read_elsewhere(self, writer: Key) -> bool:
        """May a step of another unit key read what this key's steps write?"""
        return bool(self._other_inputs.get(writer))

    def readers(self, relative: str, writer: Key) -> list[Unit]:
        """The units of other keys whose steps read this output of a `writer` unit (a
        modality's summary read by a task's report). sinagotd tells them when the run that
        wrote it is recorded; with a single unit key there are none, and nothing is matched."""
        return _matching(relative, self._other_inputs.get(writer, ()))

    def units_for_path(self, relative: str) -> list[Unit]:
        """The units a dataset-relative path belongs to (the daemon's reverse mapping)."""
        return _matching(relative, self.matchers)


def _matching(relative: str, matchers: Iterable[tuple[Matcher, Key]]) -> list[Unit]:
    """The units, in order and once each, whose key's matchers match this path."""
    units: dict[Unit, None] = {}
    for matcher, (task, mod) in matchers:
        if (m := matcher.match(relative)) is not None:
            units[Unit(m.record_id, task, mod)] = None
    return list(units)


# -- checks ---------------------------------------------------------------------------------

Writer = tuple[Key, StepSpec, str, PathPattern]


def _where(attribute: str, label: str) -> str:
    return f"{attribute}[{label!r}]" if label else attribute


def _labelled(patterns: Patterns, attribute: str) -> list[tuple[str, PathPattern]]:
    return [(_where(attribute, label), pattern) for label, pattern in patterns.items]


def _concrete_one(pattern: PathPattern, task: str | None) -> str:
    return pattern.template if task is None else pattern.template.replace("{task}", task)


def _concrete(
    patterns: Patterns, attribute: str, task: str | None
) -> dict[str, tuple[str, PathPattern]]:
    """Concrete template ('EEG/RS/{id}.csv') -> (where it is declared, its pattern)."""
    return {
        _concrete_one(pattern, task): (where, pattern)
        for where, pattern in _labelled(patterns, attribute)
    }


def _step_label(key: tuple[str | None, str | None], step: StepSpec) -> str:
    if key == (None, None):
        return step.name
    return f"{step.name} (task {key[0]}, modality {key[1]})"


def _loop(
    step: StepSpec, declared: str, path: str, earlier: StepSpec, read_as: str, first: bool
) -> str:
    if first:
        return (
            f"{step.script}: {declared} would overwrite the recording: {path} is "
            f"{read_as} of {earlier.name}, the unit's first step"
        )
    return (
        f"{step.script}: {declared} writes {path}, {read_as} of the earlier step "
        f"{earlier.name} ({earlier.script}): the unit would loop"
    )


def _collision(first: Writer, second: Writer, path: str) -> str:
    (key_a, a, where_a, pattern_a), (key_b, b, where_b, pattern_b) = first, second
    steps = f"steps {_step_label(key_a, a)} and {_step_label(key_b, b)}"
    if key_a == key_b and a is b:
        return (
            f"{a.script}: {where_a} and {where_b} of step {_step_label(key_a, a)} both write {path}"
        )
    if a.script == b.script and where_a == where_b:
        hint = "; put {task} in it, so that each task writes its own" if key_a[0] else ""
        return f"{a.script}: {where_a} {pattern_a}: {steps} both write {path} for each record{hint}"
    return (
        f"{steps} both write {path} for each record: {a.script} ({where_a} {pattern_a}) and "
        f"{b.script} ({where_b} {pattern_b}); one would overwrite the other's result"
    )


# -- broken scripts -------------------------------------------------------------------------


def _write_atomically(target: Path, text: str) -> None:
    """Write through a hidden temporary name, so that a reader never sees half a file; the
    temporary file is made with the process's umask, as any other file of the state folder."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError:
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _script_patterns(path: Path) -> tuple[tuple[object, object, object] | None, str | None]:
    """((PATH_IN, PATH_OUT, PATH_CONTROL) or None if the source cannot tell, why the script
    is broken or None); ConfigError for a script that is missing, or that parses but is
    wrong."""
    try:
        return read_patterns(path), None
    except ScriptError as exc:
        error = str(exc)
    except ValueError as exc:  # what the parser of some Python versions raises on a NUL byte
        error = f"{path}: {exc}"
    try:
        source = path.read_bytes()
    except OSError:
        raise ConfigError(error) from None
    broken = _syntax_error(path, source)
    if broken is None:  # it parses: a mistake in the script itself, not a slip of the editor
        raise ConfigError(error)
    return _recover_patterns(source), broken


def _syntax_error(path: Path, source: bytes) -> str | None:
    """One line naming the file and the line where the source stops parsing; None if it
    parses."""
    try:
        ast.parse(source, str(path))
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        message = (getattr(exc, "msg", None) or str(exc) or "invalid").splitlines()[0]
        if b"\0" in source:
            line, message = source[: source.index(b"\0")].count(b"\n") + 1, "a NUL byte"
        where = f"{path}, line {line}" if line else str(path)
        return f"{where}: syntax error: {message}"
    return None


def _recover_patterns(source: bytes) -> tuple[object, object, object] | None:
    """PATH_IN, PATH_OUT and PATH_CONTROL of a script that does not parse, when its class
    body states them as literals on lines the parser accepts (PATH_CONTROL None when not
    stated); None otherwise."""
    lines = source.decode("utf-8-sig", errors="replace").splitlines(keepends=True)
    blanked = {n for n, line in enumerate(lines, 1) if "\0" in line}
    for n in blanked:
        lines[n - 1] = "\n"
    for _ in range(100):  # each round blanks at least one line; a cap, not a loop forever
        try:
            tree = ast.parse("".join(lines))
        except SyntaxError as exc:
            first = exc.lineno or 0
            if not 1 <= first <= len(lines) or first in blanked:
                return None
            last = _block_end(lines, first) if exc.msg == "unexpected indent" else first
            for n in range(first, last + 1):
                lines[n - 1] = "\n"
                blanked.add(n)
            continue
        return _literal_patterns(tree, blanked)
    return None


def _block_end(lines: list[str], first: int) -> int:
    """The last line of the indented block that starts at line `first` (1-based)."""
    depth = len(lines[first - 1]) - len(lines[first - 1].lstrip())
    last = first
    for n in range(first + 1, len(lines) + 1):
        text = lines[n - 1]
        if text.strip() and len(text) - len(text.lstrip()) < depth:
            break
        last = n
    return last


def _literal_patterns(tree: ast.Module, blanked: set[int]) -> tuple[object, object, object] | None:
    found: dict[str, object] = {}
    for node in tree.body:
        if not (isinstance(node, ast.ClassDef) and node.name == "Script"):
            continue
        for stmt in node.body:
            if not isinstance(stmt, ast.Assign | ast.AnnAssign) or stmt.value is None:
                continue
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)} & set(PATTERN_NAMES)
            span = range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1)
            if not names or any(n in blanked for n in span):
                continue
            try:
                value = ast.literal_eval(stmt.value)
            except ValueError:
                continue
            found.update(dict.fromkeys(names, value))
    if "PATH_IN" in found and "PATH_OUT" in found:
        return found["PATH_IN"], found["PATH_OUT"], found.get("PATH_CONTROL")
    return None
