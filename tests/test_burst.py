"""The daemon's burst path: a record dropped in is planned once, not once more for each of
its steps' outputs landing; an output changed by a person is still planned (and run) again;
the watcher leaves the library's own busy folders (`LOG/`, `.sinagot/`) unwatched and says
what inotify's kernel limits are, naming the sysctl to raise when they are short.

Real sinagotd processes on a copy of example/harbor (tests/test_daemon.py's fixtures); plans
are counted by the daemon's own `/metrics` (`sinagot_units_planned_total`). The watcher and
`OwnOutputs` are also tested on their own, on real files and a real state store.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

from said import Said
from test_daemon import LIGHT_DASK, LINUX_ONLY, write_record

from sinagot.engine import Engine
from sinagot.layout import Unit
from sinagot.patterns import TEMP_PREFIX
from sinagotd.arrivals import OwnOutputs
from sinagotd.watcher import (
    COUNTING_FS,
    PathChanged,
    Watcher,
    WatchError,
    _Errors,
    _LeafTest,
    _overflow_advice,
    check_limits,
    fs_type,
    watch_count,
)

pytestmark = LINUX_ONLY

PLANNED = re.compile(r"^sinagot_units_planned_total (\S+)$", re.MULTILINE)


def planned(base: str) -> int:
    """Units the daemon has planned one by one so far (its /metrics counter)."""
    with urllib.request.urlopen(base + "metrics", timeout=20) as answer:
        found = PLANNED.search(answer.read().decode())
    assert found, "sinagot_units_planned_total missing from /metrics"
    return int(float(found.group(1)))


def drop_and_finish(daemon, ws: Path, ids: list[str]) -> None:
    """Move these records' raw files in at once (written beside the dataset first, so that
    each arrives in one event and no busy machine can split a file's events across two
    settle times); wait until each one's last step finished, in whatever order (a busy
    machine settles them in more than one batch)."""
    mark = daemon.mark()
    staging = ws / "staging"  # outside the dataset: unwatched
    (staging / "dataset" / "raw").mkdir(parents=True, exist_ok=True)
    for record_id in ids:
        written = write_record(staging, record_id)
        os.replace(written, ws / "dataset" / "raw" / written.name)
    for record_id in ids:
        daemon.wait_for("step.finished", 120, since=mark, record_id=record_id, step="mean")


def test_new_records_are_planned_once_each_not_again_as_their_outputs_land(ws, sinagotd):
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle", 120)
    ids = [f"REC-202101{day:02d}" for day in range(1, 21)]
    drop_and_finish(daemon, ws, ids)
    # A last record after the burst: once it is done, every event of the burst's outputs
    # has been through the loop (one queue, in order), whatever came after its results.
    drop_and_finish(daemon, ws, ["REC-20210201"])
    daemon.wait_for("daemon.idle", 60)
    # Each new record: one plan when its raw file settled. Their 42 outputs (and the 6 of
    # the first scan) landing: none (this was about 3 plans a record before).
    assert planned(base) == len(ids) + 1
    assert not daemon.seen("watch.error")
    # The dataset's own folders and raw/, computed/, the scripts and the configuration's
    # folder: LOG/ and .sinagot/ (written at every step) are not watched.
    limits = daemon.seen("watch.limits")[0]
    assert limits["level"] == "info" and limits["watches"] <= 5, limits


def test_an_output_edited_by_hand_is_still_planned_and_run_again(ws, sinagotd):
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle", 120)
    before = planned(base)
    output = ws / "dataset" / "computed" / "REC-20200602-count.csv"
    original = output.read_text()
    mark = daemon.mark()
    with output.open("a") as file:  # a person's edit: size and mtime differ from the run's
        file.write("999\n")
    submitted = daemon.wait_for("step.submitted", 60, record_id="REC-20200602", step="count")
    assert any("changed since the run that wrote it" in r for r in submitted["reasons"])
    daemon.wait_for("step.finished", 60, record_id="REC-20200602", step="count")
    daemon.wait_for("daemon.idle", 60)
    assert output.read_text() == original  # written again by the step
    assert planned(base) == before + 1
    # Nothing else was touched: no other record was submitted.
    assert {e["record_id"] for e in daemon.seen("step.submitted", mark)} == {"REC-20200602"}


READER_WORKSPACE = """
[records]
id_pattern = "REC-\\\\d{3}"

[tasks.T]
modalities = ["A", "B"]

[modalities.A]
scripts = ["double"]

[modalities.B]
scripts = ["plus_one"]

[path]
dataset = "./dataset"
scripts = "./scripts"
"""
READER_SCRIPT = """
from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = {path_in!r}
    PATH_OUT = {path_out!r}

    def run(self):
        with open(self.path.input) as fh:
            value = int(fh.read())
        with open(self.path.output, "w") as fh:
            fh.write(f"{{value {op}}}\\n")
