"""`sinagot` in a user's hostile or unlucky situations, run exactly as typed in a shell: one
line on stderr naming the path and the fix, a documented exit code, never a traceback, and
nothing changed (in the workspace, or outside it through a planted symlink).

Also the writer lock (judged by the kernel's lock, not a pid in a file), the state store's
errors (disk full on a real small file system, read-only, damaged) and `sinagot run` while
a daemon holds the workspace (its answer printed as it was given).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import shlex
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import copy_example
from faults.harness import chattr, chattr_works, wait_until

from sinagot.layout import Unit
from sinagot.state import StateError, StateStore, WriterLock

# -- helpers --------------------------------------------------------------------------------


def sinagot_exe() -> str:
    exe = shutil.which("sinagot", path=os.path.dirname(sys.executable))
    assert exe, "the sinagot console script is not installed in this environment"
    return exe


def sinagot(*args: str | Path) -> subprocess.CompletedProcess:
    """`sinagot ARGS...` as typed in a shell."""
    return subprocess.run(
        [sinagot_exe(), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def one_line(done: subprocess.CompletedProcess) -> str:
    """The single line a failed command printed on stderr (and that it printed only that)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def state_of(workspace: Path) -> Path:
    return workspace / "dataset" / ".sinagot"


def add_config(workspace: Path, text: str) -> None:
    config = workspace / "workspace.toml"
    config.write_text(config.read_text() + "\n" + text)


def run_all(workspace: Path) -> None:
    done = sinagot("run", workspace)
    assert done.returncode == 0, done.stdout + done.stderr


AS_USER = """
import os, sys
import locale, shutil, sinagot.cli, sinagot.logview  # as root: the interpreter lives in /root
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
sys.exit(sinagot.cli.main(sys.argv[3:]))
"""


