"""Staleness (DESIGN.md §6): what reruns after which change, and why; the state store's
robustness to killed processes, newer schemas and a second writer.

Real files and real processes only. Modification times are set with `os.utime(ns=...)`;
the only waiting is polling (with a deadline) for a subprocess to reach a given point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sinagot import StepStatus, Workspace
from sinagot.layout import Patterns, Scope, StepSpec, Unit
from sinagot.planner import PlanContext, plan_unit
from sinagot.runner import run_step
from sinagot.state import StateError

HARBOR_IDS = ("REC-20200601", "REC-20200602", "REC-20200603")
TEMP_PREFIX = ".sinagot-tmp-"
SECOND = 1_000_000_000  # in nanoseconds
POLL, DEADLINE = 0.05, 30.0


# -- helpers -------------------------------------------------------------------------------


def init_runs(dataset: Path) -> Counter:
    """How many runs began, by (record_id, task, modality, step): "Init run" lines in the logs."""
    counts: Counter = Counter()
    for log in (dataset / "LOG").glob("*.log"):
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if entry["message"] == "Init run":
                key = (entry["record_id"], entry["task"], entry["modality"], entry["step_label"])
                counts[key] += 1
    return counts


def new_runs(before: Counter, after: Counter) -> dict:
    """The runs that began between two `init_runs` snapshots."""
    return dict(after - before)


def harbor_key(record_id: str, step: str) -> tuple:
    return (record_id, None, None, step)


def outputs(dataset: Path) -> dict[str, int]:
    """{dataset-relative path: mtime_ns} of every file but the inputs, logs and state."""
    skip = {"LOG", ".sinagot", "raw"}
    found = {}
    for path in dataset.rglob("*"):
        rel = path.relative_to(dataset)
        if path.is_file() and not skip & set(rel.parts) and not path.name.startswith(TEMP_PREFIX):
            found[rel.as_posix()] = path.stat().st_mtime_ns
    return found


def eeg_outputs(dataset: Path) -> dict[str, int]:
    """The files the eeg steps write (everything under processed/, plus the .json results)."""
    return {
        rel: mtime
        for rel, mtime in outputs(dataset).items()
        if "/processed/" in rel or rel.endswith(("summary.json", "scores.json"))
    }


def statuses(ws: Workspace) -> dict[tuple, tuple[StepStatus, list[str]]]:
    """{(record_id, task, modality, step): (status, reasons)} of the whole workspace."""
    frame = ws.steps.status(reasons=True)
    return {
        (r.record_id, r.task, r.modality, r.step_label): (StepStatus(r.step_status), r.reasons)
        for r in frame.itertuples()
    }


def not_done(ws: Workspace) -> dict[tuple, tuple[StepStatus, list[str]]]:
    return {k: v for k, v in statuses(ws).items() if v[0] is not StepStatus.DONE}


def touch(path: Path, seconds: int = 1) -> None:
    """Move a file's mtime `seconds` later (a `touch` that cannot land on the same tick)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * SECOND))


def set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def add_config(root: Path, text: str) -> None:
    with (root / "workspace.toml").open("a") as fh:
        fh.write("\n" + text.strip() + "\n")


