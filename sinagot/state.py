"""The state store: what each step's last run read, wrote and ran with. SQLite in WAL mode.

One row per (record, task, modality, step). A run is marked *submitted* before it can
begin and *finished* (done or failed, with the fingerprints of what it read and wrote)
after its outputs are in place, so a run killed in between is seen as incomplete.

Only the process holding the workspace's writer lock writes (the daemon, or a `run`);
any number of readers (`sinagot status`) may read at the same time.

No sqlite3 error leaves this module: each becomes a `StateError` naming the file and the
likely fix (disk full, read-only, locked, damaged), and a failed write is rolled back, so
the store is usable again once the cause is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Concatenate, NamedTuple, ParamSpec, TypeVar

from .errors import SinagotError
from .fingerprints import Fingerprint, decode_fingerprints
from .layout import Unit

if TYPE_CHECKING:
    from .runner import StepResult

SCHEMA_VERSION = 2
DB_NAME = "state.db"
LOCK_NAME = "writer.lock"
RECEIPTS = "receipts"
SEP = "\x1f"
BUSY_TIMEOUT = 30  # seconds a write waits for another connection's lock before failing
LOCK_PATIENCE = 1.0  # seconds `WriterLock.acquire` retries: a reader's probe is brief

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,         -- record_id, task, modality, step joined by \\x1f
    record_id TEXT NOT NULL,
    task TEXT NOT NULL,           -- '' when the workspace has no tasks
    modality TEXT NOT NULL,
    step TEXT NOT NULL,
    state TEXT,                   -- 'done' or 'failed'; NULL before the first finished run
    inputs TEXT,                  -- encoded fingerprints of what the last run read
    outputs TEXT,                 -- and of what it wrote
    input_hashes TEXT,            -- JSON {path: content hash}, when content hashing is on
    code_hash TEXT,
    error TEXT,
    started REAL,
    finished REAL,
    submitted REAL,               -- set while a run is queued or running; NULL otherwise
    generation TEXT               -- names the submitted run (its Dask keys, its receipts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_record ON runs (record_id);
"""


class StateError(SinagotError):
    """The state store cannot be used: newer schema, locked by another writer, unreadable."""


#: What a sqlite3 error most likely means, and what to do, by its primary result code.
_ADVICE = {
    "SQLITE_FULL": "the disk is full: free space on its file system, then try again",
    "SQLITE_READONLY": "it is read-only: make the file and its folder writable for this user, "
    "or point [state] path elsewhere",
    "SQLITE_CANTOPEN": "it cannot be opened: check that it and its folder are readable and "
    "writable for this user",
    "SQLITE_PERM": "access denied: make the file and its folder writable for this user",
    "SQLITE_BUSY": "another program kept it locked for more than {timeout:g} s (a sqlite3 "
    "shell, a backup?): let it finish, then try again",
    "SQLITE_LOCKED": "another connection holds it locked: try again",
    "SQLITE_CORRUPT": "the file is damaged: move state.db and its -wal and -shm files aside; "
    "sinagot starts a new store",
    "SQLITE_NOTADB": "this is not a sinagot state store: move it aside, or point [state] path "
    "elsewhere",
    "SQLITE_IOERR": "the disk or file system failed to read or write it; keep the state "
    "store on local disk ([state] path)",
}


