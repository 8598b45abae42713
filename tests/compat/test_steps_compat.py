"""sinagot 0.3's step collections and steps: names, status, scripts and runs."""

from __future__ import annotations

import re

import pytest

from compat.conftest import ID, IDS, log_lines
from sinagot import StepStatus, Workspace

OTHER = "REC-200320-A"
STATUS_COLUMNS = ["record_id", "task", "modality", "step_index", "step_label", "step_status"]
#: `steps.status()` rows of REC-200319-A in the committed data, as 0.3 gave them.
STATUS_200319 = [
    (ID, "RS", "EEG", 1, "preprocess", 10),
    (ID, "RS", "EEG", 2, "alpha", 0),
    (ID, "MMN", "EEG", 1, "preprocess", 10),
    (ID, "HDC", "EEG", 1, "preprocess", 10),
    (ID, "HDC", "behavior", 1, "scores", 30),
    (ID, "HDC", "behavior", 2, "scores_norm", 10),
]


def labels(result) -> dict[str, str | None]:
    return {modality: getattr(step, "label", None) for modality, step in result.items()}


def rows(frame) -> list[tuple]:
    return list(frame[STATUS_COLUMNS].itertuples(index=False, name=None))


# -- scripts_names / get / first / count -------------------------------------------------


def test_scripts_names_of_a_unit_are_lists(workspace):
    assert workspace.HDC.behavior.steps.scripts_names() == ["scores", "scores_norm"]
    assert workspace.behavior.steps.scripts_names() == ["scores", "scores_norm"]
    assert workspace.HDC.EEG.steps.scripts_names() == ["preprocess"]
    assert workspace.RS.EEG.steps.scripts_names() == ["preprocess", "alpha"]
    assert workspace.EEG.steps.scripts_names() == ["preprocess", "alpha"]
    assert workspace.clinical.steps.scripts_names() == []


def test_scripts_names_without_a_modality_are_per_modality_dicts(workspace, record):
    names = workspace.steps.scripts_names()
    assert names == {
        "EEG": ["preprocess", "alpha"],
        "behavior": ["scores", "scores_norm"],
        "clinical": [],
        "processed": [],
    }
    assert list(names) == ["EEG", "behavior", "clinical", "processed"]
    assert workspace.RS.steps.scripts_names() == {"EEG": ["preprocess", "alpha"], "clinical": []}
    assert record.HDC.steps.scripts_names() == {
        "EEG": ["preprocess"], "behavior": ["scores", "scores_norm"], "clinical": [],
    }  # fmt: skip


def test_unit_mode_scripts_names(minimal_mode):
    with Workspace(minimal_mode, verbose=False) as ws:
        assert ws.steps.scripts_names() == ["first_step", "next_step"]
        assert ws.records.get("REC-001").steps.scripts_names() == ["first_step", "next_step"]
        assert ws.steps.get("next_step").label == "next_step"
        assert ws.steps.first().label == "first_step"
        assert ws.steps.count() == 2


def test_get(workspace):
    assert workspace.HDC.behavior.steps.get("scores").label == "scores"
    assert labels(workspace.steps.get("scores")) == {
        "EEG": None, "behavior": "scores", "clinical": None, "processed": None,
    }  # fmt: skip
    assert workspace.HDC.behavior.steps.get("no_such_step") is None


def test_first(workspace):
    assert workspace.HDC.behavior.steps.first().label == "scores"
    assert workspace.clinical.steps.first() is None
    assert labels(workspace.steps.first()) == {
        "EEG": "preprocess", "behavior": "scores", "clinical": None, "processed": None,
    }  # fmt: skip


def test_count(workspace):
    assert workspace.HDC.behavior.steps.count() == 2
    assert workspace.clinical.steps.count() == 0
    assert workspace.steps.count() == {"EEG": 2, "behavior": 2, "clinical": 0, "processed": 0}
    assert workspace.RS.steps.count() == {"EEG": 2, "clinical": 0}
    assert workspace.MMN.steps.count() == {"EEG": 1, "clinical": 0}
    assert workspace.HDC.steps.count() == {"EEG": 1, "behavior": 2, "clinical": 0}


# -- status() ----------------------------------------------------------------------------


def test_status_of_a_unit(record):
    frame = record.EEG.RS.steps.status()
    assert list(frame.columns) == STATUS_COLUMNS
    assert rows(frame) == STATUS_200319[:2]
    assert list(frame.index) == [0, 1]


def test_status_of_a_record(record):
    frame = record.steps.status()
    assert list(frame.columns) == STATUS_COLUMNS
    assert rows(frame) == STATUS_200319
    assert list(frame.index) == list(range(6))