def run_all(root: Path) -> None:
    with Workspace(root, verbose=False) as ws:
        ws.steps.run()
        assert not not_done(ws)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait_for(condition: Callable[[], bool], what: str, proc: subprocess.Popen) -> None:
    """Poll `condition` every 0.05 s; fail after 30 s, or as soon as `proc` exits."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            err = proc.stderr.read() if proc.stderr else ""
            pytest.fail(f"process exited ({proc.returncode}) before {what}: {out} {err}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(POLL)


@contextlib.contextmanager
def spawn(args: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """A subprocess that is killed (and reaped) however the test ends."""
    proc = subprocess.Popen(args, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=DEADLINE)
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


def kill(proc: subprocess.Popen) -> None:
    """kill -9, then reap: a zombie's pid would still look alive to the lock's holder check."""
    proc.kill()
    proc.wait(timeout=DEADLINE)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sinagot", *args], capture_output=True, text=True, timeout=60
    )


def log_text(dataset: Path, record_id: str) -> str:
    path = dataset / "LOG" / f"{record_id}.log"
    return path.read_text() if path.exists() else ""


# -- 1. nothing changed ----------------------------------------------------------------


def test_nothing_changed_nothing_reruns(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    mtimes, runs = outputs(dataset), init_runs(dataset)
    assert len(mtimes) == 6 and sum(runs.values()) == 6

    with Workspace(harbor, verbose=False) as ws:
        ws.steps.run()
        assert outputs(dataset) == mtimes
        assert init_runs(dataset) == runs
        frame = ws.steps.status(reasons=True)
    assert len(frame) == 6
    assert set(frame["step_status"]) == {StepStatus.DONE}
    assert all(reasons == [] for reasons in frame["reasons"])


# -- 2. a touched input ----------------------------------------------------------------


def test_touched_input_reruns_only_the_steps_of_its_record(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    mtimes, runs = outputs(dataset), init_runs(dataset)
    raw = dataset / "raw" / "REC-20200601-raw.csv"
    content = raw.read_bytes()
    touch(raw)

    with Workspace(harbor, verbose=False) as ws:
        reason = (
            "input raw/REC-20200601-raw.csv changed since last run "
            "(same size, modified time differs)"
        )
        rec = ws.records.get("REC-20200601")
        assert rec.steps.get("count").reasons() == [reason]
        assert rec.steps.get("mean").reasons() == [reason]
        assert not_done(ws) == {
            harbor_key("REC-20200601", "count"): (StepStatus.STALE, [reason]),
            harbor_key("REC-20200601", "mean"): (StepStatus.STALE, [reason]),
        }
        ws.steps.run()
        assert not not_done(ws)

    assert raw.read_bytes() == content
    assert new_runs(runs, init_runs(dataset)) == {
        harbor_key("REC-20200601", "count"): 1,
        harbor_key("REC-20200601", "mean"): 1,
    }
    changed = {rel for rel, mtime in outputs(dataset).items() if mtimes[rel] != mtime}
    assert changed == {"computed/REC-20200601-count.csv", "computed/REC-20200601-mean.csv"}


# -- 3. content changes that keep an old mtime ------------------------------------------


def test_content_change_with_an_older_mtime_reruns(harbor: Path) -> None:
    """`cp -p` / `rsync -a` bring new content with an old mtime: make's rule misses it."""
    dataset = harbor / "dataset"
    run_all(harbor)
    runs = init_runs(dataset)
    raw = dataset / "raw" / "REC-20200601-raw.csv"
    old_size, old_mtime = raw.stat().st_size, raw.stat().st_mtime_ns
    with raw.open("a") as fh:
        fh.write("Nordlys,NO,12\n")
    new_size = raw.stat().st_size
    set_mtime(raw, old_mtime - 3600 * SECOND)  # older than every output
    assert (
        raw.stat().st_mtime_ns
        < (dataset / "computed" / "REC-20200601-count.csv").stat().st_mtime_ns
    )

    with Workspace(harbor, verbose=False) as ws:
        reasons = ws.records.get("REC-20200601").steps.get("count").reasons()
        assert reasons == [
            f"input raw/REC-20200601-raw.csv changed since last run (size {old_size} -> {new_size})"
        ]
        assert set(not_done(ws)) == {
            harbor_key("REC-20200601", "count"),
            harbor_key("REC-20200601", "mean"),
        }
        ws.steps.run()
        assert not not_done(ws)
    assert new_runs(runs, init_runs(dataset)) == {
        harbor_key("REC-20200601", "count"): 1,
        harbor_key("REC-20200601", "mean"): 1,
    }
    assert "NO,1" in (dataset / "computed" / "REC-20200601-count.csv").read_text()


def test_content_hash_ignores_a_touch_but_sees_a_same_size_edit(harbor: Path) -> None:
    add_config(harbor, "[staleness]\ncontent_hash = true")
    dataset = harbor / "dataset"
    run_all(harbor)
    raw = dataset / "raw" / "REC-20200601-raw.csv"
    recorded_mtime = raw.stat().st_mtime_ns

    # A touch, same bytes: nothing to do.
    touch(raw, 5)
    mtimes, runs = outputs(dataset), init_runs(dataset)
    with Workspace(harbor, verbose=False) as ws:
        assert not not_done(ws)
        assert ws.records.get("REC-20200601").steps.get("count").reasons() == []
        ws.steps.run()
    assert init_runs(dataset) == runs
    assert outputs(dataset) == mtimes

    # Same size, other bytes, an mtime from the past (not the recorded one): reruns.
    text = raw.read_text()
    assert "Dear Miss,UK" in text
    raw.write_text(text.replace("Dear Miss,UK", "Dear Miss,IE"))
    set_mtime(raw, recorded_mtime - 3600 * SECOND)
    with Workspace(harbor, verbose=False) as ws:
        reason = (
            "input raw/REC-20200601-raw.csv changed since last run "
            "(same size, modified time differs)"
        )
        assert not_done(ws) == {
            harbor_key("REC-20200601", "count"): (StepStatus.STALE, [reason]),
            harbor_key("REC-20200601", "mean"): (StepStatus.STALE, [reason]),
        }
        ws.steps.run()
        assert not not_done(ws)
    assert new_runs(runs, init_runs(dataset)) == {
        harbor_key("REC-20200601", "count"): 1,
        harbor_key("REC-20200601", "mean"): 1,
    }
    assert "IE,1" in (dataset / "computed" / "REC-20200601-count.csv").read_text()


