"""Running steps in the calling process: outputs, staleness, failures, logs and status."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest

from sinagot import StepStatus, Workspace

HARBOR_IDS = ("REC-20200601", "REC-20200602", "REC-20200603")
EEG_IDS = ("REC-200331-A", "REC-200331-B", "REC-200401-A")
LOG_COLUMNS = [  # sinagot 0.3's keys, in its order
    "log_from", "workspace_version", "record_id", "scope", "task", "modality",
    "step_label", "step_status", "message", "time",
]  # fmt: skip
STATUS_COLUMNS = ["record_id", "task", "modality", "step_index", "step_label", "step_status"]
TEMP_PREFIX = ".sinagot-tmp-"


def read_csv(path: Path) -> dict[str, str]:
    """A two-column CSV as {first column: second column}."""
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return dict(rows[1:])


def log_entries(dataset: Path, record_id: str) -> list[dict]:
    path = dataset / "LOG" / f"{record_id}.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def init_runs(dataset: Path, record_id: str, step: str | None = None) -> int:
    return sum(
        1
        for e in log_entries(dataset, record_id)
        if e["message"] == "Init run" and step in (None, e["step_label"])
    )


def statuses(collection) -> dict[tuple, int]:
    """{(record_id, task, modality, step_label): step_status} of a StepCollection."""
    frame = collection.status()
    return {
        (r.record_id, r.task, r.modality, r.step_label): int(r.step_status)
        for r in frame.itertuples()
    }


def write_script(path: Path, body: str, path_out: str = '("computed", "{id}-mean.csv")') -> None:
    """Replace a harbor script with one reading raw/{id}-raw.csv and running `body`."""
    lines = [
        "import sys",
        "",
        "from sinagot import ScriptTemplate",
        "",
        "",
        "class Script(ScriptTemplate):",
        '    PATH_IN = ("raw", "{id}-raw.csv")',
        f"    PATH_OUT = {path_out}",
        "",
        "    def run(self):",
        *(f"        {line}" for line in body.strip().splitlines()),
        "",
    ]
    path.write_text("\n".join(lines))


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob(f"{TEMP_PREFIX}*")]


# -- running everything ------------------------------------------------------------------


def test_run_writes_every_output_with_correct_contents(harbor):
    Workspace(harbor, verbose=False).steps.run()
    computed = harbor / "dataset" / "computed"
    expected = {f"{rid}-{step}.csv" for rid in HARBOR_IDS for step in ("count", "mean")}
    assert {p.name for p in computed.iterdir()} == expected
    assert read_csv(computed / "REC-20200603-count.csv") == {
        "ES": "1", "FR": "2", "NL": "2", "UK": "1",
    }  # fmt: skip
    assert read_csv(computed / "REC-20200603-mean.csv")["NL"] == "11.25"
    assert read_csv(computed / "REC-20200601-count.csv") == {"FR": "4", "UK": "1"}


def test_run_echoes_each_step_line_when_verbose(harbor, capsys):
    Workspace(harbor).steps.run()
    lines = capsys.readouterr().out.splitlines()
    shape = re.compile(
        r"REC-\d{8} \| \d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \| (count|mean) : "
        r"(Init run|Processing run|Run finished)"
    )
    assert len(lines) == 3 * 2 * 3
    assert all(shape.fullmatch(line) for line in lines), lines
    assert any(line.startswith("REC-20200602 |") and line.endswith("| count : Init run")
               for line in lines)  # fmt: skip


def test_run_is_silent_when_not_verbose(harbor, capsys):
    Workspace(harbor, verbose=False).steps.run()
    assert capsys.readouterr().out == ""
    assert init_runs(harbor / "dataset", "REC-20200601") == 2  # the log is still written


def test_scoped_run_echoes_task_and_modality(eeg, capsys):
    ws = Workspace(eeg)
    ws.records.get("REC-200331-A").RS.EEG.steps.run()
    out = capsys.readouterr().out
    assert re.search(r"^REC-200331-A \| .* \| RS-EEG-preprocess : Init run$", out, re.M)
    assert re.search(r"^REC-200331-A \| .* \| RS-EEG-alpha : Run finished$", out, re.M)


def test_eeg_runs_each_unit_chain(eeg):
    ws = Workspace(eeg, verbose=False)
    ws.steps.run()
    data = eeg / "dataset"
    for rid in EEG_IDS:
        for task in ("RS", "MMN", "HDC"):
            assert (data / rid / task / "EEG" / "processed" / "clean.csv").is_file()
            assert (data / rid / task / "clinical" / "summary.json").is_file()
        processed = {task: data / rid / task / "EEG" / "processed" for task in ("RS", "MMN", "HDC")}
        assert (processed["RS"] / "alpha.json").is_file()
        assert not (processed["MMN"] / "alpha.json").exists()
        assert not (processed["HDC"] / "alpha.json").exists()
        assert (processed["MMN"] / "mismatch.json").is_file()
        assert not (processed["RS"] / "mismatch.json").exists()
        assert not (processed["HDC"] / "mismatch.json").exists()
        assert (data / rid / "HDC" / "behavior" / "scores.json").is_file()
        assert not (data / rid / "RS" / "behavior").exists()
        assert not (data / rid / "MMN" / "behavior").exists()
    alpha = json.loads(
        (data / "REC-200331-A" / "RS" / "EEG" / "processed" / "alpha.json").read_text()
    )
    assert set(alpha) == {"Fz", "Cz", "Pz"}
    summary = json.loads((data / "REC-200401-A" / "MMN" / "clinical" / "summary.json").read_text())
    assert (summary["record"], summary["task"]) == ("REC-200401-A", "MMN")
    assert set(statuses(ws.steps).values()) == {StepStatus.DONE}


def test_a_scoped_run_only_runs_that_scope(eeg):
    Workspace(eeg, verbose=False).HDC.steps.run()
    data = eeg / "dataset"
    for rid in EEG_IDS:
        assert (data / rid / "HDC" / "behavior" / "scores.json").is_file()
        assert (data / rid / "HDC" / "EEG" / "processed" / "clean.csv").is_file()
        assert not (data / rid / "RS" / "EEG" / "processed").exists()
        assert not (data / rid / "MMN" / "clinical").exists()


# -- what runs again, and what does not ----------------------------------------------------


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.iterdir()}


def test_a_second_run_does_nothing(harbor, capsys):
    ws = Workspace(harbor)
    ws.steps.run()
    computed = harbor / "dataset" / "computed"
    before = _snapshot(computed)
    runs = {rid: init_runs(harbor / "dataset", rid) for rid in HARBOR_IDS}
    capsys.readouterr()

    ws.steps.run()
    Workspace(harbor).steps.run()  # nor does a fresh workspace on the same folder

    assert _snapshot(computed) == before
    assert {rid: init_runs(harbor / "dataset", rid) for rid in HARBOR_IDS} == runs
    assert capsys.readouterr().out == ""


def test_force_runs_up_to_date_steps_again(harbor):
    ws = Workspace(harbor, verbose=False)
    ws.steps.run()
    computed = harbor / "dataset" / "computed"
    before = _snapshot(computed)

    ws.steps.run(force=True)

    after = _snapshot(computed)
    assert all(after[name][1] != before[name][1] for name in before), "every output rewritten"
    assert all(init_runs(harbor / "dataset", rid) == 4 for rid in HARBOR_IDS)
    assert read_csv(computed / "REC-20200603-count.csv")["FR"] == "2"


def test_step_label_runs_only_that_step(harbor):
    ws = Workspace(harbor, verbose=False)
    ws.steps.run(step_label="count")
    computed = harbor / "dataset" / "computed"
    assert sorted(p.name for p in computed.iterdir()) == [f"{rid}-count.csv" for rid in HARBOR_IDS]
    labels = {(rid, label): status for (rid, _, _, label), status in statuses(ws.steps).items()}
    assert all(labels[(rid, "count")] == StepStatus.DONE for rid in HARBOR_IDS)
    assert all(labels[(rid, "mean")] == StepStatus.DATA_READY for rid in HARBOR_IDS)


def test_an_unknown_step_label_is_refused_before_anything_runs(harbor):
    ws = Workspace(harbor, verbose=False)
    with pytest.raises(KeyError, match="count, mean"):
        ws.steps.run(step_label="median")
    assert not (harbor / "dataset" / "computed").exists()
    assert not (harbor / "dataset" / "LOG").exists()


def test_a_record_run_only_touches_that_record(harbor):
    ws = Workspace(harbor, verbose=False)
    ws.records.get("REC-20200602").steps.run()
    computed = harbor / "dataset" / "computed"
    assert sorted(p.name for p in computed.iterdir()) == [
        "REC-20200602-count.csv", "REC-20200602-mean.csv",
    ]  # fmt: skip
    assert sorted(p.name for p in (harbor / "dataset" / "LOG").iterdir()) == ["REC-20200602.log"]
    assert ws.records.get("REC-20200601").logs().empty


def test_running_a_record_with_no_data_does_nothing(harbor):
    ws = Workspace(harbor, verbose=False)
    ws.records.get("REC-20991231").steps.run()
    assert not (harbor / "dataset" / "computed").exists()
    assert not (harbor / "dataset" / "LOG" / "REC-20991231.log").exists()


def test_an_edited_script_is_used_at_the_next_run(harbor):
    ws = Workspace(harbor, verbose=False)
    rec = ws.records.get("REC-20200601")
    rec.steps.run(step_label="count")
    write_script(
        harbor / "scripts" / "count.py",
        'self.path.output.write_text("country,boat_name\\nALL,5\\n")',
        path_out='("computed", "{id}-count.csv")',
    )
    rec.steps.run(step_label="count", force=True)
    assert read_csv(harbor / "dataset" / "computed" / "REC-20200601-count.csv") == {"ALL": "5"}


# -- inputs that are missing, or not made yet ---------------------------------------------


def test_a_step_whose_input_is_missing_is_skipped(eeg):
    (eeg / "dataset" / "REC-200331-A" / "MMN" / "EEG" / "events.csv").unlink()
    ws = Workspace(eeg, verbose=False)
    ws.steps.run()
    data = eeg / "dataset"
    assert not (data / "REC-200331-A" / "MMN" / "EEG" / "processed" / "mismatch.json").exists()
    assert (data / "REC-200331-A" / "MMN" / "EEG" / "processed" / "clean.csv").is_file()
    assert (data / "REC-200331-B" / "MMN" / "EEG" / "processed" / "mismatch.json").is_file()

    status = ws.records.get("REC-200331-A").MMN.EEG.steps.status(reasons=True)
    row = status[status["step_label"] == "mismatch"].iloc[0]
    assert row["step_status"] == StepStatus.DATA_NOT_AVAILABLE == 41
    assert any("events.csv" in reason for reason in row["reasons"])
    # The record's other units are done.
    others = statuses(ws.records.get("REC-200331-A").steps)
    del others[("REC-200331-A", "MMN", "EEG", "mismatch")]
    assert set(others.values()) == {StepStatus.DONE}


def test_a_step_missing_an_input_nothing_makes_is_not_available_before_the_run(eeg):
    (eeg / "dataset" / "REC-200331-A" / "MMN" / "EEG" / "events.csv").unlink()
    ws = Workspace(eeg, verbose=False)
    status = ws.records.get("REC-200331-A").MMN.EEG.steps.status()
    mismatch = status[status["step_label"] == "mismatch"].iloc[0]
    # events.csv is missing and no step of the unit makes it: the step cannot run.
    assert mismatch["step_status"] == StepStatus.DATA_NOT_AVAILABLE


def test_a_chained_step_waits_for_its_earlier_step(eeg):
    ws = Workspace(eeg, verbose=False)
    rs_eeg = ws.records.get("REC-200331-A").RS.EEG.steps
    alpha = ("REC-200331-A", "RS", "EEG", "alpha")
    preprocess = ("REC-200331-A", "RS", "EEG", "preprocess")
    assert statuses(rs_eeg)[alpha] == StepStatus.INIT == 0
    assert statuses(rs_eeg)[preprocess] == StepStatus.DATA_READY

    rs_eeg.run(step_label="alpha")  # its input is not made yet: nothing to do
    processed = eeg / "dataset" / "REC-200331-A" / "RS" / "EEG" / "processed"
    assert not (processed / "alpha.json").exists()
    assert statuses(rs_eeg)[alpha] == StepStatus.INIT

    rs_eeg.run(step_label="preprocess")
    assert (processed / "clean.csv").is_file()
    assert not (processed / "alpha.json").exists()
    assert statuses(rs_eeg)[alpha] == StepStatus.DATA_READY

    rs_eeg.run()
    assert (processed / "alpha.json").is_file()
    assert statuses(rs_eeg)[alpha] == StepStatus.DONE


# -- failures ------------------------------------------------------------------------------

RAISES_FOR_0602 = """
if self.id == "REC-20200602":
    raise ValueError("no boats counted on 2020-06-02")
