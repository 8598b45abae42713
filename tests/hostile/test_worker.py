"""The worker side of a hostile dataset: what runs a step.

Outputs are private to each attempt, nothing is written through a link out of the dataset,
a step past its time limit or killing its worker ends FAILED with one line, a torn or forged
receipt is a ValueError naming its field, and a progress bar does not flood the log.
Real files, real threads and processes, a real Dask cluster where one is needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import alive, record_id, step_script, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinagot.capture import output_to
from sinagot.engine import Engine
from sinagot.layout import Scope, Unit
from sinagot.recordlog import log_path, read_lines
from sinagot.runner import Outcome, StepJob, StepResult, receipt_name, run_step
from sinagot.status import StepStatus

from .conftest import Outside, still_processing

RID = "REC-20200601"
STEP = """import os
import sys
import time
from pathlib import Path

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{{id}}-raw.csv")
    PATH_OUT = ("computed", "{{id}}-count.csv")

    def run(self):
{body}
"""


# -- helpers ---------------------------------------------------------------------------------


def write_step(root: Path, body: str, name: str = "count") -> Path:
    """Give the workspace's `count` step (or a script `name`) this body for its `run()`."""
    script = root / "scripts" / f"{name}.py"
    lines = [f"        {line}" if line else "" for line in body.strip("\n").splitlines()]
    script.write_text(STEP.format(body="\n".join(lines)))
    return script


def count_job(root: Path, run_id: str = "", record_id: str = RID, **changes: object) -> StepJob:
    """The job of the `count` step of a harbor record, as the workspace makes it."""
    with Engine(root, verbose=False) as engine:
        units = engine.units(Scope(), [record_id])
        (plan,) = [p for p in engine.plan(units) if p.step.name == "count"]
        return dataclasses.replace(engine.job(plan), run_id=run_id, **changes)


def log_of(job: StepJob) -> list[dict]:
    return list(read_lines(log_path(job.dataset, job.unit.record_id)))


def messages(job: StepJob, status: StepStatus | None = None) -> list[str]:
    return [e["message"] for e in log_of(job) if status is None or e["step_status"] == status]


def output_of(job: StepJob) -> Path:
    return Path(job.dataset, job.outputs[0])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".sinagot-tmp-"))


def receipt_of(job: StepJob) -> Path:
    return Path(job.receipts or "", receipt_name(job.run_id))


# -- 1. outputs are private to each attempt ---------------------------------------------------

WRITER = """
me, other = {me!r}, {other!r}
signals = Path({signals!r})
with open(self.path.output, "w") as out:
    out.write(me * 5000)
    out.flush()
    (signals / me).touch()
    deadline = time.monotonic() + 20
    while not (signals / other).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the other attempt never wrote: no overlap to test")
        time.sleep(0.01)  # polling, with a deadline
    out.write(me * 5000)
"""