# -- 4. script edits ---------------------------------------------------------------------


def test_edited_script_reruns_its_step_for_every_record(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    runs = init_runs(dataset)
    with (harbor / "scripts" / "count.py").open("a") as fh:
        fh.write("# counts boats per country\n")

    with Workspace(harbor, verbose=False) as ws:
        assert not_done(ws) == {
            harbor_key(rid, "count"): (StepStatus.STALE, ["script count.py changed since last run"])
            for rid in HARBOR_IDS
        }
        ws.steps.run()
        assert not not_done(ws)
    assert new_runs(runs, init_runs(dataset)) == {harbor_key(rid, "count"): 1 for rid in HARBOR_IDS}


def test_script_changes_can_be_ignored(harbor: Path) -> None:
    add_config(harbor, "[staleness]\nscript_changes = false")
    dataset = harbor / "dataset"
    run_all(harbor)
    mtimes, runs = outputs(dataset), init_runs(dataset)
    with (harbor / "scripts" / "count.py").open("a") as fh:
        fh.write("# counts boats per country\n")

    with Workspace(harbor, verbose=False) as ws:
        assert not not_done(ws)
        ws.steps.run()
    assert init_runs(dataset) == runs
    assert outputs(dataset) == mtimes


# -- 5. chains ---------------------------------------------------------------------------


def test_change_at_the_head_of_a_chain_reruns_the_chain_of_that_unit_only(eeg: Path) -> None:
    dataset = eeg / "dataset"
    run_all(eeg)
    mtimes, runs = eeg_outputs(dataset), init_runs(dataset)
    assert len(mtimes) == 27
    touch(dataset / "REC-200331-A" / "RS" / "EEG" / "raw.csv")

    with Workspace(eeg, verbose=False) as ws:
        assert not_done(ws) == {
            ("REC-200331-A", "RS", "EEG", "preprocess"): (
                StepStatus.STALE,
                [
                    "input REC-200331-A/RS/EEG/raw.csv changed since last run "
                    "(same size, modified time differs)"
                ],
            ),
            ("REC-200331-A", "RS", "EEG", "alpha"): (
                StepStatus.STALE,
                [
                    "earlier step preprocess will write input "
                    "REC-200331-A/RS/EEG/processed/clean.csv"
                ],
            ),
        }
        ws.steps.run()
        assert not not_done(ws)

    assert new_runs(runs, init_runs(dataset)) == {
        ("REC-200331-A", "RS", "EEG", "preprocess"): 1,
        ("REC-200331-A", "RS", "EEG", "alpha"): 1,
    }
    changed = {rel for rel, mtime in eeg_outputs(dataset).items() if mtimes[rel] != mtime}
    assert changed == {
        "REC-200331-A/RS/EEG/processed/clean.csv",
        "REC-200331-A/RS/EEG/processed/alpha.json",
    }


# -- 6. outputs made before sinagot: make's rule -------------------------------------------


def test_outputs_without_provenance_are_adopted_under_makes_rule(harbor: Path) -> None:
    dataset = harbor / "dataset"
    computed = dataset / "computed"
    computed.mkdir()
    for rid in HARBOR_IDS:
        raw_mtime = (dataset / "raw" / f"{rid}-raw.csv").stat().st_mtime_ns
        for step in ("count", "mean"):
            out = computed / f"{rid}-{step}.csv"
            out.write_text(f"made by hand,{step}\n")
            set_mtime(out, raw_mtime + 60 * SECOND)
    assert not (dataset / ".sinagot").exists()
    mtimes = outputs(dataset)

    with Workspace(harbor, verbose=False) as ws:
        frame = ws.steps.status(reasons=True)
        assert set(frame["step_status"]) == {StepStatus.DONE}
        assert all(reasons == [] for reasons in frame["reasons"])
        ws.steps.run()
    assert init_runs(dataset) == Counter()
    assert outputs(dataset) == mtimes
    assert (computed / "REC-20200601-count.csv").read_text() == "made by hand,count\n"

    # An output older than its input is out of date, and only that one.
    raw = dataset / "raw" / "REC-20200601-raw.csv"
    set_mtime(computed / "REC-20200601-count.csv", raw.stat().st_mtime_ns - 60 * SECOND)
    with Workspace(harbor, verbose=False) as ws:
        assert not_done(ws) == {
            harbor_key("REC-20200601", "count"): (
                StepStatus.STALE,
                [
                    "input raw/REC-20200601-raw.csv is newer than output "
                    "computed/REC-20200601-count.csv"
                ],
            )
        }
        ws.steps.run()
        assert not not_done(ws)
    assert init_runs(dataset) == Counter({harbor_key("REC-20200601", "count"): 1})
    assert (computed / "REC-20200601-count.csv").read_text().startswith("country,")
    assert (computed / "REC-20200601-mean.csv").read_text() == "made by hand,mean\n"


def test_deleted_state_store_adopts_existing_outputs(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    mtimes, runs = outputs(dataset), init_runs(dataset)
    shutil.rmtree(dataset / ".sinagot")

    with Workspace(harbor, verbose=False) as ws:
        assert not not_done(ws)
        ws.steps.run()
    assert init_runs(dataset) == runs
    assert outputs(dataset) == mtimes


# -- 7. a run killed between start and finish ---------------------------------------------

SLOW_SCRIPT = """import os
import time

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{id}.csv")
    PATH_OUT = ("out", "{id}.txt")

    def run(self):
        with open(self.path.input) as fh:
            lines = fh.read().count("\\n")
        with open(self.path.output, "w") as fh:
            fh.write("half ")
            fh.flush()
            BLOCK
            fh.write(f"{lines} lines\\n")
"""


def slow_workspace(root: Path, block: str) -> Path:
    """One record REC-1, one step `slow` that writes half its output, then runs `block`."""
    (root / "dataset" / "raw").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "workspace.toml").write_text(
        '[records]\nid_pattern = "REC-\\\\d+"\n\n[steps]\nscripts = ["slow"]\n\n'
        '[path]\ndataset = "./dataset"\nscripts = "./scripts"\n'
    )
    (root / "dataset" / "raw" / "REC-1.csv").write_text("a\nb\n")
    write_slow(root, block)
    return root


def write_slow(root: Path, block: str) -> None:
    (root / "scripts" / "slow.py").write_text(SLOW_SCRIPT.replace("BLOCK", block))


def run_and_kill(root: Path, env: dict[str, str] | None = None) -> None:
    """`python -m sinagot run` until its step is processing, then kill -9 it."""
    dataset = root / "dataset"
    started = log_text(dataset, "REC-1").count("Processing run")
    args = [sys.executable, "-m", "sinagot", "run", str(root)]
    with spawn(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        wait_for(
            lambda: log_text(dataset, "REC-1").count("Processing run") > started,
            "the step to start processing",
            proc,
        )
        # Another process sees the run in flight while its writer lives.
        with Workspace(root, verbose=False) as ws:
            status, reasons = statuses(ws)[("REC-1", None, None, "slow")]
        assert status is StepStatus.PROCESSING
        assert len(reasons) == 1 and " since " in reasons[0]  # wording: the planner's
        kill(proc)


def test_killed_run_leaves_no_output_and_runs_again(tmp_path: Path) -> None:
    root = slow_workspace(tmp_path / "slow", "time.sleep(60)")
    out = root / "dataset" / "out"
    run_and_kill(root)

    assert not (out / "REC-1.txt").exists()
    assert all(p.name.startswith(TEMP_PREFIX) for p in out.iterdir())
    with Workspace(root, verbose=False) as ws:
        status, reasons = statuses(ws)[("REC-1", None, None, "slow")]
        assert status in (StepStatus.DATA_READY, StepStatus.STALE)
        assert reasons

        write_slow(root, "pass")  # the fix
        ws.steps.run()
        assert statuses(ws)[("REC-1", None, None, "slow")] == (StepStatus.DONE, [])
    assert (out / "REC-1.txt").read_text() == "half 2 lines\n"


def test_killed_rerun_keeps_the_previous_output_and_is_stale(tmp_path: Path) -> None:
    block = 'if os.environ.get("SLOW_BLOCK"):\n                time.sleep(60)'
    root = slow_workspace(tmp_path / "slow", block)
    dataset = root / "dataset"
    output = dataset / "out" / "REC-1.txt"
    run_all(root)
    assert output.read_text() == "half 2 lines\n"

    raw = dataset / "raw" / "REC-1.csv"
    raw.write_text("a\nb\nc\n")
    run_and_kill(root, env=dict(os.environ, SLOW_BLOCK="1"))

    assert output.read_text() == "half 2 lines\n"  # the last good result, whole
    with Workspace(root, verbose=False) as ws:
        status, reasons = statuses(ws)[("REC-1", None, None, "slow")]
        assert status is StepStatus.STALE
        assert reasons[0] == "the last run did not finish"
        assert "input raw/REC-1.csv changed since last run (size 4 -> 6)" in reasons
        ws.steps.run()
        assert statuses(ws)[("REC-1", None, None, "slow")] == (StepStatus.DONE, [])
    assert output.read_text() == "half 3 lines\n"


# -- 8. the state store survives a killed writer ------------------------------------------

STORE_WRITER = """
import sys, time
from pathlib import Path
from sinagot.layout import Unit
from sinagot.runner import Outcome, StepResult
from sinagot.state import StateStore, WriterLock

folder, ready = Path(sys.argv[1]), Path(sys.argv[2])
lock = WriterLock(folder)
lock.acquire("sinagot")
store = StateStore(folder)
items = [(Unit(rid, None, None), step) for rid in sys.argv[3:] for step in ("count", "mean")]
n = 0
while True:
    store.mark_submitted([(unit, step, f"g{n}") for unit, step in items])
    now = time.time()
    store.record([
        StepResult(unit, step, Outcome.DONE, now, now, inputs=f"raw/x\\t{n}\\t{n}",
                   outputs=f"out/x\\t{n}\\t{n}", code_hash=str(n))
        for unit, step in items
    ])
    n += 1
    if n == 20:
        ready.touch()  # it has written, and goes on writing
"""


def test_state_store_survives_a_writer_killed_mid_write(harbor: Path) -> None:
    dataset = harbor / "dataset"
    folder = dataset / ".sinagot"
    ready = harbor / "ready"
    args = [sys.executable, "-c", STORE_WRITER, str(folder), str(ready), *HARBOR_IDS]
    with spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        wait_for(ready.exists, "the store to be written", proc)
        kill(proc)

    db = sqlite3.connect(folder / "state.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (6,)
    finally:
        db.close()

    with Workspace(harbor, verbose=False) as ws:
        assert len(ws._engine.plan(ws._engine.units(Scope()))) == 6
        ws.steps.run()
        assert not not_done(ws)
    assert len(outputs(dataset)) == 6


# -- 9. a store from a newer sinagot ---------------------------------------------------------


def test_store_of_a_newer_schema_is_refused_and_left_alone(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    touch(dataset / "raw" / "REC-20200601-raw.csv")  # something would run
    state = dataset / ".sinagot" / "state.db"
    db = sqlite3.connect(state)
    db.execute("PRAGMA user_version = 99")
    db.close()
    before = (digest(state), state.stat().st_mtime_ns)
    mtimes, runs = outputs(dataset), init_runs(dataset)

    for action in ("status", "run"):
        with Workspace(harbor, verbose=False) as ws, pytest.raises(StateError) as caught:
            getattr(ws.steps, action)()
        assert str(state) in str(caught.value)
        assert "newer" in str(caught.value)

    result = cli("status", str(harbor))
    assert result.returncode != 0
    assert str(state) in result.stderr and "newer" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout

    assert (digest(state), state.stat().st_mtime_ns) == before
    assert outputs(dataset) == mtimes
    assert init_runs(dataset) == runs


# -- 10. failed steps ----------------------------------------------------------------------

FAILING_COUNT = """from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-count.csv")

    def run(self):
        raise ValueError("no boats today")
"""


def test_failed_step_is_not_retried_until_its_script_changes(harbor: Path) -> None:
    dataset = harbor / "dataset"
    count = harbor / "scripts" / "count.py"
    good = count.read_text()
    count.write_text(FAILING_COUNT)
    failed = (StepStatus.ERROR, ["last run failed: ValueError: no boats today"])

    with Workspace(harbor, verbose=False) as ws:
        ws.steps.run()
        for rid in HARBOR_IDS:
            assert statuses(ws)[harbor_key(rid, "count")] == failed
        runs = init_runs(dataset)
        assert all(runs[harbor_key(rid, "count")] == 1 for rid in HARBOR_IDS)

        ws.steps.run()  # mean runs now (the failure ended its chain); count does not
        after = init_runs(dataset)
        assert all(after[harbor_key(rid, "count")] == 1 for rid in HARBOR_IDS)
        assert {k: v for k, v in statuses(ws).items() if k[3] == "count"} == {
            harbor_key(rid, "count"): failed for rid in HARBOR_IDS
        }
        assert not (dataset / "computed" / "REC-20200601-count.csv").exists()

    count.write_text(good)  # the fix
    with Workspace(harbor, verbose=False) as ws:
        assert {k for k, (s, _) in statuses(ws).items() if s is StepStatus.DATA_READY} == {
            harbor_key(rid, "count") for rid in HARBOR_IDS
        }
        ws.steps.run()
        assert not not_done(ws)
    assert new_runs(after, init_runs(dataset)) == {
        harbor_key(rid, "count"): 1 for rid in HARBOR_IDS
    }
    assert (dataset / "computed" / "REC-20200601-count.csv").read_text().startswith("country,")


def test_failed_step_is_retried_when_forced(harbor: Path) -> None:
    dataset = harbor / "dataset"
    (harbor / "scripts" / "count.py").write_text(FAILING_COUNT)
    with Workspace(harbor, verbose=False) as ws:
        ws.records.get("REC-20200601").steps.run("count")
        key = harbor_key("REC-20200601", "count")
        assert init_runs(dataset)[key] == 1
        ws.records.get("REC-20200601").steps.run("count")
        assert init_runs(dataset)[key] == 1
        ws.records.get("REC-20200601").steps.run("count", force=True)
        assert init_runs(dataset)[key] == 2
        assert statuses(ws)[key][0] is StepStatus.ERROR


# -- 11. results of a writer that died ----------------------------------------------------


def run_unrecorded(root: Path, record_id: str, step: str) -> Path:
    """Run one step the way a worker does, with nobody recording the result; its receipt."""
    with Workspace(root, verbose=False) as ws:
        units = ws._engine.units(Scope(), [record_id])
        (plan,) = [p for p in ws._engine.plan(units) if p.step.name == step]
        assert plan.run
        job = dataclasses.replace(ws._engine.job(plan), run_id=f"{step}-{record_id}-0badcafe")
        assert run_step(job).ok
        receipt = ws._engine.receipts / f"{job.run_id}.json"
    assert receipt.exists()
    return receipt


def test_result_of_a_dead_writer_is_kept(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    raw = dataset / "raw" / "REC-20200601-raw.csv"
    with raw.open("a") as fh:
        fh.write("Nordlys,NO,12\n")
    # The writer submitted count, its worker finished it, then the writer died.
    receipt = run_unrecorded(harbor, "REC-20200601", "count")
    output = dataset / "computed" / "REC-20200601-count.csv"
    assert "NO,1" in output.read_text()
    mtime, runs = output.stat().st_mtime_ns, init_runs(dataset)

    with Workspace(harbor, verbose=False) as ws:
        assert statuses(ws)[harbor_key("REC-20200601", "count")] == (StepStatus.DONE, [])
        assert set(not_done(ws)) == {harbor_key("REC-20200601", "mean")}
        ws.steps.run()
        assert not not_done(ws)
    assert new_runs(runs, init_runs(dataset)) == {harbor_key("REC-20200601", "mean"): 1}
    assert output.stat().st_mtime_ns == mtime
    assert not receipt.exists()

    with Workspace(harbor, verbose=False) as ws:  # now from the store alone
        assert not not_done(ws)


def test_receipt_is_ingested_even_when_nothing_else_runs(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    touch(dataset / "raw" / "REC-20200601-raw.csv")
    receipts = [run_unrecorded(harbor, "REC-20200601", step) for step in ("count", "mean")]
    runs = init_runs(dataset)

    with Workspace(harbor, verbose=False) as ws:
        assert not not_done(ws)
        ws.steps.run()
    assert init_runs(dataset) == runs
    assert [r for r in receipts if r.exists()] == []


def test_a_receipt_counts_only_while_it_is_there(harbor: Path) -> None:
    """A long-lived engine (the daemon's) reads each receipt once, then remembers it: one
    gone without being recorded by this engine (set aside by hand, or ingested by another
    writer that died before the store took it) no longer counts."""
    dataset = harbor / "dataset"
    run_all(harbor)
    touch(dataset / "raw" / "REC-20200601-raw.csv")
    receipt = run_unrecorded(harbor, "REC-20200601", "count")
    with Workspace(harbor, verbose=False) as ws:
        count = harbor_key("REC-20200601", "count")
        assert statuses(ws)[count] == (StepStatus.DONE, [])
        assert statuses(ws)[count] == (StepStatus.DONE, [])  # remembered, still there
        receipt.unlink()
        assert statuses(ws)[count][0] is StepStatus.STALE


# -- 12. the CLI: stale steps as JSON, dry runs ------------------------------------------------


def test_cli_lists_stale_steps_and_dry_run_changes_nothing(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    touch(dataset / "raw" / "REC-20200601-raw.csv")
    with (harbor / "scripts" / "mean.py").open("a") as fh:
        fh.write("# mean boat size\n")

    touched = (
        "input raw/REC-20200601-raw.csv changed since last run (same size, modified time differs)"
    )
    edited = "script mean.py changed since last run"
    result = cli("status", str(harbor), "--stale", "--json")
    assert result.returncode == 0, result.stderr
    listed = {
        (s["record_id"], s["step"]): (s["status"], s["reasons"]) for s in json.loads(result.stdout)
    }
    assert listed == {
        ("REC-20200601", "count"): ("STALE", [touched]),
        ("REC-20200601", "mean"): ("STALE", [touched, edited]),
        ("REC-20200602", "mean"): ("STALE", [edited]),
        ("REC-20200603", "mean"): ("STALE", [edited]),
    }

    state = dataset / ".sinagot"
    before = (
        outputs(dataset),
        init_runs(dataset),
        digest(state / "state.db"),
        (state / "state.db").stat().st_mtime_ns,
    )
    result = cli("run", str(harbor), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would run REC-20200601 count: {touched}" in result.stdout.splitlines()
    assert f"would run REC-20200602 mean: {edited}" in result.stdout.splitlines()
    assert "4 step(s) would run" in result.stdout
    after = (
        outputs(dataset),
        init_runs(dataset),
        digest(state / "state.db"),
        (state / "state.db").stat().st_mtime_ns,
    )
    assert after == before
    assert json.loads(cli("status", str(harbor), "--stale", "--json").stdout) != []


# -- 13. one writer per workspace ---------------------------------------------------------------

LOCK_HOLDER = """
import sys, time
from sinagot.state import WriterLock

from pathlib import Path

WriterLock(sys.argv[1]).acquire("sinagotd")
Path(sys.argv[2]).touch()
time.sleep(60)
"""


def test_second_writer_is_refused_while_readers_go_on(harbor: Path) -> None:
    dataset = harbor / "dataset"
    run_all(harbor)
    touch(dataset / "raw" / "REC-20200601-raw.csv")
    mtimes, runs = outputs(dataset), init_runs(dataset)
    locked = harbor / "locked"
    args = [sys.executable, "-c", LOCK_HOLDER, str(dataset / ".sinagot"), str(locked)]

    with spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        wait_for(locked.exists, "the lock to be taken", proc)
        with Workspace(harbor, verbose=False) as ws:
            with pytest.raises(StateError) as caught:
                ws.steps.run()
            assert "in use" in str(caught.value)
            assert f"sinagotd pid {proc.pid}" in str(caught.value)
            # Reading goes on.
            assert set(not_done(ws)) == {
                harbor_key("REC-20200601", "count"),
                harbor_key("REC-20200601", "mean"),
            }
        result = cli("status", str(harbor))
        assert result.returncode == 0, result.stderr
        assert "STALE" in result.stdout
        assert outputs(dataset) == mtimes
        assert init_runs(dataset) == runs
        kill(proc)

    with Workspace(harbor, verbose=False) as ws:  # the kernel released the lock with its holder
        ws.steps.run()
        assert not not_done(ws)


def test_planning_many_units_at_once_decides_as_planning_each_alone(tmp_path, make_workspace):
    """The whole-workspace fast path (folder listings, settled signatures) agrees with
    planning unit by unit, whatever happened to the files."""
    root = make_workspace(tmp_path / "ws", 300, trivial=True)
    with Workspace(root, verbose=False) as ws:
        ws.steps.run()
    raw, computed = root / "dataset" / "raw", root / "dataset" / "computed"
    os.utime(raw / "REC-00000003-raw.csv", ns=(1, 10**18))  # touched
    (raw / "REC-00000004-raw.csv").write_text("boat_name,country,size\nA,FR,1\n")  # changed
    (computed / "REC-00000005-mean.csv").unlink()  # an output lost
    (raw / "REC-00000006-raw.csv").unlink()  # an input gone
    make_workspace(tmp_path / "ws", 2, trivial=True, start=300)  # two new records
    with Workspace(root, verbose=False) as ws:
        units = ws._engine.units(Scope())
        bulk = ws._engine.plan(units)
        one_by_one = [plan for unit in units for plan in ws._engine.plan([unit])]
        # The status page's full plan, a few units at a time, what it reads read once
        chunked = list(ws._engine.iter_plan(units, chunk=7))
        a_part = ws._engine.plan(units[:70])  # under a quarter of them: path by path

    def decisions(plans):
        return [(p.unit, p.step.name, p.status, p.run, p.reasons) for p in plans]

    assert len(units) > 64, "large enough to take the fast path"
    assert decisions(bulk) == decisions(one_by_one) == decisions(chunked)
    assert decisions(a_part) == decisions([p for p in bulk if p.unit in set(units[:70])])
    stale = {(p.unit.record_id, p.step.name) for p in bulk if p.run}
    assert stale == {
        ("REC-00000003", "count"), ("REC-00000003", "mean"),
        ("REC-00000004", "count"), ("REC-00000004", "mean"),
        ("REC-00000005", "mean"),
        ("REC-00000300", "count"), ("REC-00000300", "mean"),
        ("REC-00000301", "count"), ("REC-00000301", "mean"),
    }  # fmt: skip


def test_a_second_attempt_at_the_same_run_returns_the_first_result(harbor: Path) -> None:
    """Dask may run a task again (its result was lost with a worker, or it was resubmitted
    after the scheduler came back): the step itself runs once."""
    dataset = harbor / "dataset"
    with Workspace(harbor, verbose=False) as ws:
        (plan,) = [
            p
            for p in ws._engine.plan(ws._engine.units(Scope(), ["REC-20200601"]))
            if p.step.name == "count"
        ]
        job = dataclasses.replace(ws._engine.job(plan), run_id="count-REC-20200601-00c0ffee")
        first, second = run_step(job), run_step(job)
    assert first.ok and second == first
    assert init_runs(dataset) == Counter({harbor_key("REC-20200601", "count"): 1})


def test_a_store_of_the_previous_schema_is_upgraded_in_place(harbor: Path) -> None:
    """Upgrading sinagot keeps what the store knew: nothing is run again for it."""
    run_all(harbor)
    db_path = harbor / "dataset" / ".sinagot" / "state.db"
    with contextlib.closing(sqlite3.connect(db_path)) as db:  # back to schema 1
        db.executescript("ALTER TABLE runs DROP COLUMN generation; PRAGMA user_version = 1;")
    runs = init_runs(harbor / "dataset")
    with Workspace(harbor, verbose=False) as ws:
        assert not not_done(ws)
        ws.steps.run(force=True, step_label="count")
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert sum(init_runs(harbor / "dataset").values()) == sum(runs.values()) + 3


# -- a script that cannot be loaded (PlanContext.broken): planning alone, no files ----------

SYNTAX = "line 3: syntax error: '(' was never closed"
RAW_IN, ALPHA_OUT = ("raw", "{id}-raw.csv"), ("computed", "{id}-alpha.csv")


def eeg_step(name: str, path_in: tuple[str, ...], path_out: tuple[str, ...]) -> StepSpec:
    return StepSpec(
        name=name,
        modality="EEG",
        script=Path("scripts", "EEG", f"{name}.py"),
        inputs=Patterns.parse(path_in),
        outputs=Patterns.parse(path_out),
    )


ALPHA = eeg_step("alpha", RAW_IN, ALPHA_OUT)
BETA = eeg_step("beta", ALPHA_OUT, ("computed", "{id}-beta.csv"))
GAMMA = eeg_step("gamma", RAW_IN, ("computed", "{id}-gamma.csv"))
UNIT = Unit("REC-1", None, "EEG")


def plan_with(
    files: dict[str, tuple[int, int]], steps: list[StepSpec], **context: object
) -> dict[str, tuple[StepStatus, tuple[str, ...], bool]]:
    """plan_unit over these files ({path: (size, mtime)}), ALPHA's script broken."""
    ctx = PlanContext(
        lookup=files.get, runs={}, broken={ALPHA.script_key: SYNTAX}, **context
    )  # fmt: skip
    return {p.step.name: (p.status, p.reasons, p.run) for p in plan_unit(UNIT, steps, ctx)}


def test_a_step_whose_script_cannot_be_loaded_keeps_its_status_and_waits() -> None:
    plans = plan_with({"raw/REC-1-raw.csv": (10, SECOND)}, [ALPHA, BETA])

    assert plans["alpha"] == (
        StepStatus.DATA_READY,
        (
            f"script EEG/alpha.py cannot be loaded ({SYNTAX}); waits until it is fixed",
            "output computed/REC-1-alpha.csv is missing",
        ),
        False,
    )
    status, reasons, run = plans["beta"]
    assert (status, run) == (StepStatus.INIT, False)
    assert reasons[0] == (
        "waits for step alpha, which cannot run yet and would rewrite computed/REC-1-alpha.csv"
    )


def test_a_later_step_that_a_broken_step_would_make_stale_waits_too() -> None:
    files = {
        "raw/REC-1-raw.csv": (10, 3 * SECOND),  # newer than what alpha made from it
        "computed/REC-1-alpha.csv": (10, 2 * SECOND),
        "computed/REC-1-beta.csv": (10, 2 * SECOND),
    }
    plans = plan_with(files, [ALPHA, BETA])

    assert plans["alpha"][0] is StepStatus.STALE and not plans["alpha"][2]
    status, reasons, run = plans["beta"]
    assert (status, run) == (StepStatus.STALE, False)
    assert reasons == (
        "waits for step alpha, which cannot run yet and would rewrite computed/REC-1-alpha.csv",
        "earlier step alpha will write input computed/REC-1-alpha.csv",
    )


def test_a_broken_script_holds_back_its_own_steps_only() -> None:
    plans = plan_with({"raw/REC-1-raw.csv": (10, SECOND)}, [ALPHA, GAMMA])

    assert plans["alpha"][2] is False
    assert plans["gamma"] == (
        StepStatus.DATA_READY, ("output computed/REC-1-gamma.csv is missing",), True
    )  # fmt: skip


def test_a_broken_script_is_not_forced_to_run() -> None:
    files = {"raw/REC-1-raw.csv": (10, SECOND), "computed/REC-1-alpha.csv": (10, 2 * SECOND)}
    plans = plan_with(files, [ALPHA], force=True)

    status, reasons, run = plans["alpha"]
    assert (status, run) == (StepStatus.STALE, False)
    assert reasons[0].startswith("script EEG/alpha.py cannot be loaded") and "forced" in reasons


def test_an_up_to_date_step_with_a_broken_script_stays_done_and_quiet() -> None:
    files = {"raw/REC-1-raw.csv": (10, SECOND), "computed/REC-1-alpha.csv": (10, 2 * SECOND)}
    plans = plan_with(files, [ALPHA])

    assert plans["alpha"] == (StepStatus.DONE, (), False)
