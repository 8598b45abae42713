"""`sinagot logs`: the per-record logs, readable, and followed like `tail -f`."""

from __future__ import annotations

import json
import os
import queue
import sys
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
    folder = dataset / LOG_FOLDER
    if record is not None:
        return [folder / f"{record}.log"]
    return sorted(folder.glob("*.log"))


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
    folder.mkdir(parents=True, exist_ok=True)
    offsets = {str(p): p.stat().st_size for p in _files(dataset, None) if p.exists()}
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
