"""Watching the file system with watchdog, defended against its known traps.

- The handler only enqueues: an exception in it would kill the observer thread and leave
  the daemon deaf. Liveness is checked from the loop (`alive`), which restarts and
  reconciles.
- An inotify queue overflow reaches no handler: watchdog only logs a WARNING on
  `watchdog.observers.inotify_c`. A logging handler turns that (and any watchdog error)
  into a `WatchError` message, and the loop reconciles.
- Atomic writes (temp file + rename, rsync's `.name.XXXXXX`) arrive as `moved` events whose
  `dest_path` is the real file: the path reported is the destination.
"""

from __future__ import annotations

import logging
import os
import queue
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

#: Events that can mean "this file's content changed"; opens and reads (our own steps
#: read inputs all the time) are not among them.
CONTENT_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})
WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")


@dataclass(frozen=True)
class PathChanged:
    path: str
    directory: bool


@dataclass(frozen=True)
class WatchError:
    error: str


class _Enqueue(FileSystemEventHandler):
    def __init__(self, messages: queue.Queue) -> None:
        self._messages = messages

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in CONTENT_EVENTS:
            path = event.dest_path or event.src_path
            self._messages.put(PathChanged(os.fsdecode(path), event.is_directory))
            if event.event_type == "moved" and event.src_path:
                self._messages.put(PathChanged(os.fsdecode(event.src_path), event.is_directory))


class _Errors(logging.Handler):
    """Turns watchdog's warnings (queue overflow, lost watches) into loop messages."""

    def __init__(self, messages: queue.Queue) -> None:
        super().__init__(logging.WARNING)
        self._messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self._messages.put(WatchError(record.getMessage()))


class Watcher:
    """Observers over a few folders, all feeding one queue."""

    def __init__(
        self,
        messages: queue.Queue,
        folders: list[tuple[Path, bool]],  # (folder, recursive)
        kind: str = "auto",
        polling_seconds: float = 1.0,
    ) -> None:
        self._messages = messages
        self._folders = folders
        self._kind = kind
        self._polling = polling_seconds
        self._observer: BaseObserver | None = None
        self._errors = _Errors(messages)

    @property
    def kind(self) -> str:
        if self._observer is None:
            return self._kind
        return "polling" if isinstance(self._observer, PollingObserver) else "inotify"

    def start(self) -> None:
        for name in WATCHDOG_LOGGERS:
            logging.getLogger(name).addHandler(self._errors)
        if self._kind == "polling":
            observer: BaseObserver = PollingObserver(timeout=self._polling)
        else:
            observer = Observer()
        handler = _Enqueue(self._messages)
        for folder, recursive in self._folders:
            observer.schedule(handler, str(folder), recursive=recursive)
        observer.start()
        self._observer = observer

    def alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def stop(self) -> None:
        for name in WATCHDOG_LOGGERS:
            logging.getLogger(name).removeHandler(self._errors)
        if self._observer is not None:
            self._observer.stop()
            if self._observer.is_alive():
                self._observer.join(timeout=5)
            self._observer = None

    def restart(self) -> None:
        self.stop()
        self.start()
