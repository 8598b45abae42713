"""sinagot 0.3's script shape, run options and logs, in the engine (issue 12).

`ScriptTemplate`'s PATH_CONTROL, `label`, `data_exist`, `debug`, `ignore_missing`;
`bind_script`; `Engine.plan(ignore_missing=)` and `Engine.execute(debug=)`; DONE with the
inputs gone; LOG lines with 0.3's keys, 0.3 LOG files read back; console lines through the
`[log]` logger. Small workspaces written here, run in this process.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from sinagot import StepStatus
from sinagot.engine import Engine
from sinagot.layout import Scope, Unit
from sinagot.planner import IGNORE_MISSING
from sinagot.recordlog import COLUMNS, RecordLog, log_path, logs_frame, logs_rows, read_lines
from sinagot.runner import Outcome
from sinagot.scripts import ScriptPaths, ScriptTemplate, bind_script, read_patterns

LOG_KEYS = [
    "log_from", "workspace_version", "record_id", "scope", "task", "modality",
    "step_label", "step_status", "message", "time",
]  # fmt: skip
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"


def script(
    path_in: object, path_out: object, body: str = "", extra: str = "", base: str = ""
) -> str:
    """A step script's source; `body` is run()'s body (default: write 'done' to the output)."""
    run = textwrap.indent(textwrap.dedent(body or 'self.path.output.write_text("done")'), " " * 8)
    return (
        f"import sys\nfrom sinagot import ScriptTemplate\n{base}\n\n"
        f"class Script({'Base' if base else 'ScriptTemplate'}):\n"
        f"    PATH_IN = {path_in!r}\n    PATH_OUT = {path_out!r}\n{extra}\n"
        f"    def run(self):\n{run}\n"
    )


def unit_workspace(root: Path, scripts: dict[str, str], config: str = "") -> Path:
    """A unit-mode workspace: scripts run in the order given; one record, REC-1."""
    (root / "scripts").mkdir(parents=True)
    for name, source in scripts.items():
        (root / "scripts" / f"{name}.py").write_text(source)
    (root / "dataset" / "raw").mkdir(parents=True)
    (root / "dataset" / "raw" / "REC-1.txt").write_text("raw\n")
    names = ", ".join(f'"{n}"' for n in scripts)
    (root / "workspace.toml").write_text(
        f'[records]\nid_pattern = "REC-\\\\d+"\n[steps]\nscripts = [{names}]\n{config}\n'
    )
    return root


def scoped_workspace(root: Path, config: str = "") -> Path:
    """0.3's behavior modality, HDC task: scores (no run(), as in 0.3's test data) then
    scores_norm (writes its input's text, or 'no input')."""
    scripts = root / "scripts" / "behavior"
    scripts.mkdir(parents=True)
    (scripts / "scores.py").write_text(
        "from sinagot import ScriptTemplate\n\n\nclass Script(ScriptTemplate):\n"
        '    PATH_IN = ("HDC", "{id}", "Trial1_report.txt")\n'
        '    PATH_OUT = ("PROCESSED", "{id}", "HDC", "behavior-scores.csv")\n'
    )
    (scripts / "scores_norm.py").write_text(
        script(
            ("PROCESSED", "{id}", "HDC", "behavior-scores.csv"),
            ("PROCESSED", "{id}", "HDC", "norm-scores.csv"),
            """
            try:
                text = self.path.input.read_text()
            except OSError:
                text = "no input"
            self.path.output.write_text(text)
            """,
        )
    )
    (root / "dataset").mkdir()
    (root / "workspace.toml").write_text(
        '[records]\nid_pattern = "REC-[\\\\d]{6}-[A-Z]"\n'
        "[modalities.behavior]\nscripts = ['scores', 'scores_norm']\n"
        "[tasks.HDC]\nmodalities = ['behavior']\n" + config
    )
    return root


def engine(root: Path, **kwargs) -> Engine:
    return Engine(root, verbose=kwargs.pop("verbose", False), **kwargs)


def plans_of(eng: Engine, record_id: str = "REC-1", **kwargs) -> dict:
    units = eng.units(Scope(), [record_id])
    return {p.step.name: p for p in eng.plan(units, **kwargs)}


def run(eng: Engine, record_id: str = "REC-1", debug: bool = False, **kwargs) -> list:
    units = eng.units(Scope(), [record_id])
    return eng.execute(eng.plan(units, **kwargs), debug=debug)


def lines(dataset: Path, record_id: str = "REC-1") -> list[dict]:
    return list(read_lines(log_path(dataset, record_id)))


# -- ScriptTemplate: 0.3's shape ------------------------------------------------------------

SEEN = """
import json
seen = {
    "label": self.label, "debug": self.debug, "ignore_missing": self.ignore_missing,
    "control": str(self.path.control), "input": str(self.path.input),
    "exist_in": {str(k): v for k, v in self.data_exist.input.items()},
    "data_path": str(self.data_path), "opts": self.opts,
}
self.path.output.write_text(json.dumps(seen))
"""


def test_a_script_sees_its_label_options_and_what_exists(tmp_path: Path) -> None:
    root = unit_workspace(
        tmp_path / "ws", {"first": script(("raw", "{id}.txt"), ("out", "{id}"), SEEN)}
    )
    with engine(root) as eng:
        (result,) = run(eng)
    assert result.ok
    dataset = root / "dataset"
    seen = json.loads((dataset / "out" / "REC-1").read_text())
    raw = str(dataset / "raw" / "REC-1.txt")
    assert seen == {
        "label": "first", "debug": False, "ignore_missing": False, "control": "None",
        "input": raw, "exist_in": {raw: True}, "data_path": str(dataset), "opts": {},
    }  # fmt: skip


def test_the_constructor_of_before_still_works() -> None:
    paths = ScriptPaths(Path("/d/in"), Path("/d/out"))
    made = ScriptTemplate(id="R", task=None, modality=None, path=paths, logger=None)  # type: ignore[arg-type]
    assert made.path.control is None and made.path.input == Path("/d/in")
    assert (made.label, made.debug, made.ignore_missing, made.opts) == (None, False, False, {})
    assert made.data_exist.input == {Path("/d/in"): False}


def test_bind_script_gives_real_paths_and_the_users_methods(tmp_path: Path) -> None:
    extra = (
        '    PATH_CONTROL = {"fig": ("CONTROL", "{id}-{task}.png"),\n'
        '                    "txt": ("CONTROL", "{id}.txt")}\n'
        "    def helper(self):\n        return 'mine'\n"
    )
    scripts = tmp_path / "ws" / "scripts" / "EEG"
    scripts.mkdir(parents=True)
    (scripts / "pre.py").write_text(
        script(("MFF", "{id}-{task}.mff"), {"a": ("OUT", "{id}-{task}-a"), "b": ("OUT", "{id}-b")},
               extra=extra)
    )  # fmt: skip
    root = tmp_path / "ws"
    (root / "dataset" / "MFF").mkdir(parents=True)
    (root / "workspace.toml").write_text(
        '[modalities.EEG]\nscripts = ["pre"]\n[tasks.RS]\nmodalities = ["EEG"]\n'
    )
    data = root / "dataset"
    with engine(root) as eng:
        (spec,) = eng.layout.steps("RS", "EEG")
        bound = bind_script(spec, "REC-1", "RS", eng.dataset)
    assert (bound.id, bound.task, bound.modality, bound.label) == ("REC-1", "RS", "EEG", "pre")
    assert bound.path.input == data / "MFF" / "REC-1-RS.mff"
    assert bound.path.output == {"a": data / "OUT" / "REC-1-RS-a", "b": data / "OUT" / "REC-1-b"}
    assert bound.path.control == {
        "fig": data / "CONTROL" / "REC-1-RS.png", "txt": data / "CONTROL" / "REC-1.txt",
    }  # fmt: skip
    assert bound.helper() == "mine"
    assert bound.data_exist.input == {data / "MFF" / "REC-1-RS.mff": False}
    (data / "MFF" / "REC-1-RS.mff").write_text("x")
    assert bound.data_exist.input == {data / "MFF" / "REC-1-RS.mff": True}, "looked at again"
    assert set(bound.data_exist.output.values()) == {False}
    assert not (data / "CONTROL").exists(), "binding makes nothing"
    placeholder = bind_script(spec, "{id}", "{task}", data)
    assert placeholder.path.input == data / "MFF" / "{id}-{task}.mff"


def test_path_control_is_read_from_the_source_or_the_class(tmp_path: Path) -> None:
    literal = tmp_path / "literal.py"
    literal.write_text(
        script(("a", "{id}"), ("b", "{id}"), extra='    PATH_CONTROL = ("c", "{id}")')
    )
    none = tmp_path / "none.py"
    none.write_text(script(("a", "{id}"), ("b", "{id}")))
    base = "class Base(ScriptTemplate):\n    PATH_CONTROL = ('from', 'base-{id}')"
    inherited = tmp_path / "inherited.py"
    inherited.write_text(script(("a", "{id}"), ("b", "{id}"), base=base))
    computed = tmp_path / "computed.py"
    computed.write_text(
        script(("a", "{id}"), ("b", "{id}"), extra="    PATH_CONTROL = ('c',) + ('x{id}',)")
    )
    assert read_patterns(literal) == (("a", "{id}"), ("b", "{id}"), ("c", "{id}"))
    assert read_patterns(none) == (("a", "{id}"), ("b", "{id}"), None)
    # Declared in a base class only: not read, so that loading a workspace never imports a
    # script (and the heavy packages it imports) for its PATH_CONTROL.
    assert read_patterns(inherited)[2] is None
    assert read_patterns(computed)[2] == ("c", "x{id}")


def test_control_paths_are_made_ready_and_are_no_output(tmp_path: Path) -> None:
    body = """
    self.path.control.write_text("a figure")
    self.path.output.write_text("done")
    """
    control = '    PATH_CONTROL = ("FOLDER_CONTROL", "deep", "{id}.control")'
    source = script(("raw", "{id}.txt"), ("out", "{id}.csv"), body, extra=control)
    root = unit_workspace(tmp_path / "ws", {"first": source})
    data = root / "dataset"
    with engine(root) as eng:
        (spec,) = eng.layout.steps(None, None)
        assert spec.control is not None and spec.control.relative("REC-1", None) == (
            "FOLDER_CONTROL/deep/REC-1.control",
        )
        (result,) = run(eng)
        assert result.ok
        control = data / "FOLDER_CONTROL" / "deep" / "REC-1.control"
        assert control.read_text() == "a figure", "written in place, not under a temporary name"
        control.unlink()
        assert plans_of(eng)["first"].status is StepStatus.DONE, "a control file is no output"
    # Remembered with the patterns, for a script that later breaks.
    cached = json.loads((data / ".sinagot" / "patterns.json").read_text())["scripts"]
    assert cached[str(root / "scripts" / "first.py")]["PATH_CONTROL"] == [
        "FOLDER_CONTROL", "deep", "{id}.control",
    ]  # fmt: skip


def test_a_control_path_with_a_task_is_refused_without_tasks(tmp_path: Path) -> None:
    source = script(
        ("raw", "{id}.txt"), ("out", "{id}"), extra='    PATH_CONTROL = ("c", "{id}-{task}")'
    )
    root = unit_workspace(tmp_path / "ws", {"first": source})
    with pytest.raises(Exception, match=r"uses \{task\}, but this workspace has no tasks"):
        Engine(root, verbose=False)


# -- ignore_missing --------------------------------------------------------------------------


def test_ignore_missing_runs_a_step_without_its_inputs(tmp_path: Path) -> None:
    """0.3's test_run_ignore_missing: scores_norm of a record with no data writes 'no
    input', although scores (no run(), as in 0.3's test data) fails before it."""
    root = scoped_workspace(tmp_path / "ws")
    out = root / "dataset" / "PROCESSED" / "REC-200320-Z" / "HDC" / "norm-scores.csv"
    with engine(root) as eng:
        plans = plans_of(eng, "REC-200320-Z")
        assert plans["scores"].status is StepStatus.DATA_NOT_AVAILABLE
        assert not any(p.run for p in plans.values())
        assert run(eng, "REC-200320-Z") == []
        assert not out.exists()

        plans = plans_of(eng, "REC-200320-Z", ignore_missing=True)
        assert plans["scores"].status is StepStatus.DATA_READY
        assert plans["scores"].reasons == (IGNORE_MISSING,)
        assert plans["scores"].run and plans["scores_norm"].run
        results = run(eng, "REC-200320-Z", ignore_missing=True)
        assert [(r.step, r.outcome) for r in results] == [
            ("scores", Outcome.FAILED), ("scores_norm", Outcome.DONE),
        ]  # fmt: skip
        assert out.read_text() == "no input"
        # What the run recorded holds: its inputs are still gone, its output is there.
        plans = plans_of(eng, "REC-200320-Z")
        assert plans["scores_norm"].status is StepStatus.DONE
        assert plans["scores"].status is StepStatus.DATA_NOT_AVAILABLE


def test_ignore_missing_runs_the_script_with_the_missing_paths(tmp_path: Path) -> None:
    body = """
    seen = (self.ignore_missing, self.path.input.exists(), self.path.input.name)
    self.path.output.write_text(" ".join(map(str, seen)))
    """
    root = unit_workspace(
        tmp_path / "ws", {"first": script(("raw", "{id}.txt"), ("out", "{id}"), body)}
    )
    (root / "dataset" / "raw" / "REC-1.txt").unlink()
    (root / "dataset" / "raw" / "REC-2.txt").write_text("another record keeps the folder")
    with engine(root) as eng:
        (result,) = run(eng, ignore_missing=True)
        assert result.ok
        assert (root / "dataset" / "out" / "REC-1").read_text() == "True False REC-1.txt"
        # Done now, its input still gone: not run again, unless forced as well.
        assert plans_of(eng, ignore_missing=True)["first"].status is StepStatus.DONE
        assert plans_of(eng, ignore_missing=True, force=True)["first"].run


def test_a_missing_input_at_run_time_says_input_data_not_available(tmp_path: Path) -> None:
    root = unit_workspace(tmp_path / "ws", {"first": script(("raw", "{id}.txt"), ("out", "{id}"))})
    with engine(root) as eng:
        plans = eng.plan(eng.units(Scope(), ["REC-1"]))
        (root / "dataset" / "raw" / "REC-1.txt").unlink()  # gone between plan and run
        (result,) = eng.execute(plans)
    assert result.outcome is Outcome.NOT_RUN
    missing = root / "dataset" / "raw" / "REC-1.txt"
    assert lines(root / "dataset")[-1]["message"] == f"Input data {missing} not available"
    assert lines(root / "dataset")[-1]["step_status"] == StepStatus.DATA_NOT_AVAILABLE


# -- debug -------------------------------------------------------------------------------------

EXPLODE = """
class Exploded(Exception):
    pass

raise Exploded("boom from the script")
"""


def exploding_workspace(root: Path, config: str = "") -> Path:
    return unit_workspace(
        root,
        {
            "first": script(("raw", "{id}.txt"), ("mid", "{id}"), EXPLODE),
            "second": script(("mid", "{id}"), ("out", "{id}")),
        },
        config,
    )


def test_debug_raises_the_scripts_own_exception_once_recorded(tmp_path: Path) -> None:
    root = exploding_workspace(tmp_path / "ws")
    (root / "dataset" / "raw" / "REC-2.txt").write_text("raw\n")
    with engine(root) as eng:
        plans = eng.plan(eng.units(Scope(), ["REC-1", "REC-2"]))
        with pytest.raises(Exception, match="boom from the script") as caught:
            eng.execute(plans, debug=True)
        assert type(caught.value).__name__ == "Exploded"
        frames = []
        tb = caught.value.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_filename)
            tb = tb.tb_next
        assert str(root / "scripts" / "first.py") in frames, "a debugger reaches the script"
        # Recorded as any failure: ERROR, with its line in the log, its chain skipped.
        plans = plans_of(eng)
        assert plans["first"].status is StepStatus.ERROR
        assert "boom from the script" in plans["first"].reasons[0]
        assert any(e["step_status"] == StepStatus.ERROR for e in lines(root / "dataset"))
        assert not lines(root / "dataset", "REC-2"), "the units after it did not run"
        # Without debug, the same failure is only recorded.
        assert [r.outcome for r in run(eng, "REC-2")] == [Outcome.FAILED, Outcome.SKIPPED]


