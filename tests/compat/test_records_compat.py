"""sinagot 0.3's record collections and records: listing, counting, logs and status."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import pandas as pd
import pytest

from compat.conftest import ID, IDS, LOG_KEYS, UNITS
from sinagot import StepStatus, Workspace
from sinagot.models import Record

OTHER = "REC-200320-A"  # has behavior data, and a LOG file written by sinagot 0.3

#: `status_dict()` of REC-200319-A in the committed data, as 0.3 gave it.
STATUS_200319 = {
    "RS": {"EEG": [{"step_index": 1, "step_label": "preprocess", "step_status": 10},
                   {"step_index": 2, "step_label": "alpha", "step_status": 0}]},
    "MMN": {"EEG": [{"step_index": 1, "step_label": "preprocess", "step_status": 10}]},
    "HDC": {"EEG": [{"step_index": 1, "step_label": "preprocess", "step_status": 10}],
            "behavior": [{"step_index": 1, "step_label": "scores", "step_status": 30},
                         {"step_index": 2, "step_label": "scores_norm", "step_status": 10}]},
}  # fmt: skip


def rows(frame: pd.DataFrame) -> list[tuple]:
    return list(frame.itertuples(index=False, name=None))


# -- listing -----------------------------------------------------------------------------


def test_ids_and_iter_ids(records):
    listed = list(records.iter_ids())
    assert set(listed) == set(IDS)
    assert len(listed) == len(set(listed)), "each record is listed once"
    assert records.ids() == listed


def test_a_subscope_lists_the_records_with_data_for_its_first_step(workspace):
    assert workspace.behavior.ids() == [OTHER]  # only it has HDC/<id>/Trial1_report.txt
    assert sorted(workspace.RS.EEG.ids()) == list(IDS)
    assert sorted(workspace.clinical.ids()) == list(IDS)  # the pandas plugin's JSON files


def test_unit_mode_ids(minimal_mode):
    with Workspace(minimal_mode, verbose=False) as ws:
        assert sorted(ws.records.ids()) == ["REC-001", "REC-002"]
        assert ws.records.count() == 2


def test_get_first_all(records):
    rec = records.get(ID)
    assert isinstance(rec, Record)
    assert rec.id == ID
    first = records.first()
    assert isinstance(first, Record)
    assert first.id in IDS
    everything = list(records.all())
    assert all(isinstance(r, Record) for r in everything)
    assert sorted(r.id for r in everything) == list(IDS)


def test_get_does_not_need_data(workspace):
    rec = workspace.RS.EEG.get("REC-200606-A")
    assert rec.id == "REC-200606-A"
    assert (rec.task, rec.modality) == ("RS", "EEG")


def test_head_returns_that_many_records(records):
    # Deliberate difference 1: 0.3's head(n) gave n + 1 records.
    (only,) = records.head(1)
    assert only.id in IDS
    assert sorted(r.id for r in records.head()) == list(IDS)  # count=5, two records
    assert list(records.head(0)) == []


def test_has_and_count(workspace, records):
    assert records.has(ID)
    assert not records.has("REC-010101-A")
    assert records.count() == 2
    assert workspace.behavior.count() == 1
    assert workspace.behavior.has(OTHER)
    assert not workspace.behavior.has(ID)


def test_a_new_record_is_seen_at_once(sonetaa, workspace):
    mff = sonetaa / "dataset" / "MFF"
    shutil.copy(mff / f"{ID}-RS.mff", mff / "REC-200606-A-RS.mff")
    assert workspace.records.count() == 3
    assert workspace.RS.EEG.count() == 3
    assert workspace.MMN.EEG.count() == 2


# -- count_raw_data / count_step ---------------------------------------------------------


def test_count_raw_data_of_a_record(records):
    rec = records.get(ID)
    frame = rec.count_raw_data()
    assert list(frame.columns) == ["record_id", "task", "modality", "count"]
    expected = [u for u in UNITS if u != ("HDC", "behavior")]
    assert rows(frame) == [(ID, task, modality, 1) for task, modality in expected]

    frame = records.get(OTHER).count_raw_data()
    assert rows(frame) == [(OTHER, task, modality, 1) for task, modality in UNITS]


def test_count_step_output_of_a_record(records):
    # 0.3 also counted the pandas modality's JSON file whatever the step named (a bug: a
    # clinical row for "scores_norm"); a named step counts that step's files only.
    frame = records.get(ID).count_step(step_label="scores_norm", position="output")
    assert list(frame.columns) == ["record_id", "task", "modality", "count"]
    assert rows(frame) == []
    frame = records.get(OTHER).count_step(step_label="scores_norm", position="output")
    assert rows(frame) == [(OTHER, "HDC", "behavior", 1)]


def test_count_raw_data_of_the_workspace(records):
    frame = records.count_raw_data()
    assert list(frame.columns) == ["task", "modality", "count"]
    # Deliberate difference 8: pandas modalities counted here too (0.3: for a record only).
    assert rows(frame) == [
        ("RS", "EEG", 2), ("RS", "clinical", 2), ("MMN", "EEG", 2), ("MMN", "clinical", 2),
        ("HDC", "EEG", 2), ("HDC", "behavior", 1), ("HDC", "clinical", 2),
    ]  # fmt: skip
    assert list(frame.index) == list(range(7))


def test_count_raw_data_with_record_id(records):
    frame = records.count_raw_data(with_record_id=True)
    assert list(frame.columns) == ["record_id", "task", "modality", "count"]
    expected = [(rid, t, m, 1) for t, m in UNITS for rid in IDS]
    expected.remove((ID, "HDC", "behavior", 1))
    assert sorted(rows(frame)) == sorted(expected)


def test_count_step_output_of_the_workspace(records):
    frame = records.count_step(step_label="scores_norm", position="output")
    assert rows(frame) == [("HDC", "behavior", 1)]  # as 0.3


def test_how_many_records_have_rs_eeg_data(workspace):
    assert rows(workspace.RS.EEG.count_raw_data()) == [("RS", "EEG", 2)]
    assert rows(workspace.EEG.count_raw_data()) == [("RS", "EEG", 2), ("MMN", "EEG", 2),
                                                    ("HDC", "EEG", 2)]  # fmt: skip
    assert rows(workspace.HDC.behavior.count_raw_data()) == [("HDC", "behavior", 1)]


def test_count_of_a_step_no_unit_here_has_names_the_steps(workspace):
    # 0.3 raised ValueError("All objects passed were None"); a typo is named with the choices.
    with pytest.raises(KeyError, match="no step 'scores' here; steps: alpha, preprocess"):
        workspace.EEG.count_step(step_label="scores")


def test_count_of_a_step_no_record_has_run_is_an_empty_frame(workspace):
    frame = workspace.RS.EEG.count_step(step_label="alpha", position="output")
    assert len(frame) == 0
    assert list(frame.columns) == ["task", "modality", "count"]


# -- logs --------------------------------------------------------------------------------


def test_a_record_without_log_file_has_empty_logs(record):
    logs = record.logs()
    assert isinstance(logs, pd.DataFrame)
    assert len(logs) == 0
    # Deliberate difference 7: the frame has 0.3's columns (0.3 gave no columns at all).
    assert set(LOG_KEYS) <= set(logs.columns)
    # Deliberate difference 7: logs_json() is [] (0.3 raised FileNotFoundError).
    assert record.logs_json() == []


def test_a_log_file_written_by_03_is_read(records):
    rec = records.get(OTHER)
    logs = rec.logs()
    # Deliberate difference 6: its stale PROCESSING line is history, not a status.
    assert len(logs) == 1
    row = logs.iloc[0]
    assert row["log_from"] == "script"
    assert row["record_id"] == OTHER
    assert row["scope"] == "record"
    assert (row["task"], row["modality"]) == ("HDC", "EEG")
    assert row["step_label"] == "preprocess"
    assert row["step_status"] == StepStatus.PROCESSING
    assert row["message"] == "Processing"
    # Deliberate difference 7: `time` is a tz-aware datetime (0.3 wrote naive UTC).
    assert row["time"] == datetime(2020, 4, 6, 11, 47, 29, 298087, tzinfo=UTC)
    assert row["time"].tzinfo is not None

    assert len(rec.HDC.logs()) == 1
    assert len(rec.EEG.logs()) == 1
    assert len(rec.HDC.EEG.logs()) == 1
    assert len(rec.RS.logs()) == 0
    assert len(rec.HDC.behavior.logs()) == 0


def test_logs_json_of_a_03_log_file(records):
    entries = records.get(OTHER).logs_json()
    assert isinstance(entries, list)
    assert len(entries) == 1
    entry = entries[0]
    assert (entry["record_id"], entry["step_label"], entry["message"]) == (
        OTHER, "preprocess", "Processing",
    )  # fmt: skip
    assert entry["step_status"] == 20
    json.dumps(entries)  # JSON-safe


def test_logs_after_a_run(record):
    record.steps.run()
    logs = record.logs()
    assert len(logs) > 0
    assert set(logs["scope"]) == {"record"}
    assert set(logs["record_id"]) == {ID}
    assert set(logs["task"]) == {"RS", "MMN", "HDC"}
    assert set(logs["modality"]) == {"EEG", "behavior"}
    assert {StepStatus.PROCESSING, StepStatus.DONE} <= set(logs["step_status"])
    assert set(logs["workspace_version"]) == {"0.3.0"}
    # Deliberate difference 7: oldest first, as in the file (0.3 gave newest first).
    assert list(logs["time"]) == sorted(logs["time"])

    hdc = record.HDC.logs()
    assert (set(hdc["task"]), set(hdc["modality"])) == ({"HDC"}, {"EEG", "behavior"})
    eeg = record.EEG.logs()
    assert (set(eeg["task"]), set(eeg["modality"])) == ({"RS", "MMN", "HDC"}, {"EEG"})
    hdc_eeg = record.HDC.EEG.logs()
    assert (set(hdc_eeg["task"]), set(hdc_eeg["modality"])) == ({"HDC"}, {"EEG"})

    entries = record.logs_json()
    assert len(entries) == len(logs)
    assert {entry["record_id"] for entry in entries} == {ID}
    json.dumps(entries)


def test_new_log_lines_follow_the_03_ones(records):
    rec = records.get(OTHER)
    rec.HDC.EEG.steps.run()
    logs = rec.logs()
    assert len(logs) > 1
    assert logs.iloc[0]["message"] == "Processing"  # the 0.3 line, the oldest
    assert set(logs.iloc[1:]["workspace_version"]) == {"0.3.0"}
    assert list(logs["time"]) == sorted(logs["time"])


def test_collection_logs_gather_every_record(workspace):
    workspace.steps.run()
    logs = workspace.records.logs()
    assert set(logs["record_id"]) == set(IDS)
    for rec in workspace.records.all():
        assert list(rec.logs()["record_id"].unique()) == [rec.id]


# -- status_dict / status_json -----------------------------------------------------------


def test_status_dict(record):
    status = record.status_dict()
    assert status == STATUS_200319
    assert list(status) == ["RS", "MMN", "HDC"]
    assert list(status["HDC"]) == ["EEG", "behavior"]


def test_status_json(record):
    assert json.loads(record.status_json()) == STATUS_200319


def test_status_dict_of_the_record_with_a_03_processing_line(records):
    status = records.get(OTHER).status_dict()
    # Deliberate difference 6: 0.3 said PROCESSING (20) here, from its stale LOG line.
    assert status["HDC"]["EEG"] == [
        {"step_index": 1, "step_label": "preprocess", "step_status": StepStatus.DATA_READY}
    ]
    assert status["HDC"]["behavior"] == [
        {"step_index": 1, "step_label": "scores", "step_status": StepStatus.DONE},
        {"step_index": 2, "step_label": "scores_norm", "step_status": StepStatus.DONE},
    ]


def test_status_of_a_subscope_of_a_record(record):
    assert record.RS.EEG.status_dict() == {"RS": {"EEG": STATUS_200319["RS"]["EEG"]}}
    assert record.HDC.status_dict() == {"HDC": STATUS_200319["HDC"]}


def test_status_dict_after_a_run(record):
    record.steps.run()
    status = record.status_dict()
    done = {
        step["step_status"]
        for modalities in status.values()
        for steps in modalities.values()
        for step in steps
    }
    assert done == {StepStatus.DONE}


def test_status_dict_of_a_unit_without_steps(record):
    # Deliberate difference 4: 0.3 raised AttributeError here.
    status = record.RS.clinical.status_dict()
    assert not any(steps for modalities in status.values() for steps in modalities.values())
    assert json.loads(record.RS.clinical.status_json()) == json.loads(json.dumps(status))


@pytest.mark.parametrize("scope", ["record", "unit"])
def test_status_values_are_plain_json(record, scope):
    target = record if scope == "record" else record.HDC.behavior
    for modalities in json.loads(target.status_json()).values():
        for steps in modalities.values():
            for step in steps:
                assert type(step["step_status"]) is int
                assert type(step["step_index"]) is int


def test_a_03_log_rotated_into_backups_is_read_whole(workspace):
    # sinagot 0.3 rotated LOG/<id>.log at 512 KiB into <id>.log.1 ... .5 (.1 the newest).
    log = workspace.data_path / "LOG" / f"{ID}.log"
    log.parent.mkdir(exist_ok=True)

    def line(message: str, time: str) -> str:
        return (
            f'{{"log_from": "script", "record_id": "{ID}", "scope": "record", "task": "RS", '
            f'"modality": "EEG", "step_label": "preprocess", "step_status": 20, '
            f'"message": "{message}", "time": "{time}"}}\n'
        )

    (log.parent / f"{ID}.log.2").write_text(line("oldest", "2020-04-01T10:00:00"))
    (log.parent / f"{ID}.log.1").write_text(line("older", "2020-04-02T10:00:00"))
    log.write_text(line("newest", "2020-04-03T10:00:00"))

    assert list(workspace.records.get(ID).logs()["message"]) == ["oldest", "older", "newest"]