"""


def test_a_unit_reading_another_units_output_runs_when_that_output_is_written(tmp_path, sinagotd):
    """The watcher never reports a step's outputs renamed into place (a burst's events
    halved): the units of another modality that read one are told as its run is recorded."""
    ws = tmp_path / "readers"
    (ws / "dataset" / "raw").mkdir(parents=True)
    (ws / "workspace.toml").write_text(READER_WORKSPACE + LIGHT_DASK)
    for modality, name, path_in, path_out, op in (
        ("A", "double", ("raw", "{id}.txt"), ("computed", "{id}-{task}-a.txt"), "* 2"),
        ("B", "plus_one", ("computed", "{id}-{task}-a.txt"), ("computed", "{id}-{task}-b.txt"),
         "+ 1"),
    ):  # fmt: skip
        (ws / "scripts" / modality).mkdir(parents=True)
        (ws / "scripts" / modality / f"{name}.py").write_text(
            READER_SCRIPT.format(path_in=path_in, path_out=path_out, op=op)
        )
    daemon = sinagotd(ws)
    base = daemon.wait_for("daemon.started")["status_page"]
    daemon.wait_for("daemon.idle", 120)
    mark = daemon.mark()
    (ws / "dataset" / "raw" / "REC-001.txt").write_text("20\n")
    daemon.wait_for("step.finished", 60, since=mark, record_id="REC-001", step="double")
    daemon.wait_for("step.finished", 60, since=mark, record_id="REC-001", step="plus_one")
    daemon.wait_for("daemon.idle", 60)
    assert (ws / "dataset" / "computed" / "REC-001-T-b.txt").read_text() == "41\n"
    # One plan as the raw file settled (A's unit: B's does not read it), one as A's run was
    # recorded (B's): the outputs landing started nothing else.
    assert planned(base) == 2
    assert len(daemon.seen("step.finished", mark)) == 2


# -- the watcher -------------------------------------------------------------------------


def changed_paths(messages: queue.Queue, until: str, timeout: float = 10) -> set[str]:
    """Paths of the PathChanged messages, until one for `until` came (or the deadline)."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        try:
            message = messages.get(timeout=0.1)
        except queue.Empty:
            continue
        if isinstance(message, PathChanged):
            seen.add(message.path)
    return seen


def test_the_logs_receipts_and_temporary_outputs_are_not_watched(tmp_path):
    for folder in ("LOG", ".sinagot/receipts", "raw", "computed/deep"):
        (tmp_path / folder).mkdir(parents=True)
    messages: queue.Queue = queue.Queue()
    watcher = Watcher(messages, [(tmp_path, True)])
    watcher.start()
    try:
        assert watch_count(watcher._observer) == 4  # the root, raw, computed, computed/deep
        for name in ("LOG/REC-1.log", ".sinagot/receipts/r1", ".sinagot/new/r2",
                     f"computed/{TEMP_PREFIX}1-REC-1.csv", "raw/REC-1.csv"):  # fmt: skip
            path = tmp_path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x")
        # A step's output renamed into place: its run's results say so, not the watcher.
        os.replace(tmp_path / f"computed/{TEMP_PREFIX}1-REC-1.csv", tmp_path / "computed/a.csv")
        # A person's atomic save of the same output (an editor's temporary name): news.
        (tmp_path / "computed" / ".a.csv.swp").write_text("edited")
        os.replace(tmp_path / "computed" / ".a.csv.swp", tmp_path / "computed" / "c.csv")
        (tmp_path / "computed" / "deep" / "b.csv").write_text("y")  # the last one written
        seen = changed_paths(messages, str(tmp_path / "computed" / "deep" / "b.csv"))
    finally:
        watcher.stop()
    relative = {os.path.relpath(p, tmp_path) for p in seen}
    assert {"raw/REC-1.csv", "computed/c.csv", "computed/deep/b.csv"} <= relative
    assert "computed/a.csv" not in relative
    assert not [r for r in relative if r.startswith(("LOG/", ".sinagot")) or TEMP_PREFIX in r]


def test_folders_no_pattern_reaches_are_not_watched_nor_walked(tmp_path):
    """With `keep` (the daemon's `Layout.may_hold`), a scratch tree beside the records is
    neither watched (no event from it to read, or to lose in an overflow) nor listed; a
    folder made later that a pattern reaches is watched at once, with what it holds."""
    for folder in ("raw", "scratch/a/b", "scratch/c"):
        (tmp_path / folder).mkdir(parents=True)
    messages: queue.Queue = queue.Queue()
    keep = {tmp_path: lambda relative: relative.split("/")[0] in ("raw", "computed")}
    watcher = Watcher(messages, [(tmp_path, True)], keep=keep)
    watcher.start()
    try:
        assert watch_count(watcher._observer) == 2  # the root and raw/: scratch/ is not
        (tmp_path / "scratch" / "a" / "b" / "noise.csv").write_text("x")
        (tmp_path / "scratch" / "more").mkdir()  # a folder made later: not watched either
        staged = tmp_path.parent / f"{tmp_path.name}-staged"
        (staged / "deep").mkdir(parents=True)
        (staged / "deep" / "REC-2.csv").write_text("z")
        os.replace(staged, tmp_path / "computed")  # a tree moved in that a pattern reaches
        (tmp_path / "raw" / "REC-1.csv").write_text("y")  # the last one written
        seen = changed_paths(messages, str(tmp_path / "raw" / "REC-1.csv"))
        assert watch_count(watcher._observer) == 4  # + computed/, computed/deep/
    finally:
        watcher.stop()
    relative = {os.path.relpath(p, tmp_path) for p in seen}
    assert "raw/REC-1.csv" in relative and "computed" in relative
    assert not [r for r in relative if r.startswith("scratch/")], relative


