"""`sinagot logs`: the per-record logs, readable, and followed like `tail -f`.

A log folder or file that cannot be read raises the OSError naming it (the CLI prints that
one line): silence would read as "no logs". Reading never creates anything in the dataset:
a folder made by a reader would carry the reader's owner and umask, not the service's.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import time
from pathlib import Path

from .recordlog import LOG_FOLDER
from .status import StepStatus


def format_entry(entry: dict) -> str:
    scope = "-".join(p for p in (entry.get("task"), entry.get("modality")) if p)
    try:
        status = StepStatus(entry.get("step_status")).name
    except ValueError:
        status = str(entry.get("step_status"))
    where = f"{entry.get('record_id')}{' ' + scope if scope else ''} {entry.get('step_label')}"
    return f"{entry.get('time', '')}  {where}  {status}  {entry.get('message', '')}"


def _print_lines(data: str, step: str | None) -> None:
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (step is None or entry.get("step_label") == step):
            sys.stdout.write(format_entry(entry) + "\n")
    sys.stdout.flush()


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


def show(dataset: Path, record: str | None, step: str | None) -> None:
    """Print the logs as they are now, one record after the other."""
    for path in _files(dataset, record):
        try:
            _print_lines(path.read_text(encoding="utf-8", errors="replace"), step)
        except FileNotFoundError:
            continue


def follow(dataset: Path, record: str | None, step: str | None) -> None:
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
            _print_lines(data[:cut], step)
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
