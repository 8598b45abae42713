"""`count_step`: which records have a step's input (or output) files, per unit."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..layout import Scope as Key
from ..patterns import PathPattern

if TYPE_CHECKING:
    import pandas as pd

    from .scope import Scope

POSITIONS = ("input", "output")
COLUMNS = ("record_id", "task", "modality", "count")


def count_step(
    scope: Scope, step_label: str | None, position: str, with_record_id: bool
) -> pd.DataFrame:
    import pandas as pd

    if position not in POSITIONS:
        raise ValueError(f"position {position!r} is not one of {', '.join(POSITIONS)}")
    engine = scope._engine
    if step_label is not None:
        scope.steps._check_label(step_label)
    ids = scope._record_ids()
    if ids is None:
        ids = list(engine.layout.discover(Key()))
    dataset = str(engine.config.dataset)
    rows = []
    for task, modality in scope._unit_keys():
        for paths in _path_sets(scope, task, modality, step_label, position, ids):
            record_id, relative = paths
            if all(os.path.exists(os.path.join(dataset, rel)) for rel in relative):
                rows.append((record_id, task, modality, 1))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if with_record_id or scope._record_ids() is not None:
        return frame
    counts = frame.groupby(["task", "modality"], sort=False, dropna=False)["count"].sum()
    return counts.reset_index()


def _path_sets(
    scope: Scope,
    task: str | None,
    modality: str | None,
    step_label: str | None,
    position: str,
    ids: list[str],
) -> list[tuple[str, tuple[str, ...]]]:
    """(record ID, the relative paths that must exist) for each record, in this unit."""
    engine = scope._engine
    steps = engine.layout.steps(task, modality)
    if step_label is not None:
        steps = tuple(s for s in steps if s.name == step_label)
    if steps:
        patterns = steps[0].inputs if position == "input" else steps[0].outputs
        return [(rid, patterns.relative(rid, task)) for rid in ids]
    spec = engine.config.modalities.get(modality) if modality else None
    data_path = spec.models.data_path if spec is not None else None
    if data_path is not None and step_label is None:  # a pandas modality's raw data
        pattern = PathPattern.parse(data_path)
        return [(rid, (pattern.relative(rid, task),)) for rid in ids]
    return []