def test_status_of_the_workspace(workspace):
    frame = workspace.steps.status()
    assert list(frame.columns) == STATUS_COLUMNS
    # Deliberate difference 5: one fresh index (0.3 repeated 0..5 per record).
    assert list(frame.index) == list(range(12))
    assert sorted(set(frame["record_id"])) == list(IDS)
    assert rows(frame[frame["record_id"] == ID]) == STATUS_200319
    # Deliberate difference 6: HDC preprocess is DATA_READY (0.3: PROCESSING, from its LOG).
    assert rows(frame[frame["record_id"] == OTHER]) == [
        (OTHER, "RS", "EEG", 1, "preprocess", 10),
        (OTHER, "RS", "EEG", 2, "alpha", 0),
        (OTHER, "MMN", "EEG", 1, "preprocess", 10),
        (OTHER, "HDC", "EEG", 1, "preprocess", 10),
        (OTHER, "HDC", "behavior", 1, "scores", 30),
        (OTHER, "HDC", "behavior", 2, "scores_norm", 30),
    ]


def test_status_reasons_are_an_opt_in_column(record):
    frame = record.HDC.behavior.steps.status(reasons=True)
    assert list(frame.columns) == [*STATUS_COLUMNS, "reasons"]
    assert rows(frame) == STATUS_200319[4:]


def test_status_of_a_unit_without_steps_is_an_empty_frame(workspace, record):
    # Deliberate difference 4: 0.3 gave None for a unit, and raised for a collection.
    assert len(record.RS.clinical.steps.status()) == 0
    assert len(workspace.clinical.steps.status()) == 0


def test_status_in_unit_mode(minimal_mode):
    with Workspace(minimal_mode, verbose=False) as ws:
        frame = ws.steps.status()
        assert list(frame.columns) == STATUS_COLUMNS
        for rid in ("REC-001", "REC-002"):
            assert rows(frame[frame["record_id"] == rid]) == [
                (rid, None, None, 1, "first_step", 10),
                (rid, None, None, 2, "next_step", 0),
            ]


def test_a_step_whose_outputs_exist_is_done_without_its_inputs(workspace):
    step = workspace.behavior.get(ID).steps.first()
    assert not any(step.script.data_exist.input.values())
    assert step.status() == StepStatus.DONE
    frame = workspace.behavior.get(ID).steps.status(reasons=True)
    reasons = frame.iloc[0]["reasons"]
    text = reasons if isinstance(reasons, str) else " ".join(map(str, reasons))
    assert "input" in text  # the reasons say its input is gone


# -- Step --------------------------------------------------------------------------------


def test_step_script_is_the_users_script_bound_to_the_record(workspace):
    data = workspace.data_path
    step = workspace.behavior.get(ID).steps.first()
    assert step.label == "scores"
    script = step.script
    assert script.path.input == data / "HDC" / ID / "Trial1_report.txt"
    assert script.path.output == data / "PROCESSED" / ID / "HDC" / "behavior-scores.csv"
    # 0.3 defaulted to FOLDER_CONTROL/{id}-{task}.control, a folder nothing made: a script
    # without PATH_CONTROL has none.
    assert script.path.control is None
    assert script.data_exist.input == {data / "HDC" / ID / "Trial1_report.txt": False}
    assert script.data_exist.output == {
        data / "PROCESSED" / ID / "HDC" / "behavior-scores.csv": True
    }
    assert (script.id, script.task, script.modality, script.label) == (
        ID, "HDC", "behavior", "scores",
    )  # fmt: skip
    assert script.opts == {}
    assert script.test_modif() == "test-before-modif"


def test_step_script_is_reloaded_after_an_edit(workspace):
    step = workspace.HDC.behavior.steps.first()
    assert step.script.test_modif() == "test-before-modif"
    path = workspace.scripts_path / "behavior" / "scores.py"
    path.write_text(path.read_text().replace("test-before-modif", "test-after-modif"))
    assert step.script.test_modif() == "test-after-modif"
    assert workspace.HDC.behavior.steps.first().script.test_modif() == "test-after-modif"


def test_step_status_and_run(workspace):
    rec = workspace.behavior.get(ID)
    scores, scores_norm = rec.steps.get("scores"), rec.steps.get("scores_norm")
    assert scores.status() == StepStatus.DONE
    assert scores_norm.status() == StepStatus.DATA_READY
    assert len(scores_norm.logs()) == 0
    assert scores_norm.run() is None
    assert scores_norm.status() == StepStatus.DONE
    out = scores_norm.script.path.output
    assert out.read_text() == scores_norm.script.path.input.read_text()
    logs = scores_norm.logs()
    assert len(logs) > 0
    assert set(logs["step_label"]) == {"scores_norm"}
    assert StepStatus.DONE in set(logs["step_status"])
    assert len(scores.logs()) == 0  # scores did not run


def test_step_status_over_several_records_is_the_least_advanced(workspace):
    step = workspace.RS.EEG.steps.get("preprocess")
    assert step.status() == StepStatus.DATA_READY
    workspace.RS.EEG.get(ID).steps.run()
    assert workspace.RS.EEG.get(ID).steps.get("preprocess").status() == StepStatus.DONE
    assert step.status() == StepStatus.DATA_READY  # REC-200320-A's is not done yet
    workspace.RS.EEG.steps.run()
    assert step.status() == StepStatus.DONE


# -- run ---------------------------------------------------------------------------------


def test_run_force(workspace):
    rec = workspace.behavior.get(OTHER)
    out = rec.steps.get("scores_norm").script.path.output
    assert out.read_text() == "before force\n"
    assert rec.steps.run() is None
    assert out.read_text() == "before force\n"
    rec.steps.run(force=True)
    assert out.read_text() == "bla\n"


