"""Which units exist and which steps each runs: the validated config and script patterns.

`Scope` is a value (task, modality); `Layout` answers "which names narrow this scope" and
"which steps does this unit have". Nothing here touches the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from .config import Config
from .errors import ConfigError, ScriptError
from .patterns import Matcher, PathPattern
from .scripts import read_patterns


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

    @property
    def script_key(self) -> str:
        """The script's path as a string: the key of its code hash."""
        return str(self.script)


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

    def _spec(self, modality: str | None, name: str) -> StepSpec:
        if (modality, name) not in self._specs:
            folder = self.config.scripts if modality is None else self.config.scripts / modality
            path = folder / f"{name}.py"
            try:
                raw_in, raw_out = read_patterns(path)
            except ScriptError as exc:
                raise ConfigError(str(exc)) from None
            try:
                inputs = Patterns.parse(raw_in)
            except ValueError as exc:
                raise ConfigError(f"{path}: PATH_IN: {exc}") from None
            try:
                outputs = Patterns.parse(raw_out)
            except ValueError as exc:
                raise ConfigError(f"{path}: PATH_OUT: {exc}") from None
            for label, pattern in outputs.items:
                if "id" not in pattern.fields:
                    where = f"PATH_OUT[{label!r}]" if label else "PATH_OUT"
                    raise ConfigError(f"{path}: {where} {pattern} must hold {{id}}")
            self._specs[(modality, name)] = StepSpec(name, modality, path, inputs, outputs)
        return self._specs[(modality, name)]

    def _check_unit(self, task: str | None, steps: tuple[StepSpec, ...]) -> None:
        for step in steps:
            for pattern in (*step.inputs.patterns, *step.outputs.patterns):
                if task is None and "task" in pattern.fields:
                    raise ConfigError(
                        f"{step.script}: {pattern} uses {{task}}, but this workspace has no tasks"
                    )
        if steps and not any("id" in p.fields for p in steps[0].inputs.patterns):
            raise ConfigError(
                f"{steps[0].script}: PATH_IN of a unit's first step must hold {{id}}, "
                "so that records can be found"
            )

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

    def discover(self, scope: Scope) -> Iterator[str]:
        """Record IDs that have first-step inputs in this scope, in file-system order, once each."""
        seen: set[str] = set()
        keys = set(self.unit_keys(scope))
        for matcher, served in self._discovery:
            if not keys & served:
                continue
            for record_id in matcher.record_ids(self.config.dataset):
                if record_id not in seen:
                    seen.add(record_id)
                    yield record_id

    @cached_property
    def matchers(self) -> list[tuple[Matcher, tuple[str | None, str | None]]]:
        """Every input and output pattern of every unit, for mapping a path back to units."""
        out = []
        for key, steps in self._units.items():
            tasks = None if key[0] is None else (key[0],)
            seen: set[PathPattern] = set()
            for step in steps:
                for pattern in (*step.inputs.patterns, *step.outputs.patterns):
                    if "id" in pattern.fields and pattern not in seen:
                        seen.add(pattern)
                        out.append((pattern.compile(self.config.id_regex, tasks), key))
        return out

    def units_for_path(self, relative: str) -> list[Unit]:
        """The units a dataset-relative path belongs to (the daemon's reverse mapping)."""
        units: dict[Unit, None] = {}
        for matcher, (task, mod) in self.matchers:
            if (m := matcher.match(relative)) is not None:
                units[Unit(m.record_id, task, mod)] = None
        return list(units)