def explain(path: Path, exc: sqlite3.Error, timeout: float = BUSY_TIMEOUT) -> str:
    """One line for a user: the file, what SQLite said, and the likely fix."""
    code = getattr(exc, "sqlite_errorname", "") or ""
    primary = "_".join(code.split("_")[:2])
    text = str(exc)
    advice = _ADVICE.get(primary)
    if advice is None and "disk is full" in text:
        advice = _ADVICE["SQLITE_FULL"]
    if advice is None:
        return f"{path}: {text}"
    return f"{path}: state store error ({text}); {advice.format(timeout=timeout)}"


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _guarded(
    method: Callable[Concatenate[StateStore, _P], _T],
) -> Callable[Concatenate[StateStore, _P], _T]:
    """A StateStore method that raises StateError, never sqlite3.Error, and leaves the store
    ready to be used again (reopened at the next call) once the cause is gone."""

    @functools.wraps(method)
    def wrapper(store: StateStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return method(store, *args, **kwargs)
        except sqlite3.Error as exc:
            store.close()  # SQLite may keep a failed connection in an error state: start afresh
            raise StateError(explain(store.path, exc, store.busy_timeout)) from exc

    return wrapper


def make_folder(folder: Path) -> None:
    """Create the state folder; StateError naming it if it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it exists and is not a folder" if isinstance(exc, FileExistsError) else None
        raise StateError(
            f"{folder}: cannot create the state folder ({why or exc.strerror}); make its "
            "parent writable for this user, or point [state] path elsewhere"
        ) from exc


def _check_file(path: Path) -> bool:
    """Whether the file exists; StateError if it is a symlink or not a regular file, so that
    SQLite never writes through a link to somewhere outside the state folder."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise StateError(f"{path}: cannot reach the state store: {exc.strerror}") from exc
    if stat.S_ISLNK(mode):
        raise StateError(
            f"{path}: is a symbolic link; the state store must be a real file (remove the "
            "link, or point [state] path at the folder it leads to)"
        )
    if not stat.S_ISREG(mode):
        raise StateError(f"{path}: is not a regular file; move it aside")
    return True


class RunRecord(NamedTuple):
    """What the store remembers of a step's last run for one unit (a row, in bulk-read order)."""

    state: str | None
    inputs: str | None  # see encode_fingerprints
    code_hash: str | None
    error: str | None
    finished: float | None
    submitted: float | None
    input_hashes: str | None
    outputs: str | None = None

    def input_map(self) -> dict[str, Fingerprint]:
        return decode_fingerprints(self.inputs)

    def hashes(self) -> dict[str, str]:
        return json.loads(self.input_hashes) if self.input_hashes else {}


class LastRun(NamedTuple):
    state: str | None  # 'done', 'failed', or None before the first finished run
    error: str | None
    started: float | None
    finished: float | None
    submitted: float | None


_COLUMNS = "state, inputs, code_hash, error, finished, submitted, input_hashes, outputs"


#: Finished runs read to tell how long each kind of step takes (`step_durations`).
DURATION_SAMPLE = 50_000


def run_key(unit: Unit, step: str) -> str:
    return f"{unit.record_id}{SEP}{unit.task or ''}{SEP}{unit.modality or ''}{SEP}{step}"


class Signatures:
    """`StateStore.read_settled`'s answer: run_key -> signature, both kept as Python's
    64-bit string hash, read straight off the cursor.

    At a million records the strings themselves (two rows a record, a key and about 130
    characters each) took over 600 MB in the daemon; two ints take a fifth of that. The
    hash is keyed per process (SipHash, `PYTHONHASHSEED`), so nobody can craft a file whose
    fingerprint collides; by chance, a changed step passes for settled with odds of 2**-64.
    A key that collides with another only sends its unit to the full rules (`plan_unit`).
    """

    __slots__ = ("by_key",)

    def __init__(self, rows: Iterable[tuple[str, str | None]]) -> None:
        #: hash(run_key) -> hash(signature): read directly by `planner.SettledCheck`'s loop
        self.by_key = {hash(key): hash(text) for key, text in rows if text is not None}

    def __len__(self) -> int:
        return len(self.by_key)

    def get(self, key: str) -> int | None:
        """The hash of this run_key's signature, or None: no settled run."""
        return self.by_key.get(hash(key))

    def matches(self, key: str, signature: str) -> bool:
        """Is this the signature the store holds for this run_key?"""
        return self.by_key.get(hash(key)) == hash(signature)


class StateStore:
    """The SQLite file under the state folder; opened lazily, closed by `close()`."""

    def __init__(self, folder: Path, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        self.folder = Path(folder)
        self.busy_timeout = busy_timeout
        self.path = self.folder / DB_NAME
        self._db: sqlite3.Connection | None = None
        self._writer = False

    # -- opening -----------------------------------------------------------------------------

    @_guarded
    def _connect(self, write: bool) -> sqlite3.Connection | None:
        if self._db is not None and (self._writer or not write):
            return self._db
        exists = _check_file(self.path)
        for end in ("-wal", "-shm"):
            _check_file(self.path.with_name(DB_NAME + end))
        if not write and not exists:
            return None
        if write:
            make_folder(self.folder)
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
        try:
            self._open(db, write)
        except BaseException:
            db.close()
            raise
        if self._db is not None:
            self._db.close()
        self._db, self._writer = db, write
        return db

    def _open(self, db: sqlite3.Connection, write: bool) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path}: written by a newer sinagot (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade sinagot, or point [state] path elsewhere"
            )
        if write:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if version == 1:  # upgrade in place: schema 2 names each submitted run
                _script(db, "ALTER TABLE runs ADD COLUMN generation TEXT;")
            elif version < SCHEMA_VERSION:
                _script(db, _SCHEMA)

    def prepare(self) -> None:
        """Open for writing now: create the store, or upgrade an older schema in place."""
        self._connect(write=True)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reading -----------------------------------------------------------------------------

    @_guarded
    def read_all(self) -> dict[str, RunRecord]:
        """Every row, keyed by `run_key`: one query, for planning a whole workspace."""
        db = self._connect(write=False)
        if db is None:
            return {}
        rows = db.execute(f"SELECT key, {_COLUMNS} FROM runs").fetchall()
        make = RunRecord._make
        return {row[0]: make(row[1:]) for row in rows}

    @_guarded
    def read_settled(self, with_code: bool, with_outputs: bool = False) -> Signatures:
        """A signature per step whose last run finished well and is not queued: its encoded
        inputs, then '\\x1e' and its code hash when `with_code`, then '\\x1d' and its
        encoded outputs when `with_outputs`.

        One string per row, built by SQLite and kept as a hash (`Signatures`): planning a
        whole workspace compares one string per step and reads full rows only for the few
        units that differ.
        """
        db = self._connect(write=False)
        if db is None:
            return Signatures(())
        code = "|| char(30) || coalesce(code_hash, '')" if with_code else ""
        if with_outputs:
            code += "|| char(29) || coalesce(outputs, '')"
        query = f"SELECT key, inputs {code} FROM runs WHERE state = 'done' AND submitted IS NULL"
        return Signatures(db.execute(query))

    @_guarded
    def read_record(self, record_ids: Iterable[str]) -> dict[str, RunRecord]:
        """The rows of a few records, by index: planning one unit touches nothing else."""
        db = self._connect(write=False)
        if db is None:
            return {}
        out = {}
        for record_id in record_ids:
            query = f"SELECT key, {_COLUMNS} FROM runs WHERE record_id = ?"
            for row in db.execute(query, (record_id,)):
                out[row[0]] = RunRecord._make(row[1:])
        return out

    @_guarded
    def last_runs(self, record_id: str) -> dict[str, LastRun]:
        """What a person asks of a record's steps (the status page's detail), by `run_key`."""
        db = self._connect(write=False)
        if db is None:
            return {}
        query = (
            "SELECT key, state, error, started, finished, submitted FROM runs WHERE record_id = ?"
        )
        return {row[0]: LastRun._make(row[1:]) for row in db.execute(query, (record_id,))}

    @_guarded
    def failed_steps(self) -> list[tuple[str, str | None, str | None, str]]:
        """(record_id, task, modality, step) whose last run failed: a later success of one
        is a recovery worth telling (`sinagotd.alerts`)."""
        db = self._connect(write=False)
        if db is None:
            return []
        query = "SELECT record_id, task, modality, step FROM runs WHERE state = 'failed'"
        return [(r, t or None, m or None, s) for r, t, m, s in db.execute(query)]

    @_guarded
    def step_durations(self) -> dict[tuple[str, str, str], float]:
        """Mean seconds of each (task, modality, step)'s last runs: how many units one Dask
        task should hold (`sinagot.batching`). From the first `DURATION_SAMPLE` finished
        rows only: a rough figure is enough (results refine it), and a million-record
        store is not read whole for it."""
        db = self._connect(write=False)
        if db is None:
            return {}
        query = (
            "SELECT task, modality, step, avg(finished - started) FROM (SELECT task, modality, "
            "step, started, finished FROM runs WHERE state IS NOT NULL AND finished >= started "
            f"LIMIT {DURATION_SAMPLE}) GROUP BY task, modality, step"
        )
        return {(t, m, s): seconds for t, m, s, seconds in db.execute(query)}

    # -- writing (the writer lock's holder only) ----------------------------------------------

    @_guarded
    def mark_submitted(self, items: Iterable[tuple[Unit, str, str]]) -> None:
        """(unit, step, generation) before the steps may begin: so that a kill from here on
        is seen as incomplete, and the next submitter can name a resubmission as this run
        (`pending_generations`)."""
        db = self._connect(write=True)
        now = time.time()
        rows = [
            (run_key(u, s), u.record_id, u.task or "", u.modality or "", s, now, generation)
            for u, s, generation in items
        ]
        with _transaction(db):
            db.executemany(
                "INSERT INTO runs (key, record_id, task, modality, step, submitted, generation) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "submitted = excluded.submitted, generation = excluded.generation",
                rows,
            )

    @_guarded
    def pending_generations(self, keys: Sequence[str]) -> dict[str, str]:
        """The generation of each of these steps (their `run_key`s) submitted but never
        finished (its submitter died): submitting it again under the same name lets a copy
        still running on a worker be waited for instead of run twice. One query per 900
        keys."""
        db = self._connect(write=False)
        if db is None:
            return {}
        found: dict[str, str] = {}
        for start in range(0, len(keys), 900):  # under SQLite's limit of variables
            chunk = keys[start : start + 900]
            marks = ",".join("?" * len(chunk))
            try:
                rows = db.execute(
                    f"SELECT key, generation FROM runs WHERE key IN ({marks}) "
                    "AND submitted IS NOT NULL AND generation IS NOT NULL",
                    chunk,
                )
                found.update(rows)
            except sqlite3.OperationalError:  # a schema-1 store, read before its upgrade
                return {}
        return found

    @_guarded
    def record(self, results: Iterable[StepResult]) -> None:
        """Finished runs (done or failed); a step that could not run just leaves the queue."""
        db = self._connect(write=True)
        finished, unqueued = [], []
        for r in results:
            key = run_key(r.unit, r.step)
            if r.state is None:
                unqueued.append((key,))
            else:
                finished.append(
                    (r.state, r.inputs, r.outputs, r.input_hashes, r.code_hash, r.error,
                     r.started, r.finished, key)
                )  # fmt: skip
        with _transaction(db):
            db.executemany(
                "UPDATE runs SET state=?, inputs=?, outputs=?, input_hashes=?, code_hash=?, "
                "error=?, started=?, finished=?, submitted=NULL WHERE key=?",
                finished,
            )
            db.executemany("UPDATE runs SET submitted=NULL WHERE key=?", unqueued)


def _script(db: sqlite3.Connection, script: str) -> None:
    """Run a schema script and set the schema version, all or nothing."""
    try:
        db.executescript(f"BEGIN IMMEDIATE;{script}PRAGMA user_version={SCHEMA_VERSION};COMMIT;")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """All or nothing, and the connection fit for the next one either way: a failed COMMIT
    (disk full) is rolled back too, and so is nothing when SQLite already did."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


class WriterLock:
    """An exclusive, non-blocking lock on the state folder: one writer per workspace.

    The kernel's lock is the truth: it drops the lock when the holder dies, however it dies.
    The holder also writes who it is in the file ("sinagotd pid 12"), but that text is only
    believed while the lock is held: a file left by a dead process says nothing, whatever
    pid it names (pids are reused).
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str = "sinagot") -> None:
        """Take the lock, retrying for `LOCK_PATIENCE` (a reader's probe holds it briefly);
        StateError naming the holder if another writer has it."""
        make_folder(self.path.parent)
        try:
            fd = self._open(os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise self._error("cannot open", exc) from exc
        deadline = time.monotonic() + LOCK_PATIENCE
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                holder = _holder_text(fd)
                os.close(fd)
                raise StateError(
                    f"{self.path.parent}: already in use by another writer ({holder}); "
                    "stop it first, or read with `sinagot status`"
                ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} pid {os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise self._error("cannot write", exc) from exc
        with contextlib.suppress(OSError):  # readable to the group, who probe it
            os.fchmod(fd, 0o644)
        self._fd = fd

    def _open(self, flags: int) -> int:
        """Never through a symlink: acquiring truncates the file, wherever a link leads."""
        return os.open(self.path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)

    def _error(self, doing: str, exc: OSError) -> StateError:
        why = "it is a symbolic link; remove it" if exc.errno == errno.ELOOP else _advice(exc)
        return StateError(f"{self.path}: {doing} the writer lock: {why}")

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str | None:
        """Who holds the lock ("sinagotd pid 12"), or None if no process does.

        Probed with a shared lock taken and dropped at once: if it is free, nobody holds
        it, whatever the file says. (A writer starting at that very moment retries.)
        """
        try:
            fd = self._open(os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None  # no lock file, or no state folder: nobody holds it
        except OSError as exc:
            raise self._error("cannot open", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(fd)
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a read-only remount: the text is moot anyway
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _advice(exc: OSError) -> str:
    """What an OSError in the state folder says, and the likely fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({exc.strerror}): free space on its file system, then try again"
    if exc.errno == errno.EROFS:
        return f"{exc.strerror}: point [state] path at a writable file system"
    return f"{exc.strerror}; make the state folder readable and writable for this user"


def _holder_text(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text if text.isprintable() and text else "a writer that has not said who it is"
