"""The `processed` plugin: results that steps leave per record, gathered into DataFrames.

A `[processed.KEY]` table names a step's output (`task`, `modality`, `step_label`, and
`path_label` for a dict `PATH_OUT`) and how to read it (`data_getter`):

- `single_data`: the file holds one value (`data_type` "str", "float" or "int"): one row,
  columns task, modality and the step's name;
- `dataframe_from_csv`: a CSV table, every row for that record;
- `series_from_csv`: a two-column key,value CSV as one row (`columns` orders and filters).

Every frame is indexed by `record_id`, so a collection's frames stack into one.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SinagotError
from ..layout import Scope as Key
from .files import parsing, read_text
from .records import Record, RecordCollection

if TYPE_CHECKING:
    import pandas as pd

    from ..config import ProcessedData

ID_FIELD = "record_id"
_CASTS = {"str": str, "float": float, "int": int}


def _params(scope: Record | RecordCollection, data_key: str) -> ProcessedData:
    processed = scope._engine.config.processed
    if data_key not in processed:
        known = ", ".join(processed) or "none"
        raise KeyError(f"no [processed.{data_key}] in the configuration (known: {known})")
    return processed[data_key]


def _source(record: Record, params: ProcessedData) -> Path:
    """The output file of the named step for this record."""
    engine = record._engine
    specs = [s for s in engine.layout.steps(params.task, params.modality)
             if s.name == params.step_label]  # fmt: skip
    if not specs:
        raise SinagotError(f"[processed] {params.key}: no step {params.step_label!r}")
    relative = specs[0].outputs.relative(record.id, params.task)
    shaped = specs[0].outputs.shape(tuple(engine.config.dataset / r for r in relative))
    if isinstance(shaped, dict):
        if params.path_label is None or params.path_label not in shaped:
            labels = ", ".join(shaped)
            raise SinagotError(
                f"[processed.{params.key}] path_label: {params.path_label!r} is not one of "
                f"the outputs of {params.step_label} ({labels})"
            )
        return shaped[params.path_label]
    return shaped


class ProcessedRecord(Record):
    """A record whose processed results can be read as DataFrames."""

    def get_processed_data(self, data_key: str) -> pd.DataFrame:
        import pandas as pd

        params = _params(self, data_key)
        path = _source(self, params)
        text = read_text(self._engine.config.dataset, path)
        if text is None:
            columns = list(params.columns) if params.columns is not None else None
            return pd.DataFrame(columns=columns, index=pd.Index([], name=ID_FIELD))
        with parsing(path):
            if params.data_getter == "single_data":
                value = _CASTS[params.data_type](text.strip()) if params.data_type else text
                frame = pd.DataFrame(
                    [{ID_FIELD: self.id, "task": params.task, "modality": params.modality,
                      params.step_label: value}]
                )  # fmt: skip
            elif params.data_getter == "dataframe_from_csv":
                frame = pd.read_csv(io.StringIO(text))
                frame.insert(0, ID_FIELD, self.id)
            else:  # series_from_csv
                frame = pd.read_csv(io.StringIO(text), header=None, index_col=0).T
                if params.columns is not None:
                    frame = frame.reindex(columns=list(params.columns))
                frame.columns.name = None
                frame.insert(0, ID_FIELD, self.id)
        return frame.set_index(ID_FIELD)


class ProcessedRecordCollection(RecordCollection):
    """All the workspace's records (of its task, if it has one): processed results are
    gathered across them."""

    def iter_ids(self) -> Iterator[str]:
        return self._engine.layout.discover(Key(self.task, None))

    def get_processed_data(self, data_key: str) -> pd.DataFrame:
        """The result `data_key` of every record, stacked (an empty frame if none has it)."""
        import pandas as pd

        _params(self, data_key)  # a wrong key is named even with no records
        frames = [ProcessedRecord.get_processed_data(rec, data_key) for rec in self.all()]
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame(index=pd.Index([], name=ID_FIELD))
        return pd.concat(frames)