def sinagot_as_nobody(*args: str | Path) -> subprocess.CompletedProcess:
    """`sinagot ARGS...` run by another user, a lab member who is not the service."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run sinagot as another user")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' here")
    ids = [str(user.pw_uid), str(user.pw_gid)]
    return subprocess.run(
        [sys.executable, "-c", AS_USER, *ids, *map(str, args)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs), to fill up."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to mount a small file system")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; the file (delete it to make room)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


# -- output cut short -------------------------------------------------------------------------


def big_log(workspace: Path, record_id: str, lines: int) -> None:
    entry = {"record_id": record_id, "task": None, "modality": None, "step_label": "count",
             "step_status": 20, "message": "a line", "time": "2020-06-01T12:00:00"}  # fmt: skip
    folder = workspace / "dataset" / "LOG"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{record_id}.log").write_text((json.dumps(entry) + "\n") * lines)


@pytest.mark.parametrize("command", ["status", "status --json", "logs"])
def test_output_cut_short_by_head_exits_141_quietly(tmp_path, make_workspace, command):
    workspace = make_workspace(tmp_path / "ws", 2000, trivial=True)  # far beyond a pipe's 64 KiB
    big_log(workspace, "REC-00000001", 5000)
    line = f"{shlex.quote(sinagot_exe())} {command} {shlex.quote(str(workspace))} | head -1"
    done = subprocess.run(
        ["bash", "-c", line + "; exit ${PIPESTATUS[0]}"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""  # not a traceback, not "Exception ignored ... BrokenPipeError"
    assert len(done.stdout.splitlines()) == 1


# -- the log folder ---------------------------------------------------------------------------


@pytest.mark.parametrize("record", [None, "REC-20200601"])
def test_a_log_folder_that_is_a_file_is_named_in_one_line(harbor, record):
    run_all(harbor)
    log = harbor / "dataset" / "LOG"
    shutil.rmtree(log)
    log.write_text("not a folder\n")
    done = sinagot("logs", harbor, *(["--record", record] if record else []))
    assert done.returncode == 1
    assert one_line(done) == f"sinagot: {log}: Not a directory"
    assert done.stdout == ""
    assert log.read_text() == "not a folder\n"


@pytest.mark.parametrize("unreadable", ["folder", "file"])
def test_a_log_folder_or_file_another_user_cannot_read_is_named_in_one_line(
    harbor, shared, unreadable
):
    workspace = shutil.copytree(harbor, shared / "harbor")
    run_all(workspace)
    folder = workspace / "dataset" / "LOG"
    path = folder if unreadable == "folder" else folder / "REC-20200602.log"
    path.chmod(0o700 if unreadable == "folder" else 0o600)  # the service's, not the reader's
    done = sinagot_as_nobody("logs", workspace)
    assert done.returncode == 1, done.stdout + done.stderr
    assert one_line(done) == f"sinagot: {path}: Permission denied"


# -- the state folder and the state store -----------------------------------------------------


def test_run_with_a_read_only_state_db_is_one_line_and_runs_nothing(harbor):
    run_all(harbor)
    if not chattr_works(harbor / "probe"):
        pytest.skip("chattr +i does not work here")
    state_db = state_of(harbor) / "state.db"
    computed = harbor / "dataset" / "computed"
    before = (files(computed), state_db.read_bytes())
    chattr(state_db, "+i")
    try:
        done = sinagot("run", harbor, "--force")
    finally:
        chattr(state_db, "-i")
    assert done.returncode == 1, done.stdout + done.stderr
    line = one_line(done)
    assert line.startswith(f"sinagot: {state_db}: state store error (attempt to write a readonly")
    assert "make the file and its folder writable" in line
    assert (files(computed), state_db.read_bytes()) == before


def test_run_when_the_state_folder_cannot_be_created_is_one_line_and_runs_nothing(harbor):
    blocker = harbor / "not-a-folder"
    blocker.write_text("a file where the state folder's parent should be\n")
    add_config(harbor, f'[state]\npath = "{blocker}/state"\n')
    done = sinagot("run", harbor)
    assert done.returncode == 1, done.stdout + done.stderr
    assert one_line(done) == (
        f"sinagot: {blocker}/state: cannot create the state folder (Not a directory); make "
        "its parent writable for this user, or point [state] path elsewhere"
    )
    assert not (harbor / "dataset" / "computed").exists()


def test_a_damaged_state_db_is_named_with_the_fix(harbor):
    run_all(harbor)
    state_db = state_of(harbor) / "state.db"
    state_db.write_bytes(b"this is not SQLite\n" * 500)
    for command in ("status", "run"):
        done = sinagot(command, harbor)
        assert done.returncode == 1, done.stdout + done.stderr
        line = one_line(done)
        assert line.startswith(f"sinagot: {state_db}: state store error (file is not a database)")
        assert "move it aside" in line
    assert state_db.read_bytes() == b"this is not SQLite\n" * 500


@pytest.mark.parametrize(
    ("name", "target", "says"),
    [
        ("state.db", "new.db", "is a symbolic link; the state store must be a real file"),
        ("state.db-wal", "victim.txt", "is a symbolic link; the state store must be a real file"),
        ("writer.lock", "victim.txt", "cannot open the writer lock: it is a symbolic link"),
    ],
)
def test_a_symlink_in_the_state_folder_is_refused_and_nothing_outside_changes(
    harbor, outside, name, target, says
):
    state = state_of(harbor)
    state.mkdir(parents=True)
    link = state / name
    link.symlink_to(outside.root / target)
    done = sinagot("run", harbor)
    assert done.returncode == 1, done.stdout + done.stderr
    line = one_line(done)
    assert line.startswith(f"sinagot: {link}: ") and says in line
    assert not (harbor / "dataset" / "computed").exists()
    assert link.is_symlink()  # left for the user to look at; `outside` checks its target


def test_a_full_disk_under_the_state_folder_is_one_line_and_the_next_run_recovers(
    harbor, small_disk
):
    state = small_disk / "state"
    add_config(harbor, f'[state]\npath = "{state}"\n')
    filler = fill(small_disk)
    done = sinagot("run", harbor)
    assert done.returncode == 1, done.stdout + done.stderr
    line = one_line(done)
    assert line.startswith(f"sinagot: {state}/") and "the disk is full" in line
    assert not (harbor / "dataset" / "computed").exists()

    filler.unlink()
    done = sinagot("run", harbor)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 step(s) done, 0 failed" in done.stdout


def test_a_write_that_fails_on_a_full_disk_is_rolled_back_and_the_store_stays_usable(
    small_disk,
):
    store = StateStore(small_disk / "state")
    store.mark_submitted([(Unit(f"R{i}", None, None), "count", "g0") for i in range(3)])
    big = [(Unit(f"B{i}", None, None), "count", "x" * 2000) for i in range(60)]
    filler = fill(small_disk)
    with pytest.raises(StateError) as caught:
        store.mark_submitted(big)
    assert str(caught.value).startswith(f"{store.path}: state store error (database or disk")
    assert "the disk is full" in str(caught.value)
    assert sorted(store.read_all()) == [f"R{i}\x1f\x1f\x1fcount" for i in range(3)]

    filler.unlink()
    store.mark_submitted(big)  # the same store object, once there is room
    assert len(store.read_all()) == 63
    store.close()


def test_a_store_locked_by_another_program_too_long_is_named_and_usable_after(tmp_path):
    store = StateStore(tmp_path, busy_timeout=0.2)
    store.mark_submitted([(Unit("R1", None, None), "count", "g0")])
    other = sqlite3.connect(store.path, isolation_level=None)  # a sqlite3 shell, a backup
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StateError) as caught:
            store.mark_submitted([(Unit("R2", None, None), "count", "g0")])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert str(caught.value) == (
        f"{store.path}: state store error (database is locked); another program kept it "
        "locked for more than 0.2 s (a sqlite3 shell, a backup?): let it finish, then try again"
    )
    store.mark_submitted([(Unit("R2", None, None), "count", "g0")])
    assert len(store.read_all()) == 2
    store.close()


# -- any other OSError ------------------------------------------------------------------------


def test_an_os_error_reaching_the_command_line_is_one_line_naming_the_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")
    done = sinagot("init", blocker / "lab")
    assert done.returncode == 1
    assert one_line(done) == f"sinagot: {blocker}/lab/dataset/raw: Not a directory"


# -- the writer lock ----------------------------------------------------------------------------

HOLD_LOCK = """
import sys, threading
from pathlib import Path
from sinagot.state import WriterLock
WriterLock(sys.argv[1]).acquire("sinagotd")
Path(sys.argv[2]).touch()
threading.Event().wait()
"""


@contextlib.contextmanager
def process(script: str, *args: str | Path, ready: Path) -> Iterator[subprocess.Popen]:
    """A helper process, once it has touched `ready`; killed (and reaped) afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args), str(ready)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, 30, "the helper process")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()


