"""sinagot 0.3's model plugins: `pandas` (data per record) and `processed` (results)."""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd

from compat.conftest import ID, IDS
from sinagot import Workspace
from sinagot.models.pandas import PandasRecord, PandasRecordCollection
from sinagot.models.processed import ProcessedRecord, ProcessedRecordCollection

OTHER = "REC-200320-A"


# -- pandas: the plugin's own workspace --------------------------------------------------


def test_pandas_record_data_is_the_records_json_as_a_series(pandas_workspace):
    path = pandas_workspace / "dataset" / ID / "series.json"
    with Workspace(pandas_workspace, verbose=False) as ws:
        rec = ws.records.get(ID)
        assert isinstance(rec.pandas, PandasRecord)
        data = rec.pandas.data
        assert isinstance(data, pd.Series)
        assert data.name == ID
        assert (data["age"], data["iq"]) == (15, 105)
        expected = pd.Series(json.loads(path.read_text()), name=ID)
        pd.testing.assert_series_equal(data, expected)


def test_setting_pandas_data_writes_the_json(pandas_workspace):
    path = pandas_workspace / "dataset" / ID / "series.json"
    with Workspace(pandas_workspace, verbose=False) as ws:
        rec = ws.records.get(ID)
        data = rec.pandas.data
        data["age"] = 17
        rec.pandas.data = data
        assert json.loads(path.read_text()) == {"age": 17, "iq": 105}
        assert ws.records.get(ID).pandas.data["age"] == 17

        rec.pandas.data = {"age": 20, "iq": 1.5, "name": "bob"}
        assert json.loads(path.read_text()) == {"age": 20, "iq": 1.5, "name": "bob"}
        again = ws.records.get(ID).pandas.data
        assert (again["age"], again["iq"], again["name"]) == (20, 1.5, "bob")


def test_pandas_collection_data_is_a_frame_of_all_records(pandas_workspace):
    with Workspace(pandas_workspace, verbose=False) as ws:
        collection = ws.records.pandas
        assert isinstance(collection, PandasRecordCollection)
        assert collection.count() == 2
        frame = collection.data
        assert isinstance(frame, pd.DataFrame)
        assert sorted(frame.index) == list(IDS)
        for rec in collection.all():
            assert (frame.loc[rec.id] == rec.data).all()
        assert frame.loc[OTHER, "age"] == 8
        assert frame.loc[ID, "iq"] == 105


def test_pandas_data_of_a_record_without_file_is_none_and_creates_nothing(pandas_workspace):
    with Workspace(pandas_workspace, verbose=False) as ws:
        assert ws.records.get("REC-999999-Z").pandas.data is None
    # Deliberate difference 11: 0.3 created the record's folder when reading.
    assert not (pandas_workspace / "dataset" / "REC-999999-Z").exists()


# -- pandas: sonetaa's clinical modality -------------------------------------------------


def test_clinical_data_across_records(workspace):
    frame = workspace.clinical.data
    assert sorted(frame.index) == list(IDS)
    assert frame.loc[ID, "age"] == 15
    assert frame.loc[OTHER, "iq"] == 95
    assert isinstance(workspace.RS.clinical, PandasRecordCollection)
    assert sorted(workspace.RS.clinical.data.index) == list(IDS)


def test_clinical_data_of_a_record(workspace, record):
    data = record.clinical.data
    assert data.name == ID
    assert (data["age"], data["iq"]) == (15, 105)
    pd.testing.assert_series_equal(record.RS.clinical.data, data)
    record.HDC.clinical.data = {"age": 16, "iq": 105}
    path = workspace.data_path / "PROCESSED" / ID / "clinical.json"
    assert json.loads(path.read_text()) == {"age": 16, "iq": 105}
    assert record.clinical.data["age"] == 16


