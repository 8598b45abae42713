"""One step on a worker: script loading (compiled once per source), the record log (one
descriptor per run, one append per line) and the exactly-once receipts of `run_step`."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from faults.harness import lock_waiter_in, wait_until

from sinagot import StepStatus, Workspace
from sinagot.errors import ScriptError
from sinagot.layout import Scope
from sinagot.recordlog import RecordLog, log_path, read_lines
from sinagot.runner import Outcome, StepJob, StepResult, receipt_name, run_step
from sinagot.scripts import code_hash, load_script

SCRIPT = """from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{{id}}-raw.csv")
    PATH_OUT = ("computed", "{{id}}-x.csv")

    def run(self):
        return {value!r}
"""


def write(path: Path, text: str, mtime_ns: int | None = None) -> None:
    path.write_text(text)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def run_of(path: Path) -> object:
    loaded = load_script(path)
    return loaded.cls(id="R", task=None, modality=None, path=None, logger=None).run()  # type: ignore[arg-type]


# -- load_script ---------------------------------------------------------------------------


def test_an_edited_script_is_loaded_again(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    write(script, SCRIPT.format(value="first"), 1_000_000_000_000_000_000)
    assert run_of(script) == "first"
    assert load_script(script).code_hash == code_hash(script.read_bytes())
    write(script, SCRIPT.format(value="second!"), 2_000_000_000_000_000_000)
    assert run_of(script) == "second!"
    assert load_script(script).code_hash == code_hash(script.read_bytes())


def test_an_edit_keeping_size_and_mtime_is_still_seen(tmp_path: Path) -> None:
    """Within one tick of the file system's clock an edit may keep the mtime: the cache is
    keyed by the bytes, not the stat."""
    script = tmp_path / "step.py"
    write(script, SCRIPT.format(value="aaaa"), 1_000_000_000_000_000_000)
    first = load_script(script)
    write(script, SCRIPT.format(value="bbbb"), 1_000_000_000_000_000_000)
    assert run_of(script) == "bbbb"
    assert load_script(script).code_hash != first.code_hash


def test_each_load_executes_the_script_in_a_fresh_module(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    write(script, SCRIPT.format(value=1) + "\nLOADS = []\nLOADS.append(1)\n")
    first, second = load_script(script), load_script(script)
    assert first.cls is not second.cls
    assert first.code_hash == second.code_hash
    first_globals, second_globals = first.cls.run.__globals__, second.cls.run.__globals__
    assert first_globals is not second_globals
    assert first_globals["LOADS"] == [1] == second_globals["LOADS"]


def test_a_syntax_error_names_file_and_line_and_is_not_kept(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    write(script, SCRIPT.format(value=1) + "\ndef broken(:\n", 1_000_000_000_000_000_000)
    with pytest.raises(ScriptError, match=rf"{re.escape(str(script))}, line 11: syntax error"):
        load_script(script)
    write(script, SCRIPT.format(value=2), 2_000_000_000_000_000_000)
    assert run_of(script) == 2


def test_a_script_without_its_class_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "step.py"
    write(script, "class Other:\n    pass\n")
    with pytest.raises(ScriptError, match=r"no class `Script\(ScriptTemplate\)` found"):
        load_script(script)
    with pytest.raises(ScriptError, match="script not found"):
        load_script(tmp_path / "missing.py")


# -- RecordLog -----------------------------------------------------------------------------


def record_log(dataset: Path, step: str = "count") -> RecordLog:
    return RecordLog(str(dataset), "REC-1", None, None, step, "v1")


def messages(dataset: Path) -> list[str]:
    return [e["message"] for e in read_lines(log_path(dataset, "REC-1"))]


def test_each_line_is_in_the_log_as_soon_as_it_is_written(tmp_path: Path) -> None:
    with record_log(tmp_path) as log:
        log.write(StepStatus.INIT, "Init run")
        assert messages(tmp_path) == ["Init run"]
        log.logger().info("from %s", "the script")
        assert messages(tmp_path) == ["Init run", "from the script"]
    (entry, _) = read_lines(log_path(tmp_path, "REC-1"))
    assert entry["step_status"] == int(StepStatus.INIT)
    assert entry["workspace_version"] == "v1"


def test_a_log_is_written_after_its_run_too(tmp_path: Path) -> None:
    """A script may keep its logger past its run: a line then opens the file itself."""
    with record_log(tmp_path) as log:
        logger = log.logger()
    logger.info("late")
    record_log(tmp_path).write(StepStatus.DONE, "without a run")
    assert messages(tmp_path) == ["late", "without a run"]


def test_lines_of_concurrent_steps_never_interleave(tmp_path: Path) -> None:
    body = "x" * 5000

    def step(name: str) -> None:
        with record_log(tmp_path, name) as log:
            for n in range(200):
                log.write(StepStatus.PROCESSING, f"{name} {n} {body}")

    threads = [threading.Thread(target=step, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = log_path(tmp_path, "REC-1").read_text().splitlines()
    assert len(lines) == 800
    assert all(json.loads(line)["message"].endswith(body) for line in lines)


def test_a_record_log_echoes_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with RecordLog(str(tmp_path), "REC-1", "RS", "EEG", "count", echo=True) as log:
        log.write(StepStatus.INIT, "Init run")
    out = capsys.readouterr().out
    assert out.startswith("REC-1 | ") and out.endswith(" | RS-EEG-count : Init run\n")
    assert messages(tmp_path) == ["Init run"]


# -- run_step and its receipts -------------------------------------------------------------


def count_job(root: Path, run_id: str) -> StepJob:
    with Workspace(root, verbose=False) as ws:
        (plan,) = [
            p
            for p in ws._engine.plan(ws._engine.units(Scope(), ["REC-20200601"]))
            if p.step.name == "count"
        ]
        return dataclasses.replace(ws._engine.job(plan), run_id=run_id)


def init_runs(job: StepJob) -> int:
    path = log_path(job.dataset, job.unit.record_id)
    return sum(e["message"] == "Init run" for e in read_lines(path))


def test_a_run_leaves_a_receipt_a_second_attempt_returns(harbor: Path) -> None:
    job = count_job(harbor, "count-REC-20200601-0000beef")
    receipts = Path(job.receipts or "")
    first = run_step(job)
    assert first.ok and first.code_hash and first.outputs
    receipt = receipts / receipt_name(job.run_id)
    assert StepResult.from_json(receipt.read_text()) == first
    assert not [p for p in receipts.iterdir() if p.name.startswith(".sinagot-tmp-")]
    assert run_step(job) == first
    assert init_runs(job) == 1
    assert sorted(p.name for p in receipts.iterdir()) == [receipt.name]


def test_a_job_named_for_a_run_is_that_job_under_its_new_name(harbor: Path) -> None:
    job = count_job(harbor, "count-REC-20200601-0000beef")
    named = job.named("count-REC-20200601-0000cafe")
    assert named == dataclasses.replace(job, run_id="count-REC-20200601-0000cafe")
    assert job.run_id == "count-REC-20200601-0000beef", "the job it was made from is unchanged"
    with pytest.raises(dataclasses.FrozenInstanceError):
        named.run_id = "another"  # type: ignore[misc]


def test_the_receipts_folder_is_made_when_missing(harbor: Path, tmp_path: Path) -> None:
    job = dataclasses.replace(
        count_job(harbor, "count-REC-20200601-0000cafe"), receipts=str(tmp_path / "a" / "b")
    )
    assert run_step(job).ok
    assert (tmp_path / "a" / "b" / receipt_name(job.run_id)).exists()


def test_an_unreadable_receipt_runs_the_step(harbor: Path) -> None:
    job = count_job(harbor, "count-REC-20200601-0000dead")
    Path(job.receipts or "").mkdir(parents=True, exist_ok=True)
    receipt = Path(job.receipts or "") / receipt_name(job.run_id)
    receipt.write_text('{"a torn write, much longer than the result it will hold": "' + "x" * 4000)
    result = run_step(job)
    assert result.ok and init_runs(job) == 1
    assert StepResult.from_json(receipt.read_text()) == result, "rewritten whole"


def test_a_run_that_did_not_run_leaves_no_receipt(harbor: Path) -> None:
    job = count_job(harbor, "count-REC-20200601-0000f00d")
    (harbor / "dataset" / "raw" / "REC-20200601-raw.csv").unlink()
    result = run_step(job)
    assert result.outcome is Outcome.NOT_RUN and result.state is None
    assert not (Path(job.receipts or "") / receipt_name(job.run_id)).exists()


def test_a_second_attempt_waits_for_the_first(harbor: Path) -> None:
    """While an attempt holds the run's receipt locked, another waits, then returns the
    result the first wrote into it; so does any later attempt."""
    job = count_job(harbor, "count-REC-20200601-0000abcd")
    receipts = Path(job.receipts or "")
    receipts.mkdir(parents=True, exist_ok=True)
    now = time.time()
    theirs = StepResult(job.unit, "count", Outcome.DONE, now, now, run_id=job.run_id)
    fd = os.open(receipts / receipt_name(job.run_id), os.O_RDWR | os.O_CREAT, 0o664)
    fcntl.flock(fd, fcntl.LOCK_EX)
    got: list[StepResult] = []
    waiting = threading.Thread(target=lambda: got.append(run_step(job)))
    waiting.start()
    try:
        wait_until(lambda: lock_waiter_in(receipts), 10, "the second attempt waits")
        assert not got
        os.write(fd, theirs.to_json().encode())
    finally:
        os.close(fd)  # releases the lock
    waiting.join(10)
    assert got == [theirs]
    assert run_step(job) == theirs, "a later attempt: the receipt"
    assert init_runs(job) == 0


def test_an_empty_receipt_left_by_a_killed_run_runs_the_step(harbor: Path) -> None:
    job = count_job(harbor, "count-REC-20200601-0000dead")
    receipt = Path(job.receipts or "") / receipt_name(job.run_id)
    receipt.parent.mkdir(parents=True, exist_ok=True)
    receipt.touch()  # a run killed before it ended leaves its receipt empty
    result = run_step(job)
    assert result.ok and init_runs(job) == 1
    assert StepResult.from_json(receipt.read_text()) == result


@pytest.mark.parametrize(
    "message",
    ["plain", 'quote " backslash \\ tab \t newline \n', "\x00\x1f control", "\u2028 \u00e9 🐟"],
)
def test_a_log_line_is_the_json_of_its_keys_in_their_order(tmp_path: Path, message: str) -> None:
    """Lines are written without `json.dumps` (a worker writes three a step); what a reader
    parses, and the text itself, are what `json.dumps` made of 0.3's keys."""
    log = RecordLog(str(tmp_path), "REC-1", "RS", "EEG", "count", workspace_version="v1")
    log.write(StepStatus.INIT, message)
    text = log_path(tmp_path, "REC-1").read_text(encoding="utf-8")
    line, end = text.split("\n")  # one line ('\u2028' is no line break in JSON lines)
    assert end == ""
    keys = json.loads(line)
    assert keys["message"] == message and keys["step_status"] == int(StepStatus.INIT)
    assert line == json.dumps(keys, ensure_ascii=False)
    assert list(keys) == [
        "log_from", "workspace_version", "record_id", "scope", "task", "modality",
        "step_label", "step_status", "message", "time",
    ]  # fmt: skip


def test_log_times_are_local_with_their_offset_across_a_daylight_saving_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A line's time is what `datetime.astimezone().isoformat()` says, the hour repeated
    when clocks go back included."""
    from datetime import datetime

    from sinagot.recordlog import local_iso

    monkeypatch.setenv("TZ", "Europe/Paris")
    time.tzset()
    try:
        back = int(datetime.fromisoformat("2026-10-25T01:00:00+00:00").timestamp())  # 3 -> 2
        for second in range(back - 7200, back + 7200, 599):
            for ns in (second * 10**9, second * 10**9 + 123_456_789):
                expected = datetime.fromtimestamp(ns // 1000 / 1e6).astimezone().isoformat()
                assert local_iso(ns) == expected, ns
    finally:
        monkeypatch.undo()
        time.tzset()
