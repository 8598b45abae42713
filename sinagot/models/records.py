"""`RecordCollection` and `Record`, sinagot 0.3's shapes over the engine.

`RecordCollectionUnit` and `RecordUnit` were 0.3's classes for unit-mode workspaces; here one
class serves both modes, and the old names are kept as aliases (`sinagot.models`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from ..recordlog import logs_frame, logs_rows
from .scope import Scope

if TYPE_CHECKING:
    import pandas as pd

    from ..workspace import Workspace


class RecordCollection(Scope):
    """The records of a workspace, or of one task / modality of it.

    Records are listed as the dataset holds them (not sorted), like 0.3 did.
    """

    #: The class of this collection's records; None: the workspace's choice for the modality.
    _record_class: type[Record] | None = None

    def __repr__(self) -> str:
        if self.task is None and self.modality is None:
            return "<RecordCollection instance>"
        return f"<RecordCollection instance | {self._describe()}>"

    def _new(self, task: str | None, modality: str | None) -> RecordCollection:
        return self.workspace._classes.collection(modality)(self.workspace, task, modality)

    def _record_type(self) -> type[Record]:
        return self._record_class or self.workspace._classes.record(self.modality)

    def iter_ids(self) -> Iterator[str]:
        """IDs of the records whose data is in the dataset, in file-system order (those
        found only by a plugin modality's own files come after)."""
        found = self._engine.layout.discover(self._key) if self._unit_keys() else iter(())
        # Units whose class finds its records itself (a plugin, a user's class); not this
        # very scope, whose own override may call this method.
        own: dict[tuple[object, ...], RecordCollection] = {}
        for u in self.iter_units():
            if u is not self and type(u).iter_ids is not RecordCollection.iter_ids:
                own.setdefault(u._ids_key(), u)  # one search per distinct list
        if not own:
            return found
        return _unique(itertools.chain(found, *(u.iter_ids() for u in own.values())))

    def _ids_key(self) -> tuple[object, ...]:
        """What this collection's IDs depend on: collections with the same key list the
        same records (a plugin whose files do not depend on the task says so)."""
        return (type(self), self.task, self.modality)

    def ids(self) -> list[str]:
        return list(self.iter_ids())

    def count(self) -> int:
        return sum(1 for _ in self.iter_ids())

    def has(self, record_id: str) -> bool:
        return any(rid == record_id for rid in self.iter_ids())

    def get(self, record_id: str) -> Record:
        """Any ID that matches `id_pattern`, whether or not its files have arrived yet."""
        checked = self._engine.check_id(record_id)
        return self._record_type()(self.workspace, checked, self.task, self.modality)

    def first(self) -> Record | None:
        record_id = next(self.iter_ids(), None)
        return None if record_id is None else self.get(record_id)

    def all(self) -> list[Record]:
        return [self.get(rid) for rid in self.iter_ids()]

    def head(self, count: int = 5) -> list[Record]:
        return [self.get(rid) for rid in islice(self.iter_ids(), count)]

    def __iter__(self) -> Iterator[Record]:
        return (self.get(rid) for rid in self.iter_ids())

    def __len__(self) -> int:
        return self.count()

    def logs(self) -> pd.DataFrame:
        """The log history of every record here (filtered to the scope), oldest first."""
        return logs_frame(self._engine.config.dataset, self.iter_ids(), self.task, self.modality)


def _unique(ids: Iterator[str]) -> Iterator[str]:
    seen: set[str] = set()
    for rid in ids:
        if rid not in seen:
            seen.add(rid)
            yield rid


class Record(Scope):
    """One record (one recording session), or one task / modality of it."""

    def __init__(
        self,
        workspace: Workspace,
        record_id: str,
        task: str | None = None,
        modality: str | None = None,
    ) -> None:
        self.id = record_id
        super().__init__(workspace, task, modality)

    def __repr__(self) -> str:
        if self.task is None and self.modality is None:
            return f"<Record instance | id: {self.id}>"
        return f"<Record instance | id: {self.id}, {self._describe()}>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Record)
            and other.workspace is self.workspace
            and (other.id, other.task, other.modality) == (self.id, self.task, self.modality)
        )

    def __hash__(self) -> int:
        return hash((self.id, self.task, self.modality))

    def _new(self, task: str | None, modality: str | None) -> Record:
        return self.workspace._classes.record(modality)(self.workspace, self.id, task, modality)

    def _record_ids(self) -> list[str]:
        return [self.id]

    @property
    def record_collection(self) -> RecordCollection:
        """The collection of the same scope."""
        return self.workspace.records.get_subscope(self.task, self.modality)

    def logs(self) -> pd.DataFrame:
        """This record's log history (filtered to the scope), oldest first."""
        return logs_frame(self._engine.config.dataset, (self.id,), self.task, self.modality)

    def logs_json(self) -> list[dict[str, Any]]:
        """The rows of `logs()` as plain dicts (times as ISO 8601 text), for a web API."""
        return logs_rows(self._engine.config.dataset, (self.id,), self.task, self.modality)

    def status_dict(self) -> dict[Any, dict[Any, list[dict[str, Any]]]]:
        """{task: {modality: [{step_index, step_label, step_status}, ...]}} (0.3's shape;
        None keys in a unit-mode workspace)."""
        out: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
        for plan in self.steps._plans():
            unit = plan.unit
            out.setdefault(unit.task, {}).setdefault(unit.modality, []).append(
                {"step_index": plan.index + 1, "step_label": plan.step.name,
                 "step_status": int(plan.status)}
            )  # fmt: skip
        return out

    def status_json(self) -> str:
        return json.dumps(self.status_dict())
