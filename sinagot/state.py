"""The state store: what each step's last run read, wrote and ran with. SQLite in WAL mode.

One row per (record, task, modality, step). A run is marked *submitted* before it can
begin and *finished* (done or failed, with the fingerprints of what it read and wrote)
after its outputs are in place, so a run killed in between is seen as incomplete.

Only the process holding the workspace's writer lock writes (the daemon, or a `run`);
any number of readers (`sinagot status`) may read at the same time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

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


_COLUMNS = "state, inputs, code_hash, error, finished, submitted, input_hashes, outputs"


def run_key(unit: Unit, step: str) -> str:
    return f"{unit.record_id}{SEP}{unit.task or ''}{SEP}{unit.modality or ''}{SEP}{step}"


class StateStore:
    """The SQLite file under the state folder; opened lazily, closed by `close()`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_NAME
        self._db: sqlite3.Connection | None = None
        self._writer = False

    # -- opening -----------------------------------------------------------------------------

    def _connect(self, write: bool) -> sqlite3.Connection | None:
        if self._db is not None and (self._writer or not write):
            return self._db
        if not write and not self.path.exists():
            return None
        if write:
            self.folder.mkdir(parents=True, exist_ok=True)
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path}: cannot open the state store: {exc}") from None
        if version > SCHEMA_VERSION:
            db.close()
            raise StateError(
                f"{self.path}: written by a newer sinagot (schema {version}, this one knows "
                f"{SCHEMA_VERSION}); upgrade sinagot, or point [state] path elsewhere"
            )
        if write:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            if version == 1:  # upgrade in place: schema 2 names each submitted run
                db.executescript(
                    f"ALTER TABLE runs ADD COLUMN generation TEXT;"
                    f"PRAGMA user_version={SCHEMA_VERSION};"
                )
            elif version < SCHEMA_VERSION:
                db.executescript(_SCHEMA + f"PRAGMA user_version={SCHEMA_VERSION};")
        if self._db is not None:
            self._db.close()
        self._db, self._writer = db, write
        return db

    def prepare(self) -> None:
        """Open for writing now: create the store, or upgrade an older schema in place."""
        self._connect(write=True)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- reading -----------------------------------------------------------------------------

    def read_all(self) -> dict[str, RunRecord]:
        """Every row, keyed by `run_key`: one query, for planning a whole workspace."""
        db = self._connect(write=False)
        if db is None:
            return {}
        rows = db.execute(f"SELECT key, {_COLUMNS} FROM runs").fetchall()
        make = RunRecord._make
        return {row[0]: make(row[1:]) for row in rows}

    def read_settled(self, with_code: bool) -> dict[str, str]:
        """A signature per step whose last run finished well and is not queued: its encoded
        inputs, then '\\x1e' and its code hash when `with_code`.

        One string per row, built by SQLite: planning a whole workspace compares strings
        and reads full rows only for the few units that differ.
        """
        db = self._connect(write=False)
        if db is None:
            return {}
        code = "|| char(30) || coalesce(code_hash, '')" if with_code else ""
        query = f"SELECT key, inputs {code} FROM runs WHERE state = 'done' AND submitted IS NULL"
        return dict(db.execute(query))

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

    # -- writing (the writer lock's holder only) ----------------------------------------------

    def mark_submitted(self, items: Iterable[tuple[Unit, str, str]]) -> None:
        """(unit, step, generation) before the steps may begin: so that a kill from here on
        is seen as incomplete, and the next submitter can name a resubmission as this run
        (`pending_generation`)."""
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

    def pending_generation(self, unit: Unit, steps: Iterable[str]) -> str | None:
        """The generation of a run of these steps submitted but never finished (its
        submitter died): submitting it again under the same name lets a copy still running
        on a worker be waited for instead of run twice."""
        db = self._connect(write=False)
        if db is None:
            return None
        keys = [run_key(unit, step) for step in steps]
        marks = ",".join("?" * len(keys))
        try:
            row = db.execute(
                f"SELECT generation FROM runs WHERE key IN ({marks}) AND submitted IS NOT NULL "
                "AND generation IS NOT NULL LIMIT 1",
                keys,
            ).fetchone()
        except sqlite3.OperationalError:  # a schema-1 store, read before its upgrade
            return None
        return row[0] if row else None

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


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class WriterLock:
    """An exclusive, non-blocking lock on the state folder: one writer per workspace.

    The holder's pid is written in the file, so that a second writer can say who holds it.
    The kernel drops the lock when the holder dies, however it dies.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, what: str = "sinagot") -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateError(
                f"{self.path.parent}: already in use by another writer ({holder}); "
                "stop it first, or read with `sinagot status`"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} pid {os.getpid()}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str | None:
        """Who holds the lock ('sinagotd pid 12), if a live process does.

        Reads the pid the holder wrote instead of probing the lock, so that a reader never
        makes a starting writer fail.
        """
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            pid = int(text.rsplit(" ", 1)[-1])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return None
        except PermissionError:
            pass  # alive, owned by another user (the service account)
        return text

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None