def test_the_lock_holder_is_whoever_holds_the_lock_not_the_pid_left_in_the_file(harbor):
    state = state_of(harbor)
    with process(HOLD_LOCK, state, ready=harbor / "held") as holder:
        assert WriterLock(state).holder() == f"sinagotd pid {holder.pid}"
        status = sinagot("status", harbor)
        assert status.stdout.splitlines()[-1].startswith(f"sinagotd pid {holder.pid} is running")
    # Killed: the kernel dropped the lock. The file is rewritten to name a live process
    # (this test: a reused pid), which holds no lock.
    (state / "writer.lock").write_text(f"sinagotd pid {os.getpid()}\n")
    assert WriterLock(state).holder() is None
    status = sinagot("status", harbor)
    assert status.stdout.splitlines()[-1].startswith("no daemon is running")
    done = sinagot("run", harbor)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 step(s) done, 0 failed" in done.stdout  # ran here, not handed to nobody


PROBE = """
import fcntl, os, sys, time
from pathlib import Path
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_SH)
Path(sys.argv[2]).touch()
time.sleep(0.3)  # a reader's probe, caught at its slowest
"""


def test_a_readers_probe_of_the_lock_does_not_fail_a_starting_writer(tmp_path):
    lock = WriterLock(tmp_path)
    with process(PROBE, lock.path, ready=tmp_path / "probing"):
        lock.acquire("sinagotd")  # retries while the probe holds its shared lock
        assert lock.held
    lock.release()


# -- `sinagot run` while a daemon holds the workspace -------------------------------------------

STAND_IN = """
import json, sys, threading
from pathlib import Path
from sinagot.requests import RequestServer
from sinagot.state import WriterLock

state, reply, asked, ready = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
WriterLock(state).acquire("sinagotd")


def on_request(request, peer):
    asked.write_text(json.dumps({"request": request.to_json(), "peer_pid": peer.pid}))
    return json.loads(reply)


if reply != "silent":
    RequestServer(state, on_request).start()
ready.touch()
threading.Event().wait()
"""


@contextlib.contextmanager
def stand_in_daemon(workspace: Path, reply: dict | str) -> Iterator[subprocess.Popen]:
    """A process that holds the workspace as sinagotd does and answers its socket with
    `reply` ("silent": holds the lock, serves no socket, as a sinagotd of an older version)."""
    text = reply if isinstance(reply, str) else json.dumps(reply)
    state = state_of(workspace)
    state.mkdir(parents=True, exist_ok=True)
    args = (state, text, workspace / "asked.json")
    with process(STAND_IN, *args, ready=workspace / "serving") as proc:
        yield proc