def test_run_ignore_missing(workspace):
    rec = workspace.behavior.get("REC-200320-Z")
    out = rec.steps.get("scores_norm").script.path.output
    rec.steps.run()
    assert not out.exists()
    rec.steps.run(ignore_missing=True)
    assert out.read_text() == "no input"


def test_run_step_label(workspace):
    rec = workspace.behavior.get(OTHER)
    out = rec.steps.get("scores_norm").script.path.output
    assert out.read_text() == "before force\n"
    rec.steps.run("scores", force=True)
    assert out.read_text() == "before force\n"
    rec.steps.run(force=True)
    assert out.read_text() == "bla\n"


def test_a_03_processing_line_does_not_block_the_step(workspace):
    step = workspace.records.get(OTHER).HDC.EEG.steps.get("preprocess")
    # Deliberate difference 6: 0.3 said PROCESSING (20) from the committed LOG line.
    assert step.status() == StepStatus.DATA_READY
    step.run()
    assert step.status() == StepStatus.DONE


def test_run_creates_the_output_folder(workspace):
    step = workspace.RS.EEG.get("REC-200606-A").steps.get("alpha")
    script = step.script
    assert not all(script.data_exist.input.values())
    script.path.input.mkdir(parents=True)
    assert not script.path.output.parent.exists()
    step.run()
    assert script.path.output.parent.is_dir()
    assert script.path.output.read_text() == "10.5\n"
    assert not any(path.is_dir() for path in script.data_exist.output)


def test_run_every_record(workspace):
    data = workspace.data_path
    assert workspace.steps.run() is None
    for rid in IDS:
        for task in ("RS", "MMN", "HDC"):
            assert (data / "PREPROCESSED" / f"{rid}-{task}-epo.fif.gz").is_file()
        assert (data / "PROCESSED" / rid / "alpha").read_text() == "10.5\n"
    norm = data / "PROCESSED" / ID / "HDC" / "norm-scores.csv"
    assert norm.read_text() == "name,value\naccuracy,0.75\nspeed,1.5\n"
    assert not (data / "PREPROCESSED" / "REC-200320-Z-RS-epo.fif.gz").exists()


def test_unit_mode_run(minimal_mode):
    with Workspace(minimal_mode, verbose=False) as ws:
        assert ws.steps.run() is None
        for rid in ("REC-001", "REC-002"):
            lines = log_lines(ws.data_path, rid)
            assert any(line["step_label"] == "first_step" for line in lines)
            assert {line["task"] for line in lines} == {None}


@pytest.fixture
def exploding_alpha(workspace):
    alpha = workspace.scripts_path / "EEG" / "alpha.py"
    alpha.write_text(
        alpha.read_text().replace(
            'self.path.output.write_text("10.5\\n")', 'raise RuntimeError("alpha exploded")'
        )
    )
    assert "alpha exploded" in alpha.read_text()
    return workspace


def test_a_failing_step_is_logged_as_error(exploding_alpha):
    rec = exploding_alpha.RS.EEG.get(ID)
    rec.steps.run()
    step = rec.steps.get("alpha")
    assert step.status() == StepStatus.ERROR
    assert rec.steps.get("preprocess").status() == StepStatus.DONE
    errors = step.logs()
    errors = errors[errors["step_status"] == StepStatus.ERROR]
    assert len(errors) > 0
    assert "alpha exploded" in " ".join(errors["message"])


def test_debug_raises_the_scripts_exception(exploding_alpha):
    rec = exploding_alpha.RS.EEG.get(ID)
    with pytest.raises(RuntimeError, match="alpha exploded"):
        rec.steps.run(debug=True)
    assert rec.steps.get("preprocess").status() == StepStatus.DONE


def test_debug_raises_from_a_single_step(exploding_alpha):
    rec = exploding_alpha.RS.EEG.get(ID)
    rec.steps.run("preprocess")
    with pytest.raises(RuntimeError, match="alpha exploded"):
        rec.steps.get("alpha").run(debug=True)


# -- console -----------------------------------------------------------------------------


def test_console_lines_follow_the_log_format(sonetaa, capsys):
    with Workspace([sonetaa, sonetaa / "custom_conf.toml"]) as ws:
        ws.behavior.get(ID).steps.run()
    out = capsys.readouterr().out
    # Deliberate difference 15: 0.3 printed its own format, whatever [log] format said.
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(rf"^{stamp} : Processing run$", out, re.M), out
    assert f"{ID} | " not in out


def test_console_lines_without_a_log_format(sonetaa, capsys):
    toml = sonetaa / "workspace.toml"
    toml.write_text(toml.read_text().replace('format = "%(asctime)s : %(message)s"', ""))
    with Workspace([sonetaa, sonetaa / "custom_conf.toml"]) as ws:
        ws.behavior.get(ID).steps.run()
    out = capsys.readouterr().out
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.search(
        rf"^{ID} \| {stamp} \| HDC-behavior-scores_norm : Processing run$", out, re.M
    ), out