def test_debug_runs_in_this_process_whatever_the_mode(tmp_path: Path) -> None:
    root = exploding_workspace(tmp_path / "ws", '[run]\nmode = "dask"\n')
    with engine(root, verbose=True) as eng:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(Exception, match="boom"):
            run(eng, debug=True)
        assert eng._executor is None, "no cluster was started"
    assert "first : Processing run" in out.getvalue(), "a local run is echoed"


def test_debug_raises_a_failure_to_load_the_script(tmp_path: Path) -> None:
    root = unit_workspace(tmp_path / "ws", {"first": script(("raw", "{id}.txt"), ("out", "{id}"))})
    (root / "scripts" / "first.py").write_text(
        script(("raw", "{id}.txt"), ("out", "{id}")) + "\nimport no_such_module_here\n"
    )
    with engine(root) as eng, pytest.raises(ModuleNotFoundError):
        run(eng, debug=True)


# -- status: outputs kept, inputs gone --------------------------------------------------------


def test_a_step_whose_outputs_exist_is_done_with_its_inputs_gone(tmp_path: Path) -> None:
    root = unit_workspace(
        tmp_path / "ws",
        {
            "first": script(("raw", "{id}.txt"), ("mid", "{id}")),
            "second": script(("mid", "{id}"), ("out", "{id}")),
        },
    )
    with engine(root) as eng:
        run(eng)
        (root / "dataset" / "raw" / "REC-1.txt").unlink()  # raw data archived
        plans = plans_of(eng)
        first, second = plans["first"], plans["second"]
        assert (first.status, first.run) == (StepStatus.DONE, False)
        assert first.reasons == ("inputs gone: input raw/REC-1.txt is missing; outputs kept",)
        assert (second.status, second.reasons) == (StepStatus.DONE, ())
        (root / "dataset" / "mid" / "REC-1").write_text("changed")
        assert plans_of(eng)["second"].status is StepStatus.STALE, "plans from its input"
        (root / "dataset" / "mid" / "REC-1").unlink()
        assert plans_of(eng)["first"].status is StepStatus.DATA_NOT_AVAILABLE


