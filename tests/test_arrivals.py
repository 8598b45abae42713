"""Arrivals the daemon cannot misread (issue 14, item 4).

- A file still open for writing is not acted on, however long it stays quiet (up to an hour
  of quiet, then with a warning); with the polling observer, size and modification time
  must hold still for the settle time, even when the observer coalesces changes.
- `[records] ready_when` holds a record until its marker exists, in the daemon and in
  `sinagot run` alike, and `sinagot status` says so.
- One `record.arriving` event per record that starts arriving, and `sinagot status` (another
  process) shows the record ARRIVING while a running sinagotd sees its files come in.

The daemon's scenarios run the real sinagotd (tests/test_daemon.py's fixtures); the rules
themselves are also checked on `Arrivals` with a fake clock, where an hour costs nothing.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from daemonproc import wait_until
from said import Said
from test_daemon import HEADER, _rows, _utc, counted_boats, write_record

from sinagot import ConfigError
from sinagot.cli import main
from sinagot.config import load_config
from sinagot.engine import ARRIVING_FILE, Engine
from sinagot.layout import Unit
from sinagot.state import WriterLock
from sinagotd.arrivals import Arrivals
from sinagotd.watcher import OpenWrites, Watcher

NEW = "REC-20200604"
RAW = f"raw/{NEW}-raw.csv"


def sinagot(*args: str | Path) -> subprocess.CompletedProcess:
    """`sinagot ARGS...` in its own process, as a user types it beside a running daemon."""
    env = {k: v for k, v in os.environ.items() if k != "SINAGOT_DASK_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-m", "sinagot", *map(str, args)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def rows_of(table: str, record_id: str) -> dict[str, tuple[str, str]]:
    """`sinagot status`'s table: step -> (STATUS, WHY) for one record."""
    out = {}
    for line in table.splitlines():
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0] == record_id:
            out[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")
    return out


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`daemonproc.wait_until`, a failed wait a plain pytest failure."""
    return wait_until(check, timeout, what, error=pytest.fail.Exception)


def add_ready_when(workspace: Path, marker: str) -> None:
    config = workspace / "workspace.toml"
    text = config.read_text()
    assert "[records]\n" in text
    config.write_text(text.replace("[records]\n", f'[records]\nready_when = "{marker}"\n', 1))


# -- the daemon: a copy that pauses, a marker, what `sinagot status` shows -------------------


def test_a_copy_pausing_longer_than_the_settle_time_runs_once_complete(ws, sinagotd):
    """The measured problem: two chunks 4 s apart (settle 2 s) were processed half-written,
    then again. Here: settle 0.5 s, a pause of several settle times, the file open."""
    daemon = sinagotd(ws, settle=0.5)
    daemon.wait_for("daemon.idle")
    mark = daemon.mark()
    path = ws / "dataset" / RAW
    output = ws / "dataset" / "computed" / f"{NEW}-count.csv"
    with path.open("w") as copy:
        copy.write(HEADER + _rows(3))  # the first chunk
        copy.flush()
        arriving = daemon.wait_for("record.arriving", record_id=NEW)
        assert arriving["files"] == 1
        ready_at = _utc(arriving["ready_at"])
        assert ready_at - _utc(arriving["timestamp"]) <= timedelta(seconds=0.6)

        # Another process sees it arriving, the file still open for writing.
        def shown_arriving() -> dict[str, tuple[str, str]] | None:
            rows = rows_of(sinagot("status", ws, "--record", NEW).stdout, NEW)
            return rows if rows.get("count", ("",))[0] == "ARRIVING" else None

        rows = poll(shown_arriving, 30, "sinagot status showing the copy ARRIVING")
        assert rows["count"][1].startswith("files arriving: 1 file(s), 1 still open for writing")
        assert rows["mean"][0] == "ARRIVING"
        # The copy's own pause (the behaviour under test): four settle times past the time
        # the record would have been ready had the file been closed.
        pause = (ready_at + timedelta(seconds=2.0)) - datetime.now(UTC)
        time.sleep(max(pause.total_seconds(), 0.0))
        table = sinagot("status", ws, "--record", NEW).stdout
        assert rows_of(table, NEW)["count"][0] == "ARRIVING", table
        assert f"1 record(s) arriving (acted on once their files settle): {NEW}" in table
        assert not output.exists()
        copy.write(_rows(4, start=3))  # the second chunk, then the close

    daemon.wait_for("step.finished", record_id=NEW, step="mean")
    daemon.wait_for("daemon.idle")
    submitted = daemon.seen("step.submitted", since=mark, record_id=NEW)
    assert sorted(e["step"] for e in submitted) == ["count", "mean"], submitted
    assert counted_boats(ws, NEW) == 7
    assert len(daemon.seen("record.arriving", since=mark, record_id=NEW)) == 1
    # Settled and run: not shown arriving any more; the daemon's file is gone.
    table = sinagot("status", ws, "--record", NEW).stdout
    assert set(rows_of(table, NEW).values()) == {("DONE", "")}, table
    assert not (ws / "dataset" / ".sinagot" / ARRIVING_FILE).exists()


def test_a_file_written_just_before_the_daemon_starts_settles_before_it_runs(ws, sinagotd):
    """A reconcile (the start, a rescan, the one after an inotify overflow) finds what no
    event said. A file changed within the settle time may still be being written (a copy
    in place makes no event until its close): its record settles first, as if its events
    had come, instead of running at once on what may be half a recording."""
    settle = 6.0  # longer than the daemon takes to start, even on a busy machine
    path = write_record(ws, NEW)
    written = path.stat().st_mtime
    daemon = sinagotd(ws, settle=settle)
    ready = daemon.wait_for("daemon.ready", 60)
    assert time.time() - written < settle, "the daemon took longer than the settle time"
    arriving = daemon.wait_for("record.arriving", 30, since=0, record_id=NEW)
    assert arriving["files"] == 1
    first = daemon.wait_for("step.submitted", 60, since=0, record_id=NEW, step="count")
    assert _utc(first["timestamp"]) - _utc(ready["timestamp"]) >= timedelta(seconds=settle - 1)
    daemon.wait_for("step.finished", 60, since=0, record_id=NEW, step="mean")
    daemon.wait_for("daemon.idle", 60)
    assert len(daemon.seen("step.submitted", record_id=NEW, step="count")) == 1
    assert counted_boats(ws, NEW) == 4


def test_records_waiting_for_their_marker_at_the_start_are_said_once(ws, sinagotd):
    """A record already there without its `ready_when` marker when the daemon starts is
    said waiting by the first scan (before, only one whose files settled while the daemon
    ran was), and once: not again at each reconcile."""
    add_ready_when(ws, "raw/.{id}.done")
    (ws / "dataset" / "raw" / ".REC-20200601.done").touch()
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    said = {e["record_id"]: e["reason"] for e in daemon.seen("record.waiting")}
    assert said == {
        rid: f"waiting for marker raw/.{rid}.done" for rid in ("REC-20200602", "REC-20200603")
    }
    assert {e["record_id"] for e in daemon.seen("step.finished")} == {"REC-20200601"}

    mark = daemon.mark()
    os.kill(daemon.pid, signal.SIGHUP)  # a reload: a reconcile of everything
    daemon.wait_for("config.reloaded", since=mark)
    (ws / "dataset" / "raw" / ".REC-20200602.done").touch()  # after it, in the loop's order
    daemon.wait_for("step.finished", 60, since=mark, record_id="REC-20200602", step="mean")
    assert not daemon.seen("record.waiting", since=mark)


def test_ready_when_holds_a_record_until_its_marker_lands_then_it_runs_once(ws, sinagotd):
    add_ready_when(ws, "raw/.{id}.done")  # hidden: a marker is no data
    for record_id in ("REC-20200601", "REC-20200602", "REC-20200603"):
        (ws / "dataset" / "raw" / f".{record_id}.done").touch()
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    assert len(daemon.seen("step.finished")) == 6
    assert not daemon.seen("record.arriving")  # the steps' outputs landing are no arrivals

    mark = daemon.mark()
    write_record(ws, NEW, n_rows=5)
    assert daemon.wait_for("record.arriving", record_id=NEW)["files"] == 1
    waiting = daemon.wait_for("record.waiting", record_id=NEW)
    assert waiting["reason"] == f"waiting for marker raw/.{NEW}.done"
    daemon.wait_for("daemon.idle")
    assert not daemon.seen("step.submitted", since=mark)
    rows = rows_of(sinagot("status", ws, "--record", NEW).stdout, NEW)
    assert rows["count"] == (
        "DATA_READY",
        f"waiting for marker raw/.{NEW}.done; output computed/{NEW}-count.csv is missing",
    )

    (ws / "dataset" / "raw" / f".{NEW}.done").touch()
    daemon.wait_for("step.finished", record_id=NEW, step="mean")
    daemon.wait_for("daemon.idle")
    submitted = daemon.seen("step.submitted", since=mark)
    assert sorted((e["record_id"], e["step"]) for e in submitted) == [
        (NEW, "count"),
        (NEW, "mean"),
    ]
    assert counted_boats(ws, NEW) == 5


def test_a_reload_that_adds_a_marker_folder_watches_it(ws, sinagotd):
    """sinagotd watches only the folders its patterns reach: `markers/` is none of them
    until a reload adds `ready_when = "markers/{id}.done"`; the watcher then watches it too,
    and the marker written there releases its record at once (no rescan needed)."""
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    mark = daemon.mark()
    add_ready_when(ws, "markers/{id}.done")
    daemon.wait_for("config.reloaded", since=mark)
    daemon.wait_for("watch.limits", since=mark)  # the watcher restarted: what it watches
    write_record(ws, NEW, n_rows=4)
    daemon.wait_for("record.waiting", record_id=NEW)
    (ws / "dataset" / "markers").mkdir()
    (ws / "dataset" / "markers" / f"{NEW}.done").touch()
    daemon.wait_for("step.finished", 60, record_id=NEW, step="mean")
    assert [e["step"] for e in daemon.seen("step.submitted", since=mark)] == ["count", "mean"]
    assert counted_boats(ws, NEW) == 4


# -- sinagot run and status without a daemon: ready_when ---------------------------------------


def test_sinagot_run_leaves_a_record_without_its_marker_and_status_says_why(harbor, capsys) -> None:
    add_ready_when(harbor, "raw/{id}.done")
    (harbor / "dataset" / "raw" / "REC-20200601.done").touch()
    assert main(["run", str(harbor)]) == 0
    computed = harbor / "dataset" / "computed"
    assert sorted(p.name for p in computed.iterdir()) == [
        "REC-20200601-count.csv",
        "REC-20200601-mean.csv",
    ]
    # Forced or not: the copy is not complete until the marker says so.
    assert main(["run", str(harbor), "--record", "REC-20200602", "--force"]) == 0
    assert not (computed / "REC-20200602-count.csv").exists()

    capsys.readouterr()
    assert main(["status", str(harbor), "--json", "--record", "REC-20200602"]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert [s["reasons"][0] for s in steps] == ["waiting for marker raw/REC-20200602.done"] * 2
    assert main(["status", str(harbor), "--check", "--record", "REC-20200602"]) == 3

    (harbor / "dataset" / "raw" / "REC-20200602.done").touch()
    assert main(["run", str(harbor)]) == 0
    assert (computed / "REC-20200602-mean.csv").is_file()
    assert not (computed / "REC-20200603-count.csv").exists()


def test_many_records_are_held_by_their_own_markers(tmp_path, make_workspace, capsys) -> None:
    """Planning many units lists folders instead of stat-ing each path: markers too."""
    workspace = make_workspace(tmp_path / "lab", 100, trivial=True)
    add_ready_when(workspace, "raw/{id}.done")
    raw = workspace / "dataset" / "raw"
    ids = sorted(p.name.removesuffix("-raw.csv") for p in raw.glob("*-raw.csv"))
    for record_id in ids[::2]:
        (raw / f"{record_id}.done").touch()
    assert main(["status", str(workspace), "--json"]) == 0
    waiting = {
        s["record_id"] for s in json.loads(capsys.readouterr().out)
        if s["reasons"][:1] == [f"waiting for marker raw/{s['record_id']}.done"]
    }  # fmt: skip
    assert waiting == set(ids[1::2])


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("3", "expected a string, found 3"),
        ('"/srv/ready/{id}.done"', "is absolute"),
        ('"../{id}.done"', "would leave the dataset folder"),
        ('"done.txt"', "the marker must hold {id}"),
        ('"{task}/{id}.done"', "{task} cannot be used"),
        ('"{id}/{name}.done"', "unknown placeholder {name}"),
        ('"{id/.done"', "stray brace"),
        ('""', "empty path"),
        ('"{id}/.done\\u0007"', "control character"),
    ],
)
def test_a_bad_ready_when_is_a_config_error_naming_the_key(harbor, value, says) -> None:
    config = harbor / "workspace.toml"
    config.write_text(
        config.read_text().replace("[records]\n", f"[records]\nready_when = {value}\n")
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    message = str(caught.value)
    assert message.startswith(f"{config}: [records] ready_when: "), message
    assert says in message, message
    assert "\n" not in message


def test_sinagot_run_says_a_bad_ready_when_in_one_line_and_exits_78(harbor) -> None:
    config = harbor / "workspace.toml"
    config.write_text(config.read_text().replace("[records]\n", '[records]\nready_when = "x"\n'))
    done = sinagot("run", harbor)
    assert done.returncode == 78
    assert "[records] ready_when" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# -- the rules, on Arrivals with a fake clock ------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def arrivals(
    seconds: float = 2.0, writes: OpenWrites | None = None, state_dir: Path | None = None
) -> tuple[Arrivals, Said]:
    log = Said()
    return Arrivals(seconds, log, state_dir, writes=lambda: writes, wall=lambda: 1.6e9), log


def test_a_file_open_for_writing_holds_its_unit_however_long_it_stays_quiet(tmp_path) -> None:
    path = str(tmp_path / "REC-1.csv")
    Path(path).write_text("half")
    clock = Clock()
    writes = OpenWrites(clock)
    writes.made(path)  # inotify's IN_CREATE, then watchdog's `created`
    writes.event("created", path)
    settle, log = arrivals(writes=writes)
    unit = Unit("REC-1", None, None)
    settle.changed(path, [unit], 0.0)
    settle.tick(0.0)
    assert settle.due(2.5) == []
    assert settle.due(3000.0) == []  # 50 minutes of quiet: still open
    assert settle.keys() == {unit}  # the status page's ARRIVING
    writes.event("closed", path)
    assert settle.due(3000.1) == [unit]
    assert not settle.keys()
    assert not log.named("record.unclosed")


def test_a_file_open_and_quiet_for_an_hour_is_acted_on_with_a_warning(tmp_path) -> None:
    path = str(tmp_path / "REC-1.csv")
    Path(path).write_text("all that came")
    writes = OpenWrites()
    writes.made(path)
    writes.event("created", path)  # its writer hung, or the close event was lost
    settle, log = arrivals(writes=writes)
    unit = Unit("REC-1", None, None)
    settle.changed(path, [unit], 0.0)
    settle.tick(0.0)
    assert settle.due(3599.0) == []
    assert settle.due(3600.5) == [unit]
    (unclosed,) = log.named("record.unclosed")
    assert unclosed["record_id"] == "REC-1" and unclosed["path"] == path
    assert unclosed["quiet_s"] == 3600.5
    assert ("warning", "record.unclosed", unclosed) in log.lines
    assert writes.since(path) is None  # not warned about again


def test_a_file_growing_between_coalesced_events_keeps_its_unit_unsettled(tmp_path) -> None:
    """The polling observer (NFS, SMB) reports a change once per look, however slow: a unit
    settles only when size and modification time have held still for the settle time."""
    path = tmp_path / "REC-1.csv"
    path.write_text("a")
    settle, _ = arrivals(seconds=2.0)  # no open-file knowledge, as with polling
    unit = Unit("REC-1", None, None)
    settle.changed(str(path), [unit], 0.0)
    settle.tick(0.0)
    with path.open("a") as file:  # grows, and no event says so
        file.write("b")
    assert settle.due(2.5) == []  # changed since its event: wait the settle time again
    assert settle.due(4.4) == []
    assert settle.due(4.6) == [unit]


def test_one_record_arriving_event_per_record_however_many_file_events(tmp_path) -> None:
    settle, log = arrivals(seconds=2.0)
    eeg, clinical = Unit("REC-1", "RS", "EEG"), Unit("REC-1", "RS", "clinical")
    other = Unit("REC-2", "RS", "EEG")
    for i in range(50):  # a copy: many events, several passes of the loop
        now = i * 0.1
        settle.changed(str(tmp_path / f"eeg-{i % 5}"), [eeg], now)
        settle.changed(str(tmp_path / "clinical.json"), [clinical], now)
        if i == 10:
            settle.changed(str(tmp_path / "other"), [other], now)
        settle.tick(now)
    announced = log.named("record.arriving")
    assert [a["record_id"] for a in announced] == ["REC-1", "REC-2"]
    assert announced[0]["files"] == 2  # what the first pass saw
    assert announced[0]["ready_at"] == "2020-09-13T12:26:42Z"  # wall clock + settle, UTC
    assert sorted(settle.due(10.0)) == sorted([eeg, clinical, other])
    settle.changed(str(tmp_path / "eeg-0"), [eeg], 20.0)  # a new arrival, said again
    settle.tick(20.0)
    assert [a["record_id"] for a in log.named("record.arriving")] == ["REC-1", "REC-2", "REC-1"]


def test_an_output_landing_is_no_arrival(harbor, tmp_path) -> None:
    settle, log = arrivals()
    layout = Engine(harbor, verbose=False).layout
    assert settle.is_output(layout, "computed/REC-20200601-count.csv")
    assert not settle.is_output(layout, "raw/REC-20200601-raw.csv")
    unit = Unit("REC-20200601", None, None)
    settle.changed(str(tmp_path / "count.csv"), [unit], 0.0, output=True)
    settle.tick(0.0)
    assert not settle.keys() and unit not in settle  # not arriving (nor shown so) ...
    assert not log.named("record.arriving")
    assert settle.due(10.0) == [unit]  # ... but still re-planned once it settles


def test_sinagot_status_shows_arriving_only_from_the_daemon_holding_the_workspace(
    harbor, capsys
) -> None:
    engine = Engine(harbor, verbose=False)
    state = engine.config.state_dir
    lock = WriterLock(state)
    lock.acquire("sinagotd")  # as a running sinagotd does (this process: its pid)
    try:
        settle, _ = arrivals(state_dir=state)
        unit = Unit("REC-20200602", None, None)
        raw = str(harbor / "dataset" / "raw" / "REC-20200602-raw.csv")
        settle.changed(raw, [unit], 0.0)
        settle.tick(0.0)
        written = json.loads((state / ARRIVING_FILE).read_text())
        assert written["pid"] == os.getpid()
        assert engine.arriving() == written["records"]
        assert written["records"]["REC-20200602"]["files"] == 1

        assert main(["status", str(harbor), "--check"]) == 3
        table = capsys.readouterr().out
        assert rows_of(table, "REC-20200602")["count"][0] == "ARRIVING"
        assert rows_of(table, "REC-20200601")["count"][0] == "DATA_READY"
        assert "6 step(s): 2 ARRIVING, 4 DATA_READY" in table
        assert main(["status", str(harbor), "--json", "--record", "REC-20200602"]) == 0
        steps = json.loads(capsys.readouterr().out)
        assert [s["arriving"]["files"] for s in steps] == [1, 1]
        assert [s["status"] for s in steps] == ["DATA_READY", "DATA_READY"]

        assert settle.due(5.0) == [unit]
        settle.tick(5.0)  # nothing arrives: the file goes
        assert not (state / ARRIVING_FILE).exists()
        assert engine.arriving() == {}
        settle.changed(raw, [unit], 6.0)
        settle.tick(6.0)
        assert "REC-20200602" in engine.arriving()
        valid = (state / ARRIVING_FILE).read_text()
        for garbage in ("[1, 2]", "{not json", '{"pid": "me", "records": []}'):
            (state / ARRIVING_FILE).write_text(garbage)  # it is only a file: never trusted
            assert engine.arriving() == {}
            assert main(["status", str(harbor), "--record", "REC-20200602"]) == 0
        (state / ARRIVING_FILE).write_text(valid)
    finally:
        lock.release()
    # A file left behind by a daemon that is gone says nothing.
    assert (state / ARRIVING_FILE).exists()
    assert engine.arriving() == {}
    assert main(["status", str(harbor), "--record", "REC-20200602"]) == 0
    assert "ARRIVING" not in capsys.readouterr().out


# -- what inotify says, as watchdog delivers it ----------------------------------------------


def test_the_watcher_knows_a_file_open_for_writing_until_it_is_closed(tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    watcher = Watcher(queue.Queue(), [(folder, True)], "inotify")
    watcher.start()
    try:
        writes = watcher.writes
        path = folder / "REC-1.csv"
        copy = path.open("w")  # created and opened: a writer, before its first write
        poll(lambda: writes.since(str(path)) is not None, 10, "the new file seen open")
        copy.write("first chunk")
        copy.flush()
        copy.close()
        poll(lambda: writes.since(str(path)) is None, 10, "the close seen")

        path.read_text()  # a reader (a step reading its input) is no writer
        moved = tmp_path / "elsewhere.csv"
        moved.write_text("complete")
        os.replace(moved, folder / "REC-2.csv")  # moved in whole
        with (folder / "REC-3.csv").open("w") as marker:
            marker.write("barrier")
            marker.flush()
            poll(lambda: writes.since(str(folder / "REC-3.csv")), 10, "a later write seen")
            assert writes.since(str(path)) is None
            assert writes.since(str(folder / "REC-2.csv")) is None
        poll(lambda: not len(writes), 10, "every file closed")
    finally:
        watcher.stop()


def test_links_attributes_and_files_found_in_a_new_folder_are_not_taken_for_writers(tmp_path):
    """inotify is not asked for opens, reads nor writes (most of a burst's events): a file
    created is taken as its writer's until its close. Not a hard link (created, never
    closed here), a changed attribute (chmod, touch), nor a file found in a folder made
    under watch, whose close may have come before the folder was watched: each would hold
    its record as arriving for an hour."""
    folder = tmp_path / "data"
    folder.mkdir()
    empty = tmp_path / "empty.csv"
    empty.touch()
    existing = folder / "REC-5.csv"
    existing.write_text("recorded yesterday")
    watcher = Watcher(queue.Queue(), [(folder, True)], "inotify")
    watcher.start()
    try:
        writes = watcher.writes
        existing.chmod(0o640)
        os.utime(existing)
        os.link(empty, folder / "REC-1.csv")
        os.symlink(empty, folder / "REC-2.csv")
        for day in range(20):  # made and filled at once: the walk of each finds its file
            (folder / f"day-{day}").mkdir()
            (folder / f"day-{day}" / "REC-3.done").touch()
        with (folder / "REC-4.csv").open("w"):  # a barrier: everything before is seen
            poll(lambda: writes.since(str(folder / "REC-4.csv")), 10, "the barrier seen open")
            assert len(writes) == 1
        poll(lambda: not len(writes), 10, "every file closed")
    finally:
        watcher.stop()

    writes = OpenWrites()  # the same rule, without the race: a walk's file, a writer's
    lone = tmp_path / "lone.csv"
    lone.touch()
    writes.event("created", str(lone))  # found by a walk, or moved in: no IN_CREATE seen
    assert writes.since(str(lone)) is None
    writes.made(str(lone))
    writes.event("created", str(lone))
    assert writes.since(str(lone)) is not None
    writes.event("closed", str(lone))
    assert not len(writes)


def test_a_write_dispatched_after_an_overflow_does_not_hold_its_file_for_good(tmp_path):
    """The open and the write of a file, read by watchdog before an inotify overflow and
    dispatched after it, while its close was among the events lost: the overflow's marker,
    dispatched after them, forgets them (before, the record stayed 'arriving' for good)."""
    from watchdog.events import FileCreatedEvent, FileModifiedEvent

    from sinagotd.watcher import Overflowed, _Enqueue

    writes = OpenWrites()
    handler = _Enqueue(queue.Queue(), writes)
    (tmp_path / "raw").mkdir()
    path = str(tmp_path / "raw" / "REC-1-raw.csv")
    Path(path).write_text("the first chunk")
    writes.made(path)
    for event in (FileCreatedEvent(path), FileModifiedEvent(path)):
        handler.dispatch(event)
    assert writes.since(path) is not None  # held: open for writing, no close seen
    handler.dispatch(Overflowed(""))
    assert writes.since(path) is None and len(writes) == 0
