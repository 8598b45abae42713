"""sinagot 0.3's object model: the classes a workspace's records, collections and steps are.

Usable as base classes, as 0.3's `scripts/<modality>/models/` files use them. 0.3 had
separate `*Unit` classes for unit-mode workspaces; one class serves both modes now, and the
old names are aliases of it.
"""

from .records import Record, RecordCollection
from .scope import Scope
from .steps import Step, StepCollection

RecordUnit = Record
RecordCollectionUnit = RecordCollection
StepCollectionUnit = StepCollection
Subset = RecordCollection  # 0.2's name

__all__ = [
    "Record",
    "RecordCollection",
    "RecordCollectionUnit",
    "RecordUnit",
    "Scope",
    "Step",
    "StepCollection",
    "StepCollectionUnit",
    "Subset",
]