def test_done_with_inputs_gone_agrees_with_the_settled_fast_path(tmp_path: Path) -> None:
    root = unit_workspace(
        tmp_path / "ws",
        {
            "first": script(("raw", "{id}.txt"), ("mid", "{id}")),
            "second": script(("mid", "{id}"), ("out", "{id}")),
        },
    )
    for n in range(2, 80):
        (root / "dataset" / "raw" / f"REC-{n}.txt").write_text("raw\n")
    with engine(root) as eng:
        eng.execute(eng.plan(eng.units(Scope())))
        for n in (3, 7, 50):
            (root / "dataset" / "raw" / f"REC-{n}.txt").unlink()
        units = [Unit(f"REC-{n}") for n in range(1, 80)]
        bulk = eng.plan(units)
        alone = [plan for unit in units for plan in eng.plan([unit])]

    def decisions(plans):
        return [(p.unit, p.step.name, p.status, p.run, p.reasons) for p in plans]

    assert decisions(bulk) == decisions(alone)
    assert all(p.status is StepStatus.DONE and not p.run for p in bulk)
    gone = {p.unit.record_id for p in bulk if p.reasons}
    assert gone == {"REC-3", "REC-7", "REC-50"}


# -- LOG lines ---------------------------------------------------------------------------------


def test_log_lines_carry_03s_keys_in_03s_order(tmp_path: Path) -> None:
    root = unit_workspace(tmp_path / "ws", {"first": script(("raw", "{id}.txt"), ("out", "{id}"))})
    with engine(root) as eng:
        eng.version = "2.0.1"  # what the Workspace facade (or its subclass) says
        run(eng)
    entries = lines(root / "dataset")
    assert [list(e) for e in entries] == [LOG_KEYS] * 3
    assert {(e["log_from"], e["scope"], e["workspace_version"]) for e in entries} == {
        ("script", "record", "2.0.1")
    }
    assert datetime.fromisoformat(entries[0]["time"]).tzinfo is not None


