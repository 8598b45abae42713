"""Per-record logs: JSON lines in `<dataset>/LOG/<id>.log`, where the original put them.

Each line is one small `O_APPEND` write, so workers on several machines can log to the same
record at once without interleaving lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .status import StepStatus

LOG_FOLDER = "LOG"
COLUMNS = (
    "record_id", "task", "modality", "step_label", "step_status", "message", "time",
    "workspace_version",
)  # fmt: skip


def log_path(dataset: Path | str, record_id: str) -> Path:
    return Path(dataset) / LOG_FOLDER / f"{record_id}.log"


@dataclass(frozen=True)
class RecordLog:
    """Writes one step's lines to its record's log (and, in a terminal session, to stdout)."""

    dataset: str
    record_id: str
    task: str | None
    modality: str | None
    step: str
    workspace_version: str | None = None
    echo: bool = False

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
        path = log_path(self.dataset, self.record_id)
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
