"""Per-record logs: JSON lines in `<dataset>/LOG/<id>.log`, where the original put them.

Each line is one small `O_APPEND` write, so workers on several machines can log to the same
record at once without interleaving lines. A line has sinagot 0.3's keys, in its order
(`log_from`, `workspace_version`, `record_id`, `scope`, `task`, `modality`, `step_label`,
`step_status`, `message`, `time`), so that a 0.3 notebook filtering on them keeps working;
`time` is ISO 8601 with its UTC offset (0.3 wrote naive UTC: `logs_frame` reads both).

Echoed lines (a step run in the calling process) go through the `logging.Logger` named by
`[log] name`, at `[log] level`, to the `sys.stdout` of the moment, formatted by
`[log] format` (default: the seed's `REC-1 | 2020-08-20 11:19:11,530 | count : Init run`).

A dataset may hold symlinks (a shared folder, a hostile one): the log is never written through
one that leads out of the dataset (`sinagot.safepaths`' checks, shared with the runner for
receipts and outputs).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from .config import LogSettings
from .errors import SinagotError
from .layout import LOG_FOLDER
from .safepaths import WriteError, inside_dataset, open_regular
from .status import StepStatus

T = TypeVar("T")

#: A string as `json.dumps(..., ensure_ascii=False)` writes it (quotes included).
_json_text: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]
_HEADS_MAX = 1024
_heads: dict[tuple[str | None, ...], str] = {}  # see `RecordLog._head`

#: The columns of `logs_frame`: sinagot 0.3's keys, in its order (ours are the same keys).
COLUMNS = (
    "log_from", "workspace_version", "record_id", "scope", "task", "modality",
    "step_label", "step_status", "message", "time",
)  # fmt: skip
#: An echoed line without `[log] format`: the seed's 'REC-1 | <asctime> | RS-EEG-count : ...'.
CONSOLE_FORMAT = "%(record_id)s | %(asctime)s | %(label)s : %(message)s"


_second: tuple[int, str, str] = (-1, "", "")  # see `local_iso`


def local_iso(ns: int) -> str:
    """`datetime.now().astimezone().isoformat()` for the time `ns` (`time.time_ns()`):
    local time with its UTC offset, microseconds (cut, as `now` cuts them) unless 0.

    Written out, as a worker stamps three lines a step: `datetime` took five times the
    instructions (valgrind's count). The local time zone is asked for once a second (a
    daylight saving change falls on a whole second, so that one answer holds for the whole
    of it), and from the time itself, so that the hour repeated when clocks go back is told
    apart."""
    global _second
    second, rest = divmod(ns, 1_000_000_000)
    cached = _second
    if cached[0] != second:
        local = time.localtime(second)
        offset = local.tm_gmtoff or 0
        sign = "-" if offset < 0 else "+"
        hours, minutes = divmod(abs(offset) // 60, 60)
        suffix = f"{sign}{hours:02d}:{minutes:02d}"
        if abs(offset) % 60:
            suffix += f":{abs(offset) % 60:02d}"
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", local), suffix)
    micro = rest // 1000
    return f"{cached[1]}.{micro:06d}{cached[2]}" if micro else f"{cached[1]}{cached[2]}"


def log_path(dataset: Path | str, record_id: str) -> Path:
    return Path(dataset) / LOG_FOLDER / f"{record_id}.log"


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
    console: LogSettings = field(default_factory=LogSettings)  # how echoed lines are printed
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

    def write(self, status: StepStatus, message: str, level: int | None = None) -> None:
        """Append one line; echo it too when asked, at `level` (by default ERROR for an
        ERROR line, INFO otherwise)."""
        now = time.time_ns()
        stamp = local_iso(now)
        if isinstance(message, str):
            data = (
                f'{self._head()}"step_status": {int(status)}, "message": '
                f'{_json_text(message)}, "time": "{stamp}"}}\n'
            ).encode()
        else:  # not what a caller passes; json.dumps says what it makes of it
            data = (
                json.dumps(self._line(status, message, stamp), ensure_ascii=False) + "\n"
            ).encode()
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
            if level is None:
                level = logging.ERROR if status == StepStatus.ERROR else logging.INFO
            echo(self.console, level, message, now / 1e9, self.fields(status))

    def _line(self, status: StepStatus, message: object, stamp: str) -> dict[str, Any]:
        """One line's keys, in 0.3's order (see the module docstring)."""
        return {
            "log_from": "script",
            "workspace_version": self.workspace_version,
            "record_id": self.record_id,
            "scope": "record",
            "task": self.task,
            "modality": self.modality,
            "step_label": self.step,
            "step_status": int(status),
            "message": message,
            "time": stamp,
        }

    def _head(self) -> str:
        """The text of a line up to `step_status`, the same for every line of this log:
        made as `json.dumps` writes it, once for each record's step in a process, so that
        a line is written without encoding the same keys again (a worker writes three
        lines for every step)."""
        key = (self.workspace_version, self.record_id, self.task, self.modality, self.step)
        head = _heads.get(key)
        if head is None:
            text = json.dumps(self._line(StepStatus.INIT, "", ""), ensure_ascii=False)
            head = text[: text.rindex('"step_status": ')]
            if len(_heads) >= _HEADS_MAX:
                _heads.clear()  # more steps than are run at once: start again, stay small
            _heads[key] = head
        return head

    def fields(self, status: StepStatus) -> dict[str, Any]:
        """What a `[log] format` may name, besides `message` and `asctime`."""
        return {
            "record_id": self.record_id,
            "task": self.task,
            "modality": self.modality,
            "step_label": self.step,
            "label": "-".join(p for p in (self.task, self.modality, self.step) if p),
            "step_status": int(status),
        }

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
            self._log.write(StepStatus.PROCESSING, message, record.levelno)
        except Exception:
            self.handleError(record)


# -- the console ---------------------------------------------------------------------------

_FORMAT_KEY = "sinagot_format"  # the LogRecord attribute naming the format of its line
_console_lock = threading.Lock()


class ConsoleHandler(logging.StreamHandler):
    """Prints sinagot's step lines on the `sys.stdout` of the moment (looked up at each
    line, so that doctest and notebooks capture it), each in the format it carries: two
    workspaces sharing a logger name keep their own `[log] format`. Other records are left
    to the logger's other handlers."""

    def __init__(self) -> None:
        super().__init__()
        self._formatters: dict[str, logging.Formatter] = {}
        self.addFilter(lambda record: hasattr(record, _FORMAT_KEY))

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stdout

    def format(self, record: logging.LogRecord) -> str:
        fmt = getattr(record, _FORMAT_KEY)
        formatter = self._formatters.get(fmt)
        if formatter is None:
            formatter = self._formatters[fmt] = logging.Formatter(fmt)
        return formatter.format(record)