OLD_LINES = [
    # 0.3.0 (naive UTC time, with workspace_version), then before 0.3 (without it), then a
    # 0.3 line from Python 3.12 (an extra key) and one from `self.logger.exception`.
    {"log_from": "script", "workspace_version": "0.3.0", "record_id": "REC-1", "scope": "record",
     "task": "HDC", "modality": "EEG", "step_label": "pre", "step_status": 20,
     "message": "Processing run", "time": "2020-04-06T11:47:30"},
    {"log_from": "script", "scope": "record", "record_id": "REC-1", "task": "HDC",
     "modality": "EEG", "step_label": "pre", "step_status": 20, "message": "Processing",
     "time": "2020-04-06T11:47:29.298087"},
    {"log_from": "script", "workspace_version": "0.3.0", "record_id": "REC-1", "scope": "record",
     "task": "RS", "modality": "EEG", "step_label": "alpha", "step_status": 40,
     "message": "bad", "time": "2021-01-01T00:00:00.5", "taskName": None, "exc_info": "Tb..."},
]  # fmt: skip


def write_old_log(dataset: Path) -> None:
    (dataset / "LOG").mkdir(parents=True, exist_ok=True)
    with (dataset / "LOG" / "REC-1.log").open("w") as fh:
        for entry in OLD_LINES:
            fh.write(json.dumps(entry) + "\n")


