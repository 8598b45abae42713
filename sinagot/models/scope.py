"""`Scope`: what records and record collections share, a task and modality of a workspace.

The shapes here are sinagot 0.3's (its documented API is a contract); the work is the
engine's. A subclass may pin a task or a modality with a class attribute (`task = "HDC"`),
as 0.3 allowed, and it then holds for every instance built without one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..layout import Scope as Key
from ..layout import Unit

if TYPE_CHECKING:
    import pandas as pd

    from ..engine import Engine
    from ..workspace import Workspace
    from .steps import StepCollection

COUNT_COLUMNS = ("task", "modality", "count")


class Scope:
    """A workspace seen through one task and/or one modality (or neither)."""

    task: str | None = None
    modality: str | None = None

    def __init__(
        self, workspace: Workspace, task: str | None = None, modality: str | None = None
    ) -> None:
        self.workspace = workspace
        if task is not None:
            self.task = task
        if modality is not None:
            self.modality = modality

    # -- what a subclass may override to say what it is ---------------------------------

    def _new(self, task: str | None, modality: str | None) -> Scope:
        """The same kind of object in another scope (a subscope)."""
        raise NotImplementedError

    def _record_ids(self) -> list[str] | None:
        """The records the scope is about: one for a record, None for "all discovered"."""
        return None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def _engine(self) -> Engine:
        return self.workspace._engine

    @property
    def _key(self) -> Key:
        return Key(self.task, self.modality)

    @property
    def config(self) -> Any:
        """The workspace's configuration, as read (0.3's `self.config`)."""
        return self.workspace.config

    def _describe(self) -> str:
        return f"task: {self.task}, modality: {self.modality}"

    # -- subscopes --------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Scope:
        if name.startswith("_") or "workspace" not in self.__dict__:
            raise AttributeError(name)
        dimension = self._dimension(name)
        if dimension is None or not self._can_take(dimension, name):
            valid = [n for n in self._names() if self._can_take(self._dimension(n), n)]
            hint = f"valid here: {', '.join(valid)}" if valid else "nothing narrows it further"
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r} ({self._describe()}; {hint})"
            )
        if dimension == "task":
            return self._new(name, self.modality)
        return self._new(self.task, name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self.tasks_names(), *self.modalities_names()})

    def _names(self) -> tuple[str, ...]:
        return (*self._engine.config.tasks, *self._engine.config.modalities)

    def tasks_names(self) -> list[str]:
        """The tasks this scope can narrow to."""
        return [t for t in self._engine.config.tasks if self._can_take("task", t)]

    def modalities_names(self) -> list[str]:
        """The modalities this scope can narrow to."""
        return [m for m in self._engine.config.modalities if self._can_take("modality", m)]

    def _dimension(self, name: str) -> str | None:
        config = self._engine.config
        if name in config.tasks:
            return "task"
        if name in config.modalities:
            return "modality"
        return None

    def _can_take(self, dimension: str | None, name: str) -> bool:
        """0.3's rule: a dimension is set once; a task must hold the modality."""
        tasks = self._engine.config.tasks
        if dimension == "task":
            return self.task is None and (self.modality is None or self.modality in tasks[name])
        if dimension == "modality":
            return self.modality is None and (self.task is None or name in tasks[self.task])
        return False

    def get_subscope(self, task: str | None = None, modality: str | None = None) -> Scope:
        scope = self
        for name in (task, modality):
            if name:
                scope = getattr(scope, name)
        return scope

    @property
    def is_unit(self) -> bool:
        """True when the scope is one unit per record: a task and a modality are set, or
        the workspace has neither (unit mode)."""
        if not self._engine.config.scoped:
            return True
        return self.task is not None and self.modality is not None

    def iter_tasks(self) -> Iterator[Scope]:
        return (self._new(t, self.modality) for t in self.tasks_names())

    def iter_modalities(self) -> Iterator[Scope]:
        return (self._new(self.task, m) for m in self.modalities_names())

    def iter_units(self) -> Iterator[Scope]:
        """The (task, modality) subscopes inside this one: tasks in config order, then
        modalities in the order `[modalities]` declares them (0.3's order)."""
        for task in [self] if self.task is not None else self.iter_tasks():
            yield from [task] if task.modality is not None else task.iter_modalities()

    def _unit_keys(self) -> list[tuple[str | None, str | None]]:
        if not self._engine.config.scoped:
            return [(None, None)]
        return [(u.task, u.modality) for u in self.iter_units()]

    def _units(self) -> list[Unit]:
        """The units to plan or run. Every ID is checked (`RecordIdError` naming it): a
        plugin's or a user's class may list IDs the dataset's patterns never would."""
        ids = self._record_ids()
        if ids is None:
            ids = self.iter_ids()  # type: ignore[attr-defined]  (a collection)
        check, keys = self._engine.check_id, self._unit_keys()
        return [Unit(check(rid), t, m) for rid in ids for t, m in keys]

    # -- steps, status, logs ----------------------------------------------------------------

    @property
    def steps(self) -> StepCollection:
        from .steps import StepCollection

        return StepCollection(self)

    def run(
        self,
        step_label: str | None = None,
        force: bool = False,
        ignore_missing: bool = False,
        debug: bool = False,
    ) -> None:
        """Run the steps of the scope that are stale (all of them with `force`)."""
        self.steps.run(step_label, force=force, ignore_missing=ignore_missing, debug=debug)

    def status(self, reasons: bool = False) -> pd.DataFrame:
        return self.steps.status(reasons=reasons)

    def count_raw_data(self, with_record_id: bool = False) -> pd.DataFrame:
        """How many records have their first step's input data, per task and modality."""
        return self.count_step(with_record_id=with_record_id)

    def count_step(
        self,
        step_label: str | None = None,
        position: str = "input",
        with_record_id: bool = False,
    ) -> pd.DataFrame:
        """How many records have all the files of a step's input (or output), per task and
        modality: one row per record with `with_record_id` (and always for a record)."""
        from .counts import count_step

        return count_step(self, step_label, position, with_record_id)
