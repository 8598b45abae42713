"""Hostile datasets: odd entries, odd names and crafted names where recordings land.

Whatever is in the data folder, discovery and planning never raise: a unit whose input is
a link loop, a FIFO, a socket, a device or cannot be read is shown as ERROR with its path
and why, a name that cannot be a record is no record, and every other unit plans and runs
as usual. Real files, real `sinagot` processes; permissions are tested in a process that
lacks root's right to ignore them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinagot import StepStatus
from sinagot.engine import Engine
from sinagot.fingerprints import PathUnreadable, content_hash
from sinagot.layout import Scope
from sinagot.patterns import PathPattern, PathProblem

from .conftest import still_processing

TIMEOUT = 60  # seconds for one `sinagot` command: seconds are needed, minutes mean a hang

SCRIPT = """from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = {path_in!r}
    PATH_OUT = {path_out!r}

    def run(self):
        source = self.path.input
        if source.is_dir():
            text = ",".join(sorted(p.name for p in source.iterdir()))
        else:
            text = source.read_text()
        self.path.output.write_text(text)
"""

RAW_FILE = ("raw", "{id}-raw.csv")
RAW_FOLDER = ("raw", "{id}")


# -- helpers ---------------------------------------------------------------------------------


def workspace(
    root: Path,
    id_pattern: str = r"REC-\d+",
    raw: tuple[str, ...] = RAW_FILE,
    copy_out: tuple[str, ...] = ("computed", "{id}-copy.csv"),
) -> Path:
    """A two-step workspace without pandas: `copy` reads the recording, `again` reads
    what `copy` wrote (so that a step that cannot run holds back the next one)."""
    (root / "scripts").mkdir(parents=True)
    (root / "dataset" / "raw").mkdir(parents=True)
    (root / "workspace.toml").write_text(
        f'[records]\nid_pattern = \'{id_pattern}\'\n\n[steps]\nscripts = ["copy", "again"]\n'
    )
    again_out = ("computed", "{id}-again.csv")
    (root / "scripts" / "copy.py").write_text(SCRIPT.format(path_in=raw, path_out=copy_out))
    (root / "scripts" / "again.py").write_text(SCRIPT.format(path_in=copy_out, path_out=again_out))
    return root


def recording(root: Path, record_id: str, text: str = "boats\n") -> Path:
    path = root / "dataset" / "raw" / f"{record_id}-raw.csv"
    path.write_text(text)
    return path


def _without_dac_override() -> None:
    """In the child: drop root's right to ignore file permissions (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), so that a chmod means for it what it means for a service user."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def sinagot(*args: str, as_user: bool = False) -> subprocess.CompletedProcess:
    """Run `sinagot ARGS`; with `as_user`, without the permission overrides of root."""
    return python("-m", "sinagot", *args, as_user=as_user)


def python(*args: str, as_user: bool = False) -> subprocess.CompletedProcess:
    """Run this interpreter with ARGS; whatever it is given, it must not end in a traceback."""
    drop = _without_dac_override if as_user and os.geteuid() == 0 else None
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True, text=True, errors="backslashreplace", timeout=TIMEOUT,
        preexec_fn=drop,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def status(root: Path, as_user: bool = False) -> dict[tuple[str, str], tuple[str, str]]:
    """`sinagot status` as a user reads it: (record, step) -> (STATUS, why). It must
    succeed, without a traceback, whatever the dataset holds."""
    proc = sinagot("status", str(root), as_user=as_user)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines()[1:]:
        cells = line.split(None, 3)
        if len(cells) >= 3 and cells[2] in StepStatus.__members__:
            rows[(cells[0], cells[1])] = (cells[2], cells[3] if len(cells) == 4 else "")
    return rows


def planned(root: Path) -> dict[tuple[str, str], tuple[StepStatus, tuple[str, ...], bool]]:
    """ws.plan of every unit: (record, step) -> (status, reasons, run)."""
    with Engine(root, verbose=False) as ws:
        plans = ws.plan(ws.units(Scope()))
    return {(p.unit.record_id, p.step.name): (p.status, p.reasons, p.run) for p in plans}


def assert_fine(rows: dict, *record_ids: str) -> None:
    """These records plan as a fresh recording does: `copy` ready to run."""
    for record_id in record_ids:
        assert rows[(record_id, "copy")][0] == "DATA_READY", rows


