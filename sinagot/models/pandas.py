"""The `pandas` plugin: a modality whose data is a table of values per record (clinical
scores, questionnaires), kept beside the dataset's files.

Two layouts, as sinagot 0.3 and its documentation had them:

- `models.data_path = ["{id}", "clinical.json"]`: one JSON object per record; a record's
  `.data` is a Series named by its ID, and setting it writes the file;
- `models.dataframe_path = ["CLINICAL", "data.csv"]`: one CSV for all records, with a
  `record_id` column; a record's `.data` is its row (read-only).

The collection's `.data` is a DataFrame with one row per record, indexed by record ID.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SinagotError
from ..patterns import PathPattern
from ..safepaths import inside_dataset
from .files import parsing, read_text
from .records import Record, RecordCollection

if TYPE_CHECKING:
    import pandas as pd

ID_FIELD = "record_id"


def _settings(scope: Record | RecordCollection) -> Any:
    spec = scope._engine.config.modalities[scope.modality]
    return spec.models


def _data_pattern(scope: Record | RecordCollection) -> PathPattern | None:
    """`models.data_path` as the core's `PathPattern` (None: the modality has none);
    SinagotError when it needs a task the scope does not have."""
    parts = _settings(scope).data_path
    if parts is None:
        return None
    pattern = PathPattern.parse(parts)
    if pattern.has_task and scope.task is None:
        raise SinagotError(
            f"[modalities.{scope.modality}] models.data_path uses {{task}}: "
            f"choose a task first (e.g. ws.<task>.{scope.modality})"
        )
    return pattern


def _json_path(scope: Record | RecordCollection, record_id: str) -> Path | None:
    pattern = _data_pattern(scope)
    if pattern is None:
        return None
    return pattern.resolve(scope._engine.config.dataset, record_id, scope.task)


def _table(scope: Record | RecordCollection) -> pd.DataFrame | None:
    """The CSV of `models.dataframe_path`, indexed by record ID (None: no such setting)."""
    import pandas as pd

    parts = _settings(scope).dataframe_path
    if parts is None:
        return None
    dataset = scope._engine.config.dataset
    path = dataset.joinpath(*parts)
    text = read_text(dataset, path)
    if text is None:
        return pd.DataFrame(index=pd.Index([], name=ID_FIELD))
    with parsing(path):
        frame = pd.read_csv(io.StringIO(text), dtype={ID_FIELD: str})
    if ID_FIELD not in frame.columns:
        raise SinagotError(f"{path}: no {ID_FIELD!r} column to find records by")
    frame = frame[frame[ID_FIELD].notna()]
    if twice := sorted(set(frame[ID_FIELD][frame[ID_FIELD].duplicated()])):
        raise SinagotError(f"{path}: record {twice[0]!r} has several rows")
    return frame.set_index(ID_FIELD)


class PandasRecord(Record):
    """A record of a `pandas` modality: `.data` holds its values."""

    @property
    def data(self) -> pd.Series | None:
        """The record's values; None when it has none yet."""
        import pandas as pd

        table = _table(self)
        if table is not None:
            if self.id not in table.index:
                return None
            return table.loc[self.id].rename(self.id)
        path = _json_path(self, self.id)
        dataset = self._engine.config.dataset
        values = _read_json(dataset, path) if path is not None else None
        return None if values is None else pd.Series(values, name=self.id)

    @data.setter
    def data(self, values: Mapping[str, Any] | pd.Series) -> None:
        path = _json_path(self, self.id)
        if path is None:
            raise SinagotError(
                f"[modalities.{self.modality}] models.dataframe_path is read-only: "
                "edit the CSV, or use models.data_path for values set from Python"
            )
        import pandas as pd

        if isinstance(values, pd.Series):
            text = values.to_json()
        elif isinstance(values, Mapping):
            text = pd.Series(dict(values)).to_json()
        else:
            raise TypeError(f"data must be a dict or a pandas Series, not {type(values).__name__}")
        _write_text(self._engine.config.dataset, path, text)


class PandasRecordCollection(RecordCollection):
    """The records of a `pandas` modality, found by their data files (or CSV rows)."""

    def iter_ids(self) -> Iterator[str]:
        table = _table(self)
        if table is not None:
            return (str(i) for i in table.index)
        pattern = _data_pattern(self)
        if pattern is None:
            return iter(())
        return _found_ids(self, pattern)

    def _ids_key(self) -> tuple[object, ...]:
        parts = _settings(self).data_path
        by_task = parts is not None and PathPattern(parts).has_task
        return (type(self), self.task if by_task else None, self.modality)

    @property
    def data(self) -> pd.DataFrame:
        """One row per record, indexed by record ID."""
        import pandas as pd

        table = _table(self)
        if table is not None:
            return table
        dataset = self._engine.config.dataset
        values = {}
        for rid in self.iter_ids():
            path = _json_path(self, rid)
            values[rid] = (_read_json(dataset, path) if path is not None else None) or {}
        frame = pd.DataFrame.from_dict(values, orient="index")
        frame.index.name = ID_FIELD
        return frame


def _found_ids(scope: RecordCollection, pattern: PathPattern) -> Iterator[str]:
    """The IDs whose data file exists, found as the core discovers records (each folder
    listed once, IDs matched against `id_pattern`)."""
    config = scope._engine.config
    matcher = pattern.compile(config.id_regex, None if scope.task is None else [scope.task])
    seen: set[str] = set()
    for match in matcher.scan(config.dataset):
        rid = match.record_id
        if rid not in seen and (config.dataset / match.relative).is_file():
            seen.add(rid)
            yield rid


def _read_json(dataset: Path, path: Path) -> dict[str, Any] | None:
    text = read_text(dataset, path)
    if text is None:
        return None
    with parsing(path):
        values = json.loads(text)
    if not isinstance(values, dict):
        found = type(values).__name__
        raise SinagotError(f"{path}: expected a JSON object of values, found {found}")
    return values


def _write_text(dataset: Path, path: Path, text: str) -> None:
    """Write atomically, inside the dataset only."""
    inside_dataset(str(dataset), str(path.parent), "data folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".sinagot-tmp-{os.getpid()}-{path.name}")
    temp.write_text(text, encoding="utf-8")
    os.replace(temp, path)