def test_logs_frame_reads_03s_lines_with_ours(tmp_path: Path) -> None:
    write_old_log(tmp_path)
    with RecordLog(str(tmp_path), "REC-1", "HDC", "EEG", "pre", "1.0") as log:
        log.write(StepStatus.DONE, "Run finished")
    frame = logs_frame(tmp_path, ["REC-1"])
    assert list(frame.columns) == LOG_KEYS == list(COLUMNS)
    assert list(frame["message"]) == ["Processing", "Processing run", "bad", "Run finished"]
    assert frame["time"].iloc[0] == datetime(2020, 4, 6, 11, 47, 29, 298087, tzinfo=UTC)
    assert str(frame["time"].dt.tz) == "UTC"
    assert list(frame["time"]) == sorted(frame["time"])
    assert list(frame.index) == [0, 1, 2, 3]
    assert pd.isna(frame["workspace_version"].iloc[0])
    assert list(frame["workspace_version"].iloc[1:]) == ["0.3.0", "0.3.0", "1.0"]
    assert list(logs_frame(tmp_path, ["REC-1"], task="HDC")["message"]) == [
        "Processing", "Processing run", "Run finished",
    ]  # fmt: skip


def test_logs_of_several_records_are_oldest_first(tmp_path: Path) -> None:
    write_old_log(tmp_path)
    with RecordLog(str(tmp_path), "REC-0", None, None, "first") as log:
        log.write(StepStatus.INIT, "Init run")
    old = tmp_path / "LOG" / "REC-2.log"
    old.write_text(
        json.dumps({**OLD_LINES[0], "record_id": "REC-2", "time": "2019-01-01T00:00:00"}) + "\n"
    )
    frame = logs_frame(tmp_path, ["REC-0", "REC-1", "REC-2"])
    assert list(frame["record_id"]) == ["REC-2", "REC-1", "REC-1", "REC-1", "REC-0"]


