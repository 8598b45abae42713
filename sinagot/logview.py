"""`sinagot logs`: the per-record logs, readable, and followed like `tail -f`.

A log folder that cannot be listed raises the OSError naming it, a log file that cannot be
read (or is a link, a FIFO) the SinagotError naming it; the CLI prints that one line:
silence would read as "no logs". Reading never creates anything in the dataset:
a folder made by a reader would carry the reader's owner and umask, not the service's.
"""

from __future__ import annotations

import json
import os
import queue
import re
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from .layout import LOG_FOLDER
from .recordlog import history, in_time_order, log_time, parse_entries, read_lines
from .status import StepStatus

#: Status names are at most this long (DATA_NOT_AVAILABLE): the column after them aligns.
_STATUS_WIDTH = max(len(s.name) for s in StepStatus)


def _where(entry: dict) -> str:
    scope = "-".join(p for p in (entry.get("task"), entry.get("modality")) if p)
    return f"{entry.get('record_id')}{' ' + scope if scope else ''} {entry.get('step_label')}"


def format_entry(entry: dict, width: int = 0) -> str:
    """One readable line: time, record (and scope) and step, status, message; `width` pads
    the record-and-step column so that lines of several records align."""
    try:
        status = StepStatus(entry.get("step_status")).name
    except ValueError:
        status = str(entry.get("step_status"))
    when = entry.get("time", "")
    return (
        f"{when}  {_where(entry).ljust(width)}  {status.ljust(_STATUS_WIDTH)}  "
        f"{entry.get('message', '')}"
    ).rstrip()


def _emit(entries: list[dict], as_json: bool, width: int = 0) -> None:
    for entry in entries:
        line = json.dumps(entry, ensure_ascii=False) if as_json else format_entry(entry, width)
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _parse(data: str, step: str | None) -> list[dict]:
    return [e for e in parse_entries(data.splitlines()) if step in (None, e.get("step_label"))]


def _files(dataset: Path, record: str | None) -> list[Path]:
    """The log files to read: none before any step has logged; OSError if the log folder
    is not a folder or cannot be listed."""
    folder = dataset / LOG_FOLDER
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    if record is not None:
        return [folder / f"{record}.log"]
    return sorted(folder / name for name in names if name.endswith(".log"))


def since(text: str) -> datetime:
    """`--since`: an ISO 8601 date or time (local time when it says no offset), or an age:
    `90s`, `30m`, `2h`, `1d`. ValueError saying what is accepted otherwise."""
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text.strip()):
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return datetime.now(UTC) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a date or time (2020-06-01, 2020-06-01T12:00) or an "
            "age (90s, 30m, 2h, 1d)"
        ) from None
    return when.astimezone(UTC) if when.tzinfo is None else when


def show(
    dataset: Path,
    record: str | None,
    step: str | None,
    *,
    last: int | None = None,
    after: datetime | None = None,
    as_json: bool = False,
) -> int:
    """Print the logs as they are now, every record's merged in time order (`last`: only
    the last lines; `after`: only lines from then on). Returns the record-and-step column's
    width, for the lines `follow` prints next."""
    entries = [
        entry
        for path in _files(dataset, record)
        for file in history(dataset, path.name[: -len(".log")])
        for entry in read_lines(file)
        if step in (None, entry.get("step_label"))
    ]
    if after is not None:
        entries = [e for e in entries if (t := log_time(e.get("time"))) is not None and t >= after]
    chosen = in_time_order(entries, lambda e: log_time(e.get("time")))
    if last is not None:
        chosen = chosen[-last:] if last else []
    width = max((len(_where(e)) for e in chosen), default=0)
    _emit(chosen, as_json, width)
    return width


def follow(
    dataset: Path, record: str | None, step: str | None, *, as_json: bool = False, width: int = 0
) -> None:
    """Print lines appended from now on, until interrupted (watchdog tells when)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    folder = dataset / LOG_FOLDER
    waited = _wait_for_folder(folder)
    offsets = {}
    for path in [] if waited else _files(dataset, None):  # made since: all of them is new
        try:
            offsets[str(path)] = path.stat().st_size
        except FileNotFoundError:
            continue
    changed: queue.Queue[str] = queue.Queue()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event) -> None:  # enqueue only: never raise in the observer
            path = getattr(event, "dest_path", "") or event.src_path
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            if path.endswith(".log"):
                changed.put(path)

    observer = Observer()
    observer.schedule(Handler(), str(folder), recursive=False)
    observer.start()
    try:
        while True:
            try:
                path = changed.get(timeout=1.0)
            except queue.Empty:
                continue
            if record is not None and Path(path).name != f"{record}.log":
                continue
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    fh.seek(offsets.get(path, 0))
                    data = fh.read()
                    # Keep a torn last line for the next round.
                    cut = data.rfind("\n") + 1
                    offsets[path] = offsets.get(path, 0) + len(data[:cut].encode())
            except FileNotFoundError:
                continue
            _emit(_parse(data[:cut], step), as_json, width)
    finally:
        observer.stop()
        observer.join()


def _wait_for_folder(folder: Path) -> bool:
    """Wait until the first step run has made the log folder; whether that took waiting."""
    waited = False
    while True:
        try:
            os.listdir(folder)
            return waited
        except FileNotFoundError:
            waited = True
            time.sleep(1.0)
