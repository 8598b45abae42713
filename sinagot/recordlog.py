"""Per-record logs: JSON lines in `<dataset>/LOG/<id>.log`, where the original put them.

Each line is one small `O_APPEND` write, so workers on several machines can log to the same
record at once without interleaving lines.

A dataset may hold symlinks (a shared folder, a hostile one): the log is never written through
one that leads out of the dataset. `inside_dataset` and `open_regular` are the checks, shared
with the runner for receipts and outputs.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import SinagotError
from .status import StepStatus

LOG_FOLDER = "LOG"
COLUMNS = (
    "record_id", "task", "modality", "step_label", "step_status", "message", "time",
    "workspace_version",
)  # fmt: skip


def log_path(dataset: Path | str, record_id: str) -> Path:
    return Path(dataset) / LOG_FOLDER / f"{record_id}.log"


class PathRefused(SinagotError):
    """A path sinagot would write is a link out of the dataset, or not a plain file: the
    message is one line naming it."""


class WriteError(SinagotError):
    """A path sinagot would write cannot be (permissions, a full disk): one line naming it."""


def inside_dataset(dataset: str, folder: str, what: str) -> None:
    """Refuse a folder whose real path (links resolved, as a write would follow them) is not
    inside the dataset's real path. The folder need not exist yet: what does is resolved.

    A worker asks this for every step: below the dataset, a folder reached through real
    folders only is inside it, which one `lstat` per level tells; a link (or a '..') on the
    way is resolved in full."""
    if folder == dataset or _through_folders(dataset, folder):
        return
    root = os.path.realpath(dataset)
    real = os.path.realpath(folder)
    if os.path.commonpath((root, real)) == root:
        return
    named = os.path.abspath(dataset)
    if os.path.commonpath((named, os.path.abspath(folder))) != named:
        raise PathRefused(f"{what} {folder} is outside the dataset")
    raise PathRefused(f"{what} {folder} is a link out of the dataset (to {real})")


def _through_folders(dataset: str, folder: str) -> bool:
    """Whether `folder` is named below `dataset` and no level between is a link (a level
    not there yet will be made a real folder)."""
    prefix = dataset.rstrip(os.sep) + os.sep
    if not folder.startswith(prefix):
        return False
    parts = folder[len(prefix) :].split(os.sep)
    if ".." in parts:
        return False
    path = prefix
    for part in parts:
        path = os.path.join(path, part)
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return False
        except (FileNotFoundError, NotADirectoryError):
            return True
        except OSError:  # cannot look (no search permission): let the real path decide
            return False
    return True


def open_regular(path: str, flags: int, what: str, mode: int = 0o644) -> int:
    """`os.open` that never follows a symlink and never blocks on a FIFO: a link, a FIFO, a
    device or a folder at `path` is refused rather than written through."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathRefused(f"{what} {path} is a symlink: refused") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise PathRefused(f"{what} {path} is not a regular file: refused") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathRefused(f"{what} {path} is not a regular file: refused")
    return fd


@dataclass(eq=False)
class RecordLog:
    """Writes one step's lines to its record's log (and, in a terminal session, to stdout).

    Used as a context manager around one run of a step, it opens the log file once instead
    of once per line. Each line is still a single `os.write` to an `O_APPEND` descriptor,
    made at once, so lines of other workers never interleave with it and `sinagot logs
    --follow` sees each line as it is written. Outside the `with` block (a script's logger
    used after its run) each line opens and closes the file itself.
    """

    dataset: str
    record_id: str
    task: str | None
    modality: str | None
    step: str
    workspace_version: str | None = None
    echo: bool = False
    _fd: int | None = field(default=None, init=False, repr=False)
    # A script's threads may still log while the step ends: the lock keeps a line from
    # being written to a descriptor closed, and perhaps reused, under it. Reentrant, so
    # that a signal handler logging in the middle of a line cannot deadlock.
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False)

    def __enter__(self) -> RecordLog:
        with self._lock:
            if self._fd is None:
                self._fd = self._open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def _open(self) -> int:
        """The log's descriptor; PathRefused (a link out of the dataset) or WriteError."""
        folder = os.path.join(self.dataset, LOG_FOLDER)  # what `log_path` says, without pathlib
        inside_dataset(self.dataset, folder, "LOG folder")
        path = os.path.join(folder, f"{self.record_id}.log")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        try:
            try:
                return open_regular(path, flags, "log file")
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                return open_regular(path, flags, "log file")
        except OSError as exc:
            raise WriteError(f"cannot write log file {path}: {exc.strerror or exc}") from None

    def write(self, status: StepStatus, message: str) -> None:
        now = datetime.now().astimezone()
        line = {
            "record_id": self.record_id,
            "task": self.task,
            "modality": self.modality,
            "step_label": self.step,
            "step_status": int(status),
            "message": message,
            "time": now.isoformat(),
            "workspace_version": self.workspace_version,
        }
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if self._fd is not None:
                os.write(self._fd, data)
            else:
                fd = self._open()
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
        if self.echo:
            label = "-".join(p for p in (self.task, self.modality, self.step) if p)
            stamp = now.strftime("%Y-%m-%d %H:%M:%S,") + f"{now.microsecond // 1000:03d}"
            # sys.stdout is looked up at each call so that doctest and notebooks capture it.
            print(f"{self.record_id} | {stamp} | {label} : {message}", file=sys.stdout)

    def logger(self) -> logging.Logger:
        """A logger for the script (`self.logger`), writing PROCESSING lines to this log."""
        logger = logging.Logger(f"sinagot.{self.record_id}.{self.step}", logging.INFO)
        logger.addHandler(_Handler(self))
        return logger


class _Handler(logging.Handler):
    def __init__(self, log: RecordLog) -> None:
        super().__init__(logging.INFO)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._log.write(StepStatus.PROCESSING, message)
        except Exception:
            self.handleError(record)


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of one record's log; a torn or foreign line is skipped, not fatal."""
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    yield entry
    except FileNotFoundError:
        return


def logs_frame(
    dataset: Path,
    record_ids: Iterable[str],
    task: str | None = None,
    modality: str | None = None,
    step: str | None = None,
):
    """A pandas DataFrame of the log entries of these records, filtered by scope."""
    import pandas as pd  # heavy: only when a DataFrame is asked for

    rows = [
        entry
        for record_id in record_ids
        for entry in read_lines(log_path(dataset, record_id))
        if (task is None or entry.get("task") == task)
        and (modality is None or entry.get("modality") == modality)
        and (step is None or entry.get("step_label") == step)
    ]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    if not frame.empty:
        frame["time"] = pd.to_datetime(frame["time"], format="ISO8601", utc=True)
    return frame