def test_no_log_is_an_empty_frame_with_the_columns(tmp_path: Path) -> None:
    frame = logs_frame(tmp_path, ["REC-1"])
    assert frame.empty and list(frame.columns) == LOG_KEYS
    assert logs_rows(tmp_path, ["REC-1"]) == []


def test_logs_rows_are_json_safe(tmp_path: Path) -> None:
    write_old_log(tmp_path)
    rows = logs_rows(tmp_path, ["REC-1"])
    assert json.loads(json.dumps(rows)) == rows
    assert [list(row) for row in rows] == [LOG_KEYS] * 3
    assert rows[0]["time"] == "2020-04-06T11:47:29.298087+00:00"
    assert rows[0]["step_status"] == 20 and rows[0]["workspace_version"] is None


# -- console lines -----------------------------------------------------------------------------


def echoed(root: Path, config: str = "", **kwargs) -> str:
    """What a run of a fresh one-step workspace prints, `[log]` settings given."""
    source = script(("raw", "{id}.txt"), ("out", "{id}"), kwargs.pop("body", ""))
    ws = unit_workspace(root, {"first": source}, config)
    out = io.StringIO()
    with engine(ws, verbose=True) as eng, contextlib.redirect_stdout(out):
        run(eng)
    return out.getvalue()