def test_two_attempts_writing_one_output_at_once_leave_one_whole_output(harbor: Path) -> None:
    """Two runs write the same output at the same moment (two units, or a resubmission):
    each writes its own file; the output in place is one of them, whole."""
    signals = harbor / "signals"
    signals.mkdir()
    scripts = {
        me: write_step(harbor, WRITER.format(me=me, other=other, signals=str(signals)), me)
        for me, other in (("A", "B"), ("B", "A"))
    }
    base = count_job(harbor)
    jobs = [
        dataclasses.replace(base, spec=dataclasses.replace(base.spec, script=script))
        for script in scripts.values()
    ]
    results: list[StepResult] = []
    threads = [threading.Thread(target=lambda j=j: results.append(run_step(j))) for j in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [r.outcome for r in results] == [Outcome.DONE, Outcome.DONE], results
    assert output_of(base).read_text() in ("A" * 10000, "B" * 10000)
    assert leftovers(output_of(base).parent) == []


# -- 2. nothing written through a link out of the dataset --------------------------------------


def test_a_log_folder_linked_out_of_the_dataset_is_refused(harbor: Path, outside: Outside) -> None:
    job = count_job(harbor)
    log_folder = Path(job.dataset, "LOG")
    log_folder.symlink_to(outside.root, target_is_directory=True)
    result = run_step(job)
    assert result.outcome is Outcome.FAILED
    assert result.error == (
        f"LOG folder {log_folder} is a link out of the dataset (to {outside.root})"
    )
    assert not output_of(job).exists(), "refused before the script ran"
    assert result.inputs and result.code_hash, "kept failed until its inputs or script change"


def test_a_record_log_that_is_a_symlink_is_refused(harbor: Path, outside: Outside) -> None:
    job = count_job(harbor)
    log = log_path(job.dataset, RID)
    log.parent.mkdir()
    log.symlink_to(outside.file)
    result = run_step(job)
    assert (result.outcome, result.error) == (
        Outcome.FAILED,
        f"log file {log} is a symlink: refused",
    )


def test_a_fifo_in_place_of_the_record_log_fails_the_step_instead_of_hanging(
    harbor: Path,
) -> None:
    job = count_job(harbor)
    log = log_path(job.dataset, RID)
    log.parent.mkdir()
    os.mkfifo(log)
    results: list[StepResult] = []
    worker = threading.Thread(target=lambda: results.append(run_step(job)), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked opening the FIFO: a reader lets it go
        os.close(os.open(log, os.O_RDONLY | os.O_NONBLOCK))
        worker.join(10)
    assert results and results[0].outcome is Outcome.FAILED, "the step hung on the FIFO"
    assert results[0].error == f"log file {log} is not a regular file: refused"


def test_a_receipts_folder_linked_out_of_the_dataset_is_refused(
    harbor: Path, outside: Outside
) -> None:
    job = count_job(harbor, "count-REC-20200601-00000001")
    receipts = Path(job.receipts or "")
    receipts.parent.mkdir(parents=True)
    receipts.symlink_to(outside.root, target_is_directory=True)
    result = run_step(job)
    assert result.outcome is Outcome.FAILED
    assert (
        result.error
        == f"receipts folder {receipts} is a link out of the dataset (to {outside.root})"
    )
    assert messages(job) == [] and not output_of(job).exists()


def test_a_receipt_that_is_a_symlink_is_refused(harbor: Path, outside: Outside) -> None:
    job = count_job(harbor, "count-REC-20200601-00000002")
    receipt = receipt_of(job)
    receipt.parent.mkdir(parents=True)
    receipt.symlink_to(outside.file)
    result = run_step(job)
    assert (result.outcome, result.error) == (
        Outcome.FAILED,
        f"receipt {receipt} is a symlink: refused",
    )
    assert messages(job) == [] and not output_of(job).exists()


def test_an_output_folder_linked_out_of_the_dataset_fails_the_step(
    harbor: Path, outside: Outside
) -> None:
    job = count_job(harbor, "count-REC-20200601-00000003")
    computed = output_of(job).parent
    computed.symlink_to(outside.root, target_is_directory=True)
    result = run_step(job)
    error = f"output folder {computed} is a link out of the dataset (to {outside.root})"
    assert (result.outcome, result.error) == (Outcome.FAILED, error)
    assert messages(job, StepStatus.ERROR) == [f"Cannot write outputs: {error}"]
    assert StepResult.from_json(receipt_of(job).read_text()) == result


# -- 3. failures end --------------------------------------------------------------------------


def test_an_output_folder_that_cannot_be_created_is_not_run_with_one_line(harbor: Path) -> None:
    job = count_job(harbor)
    computed = output_of(job).parent
    computed.write_text("a file where the output folder should be")
    result = run_step(job)
    error = f"output folder {computed} cannot be created: a file is in the way"
    assert (result.outcome, result.error) == (Outcome.NOT_RUN, error)
    assert messages(job, StepStatus.ERROR) == [f"Cannot write outputs: {error}"]


SLEEPER = """
with open(self.path.output, "w") as out:
    out.write("half")
    time.sleep(60)
"""


def test_a_step_past_its_time_limit_in_the_calling_process_fails_and_the_process_lives_on(
    harbor: Path,
) -> None:
    """main_process mode (a notebook, `sinagot run`): SIGALRM stops the script, nothing
    else; the caller's own SIGALRM handler is back afterwards."""
    write_step(harbor, SLEEPER)
    job = count_job(harbor, "count-REC-20200601-00000004", time_limit=0.5)

    def mine(signum: int, frame: object) -> None:
        raise AssertionError("the caller's handler must not be called")

    previous = signal.signal(signal.SIGALRM, mine)
    try:
        result = run_step(job)
        assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert (result.outcome, result.error) == (Outcome.FAILED, "time limit of 0.5 s exceeded")
    assert result.duration < 30
    (error,) = messages(job, StepStatus.ERROR)
    assert error.startswith("Run failed: time limit of 0.5 s exceeded\nTraceback")
    assert "time.sleep(60)" in error, "the log shows where the script was"
    assert not output_of(job).exists() and leftovers(output_of(job).parent) == []
    assert StepResult.from_json(receipt_of(job).read_text()) == result


def test_a_script_that_swallows_its_time_limit_still_fails(harbor: Path) -> None:
    write_step(
        harbor,
        """
try:
    time.sleep(60)
except BaseException:
    pass
self.path.output.write_text("late")
""",
    )
    job = count_job(harbor, time_limit=0.3)
    result = run_step(job)
    assert (result.outcome, result.error) == (Outcome.FAILED, "time limit of 0.3 s exceeded")
    assert not output_of(job).exists()


def test_a_step_past_its_time_limit_in_another_thread_fails(harbor: Path) -> None:
    """A caller's thread cannot take SIGALRM: the script is stopped at its next Python
    instruction (here, a busy loop that never sleeps)."""
    write_step(harbor, "while True:\n    pass")
    job = count_job(harbor, time_limit=0.3)
    results: list[StepResult] = []
    worker = threading.Thread(target=lambda: results.append(run_step(job)), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the busy loop was never stopped"
    assert [(r.outcome, r.error) for r in results] == [
        (Outcome.FAILED, "time limit of 0.3 s exceeded")
    ]


@pytest.fixture
def one_worker() -> Iterator:
    """A client of an embedded LocalCluster of one worker process (with its nanny), as
    sinagot starts one."""
    from sinagot.cluster import connect
    from sinagot.config import DaskSettings

    connection = connect(
        None, DaskSettings(n_workers=1, threads_per_worker=1, dashboard_address=":0")
    )
    try:
        yield connection.client
    finally:
        connection.close()


def worker_pid(client) -> int:
    """The pid of the one worker, once one is there."""
    pids = wait_until(lambda: list(client.run(os.getpid).values()), 60, "a worker")
    return pids[0]


def test_a_step_past_its_time_limit_on_a_dask_worker_ends_that_worker_and_fails(
    harbor: Path, one_worker
) -> None:
    """A worker's thread cannot be stopped: its process is. The result, left in the run's
    receipt, is what Dask's retry of the task returns; the nanny starts a new worker."""
    write_step(harbor, SLEEPER)
    job = count_job(harbor, "count-REC-20200601-00000005", time_limit=1)
    before = worker_pid(one_worker)
    result = one_worker.submit(run_step, job, pure=False).result(timeout=90)
    assert (result.outcome, result.error) == (Outcome.FAILED, "time limit of 1 s exceeded")
    assert not alive(before), "the worker process that ran the step was ended"
    assert worker_pid(one_worker) != before
    assert StepResult.from_json(receipt_of(job).read_text()) == result
    (error,) = messages(job, StepStatus.ERROR)
    assert error.startswith(
        "Run failed: time limit of 1 s exceeded (its worker process was ended to stop it)"
    )
    assert "time.sleep(60)" in error
    assert messages(job).count("Init run") == 1, "the retry did not run the step again"
    assert not output_of(job).exists() and leftovers(output_of(job).parent) == []


DIES = """
flag = Path({flag!r}) / self.id
if self.id == {always!r} or not flag.exists():
    flag.touch()
    os._exit(3)
self.path.output.write_text("survived")
"""


def test_a_script_killing_its_worker_is_failed_after_three_deaths_one_death_is_retried(
    harbor: Path, one_worker
) -> None:
    """Dying once (an operator's kill -9 looks the same) costs one attempt: the step then
    runs to success, once. Dying every time ends FAILED on the 4th try, before Dask would
    give up on the task (KilledWorker) after 3 dead workers."""
    always = "REC-20200602"
    write_step(harbor, DIES.format(flag=str(harbor), always=always))

    once = count_job(harbor, "count-REC-20200601-00000006")
    result = one_worker.submit(run_step, once, pure=False).result(timeout=90)
    assert result.outcome is Outcome.DONE, result
    assert output_of(once).read_text() == "survived"
    assert messages(once).count("Init run") == 2
    assert messages(once).count("Run finished") == 1

    every = count_job(harbor, "count-REC-20200602-00000007", record_id=always)
    result = one_worker.submit(run_step, every, pure=False).result(timeout=120)
    error = "the step's process died 3 times while running it"
    assert (result.outcome, result.error) == (Outcome.FAILED, error)
    assert messages(every).count("Init run") == 3, "not started a 4th time"
    assert messages(every, StepStatus.ERROR) == [f"Run failed: {error}"]
    assert StepResult.from_json(receipt_of(every).read_text()) == result
    assert leftovers(output_of(every).parent) == []


def test_the_daemon_fails_a_step_whose_script_kills_its_worker_and_goes_on(make_lab) -> None:
    lab = make_lab(1)
    victim = record_id(10)
    script = lab.ws / "scripts" / "count.py"
    kill = f"        if self.id == {victim!r}:\n            os._exit(3)\n"
    source = step_script("count", lab.control)
    script.write_text(source.replace("    def run(self):\n", "    def run(self):\n" + kill))
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    lab.add([10])
    failed = daemon.wait_for("step.failed", timeout=120, record_id=victim, step="count")
    assert failed["error"] == "the step's process died 3 times while running it"
    still_processing(lab, daemon)


# -- 4. receipts are validated ----------------------------------------------------------------

texts = st.text(max_size=40)
floats = st.floats(allow_nan=False, allow_infinity=False)
units = st.builds(Unit, texts, st.none() | texts, st.none() | texts)
results = st.builds(
    StepResult, unit=units, step=texts, outcome=st.sampled_from(Outcome), started=floats,
    finished=floats, error=st.none() | texts, inputs=texts, outputs=texts,
    input_hashes=st.none() | texts, code_hash=st.none() | texts, run_id=texts,
)  # fmt: skip
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)


@given(results)
def test_every_valid_result_survives_its_receipt(result: StepResult) -> None:
    assert StepResult.from_json(result.to_json()) == result


JSONISH = st.text(alphabet='{}[]":, 0123456789.-eE+truefalsnl\\', max_size=60)


@given(st.text() | st.binary() | JSONISH)
def test_any_text_is_a_result_or_a_value_error(text: str | bytes) -> None:
    try:
        StepResult.from_json(text)
    except ValueError as exc:
        assert "\n" not in str(exc)


@given(json_values)
def test_any_json_value_is_a_result_or_a_value_error(value: object) -> None:
    try:
        StepResult.from_json(json.dumps(value))
    except ValueError as exc:
        assert "\n" not in str(exc)


BAD_VALUES = (
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.text() | st.lists(st.none())
)


@settings(suppress_health_check=[HealthCheck.filter_too_much])
@given(results, st.sampled_from([f.name for f in dataclasses.fields(StepResult)]), BAD_VALUES)
def test_a_result_with_a_field_of_the_wrong_kind_names_that_field(
    result: StepResult, name: str, value: object
) -> None:
    data = json.loads(result.to_json())
    data[name] = value
    try:
        parsed = StepResult.from_json(json.dumps(data))
    except ValueError as exc:
        assert f"field {name}" in str(exc)
    else:  # the value was of the right kind after all (an integer may come back a float)
        got = getattr(parsed, name)
        assert got == (float(value) if isinstance(got, float) and type(value) is int else value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"finished": "x"}, "field finished: expected a finite number, got a string 'x'"),
        ({"started": True}, "field started: expected a finite number, got a boolean True"),
        ({"outcome": "maybe"}, "field outcome: expected one of done, failed, not_run, skipped"),
        ({"unit": {"record_id": 7, "task": None, "modality": None}}, "field unit.record_id"),
        ({"unit": {"record_id": "R"}}, "missing field unit.task, unit.modality"),
        ({"error": ["a"]}, "field error: expected a string or null, got an array ['a']"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_a_malformed_receipt_is_a_value_error_naming_its_field(change: dict, message: str) -> None:
    data = json.loads(StepResult(Unit(RID), "count", Outcome.DONE, 1.0, 2.0, run_id="r").to_json())
    data.update(change)
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        StepResult.from_json(json.dumps(data))
    del data["step"]
    with pytest.raises(ValueError, match=r"^missing field step$"):
        StepResult.from_json(json.dumps(data))


HALF_THEN_WAIT = """
flag = Path({flag!r})
with open(self.path.output, "w") as out:
    out.write("half")
    out.flush()
    if not flag.exists():
        flag.touch()
        time.sleep(60)
    out.write(" and the rest")
"""


def test_a_killed_attempts_output_stays_hidden_until_the_next_attempt_removes_it(
    harbor: Path, tmp_path: Path
) -> None:
    """kill -9 mid-script: what it wrote has a hidden name of its own (never taken for the
    output), and the next attempt at the same run removes it and runs the step whole."""
    flag = tmp_path / "first attempt started"
    write_step(harbor, HALF_THEN_WAIT.format(flag=str(flag)))
    job = count_job(harbor, "count-REC-20200601-00000008")
    pickled = tmp_path / "job.pickle"
    pickled.write_bytes(pickle.dumps(job))
    code = "import pickle, sys; from sinagot.runner import run_step; "
    code += "run_step(pickle.loads(open(sys.argv[1], 'rb').read()))"
    first = subprocess.Popen([sys.executable, "-c", code, str(pickled)])
    try:
        wait_until(flag.exists, 30, "the first attempt to be mid-script")
    finally:
        first.kill()
        first.wait(10)
    computed = output_of(job).parent
    (left,) = leftovers(computed)
    assert re.fullmatch(rf"\.sinagot-tmp-[0-9a-f]{{8}}-{RID}-count\.csv", left), left
    assert not output_of(job).exists()

    result = run_step(job)
    assert result.ok
    assert output_of(job).read_text() == "half and the rest"
    assert leftovers(computed) == []
    assert messages(job).count("Init run") == 2


def test_a_forged_receipt_cannot_make_a_step_remove_files(harbor: Path) -> None:
    """Guards what the attempts' list brings: the tokens in a receipt name files the next
    attempt removes, so one that is not a token is ignored."""
    job = count_job(harbor, "count-REC-20200601-00000009")
    victim = Path(job.dataset, "computed", "keep.csv")
    victim.parent.mkdir()
    victim.write_text("precious")
    receipt = receipt_of(job)
    receipt.parent.mkdir(parents=True)
    receipt.write_text(json.dumps({"attempts": ["../../computed/keep.csv#"]}))
    assert run_step(job).ok
    assert victim.read_text() == "precious"
    assert messages(job).count("Init run") == 1


# -- 5. a progress bar ------------------------------------------------------------------------

PROGRESS = """
for n in range(1, 40001):
    print(f"\\rprogress {n}/40000", end="")
print(" done")
print("windows line\\r")
self.path.output.write_text("ok")
"""


def test_a_script_printing_40000_progress_updates_logs_the_last_one(harbor: Path) -> None:
    """A progress bar redraws its line with carriage returns: the log keeps what the
    terminal would show, one line, not 40,000 updates in one."""
    write_step(harbor, PROGRESS)
    job = count_job(harbor)
    assert run_step(job).ok
    printed = [m for m in messages(job, StepStatus.PROCESSING) if m != "Processing run"]
    assert printed == ["progress 40000/40000 done", "windows line"]


def test_captured_output_ends_lines_at_newlines_and_restarts_them_at_carriage_returns() -> None:
    lines: list[str] = []
    with output_to(lines.append):
        print("50%", end="\r", flush=True)
        print("100%")
        print("crlf\r\nnext", end="")
        print("\r", end="")
        print("", end="\n")
        print("\r\r  \rlast", end="")
    assert lines == ["100%", "crlf", "next", "last"]


def test_the_timestamp_fields_refuse_what_json_cannot_round_trip() -> None:
    data = json.loads(StepResult(Unit(RID), "count", Outcome.DONE, 1.0, 2.0).to_json())
    for value in (math.inf, -math.inf, math.nan, 10**400):
        data["started"] = value
        with pytest.raises(ValueError, match=r"^field started: expected a finite number"):
            StepResult.from_json(json.dumps(data))