self.path.output.write_text("country,size\\nFR,1\\n")
"""

HALF_WRITTEN_FOR_0602 = """
with open(self.path.output, "w") as fh:
    fh.write("country,size\\nFR,")
    if self.id == "REC-20200602":
        raise ValueError("no boats counted on 2020-06-02")
    fh.write("1\\n")
"""

EXITS_FOR_0602 = """
with open(self.path.output, "w") as fh:
    fh.write("country,size\\nFR,")
    if self.id == "REC-20200602":
        sys.exit("no boats counted on 2020-06-02")
    fh.write("1\\n")
"""


@pytest.mark.parametrize("body", [RAISES_FOR_0602, HALF_WRITTEN_FOR_0602], ids=["raise", "half"])
def test_a_failing_script_leaves_nothing_and_the_others_go_on(harbor, body):
    write_script(harbor / "scripts" / "mean.py", body)
    ws = Workspace(harbor, verbose=False)
    ws.steps.run()  # does not raise

    data = harbor / "dataset"
    computed = data / "computed"
    assert not (computed / "REC-20200602-mean.csv").exists()
    assert temp_files(computed) == []
    assert (computed / "REC-20200602-count.csv").is_file()
    for rid in ("REC-20200601", "REC-20200603"):
        assert read_csv(computed / f"{rid}-mean.csv") == {"FR": "1"}

    errors = [e for e in log_entries(data, "REC-20200602") if e["step_status"] == 40]
    assert len(errors) == 1
    assert errors[0]["step_label"] == "mean"
    assert "Traceback (most recent call last)" in errors[0]["message"]
    assert "ValueError: no boats counted on 2020-06-02" in errors[0]["message"]
    assert "mean.py" in errors[0]["message"]
    assert not any(e["step_status"] == 40 for rid in ("REC-20200601", "REC-20200603")
                   for e in log_entries(data, rid))  # fmt: skip

    frame = ws.records.get("REC-20200602").logs()
    assert (frame["step_status"] == StepStatus.ERROR).sum() == 1
    status = statuses(ws.records.get("REC-20200602").steps)
    assert status[("REC-20200602", None, None, "mean")] != StepStatus.DONE


def test_a_script_calling_sys_exit_is_a_failed_step(harbor):
    write_script(harbor / "scripts" / "mean.py", EXITS_FOR_0602)
    ws = Workspace(harbor, verbose=False)
    ws.steps.run()  # returns: the script's sys.exit() ends its step, not the caller
    computed = harbor / "dataset" / "computed"
    assert temp_files(computed) == []
    assert not (computed / "REC-20200602-mean.csv").exists()
    assert (computed / "REC-20200601-mean.csv").is_file()
    assert (computed / "REC-20200603-mean.csv").is_file()
    errors = [e for e in log_entries(harbor / "dataset", "REC-20200602") if e["step_status"] == 40]
    assert len(errors) == 1
    assert "SystemExit: no boats counted on 2020-06-02" in errors[0]["message"]
    status = statuses(ws.records.get("REC-20200602").steps)
    assert status[("REC-20200602", None, None, "mean")] == StepStatus.ERROR


def test_a_script_that_writes_no_output_has_failed(harbor):
    write_script(harbor / "scripts" / "mean.py", 'self.logger.info("computed, but forgot")')
    ws = Workspace(harbor, verbose=False)
    ws.steps.run()

    data = harbor / "dataset"
    for rid in HARBOR_IDS:
        assert not (data / "computed" / f"{rid}-mean.csv").exists()
        mean = [e for e in log_entries(data, rid) if e["step_label"] == "mean"]
        assert [e["message"] for e in mean if e["step_status"] == 30] == []
        errors = [e["message"] for e in mean if e["step_status"] == 40]
        assert len(errors) == 1
        assert f"computed/{rid}-mean.csv" in errors[0]
    assert temp_files(data / "computed") == []
    labels = {label: s for (rid, _, _, label), s in statuses(ws.steps).items()}
    assert labels["mean"] != StepStatus.DONE
    assert labels["count"] == StepStatus.DONE


def test_output_folders_are_created(harbor):
    write_script(
        harbor / "scripts" / "mean.py",
        "self.path.output.write_text(self.path.input.read_text().upper())",
        path_out='("results", "by-day", "{id}", "mean.csv")',
    )
    assert not (harbor / "dataset" / "computed").exists()
    Workspace(harbor, verbose=False).steps.run()
    assert (harbor / "dataset" / "computed" / "REC-20200601-count.csv").is_file()
    for rid in HARBOR_IDS:
        out = harbor / "dataset" / "results" / "by-day" / rid / "mean.csv"
        assert out.read_text().startswith("BOAT_NAME,COUNTRY,SIZE")


# -- logs ----------------------------------------------------------------------------------


def test_a_record_log_before_any_run_is_an_empty_frame(harbor):
    frame = Workspace(harbor, verbose=False).records.get("REC-20200601").logs()
    assert frame.empty
    assert list(frame.columns) == LOG_COLUMNS


def test_a_record_log_holds_every_step_line(harbor):
    ws = Workspace(harbor, verbose=False)
    ws.steps.run()
    frame = ws.records.get("REC-20200603").logs()
    assert list(frame.columns) == LOG_COLUMNS
    assert set(frame["record_id"]) == {"REC-20200603"}
    assert list(zip(frame["step_label"], frame["step_status"], frame["message"], strict=True)) == [
        ("count", 0, "Init run"), ("count", 20, "Processing run"), ("count", 30, "Run finished"),
        ("mean", 0, "Init run"), ("mean", 20, "Processing run"), ("mean", 30, "Run finished"),
    ]  # fmt: skip
    assert frame["time"].is_monotonic_increasing
    assert set(frame["workspace_version"]) == {"0.1.0"}  # sinagot 0.3's default version


def test_workspace_version_is_written_in_the_logs(harbor):
    config = harbor / "workspace.toml"
    config.write_text(config.read_text() + '\n[workspace]\nversion = "v1"\n')
    ws = Workspace(harbor, verbose=False)
    ws.steps.run()
    frame = ws.records.get("REC-20200601").logs()
    assert len(frame) == 6
    assert set(frame["workspace_version"]) == {"v1"}


def test_scoped_logs_keep_only_their_scope(eeg):
    ws = Workspace(eeg, verbose=False)
    rec = ws.records.get("REC-200331-A")
    assert list(rec.RS.logs().columns) == LOG_COLUMNS
    assert rec.RS.logs().empty
    ws.steps.run()

    rs = rec.RS.logs()
    assert list(rs.columns) == LOG_COLUMNS
    assert set(rs["task"]) == {"RS"}
    assert set(rs["modality"]) == {"EEG", "clinical"}
    assert set(rs["step_label"]) == {"preprocess", "alpha", "summary"}

    rs_eeg = rec.RS.EEG.logs()
    assert set(zip(rs_eeg["task"], rs_eeg["modality"], strict=True)) == {("RS", "EEG")}
    assert set(rec.EEG.logs()["task"]) == {"RS", "MMN", "HDC"}
    assert len(rec.logs()) > len(rs) > len(rs_eeg) > 0

    everyone = ws.HDC.behavior.logs()
    assert set(everyone["record_id"]) == set(EEG_IDS)
    assert set(everyone["step_label"]) == {"scores"}


def test_logger_lines_of_a_script_land_in_the_record_log(eeg):
    ws = Workspace(eeg, verbose=False)
    rec = ws.records.get("REC-200331-B")
    rec.RS.EEG.steps.run(step_label="preprocess")
    frame = rec.logs()
    lines = frame[frame["message"] == "128 samples, 3 channels"]
    assert len(lines) == 1
    line = lines.iloc[0]
    assert (line["step_status"], line["step_label"], line["task"], line["modality"]) == (
        20, "preprocess", "RS", "EEG",
    )  # fmt: skip


# -- status --------------------------------------------------------------------------------


def test_status_before_and_after_a_run(harbor):
    ws = Workspace(harbor, verbose=False)
    before = ws.steps.status()
    assert list(before.columns) == STATUS_COLUMNS  # reasons only when asked
    assert len(before) == 6
    assert set(before["record_id"]) == set(HARBOR_IDS)
    assert sorted(zip(before["step_index"], before["step_label"], strict=True)) == [
        (1, "count"), (1, "count"), (1, "count"), (2, "mean"), (2, "mean"), (2, "mean"),
    ]  # fmt: skip
    assert set(before["step_status"]) == {StepStatus.DATA_READY}
    assert before["task"].isna().all()
    assert before["modality"].isna().all()

    ws.steps.run()
    after = ws.steps.status()
    assert set(after["step_status"]) == {StepStatus.DONE}


def test_status_of_scoped_units(eeg):
    ws = Workspace(eeg, verbose=False)
    frame = ws.records.get("REC-200331-A").RS.EEG.steps.status()
    assert list(frame["step_label"]) == ["preprocess", "alpha"]
    assert list(frame["step_index"]) == [1, 2]  # 1-based, as in sinagot 0.3
    assert set(frame["task"]) == {"RS"}
    assert set(frame["modality"]) == {"EEG"}
    assert list(frame["step_status"]) == [StepStatus.DATA_READY, StepStatus.INIT]


def test_an_input_newer_than_its_output_makes_the_step_stale(harbor):
    ws = Workspace(harbor, verbose=False)
    ws.steps.run()
    computed = harbor / "dataset" / "computed"
    raw = harbor / "dataset" / "raw" / "REC-20200601-raw.csv"
    newest_output = max(p.stat().st_mtime_ns for p in computed.iterdir())
    later = newest_output + 10_000_000_000  # ten seconds after
    os.utime(raw, ns=(later, later))

    status = statuses(ws.steps)
    assert status[("REC-20200601", None, None, "count")] == StepStatus.STALE == 15
    assert status[("REC-20200601", None, None, "mean")] == StepStatus.STALE
    assert status[("REC-20200602", None, None, "count")] == StepStatus.DONE
    assert status[("REC-20200603", None, None, "mean")] == StepStatus.DONE

    ws.steps.run()
    assert init_runs(harbor / "dataset", "REC-20200601") == 4
    assert init_runs(harbor / "dataset", "REC-20200602") == 2
    assert set(statuses(ws.steps).values()) == {StepStatus.DONE}


def test_what_a_script_prints_goes_to_its_record_log_when_not_echoing(harbor, capsys):
    """Under the daemon, standard output is a stream of JSON events: prints must not mix in."""
    write_script(
        harbor / "scripts" / "mean.py",
        'print("calibrating", self.id)\n'
        'print("a warning", file=sys.stderr)\n'
        'self.path.output.write_text("x\\n")',
    )
    Workspace(harbor, verbose=False).records.get("REC-20200601").steps.run()

    captured = capsys.readouterr()
    assert "calibrating" not in captured.out and "a warning" not in captured.err
    messages = [
        (e["step_status"], e["message"])
        for e in log_entries(harbor / "dataset", "REC-20200601")
        if e["step_label"] == "mean"
    ]
    assert (20, "calibrating REC-20200601") in messages
    assert (20, "a warning") in messages