def test_a_folder_is_known_to_hold_no_folder_by_its_link_count_on_file_systems_that_count(
    tmp_path,
):
    """The start-up walk lists no folder that its link count says holds no folder (on ext4,
    xfs, tmpfs...: `raw/` of a million records is three million names less to list)."""
    mounts = tmp_path / "mountinfo"
    mounts.write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "30 27 0:30 / /mnt/lab\\040share rw - cifs //nas/lab rw\n"
        "31 30 0:31 / /mnt/lab\\040share/fast rw - tmpfs tmpfs rw\n"
    )
    assert fs_type("/home/x", mounts) == "ext4"
    assert fs_type("/mnt/lab share/records", mounts) == "cifs"  # never trusted
    assert fs_type("/mnt/lab share/fast/raw", mounts) == "tmpfs"  # the longest mount point
    assert fs_type("/x", tmp_path / "missing") is None
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "REC-1.csv").write_text("x")
    (tmp_path / "tree" / "REC-1").mkdir(parents=True)
    leaf = _LeafTest(os.fsencode(tmp_path))
    counting = fs_type(tmp_path) in COUNTING_FS
    assert leaf(os.fsencode(tmp_path / "flat")) is counting  # elsewhere: listed, as before
    assert leaf(os.fsencode(tmp_path / "tree")) is False
    assert leaf(os.fsencode(tmp_path / "gone")) is False


def test_limits_are_said_once_and_the_sysctl_named_when_watches_run_short():
    log = Said()
    check_limits(40, {"max_user_watches": 8192, "max_queued_events": 16384}, log)
    assert log.lines == [("info", "watch.limits", {
        "watches": 40, "max_user_watches": 8192, "max_queued_events": 16384, "action": None,
    })]  # fmt: skip
    log = Said()
    check_limits(5000, {"max_user_watches": 8192, "max_queued_events": 16384}, log)
    level, event, fields = log.lines[0]
    assert (level, event) == ("warning", "watch.limits")
    assert "sysctl fs.inotify.max_user_watches=32768" in fields["action"]


def test_an_overflow_names_the_queue_sysctl_and_forgets_open_writes():
    messages: queue.Queue = queue.Queue()
    watcher = Watcher(messages, [])
    watcher.writes.event("modified", "/data/raw/a.csv")
    errors = _Errors(messages, watcher.writes)
    lost = "Inotify queue overflowed; filesystem events were lost"  # watchdog's words
    errors.handle(logging.LogRecord("watchdog", logging.WARNING, __file__, 1, lost, (), None))
    error = messages.get_nowait()
    assert isinstance(error, WatchError) and "fs.inotify.max_queued_events" in error.error
    assert len(watcher.writes) == 0  # a close among the lost events must not hold a file
    assert _overflow_advice("watch lost", {}) == "watch lost"  # other warnings: as they are


# -- outputs the daemon expects ------------------------------------------------------------


def test_own_outputs_are_expected_unless_changed_since_their_run(harbor):
    done = subprocess.run([sys.executable, "-m", "sinagot", "run", str(harbor)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    engine = Engine(harbor, verbose=False)
    own = OwnOutputs()
    relative = "computed/REC-20200601-count.csv"
    path = str(harbor / "dataset" / relative)
    unit = Unit("REC-20200601", None, None)
    assert own.owner(engine.layout, relative) == unit
    assert own.owner(engine.layout, "raw/REC-20200601-raw.csv") is None  # an input only
    assert own.expected(unit, relative, path, None, engine.store)  # as its run wrote it
    # Noted while in flight; once landed, compared with what its run's results say it wrote.
    runs = engine.store.read_record([unit.record_id])
    outputs = next(run.outputs for key, run in runs.items() if key.endswith("count"))
    assert own.expected(unit, relative, path, [SimpleNamespace(state="done", outputs=outputs)],
                        engine.store)  # fmt: skip
    assert own.landed(set(), engine.store) == [] and len(own) == 0
    # Noted while in flight, its run's result not heard of: compared with the store.
    assert own.expected(unit, relative, path, [], engine.store)
    assert own.landed({unit}, engine.store) == [] and len(own) == 1  # still in flight
    with open(path, "a") as file:  # edited while its unit was on the cluster
        file.write("999\n")
    assert own.landed(set(), engine.store) == [(unit, path)] and len(own) == 0
    assert not own.expected(unit, relative, path, None, engine.store)  # a person's edit
    engine.close()