def asked(workspace: Path) -> dict:
    return json.loads((workspace / "asked.json").read_text())


def test_sinagot_run_prints_what_the_daemon_queued(harbor):
    reply = {"ok": True, "units": 1, "steps": 2, "busy": 0}
    with stand_in_daemon(harbor, reply) as daemon:
        cli = subprocess.Popen([sinagot_exe(), "run", str(harbor), "--record", "REC-20200601",
                                "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)  # fmt: skip
        out, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, out + err
        assert out == (
            f"sinagotd pid {daemon.pid} is running this workspace: it queued 2 step(s) of 1 "
            "unit(s); follow with `sinagot status` or its events\n"
        )
        request = json.loads(asked(harbor)["request"])
        assert request == {"records": ["REC-20200601"], "task": None, "modality": None,
                           "step": None, "force": True}  # fmt: skip
        assert asked(harbor)["peer_pid"] == cli.pid
        assert "requests" not in os.listdir(state_of(harbor))  # no file left for the daemon
    assert not (harbor / "dataset" / "computed").exists()  # the daemon's job, not the CLI's


def test_sinagot_run_prints_the_daemons_refusal_and_exits_1(harbor):
    reply = {"ok": False, "error": "no record 'REC-20200601' here any more"}
    with stand_in_daemon(harbor, reply) as daemon:
        done = sinagot("run", harbor, "--record", "REC-20200601")
        assert done.returncode == 1, done.stdout + done.stderr
        assert one_line(done) == (
            f"sinagot: sinagotd pid {daemon.pid} refused: no record 'REC-20200601' here any more"
        )
        assert done.stdout == ""


def test_sinagot_run_with_a_holder_that_does_not_answer_names_the_socket_and_holder(harbor):
    with stand_in_daemon(harbor, "silent") as daemon:
        done = sinagot("run", harbor, "--force")
        assert done.returncode == 1, done.stdout + done.stderr
        assert one_line(done) == (
            f"sinagot: sinagotd pid {daemon.pid} holds this workspace, but nothing answers on "
            f"{state_of(harbor) / 'sinagotd.sock'}; nothing was asked"
        )
        assert done.stdout == ""
    assert not (harbor / "dataset" / "computed").exists()


RUN_COUNT_AS_USER = """
import os, sys
from sinagot import Workspace
from sinagot.layout import Unit
from sinagot.runner import StepJob, run_step
ws = Workspace(sys.argv[3], verbose=False)
os.setgroups([])
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[1]))
spec, rid = ws._engine.layout.steps(None, None)[0], "REC-20200601"
job = StepJob(Unit(rid), spec, str(ws._engine.dataset), spec.inputs.relative(rid, None),
              spec.outputs.relative(rid, None))
result = run_step(job)
print(result.outcome.value, result.error)
"""


def test_a_step_whose_output_folder_is_under_one_its_user_cannot_search_is_not_run(
    shared: Path,
):
    """A lab member's run whose outputs go under a folder they may not enter: the step is
    not run, with one line naming the folder; no PermissionError escapes the runner."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a step as another user")
    user = pwd.getpwnam("nobody")
    harbor = copy_example("harbor", shared)
    (harbor / "scripts" / "count.py").write_text(  # no pandas: /root's venv is not nobody's
        "from sinagot import ScriptTemplate\n\n"
        "class Script(ScriptTemplate):\n"
        '    PATH_IN = ("raw", "{id}-raw.csv")\n'
        '    PATH_OUT = ("locked", "sub", "{id}-count.csv")\n\n'
        "    def run(self):\n"
        '        self.path.output.write_text("1")\n'
    )
    for folder in (harbor, *[p for p in harbor.rglob("*") if p.is_dir()]):
        folder.chmod(0o777)
    (harbor / "dataset" / "locked").mkdir(mode=0o700)  # root's: others cannot enter it
    done = subprocess.run(
        [sys.executable, "-c", RUN_COUNT_AS_USER, str(user.pw_uid), str(user.pw_gid), harbor],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    outcome, _, error = done.stdout.strip().partition(" ")
    assert outcome == "not_run" and "locked" in error, done.stdout
