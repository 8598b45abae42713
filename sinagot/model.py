"""The seed API's objects: collections of records, records, and their steps.

Each is a light view (workspace, scope, records) computed on demand; subscopes come from
`__getattr__`, which asks the layout and names the valid choices when a name is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

from .layout import Scope, StepSpec
from .planner import StepPlan
from .recordlog import logs_frame
from .scripts import ScriptTemplate, load_script
from .status import StepStatus

if TYPE_CHECKING:
    import pandas as pd

    from .workspace import Workspace

STATUS_COLUMNS = (
    "record_id", "task", "modality", "step_index", "step_label", "step_status", "reasons",
)  # fmt: skip


class RecordCollection:
    """The records of a workspace, or of one task / modality of it."""

    def __init__(self, workspace: Workspace, scope: Scope) -> None:
        self._ws = workspace
        self._scope = scope

    def __repr__(self) -> str:
        if self._scope.empty:
            return "<RecordCollection instance>"
        return f"<RecordCollection instance | {self._scope.describe()}>"

    def __getattr__(self, name: str) -> RecordCollection:
        if name.startswith("_"):
            raise AttributeError(name)
        scope = self._ws.layout.narrow(self._scope, name, "RecordCollection")
        return RecordCollection(self._ws, scope)

    @property
    def scope(self) -> Scope:
        return self._scope

    def iter_ids(self) -> Iterator[str]:
        """IDs of the records whose data is in the dataset, in file-system order."""
        return self._ws.layout.discover(self._scope)

    def ids(self) -> list[str]:
        return list(self.iter_ids())

    def count(self) -> int:
        return sum(1 for _ in self.iter_ids())

    def has(self, record_id: str) -> bool:
        return record_id in set(self.iter_ids())

    def get(self, record_id: str) -> Record:
        """Any ID that matches `id_pattern`, whether or not its files have arrived yet."""
        return Record(self._ws, self._ws.check_id(record_id), self._scope)

    def first(self) -> Record | None:
        record_id = next(self.iter_ids(), None)
        return None if record_id is None else Record(self._ws, record_id, self._scope)

    def all(self) -> list[Record]:
        return [Record(self._ws, rid, self._scope) for rid in self.iter_ids()]

    def head(self, n: int = 5) -> list[Record]:
        return [Record(self._ws, rid, self._scope) for rid in islice(self.iter_ids(), n)]

    def __iter__(self) -> Iterator[Record]:
        return (Record(self._ws, rid, self._scope) for rid in self.iter_ids())

    def __len__(self) -> int:
        return self.count()

    @property
    def steps(self) -> StepCollection:
        return StepCollection(self._ws, self._scope, None)

    def logs(self) -> pd.DataFrame:
        return logs_frame(self._ws.dataset, self.iter_ids(), self._scope.task, self._scope.modality)


class Record:
    """One record (one recording session), or one task / modality of it."""

    def __init__(self, workspace: Workspace, record_id: str, scope: Scope) -> None:
        self._ws = workspace
        self.id = record_id
        self._scope = scope

    def __repr__(self) -> str:
        if self._scope.empty:
            return f"<Record instance | id: {self.id}>"
        return f"<Record instance | id: {self.id}, {self._scope.describe()}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Record)
            and other._ws is self._ws
            and (other.id, other._scope) == (self.id, self._scope)
        )

    def __hash__(self) -> int:
        return hash((self.id, self._scope))

    def __getattr__(self, name: str) -> Record:
        if name.startswith("_"):
            raise AttributeError(name)
        return Record(self._ws, self.id, self._ws.layout.narrow(self._scope, name, "Record"))

    @property
    def scope(self) -> Scope:
        return self._scope

    @property
    def steps(self) -> StepCollection:
        return StepCollection(self._ws, self._scope, (self.id,))

    def logs(self) -> pd.DataFrame:
        """This record's log history (filtered to the scope), oldest first."""
        return logs_frame(self._ws.dataset, (self.id,), self._scope.task, self._scope.modality)


class StepCollection:
    """The steps of every unit in a scope, for all records or some."""

    def __init__(
        self, workspace: Workspace, scope: Scope, record_ids: Sequence[str] | None
    ) -> None:
        self._ws = workspace
        self._scope = scope
        self._record_ids = record_ids

    def __repr__(self) -> str:
        return f"<StepCollection instance | {', '.join(self.scripts_names())}>"

    def scripts_names(self) -> list[str]:
        return self._ws.layout.step_names(self._scope)

    def count(self) -> int:
        return len(self.scripts_names())

    def __iter__(self) -> Iterator[Step]:
        return (Step(self, name) for name in self.scripts_names())

    def __len__(self) -> int:
        return self.count()

    def get(self, step_label: str) -> Step:
        if step_label not in self.scripts_names():
            raise KeyError(f"no step {step_label!r} here; steps: {', '.join(self.scripts_names())}")
        return Step(self, step_label)

    def first(self) -> Step | None:
        names = self.scripts_names()
        return Step(self, names[0]) if names else None

    def plan(self, step_label: str | None = None, force: bool = False) -> list[StepPlan]:
        units = self._ws.units(self._scope, self._record_ids)
        return self._ws.plan(units, force=force, only=step_label)

    def run(self, step_label: str | None = None, force: bool = False) -> None:
        """Run the steps that are stale (all of them with `force`), unit by unit."""
        if step_label is not None:
            self.get(step_label)
        self._ws.execute(self.plan(step_label, force))

    def status(self) -> pd.DataFrame:
        """One row per step of each unit: where it stands and why."""
        return _status_frame(self.plan())


class Step:
    """One named step across the units of a collection."""

    def __init__(self, collection: StepCollection, label: str) -> None:
        self._collection = collection
        self.label = label

    def __repr__(self) -> str:
        return f"<Step instance | label: {self.label}>"

    def run(self, force: bool = False) -> None:
        self._collection.run(self.label, force)

    def _plans(self) -> list[StepPlan]:
        return [p for p in self._collection.plan() if p.step.name == self.label]

    def status(self) -> pd.DataFrame:
        return _status_frame(self._plans())

    def reasons(self) -> list[str]:
        """Why this step would run (empty when it is up to date); unit-prefixed across units."""
        plans = [p for p in self._plans() if p.run]
        if len({p.unit for p in plans}) <= 1:
            return [r for p in plans for r in p.reasons]
        return [f"{p.unit.key}: {r}" for p in plans for r in p.reasons]

    @property
    def spec(self) -> StepSpec:
        specs = self._collection._ws.layout.specs(self._collection._scope, self.label)
        if len(specs) != 1:
            scripts = ", ".join(str(s.script) for s in specs)
            raise ValueError(f"step {self.label!r} has several scripts here ({scripts}); "
                             "narrow the scope to one modality")  # fmt: skip
        return specs[0]

    @property
    def script(self) -> type[ScriptTemplate]:
        """The step's `Script` class, loaded fresh from its file."""
        return load_script(self.spec.script).cls


def _status_frame(plans: list[StepPlan]) -> pd.DataFrame:
    import pandas as pd

    rows = [
        (p.unit.record_id, p.unit.task, p.unit.modality, p.index, p.step.name,
         StepStatus(p.status), list(p.reasons))
        for p in plans
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(STATUS_COLUMNS))