def call_with_deadline(function: Callable[[], object], seconds: float, release: Path) -> object:
    """Call `function` in a thread; fail if it is still running after `seconds` (it is
    blocked opening the FIFO `release`: opening its other end then frees the thread)."""
    outcome: list[object] = []

    def target() -> None:
        try:
            outcome.append(function())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with contextlib.suppress(OSError):
            os.close(os.open(release, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
        pytest.fail(f"still running after {seconds} s: it opened the FIFO {release}")
    return outcome[0]


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = workspace(tmp_path / "ws")
    recording(root, "REC-1")
    recording(root, "REC-2")
    return root


# -- links -----------------------------------------------------------------------------------


def test_a_link_to_itself_is_an_error_of_its_record_alone(ws: Path) -> None:
    os.symlink("REC-9-raw.csv", ws / "dataset" / "raw" / "REC-9-raw.csv")

    rows = status(ws)

    assert rows[("REC-9", "copy")] == (
        "ERROR", "input raw/REC-9-raw.csv cannot be read: symbolic link loop"
    )  # fmt: skip
    assert rows[("REC-9", "again")][0] == "INIT"
    assert "waits for step copy" in rows[("REC-9", "again")][1]
    assert_fine(rows, "REC-1", "REC-2")


def test_a_dangling_link_is_reported_rather_than_missing(ws: Path) -> None:
    os.symlink("gone-away.csv", ws / "dataset" / "raw" / "REC-9-raw.csv")

    plans = planned(ws)

    status_, reasons, run = plans[("REC-9", "copy")]
    assert (status_, run) == (StepStatus.ERROR, False)
    assert reasons == ("input raw/REC-9-raw.csv cannot be read: a dangling symbolic link",)
    assert plans[("REC-1", "copy")][0] is StepStatus.DATA_READY


def test_a_link_to_a_folder_outside_is_not_followed(ws: Path, outside) -> None:
    os.symlink(outside.root, ws / "dataset" / "raw" / "REC-9-raw.csv")
    os.symlink("/", ws / "dataset" / "raw" / "REC-8-raw.csv")  # would walk the whole machine

    rows = status(ws)

    for record_id in ("REC-8", "REC-9"):
        assert rows[(record_id, "copy")] == (
            "ERROR",
            f"input raw/{record_id}-raw.csv cannot be read: "
            "a symbolic link to a folder (not followed)",
        )
    assert_fine(rows, "REC-1", "REC-2")


def test_a_link_to_a_folder_inside_a_folder_input_is_not_followed(tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws", raw=RAW_FOLDER)
    for record_id in ("REC-1", "REC-2"):
        (root / "dataset" / "raw" / record_id).mkdir()
        (root / "dataset" / "raw" / record_id / "eeg.csv").write_text("1,2\n")
    os.symlink("..", root / "dataset" / "raw" / "REC-2" / "up")

    rows = status(root)

    assert rows[("REC-2", "copy")] == (
        "ERROR", "input raw/REC-2 cannot be read: up: a symbolic link to a folder (not followed)"
    )  # fmt: skip
    assert_fine(rows, "REC-1")


# -- files that are not files ------------------------------------------------------------------


def test_a_fifo_recording_is_never_opened_and_the_others_run(ws: Path) -> None:
    os.mkfifo(ws / "dataset" / "raw" / "REC-9-raw.csv")

    proc = sinagot("run", str(ws))  # reading the FIFO would block until the timeout

    assert proc.returncode == 0, proc.stderr
    computed = ws / "dataset" / "computed"
    assert sorted(p.name for p in computed.iterdir()) == [
        "REC-1-again.csv", "REC-1-copy.csv", "REC-2-again.csv", "REC-2-copy.csv"
    ]  # fmt: skip
    rows = status(ws)
    assert rows[("REC-9", "copy")] == (
        "ERROR",
        "input raw/REC-9-raw.csv cannot be read: a FIFO (named pipe), not a regular file or folder",
    )
    assert rows[("REC-1", "again")][0] == "DONE"


def test_a_socket_and_a_device_are_not_recordings(ws: Path, monkeypatch) -> None:
    os.symlink("/dev/zero", ws / "dataset" / "raw" / "REC-8-raw.csv")  # endless to read
    monkeypatch.chdir(ws / "dataset" / "raw")  # a socket's path must be short
    server = socket.socket(socket.AF_UNIX)
    server.bind("REC-9-raw.csv")
    try:
        plans = planned(ws)
    finally:
        server.close()

    assert plans[("REC-8", "copy")][:2] == (
        StepStatus.ERROR,
        ("input raw/REC-8-raw.csv cannot be read: a device file, not a regular file or folder",),
    )
    assert plans[("REC-9", "copy")][:2] == (
        StepStatus.ERROR,
        ("input raw/REC-9-raw.csv cannot be read: a socket, not a regular file or folder",),
    )
    assert not any(run for (rid, _), (_, _, run) in plans.items() if rid in ("REC-8", "REC-9"))
    assert plans[("REC-1", "copy")][0] is StepStatus.DATA_READY


def test_content_hash_never_opens_a_fifo(tmp_path: Path) -> None:
    folder = tmp_path / "REC-1"
    folder.mkdir()
    (folder / "eeg.csv").write_text("1,2\n")
    fifo = folder / "trigger"
    os.mkfifo(fifo)

    for path, why in [
        (fifo, "a FIFO (named pipe), not a regular file or folder"),
        (folder, "trigger: a FIFO (named pipe), not a regular file or folder"),
    ]:
        outcome = call_with_deadline(lambda p=path: content_hash(p), 10, fifo)
        assert isinstance(outcome, PathUnreadable), outcome
        assert (outcome.path, outcome.error) == (str(path), why)


def test_a_fifo_among_hashed_inputs_is_an_error_and_planning_goes_on(ws: Path) -> None:
    with (ws / "workspace.toml").open("a") as fh:
        fh.write("\n[staleness]\ncontent_hash = true\n")
    assert sinagot("run", str(ws)).returncode == 0
    raw = ws / "dataset" / "raw" / "REC-1-raw.csv"
    raw.unlink()
    os.mkfifo(raw)

    rows = status(ws)

    assert rows[("REC-1", "copy")][0] == "ERROR"
    assert "a FIFO (named pipe)" in rows[("REC-1", "copy")][1]
    assert rows[("REC-2", "copy")][0] == "DONE"


# -- permissions -------------------------------------------------------------------------------


def test_an_unreadable_sub_folder_of_a_folder_input_is_an_error(tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws", raw=RAW_FOLDER)
    for record_id in ("REC-1", "REC-2"):
        (root / "dataset" / "raw" / record_id / "secret").mkdir(parents=True)
        (root / "dataset" / "raw" / record_id / "secret" / "eeg.csv").write_text("1,2\n")
    locked = root / "dataset" / "raw" / "REC-2" / "secret"
    locked.chmod(0)
    try:
        rows = status(root, as_user=True)
    finally:
        locked.chmod(0o755)

    assert rows[("REC-2", "copy")] == (
        "ERROR",
        "input raw/REC-2 cannot be read: secret: cannot list the folder: permission denied",
    )
    assert_fine(rows, "REC-1")


def test_recordings_in_a_folder_that_cannot_be_searched_are_errors(ws: Path) -> None:
    raw = ws / "dataset" / "raw"
    raw.chmod(0o644)  # names can be listed, files cannot be reached
    try:
        rows = status(ws, as_user=True)
    finally:
        raw.chmod(0o755)

    for record_id in ("REC-1", "REC-2"):
        assert rows[(record_id, "copy")] == (
            "ERROR", f"input raw/{record_id}-raw.csv cannot be read: permission denied"
        )  # fmt: skip


def test_a_touched_input_that_cannot_be_opened_for_its_hash_is_an_error(ws: Path) -> None:
    with (ws / "workspace.toml").open("a") as fh:
        fh.write("\n[staleness]\ncontent_hash = true\n")
    assert sinagot("run", str(ws)).returncode == 0
    raw = ws / "dataset" / "raw" / "REC-1-raw.csv"
    later = raw.stat().st_mtime_ns + 10**9
    os.utime(raw, ns=(later, later))  # a touch: only its content's hash can tell
    raw.chmod(0)
    try:
        rows = status(ws, as_user=True)
    finally:
        raw.chmod(0o644)

    assert rows[("REC-1", "copy")] == (
        "ERROR", "input raw/REC-1-raw.csv cannot be read: permission denied"
    )  # fmt: skip
    assert rows[("REC-2", "copy")][0] == "DONE"


DISCOVER = """
import re, sys
from sinagot.patterns import PathPattern
problems = []
matcher = PathPattern.parse(("raw", "{id}-raw.csv")).compile(re.compile(r"REC-\\d+"))
print(list(matcher.record_ids(sys.argv[1], problems)), list(matcher.scan(sys.argv[1], problems)))
print(*problems, sep="\\n")
"""


def test_a_folder_that_cannot_be_listed_is_a_problem_for_discovery(ws: Path) -> None:
    raw = ws / "dataset" / "raw"
    raw.chmod(0)
    try:
        found = python("-c", DISCOVER, str(ws / "dataset"), as_user=True)
        status(ws, as_user=True)  # exits 0, without a traceback
    finally:
        raw.chmod(0o755)

    assert found.returncode == 0, found.stderr
    problem = "PathProblem(path='raw', error='cannot list the folder: permission denied')"
    assert found.stdout.splitlines() == ["[] []", problem, problem]


# -- names -------------------------------------------------------------------------------------


def test_an_output_name_too_long_for_the_file_system_is_an_error(tmp_path: Path) -> None:
    long_out = ("computed", "{id}-a-name-that-makes-it-too-long.csv")
    root = workspace(tmp_path / "ws", id_pattern="[a-z0-9-]+", copy_out=long_out)
    long_id = "a" * 240
    recording(root, long_id)  # 248 bytes: fits; its output's name does not
    for number in range(70):  # enough units to plan from folder listings as well
        recording(root, f"r{number}")

    with Engine(root, verbose=False) as ws:
        every = ws.plan(ws.units(Scope()))
        alone = ws.plan(ws.units(Scope(), [long_id]))

    for plans in (every, alone):
        (copy,) = [p for p in plans if p.unit.record_id == long_id and p.step.name == "copy"]
        assert (copy.status, copy.run) == (StepStatus.ERROR, False)
        assert copy.reasons == (f"output {copy.outputs[0]} cannot be read: name too long",)
    assert {p.unit.record_id for p in every if p.run} == {f"r{n}" for n in range(70)}


def test_a_name_that_is_not_utf8_never_becomes_a_record(tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws", id_pattern="REC-.+")
    recording(root, "REC-1")
    raw = os.fsencode(root / "dataset" / "raw")
    fd = os.open(raw + b"/REC-\xff\xfe-raw.csv", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)

    rows = status(root)
    assert {record for record, _ in rows} == {"REC-1"}
    assert sinagot("status", "--json", str(root)).returncode == 0
    problems: list[PathProblem] = []
    matcher = PathPattern.parse(RAW_FILE).compile(re.compile("REC-.+"))
    assert list(matcher.record_ids(root / "dataset", problems)) == ["REC-1"]
    assert problems == [
        PathProblem(
            "raw/REC-\\xff\\xfe-raw.csv", "the name is not valid UTF-8, so it cannot be a record's"
        )
    ]


def test_a_name_crafted_to_backtrack_does_not_stall_status(tmp_path: Path) -> None:
    # Python's re needs about 4**(n/2) steps to refuse this name with this id_pattern.
    root = workspace(tmp_path / "ws", id_pattern="REC-([a-z0-9]+-?)+")
    recording(root, "REC-ok-1")
    recording(root, "REC-" + "a" * 40 + "!")

    started = time.monotonic()
    rows = status(root)

    assert time.monotonic() - started < TIMEOUT
    assert {record for record, _ in rows} == {"REC-ok-1"}


ODD_BYTES = st.binary(min_size=1, max_size=40).filter(lambda b: b not in (b".", b".."))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(names=st.lists(ODD_BYTES, min_size=1, max_size=6), kinds=st.data())
def test_any_file_names_in_the_dataset_never_break_discovery_or_planning(names, kinds) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = workspace(Path(tmp) / "ws", id_pattern=".+")
        raw = os.fsencode(root / "dataset" / "raw")
        for name in names:
            path = raw + b"/" + name.replace(b"/", b"_").replace(b"\0", b"_") + b"-raw.csv"
            kind = kinds.draw(st.sampled_from(["file", "fifo", "loop", "folder"]))
            with contextlib.suppress(OSError):  # a name the file system refuses, or twice
                if kind == "file":
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                elif kind == "fifo":
                    os.mkfifo(path)
                elif kind == "loop":
                    os.symlink(os.path.basename(path), path)
                else:
                    os.mkdir(path)
        with Engine(root, verbose=False) as ws:
            plans = ws.plan(ws.units(Scope()))
        ids = {p.unit.record_id for p in plans}
        for record_id in ids:
            record_id.encode()  # an ID is always text that JSON, SQLite and terminals take
        problems: list[PathProblem] = []
        matcher = PathPattern.parse(RAW_FILE).compile(re.compile(".+"))
        assert set(matcher.record_ids(root / "dataset", problems)) == ids
        assert {m.record_id for m in matcher.scan(root / "dataset")} == ids
        for problem in problems:
            assert problem.path.isprintable() and "\n" not in problem.error


# -- the daemon --------------------------------------------------------------------------------


def test_the_daemon_outlives_odd_entries_and_processes_the_rest(make_lab, outside) -> None:
    lab = make_lab(2)
    fine = lab.ids()
    raw = lab.dataset / "raw"
    os.symlink("REC-00000090-raw.csv", raw / "REC-00000090-raw.csv")
    os.symlink("nowhere", raw / "REC-00000091-raw.csv")
    os.symlink(outside.root, raw / "REC-00000092-raw.csv")
    os.mkfifo(raw / "REC-00000093-raw.csv")
    os.close(os.open(os.fsencode(raw) + b"/REC-0000\xff094-raw.csv", os.O_CREAT | os.O_EXCL, 0o644))

    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=TIMEOUT)

    for record_id in fine:
        assert lab.output(record_id, "mean").exists()
    still_processing(lab, daemon)