def test_clinical_data_from_one_csv_for_all_records(sonetaa):
    # 0.2/0.3-era documentation: `models.dataframe_path`, one CSV indexed by record_id.
    toml = sonetaa / "workspace.toml"
    old = "models.data_path = ['PROCESSED', '{id}', 'clinical.json']"
    assert old in toml.read_text()
    toml.write_text(
        toml.read_text().replace(old, "models.dataframe_path = ['CLINICAL', 'data.csv']")
    )
    with Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False) as ws:
        data = ws.records.get(ID).clinical.data
        assert isinstance(data, pd.Series)
        assert data.name == ID
        assert data["iq_score"] == 113.0
        assert data["assessor"] == "aline"
        frame = ws.clinical.data
        assert isinstance(frame, pd.DataFrame)
        assert frame.index.name == "record_id"
        assert list(frame.index) == list(IDS)
        assert frame.loc[OTHER, "iq_score"] == 144.0
        assert frame.loc[OTHER, "srs_total_t"] == 78.0


# -- processed ---------------------------------------------------------------------------


def test_processed_subscopes_are_the_plugins_classes(workspace, record):
    assert isinstance(workspace.processed, ProcessedRecordCollection)
    assert isinstance(record.processed, ProcessedRecord)


def test_processed_single_data(workspace, record):
    before = record.processed.get_processed_data("RS_alpha")
    assert isinstance(before, pd.DataFrame)
    assert len(before) == 0  # alpha has not run yet
    workspace.RS.EEG.get(ID).steps.run()
    frame = record.processed.get_processed_data("RS_alpha")
    assert frame.index.name == "record_id"
    assert list(frame.index) == [ID]
    assert list(frame.columns) == ["task", "modality", "alpha"]
    assert list(frame.iloc[0]) == ["RS", "EEG", 10.5]
    assert isinstance(frame.iloc[0]["alpha"], float)


def test_processed_dataframe_from_csv(record):
    frame = record.processed.get_processed_data("behavior_scores")
    assert frame.index.name == "record_id"
    assert list(frame.index) == [ID, ID]  # every row of the CSV, indexed by its record
    assert list(frame.columns) == ["name", "value"]
    assert list(frame.itertuples(index=False, name=None)) == [("accuracy", 0.75), ("speed", 1.5)]


def test_processed_series_from_csv_with_columns(workspace, record):
    before = record.processed.get_processed_data("behavior_norm")
    assert len(before) == 0
    assert list(before.columns) == ["speed", "missing", "accuracy"]
    workspace.behavior.get(ID).steps.run()
    frame = record.processed.get_processed_data("behavior_norm")
    assert list(frame.index) == [ID]
    assert list(frame.columns) == ["speed", "missing", "accuracy"]
    row = frame.loc[ID]
    assert float(row["speed"]) == 1.5
    assert float(row["accuracy"]) == 0.75
    assert math.isnan(float(row["missing"]))


def test_processed_data_gathered_across_records(workspace):
    workspace.steps.run()
    # In no task, `processed` spans all records (0.3: none, ValueError; the issue asks this).
    for frame in (workspace.processed.get_processed_data("RS_alpha"),
                  workspace.processed.get_processed_data(data_key="RS_alpha")):  # fmt: skip
        assert frame.index.name == "record_id"
        assert sorted(frame.index) == list(IDS)
        assert list(frame.columns) == ["task", "modality", "alpha"]
        assert list(frame["alpha"]) == [10.5, 10.5]
        assert set(frame["task"]) == {"RS"}


def test_processed_data_across_no_records_is_an_empty_frame(sonetaa):
    for folder in ("MFF", "HDC", "PROCESSED"):
        shutil.rmtree(sonetaa / "dataset" / folder)
    with Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False) as ws:
        assert ws.records.count() == 0
        # Deliberate difference 12: 0.3 raised ValueError (nothing to concatenate).
        for frame in (ws.processed.get_processed_data("RS_alpha"),
                      ws.processed.get_processed_data(data_key="RS_alpha")):  # fmt: skip
            assert isinstance(frame, pd.DataFrame)
            assert len(frame) == 0