@pytest.fixture
def fresh_loggers():
    """Loggers named by the tests below are put back as they were."""
    names = ("sinagot", "lab", "quiet", "twice")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers


def test_console_lines_default_to_the_seeds_line(tmp_path: Path, fresh_loggers) -> None:
    out = echoed(tmp_path / "ws")
    import re

    assert re.fullmatch(
        rf"REC-1 \| {STAMP} \| first : Init run\n"
        rf"REC-1 \| {STAMP} \| first : Processing run\n"
        rf"REC-1 \| {STAMP} \| first : Run finished\n",
        out,
    ), out


def test_console_lines_follow_the_log_settings(tmp_path: Path, fresh_loggers) -> None:
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record)

    logging.getLogger("lab").addHandler(Keep())
    fmt = "%(label)s/%(record_id)s/%(step_label)s/%(step_status)s/%(levelname)s: %(message)s"
    out = echoed(tmp_path / "ws", f'[log]\nname = "lab"\nformat = "{fmt}"\n')
    assert out.splitlines() == [
        "first/REC-1/first/0/INFO: Init run",
        "first/REC-1/first/20/INFO: Processing run",
        "first/REC-1/first/30/INFO: Run finished",
    ]
    assert [r.getMessage() for r in caught] == ["Init run", "Processing run", "Run finished"]
    assert caught[0].record_id == "REC-1" and caught[0].name == "lab"


def test_console_level_keeps_errors_only(tmp_path: Path, fresh_loggers) -> None:
    out = echoed(tmp_path / "ws", '[log]\nname = "quiet"\nlevel = "ERROR"\n', body="1 / 0")
    assert out.startswith("REC-1 | ") and "first : Run failed: ZeroDivisionError" in out
    assert "Init run" not in out and "Processing run" not in out


def test_two_workspaces_sharing_a_logger_name_keep_their_formats(
    tmp_path: Path, fresh_loggers
) -> None:
    first = echoed(tmp_path / "a", '[log]\nname = "twice"\nformat = "A %(message)s"\n')
    second = echoed(tmp_path / "b", '[log]\nname = "twice"\nformat = "B %(message)s"\n')
    assert first.splitlines()[0] == "A Init run" and second.splitlines()[0] == "B Init run"
    assert len(second.splitlines()) == 3, "one handler, however many workspaces"


def test_a_job_carries_plain_log_settings(tmp_path: Path) -> None:
    import pickle

    root = unit_workspace(
        tmp_path / "ws",
        {"first": script(("raw", "{id}.txt"), ("out", "{id}"))},
        '[log]\nname = "lab"\nformat = "%(message)s"\nlevel = "WARNING"\n',
    )
    with engine(root) as eng:
        (plan,) = eng.plan(eng.units(Scope(), ["REC-1"]))
        job = eng.job(plan)
    assert pickle.loads(pickle.dumps(job)) == job
    assert (job.log.name, job.log.format, job.log.level) == ("lab", "%(message)s", "WARNING")