def console_logger(settings: LogSettings) -> logging.Logger:
    """The logger `[log] name`, at `[log] level`, with one `ConsoleHandler`."""
    logger = logging.getLogger(settings.name)
    level = logging.getLevelName(settings.level)
    if not isinstance(level, int):
        level = logging.INFO
    if logger.level != level or not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        with _console_lock:
            if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
                logger.addHandler(ConsoleHandler())
            if logger.level != level:
                logger.setLevel(level)
    return logger


def echo(
    settings: LogSettings, level: int, message: str, created: float, fields: dict[str, Any]
) -> None:
    """Print one step line through the console logger (`[log]`)."""
    logger = console_logger(settings)
    if not logger.isEnabledFor(level):
        return
    extra = {**fields, _FORMAT_KEY: settings.format or CONSOLE_FORMAT}
    record = logger.makeRecord(logger.name, level, "(sinagot)", 0, message, (), None, extra=extra)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    logger.handle(record)


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The entries of one record's log; a torn or foreign line (bad JSON, bad UTF-8) is
    skipped, not fatal. A log that is a link or not a regular file (a FIFO would block)
    raises `PathRefused` naming it."""
    try:
        fd = open_regular(str(path), os.O_RDONLY, "log file")
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        with open(fd, encoding="utf-8", errors="replace") as fh:
            yield from parse_entries(fh)
    except OSError as exc:
        raise SinagotError(f"cannot read log file {path}: {exc.strerror or exc}") from None


def parse_entries(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The log entries among these lines: a torn or foreign line is skipped, not fatal."""
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def in_time_order(items: Iterable[T], when: Callable[[T], datetime | None]) -> list[T]:
    """Oldest first; equal times keep their order, and items without a time come last."""
    return sorted(items, key=lambda item: ((t := when(item)) is None, t or _EARLIEST))


_EARLIEST = datetime.min.replace(tzinfo=UTC)

#: sinagot 0.3 rotated a record's log at 512 KiB, keeping this many older files.
ROTATED_03 = 5


def history(dataset: Path | str, record_id: str) -> list[Path]:
    """A record's log files, oldest first: 0.3's rotated `<id>.log.5` ... `<id>.log.1`
    (those that exist), then `<id>.log`."""
    current = log_path(dataset, record_id)
    older = (current.with_name(f"{current.name}.{n}") for n in range(ROTATED_03, 0, -1))
    return [*(p for p in older if p.is_file()), current]


def log_time(value: object) -> datetime | None:
    """A line's `time` as a tz-aware UTC datetime: ours carry their offset, 0.3's were naive
    UTC. None when it is not an ISO 8601 time."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _log_rows(
    dataset: Path,
    record_ids: Iterable[str],
    task: str | None,
    modality: str | None,
    step: str | None,
) -> list[dict[str, Any]]:
    """The lines of these records' logs in the scope, as dicts of `COLUMNS` (a key a line
    lacks is None; keys not in `COLUMNS` are left out), `time` a UTC datetime; oldest
    first, in file order for equal times (a line without a readable time comes last)."""
    rows = []
    for record_id in record_ids:
        for entry in (e for path in history(dataset, record_id) for e in read_lines(path)):
            if (
                (task is None or entry.get("task") == task)
                and (modality is None or entry.get("modality") == modality)
                and (step is None or entry.get("step_label") == step)
            ):
                row = {key: entry.get(key) for key in COLUMNS}
                row["time"] = log_time(row["time"])
                rows.append(row)
    return in_time_order(rows, lambda row: row["time"])


def logs_frame(
    dataset: Path,
    record_ids: Iterable[str],
    task: str | None = None,
    modality: str | None = None,
    step: str | None = None,
):
    """A pandas DataFrame of the log lines of these records, filtered by scope: `COLUMNS`
    (0.3's keys in 0.3's order), `time` tz-aware (UTC), oldest first, a fresh index. Lines
    written by sinagot 0.3 are read as well as ours. No log: an empty frame, same columns."""
    import pandas as pd  # heavy: only when a DataFrame is asked for

    rows = _log_rows(dataset, record_ids, task, modality, step)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    return frame


def logs_rows(
    dataset: Path,
    record_ids: Iterable[str],
    task: str | None = None,
    modality: str | None = None,
    step: str | None = None,
) -> list[dict[str, Any]]:
    """The rows of `logs_frame`, as JSON-safe dicts (`time` as ISO 8601 text in UTC), for
    `logs_json()`; no pandas needed."""
    rows = _log_rows(dataset, record_ids, task, modality, step)
    for row in rows:
        if row["time"] is not None:
            row["time"] = row["time"].isoformat()
    return rows
