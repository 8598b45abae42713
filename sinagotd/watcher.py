"""Watching the file system with watchdog, defended against its known traps.

- The handler only enqueues: an exception in it would kill the observer thread and leave
  the daemon deaf. Liveness is checked from the loop (`alive`), which restarts and
  reconciles.
- An inotify queue overflow reaches no handler: watchdog only logs a WARNING on
  `watchdog.observers.inotify_c`. A logging handler turns that (and any watchdog error)
  into a `WatchError` message, and the loop reconciles.
- Atomic writes (temp file + rename, rsync's `.name.XXXXXX`) arrive as `moved` events whose
  `dest_path` is the real file: the path reported is the destination.
- A file can stay quiet for longer than any settle time while its writer still holds it
  open (a copy that pauses between chunks). inotify says when a file opened for writing is
  closed (`closed`, IN_CLOSE_WRITE): `OpenWrites` keeps the files created and not yet
  closed, which the daemon does not act on (`sinagotd.arrivals`). The polling observer has
  no such events: there, size and modification time must hold still instead.
- inotify is asked for what says a file's content changed, and no more (`MASK`): not for
  opens nor for the closes of files only read (every step reading its inputs, every listing
  of a folder: four events, a third of a burst's), nor for each write (IN_MODIFY: a 100 MB
  recording copied in 128 KB writes is 800 events, the first cause of a queue overflow).
  A file written in place is news at its close, which is when it is complete.
- A recursive inotify watch covers every folder below it, and each event on it goes
  through watchdog's threads and then the loop. The library's own folders in the dataset
  (`LOG/`, the record logs, and `.sinagot/`, the workers' receipts) are written at every
  step and never mapped to a record: they are not watched (`_PrunedObserver`), which halves
  the events of a burst (fewer lost to an inotify queue overflow, less CPU). Nor is a
  folder no pattern can reach (`keep`, from `Layout.may_hold`): a scratch folder, last
  year's copy beside the records. The walk that adds the watches lists folders only.
- A step writes its outputs under hidden temporary names and renames them into place.
  None of that reaches watchdog (`_PrunedGroup.on_event`: the rename's second half is
  known by its cookie): the run's results say what it wrote, and the units of other keys
  that read an output are told when the run is recorded (`Arrivals.recorded`). That was
  half a burst's events. A person's change to an output (an edit, an editor's atomic save)
  still comes, as any file's.
- inotify has kernel limits (`fs.inotify.max_user_watches`: one watch a folder;
  `fs.inotify.max_queued_events`: events not yet read). At start, `watch.limits` says what
  is used and what the limits are, as a warning naming the sysctl to raise when the watches
  take more than half of theirs; an overflow's `watch.error` names the queue's sysctl.
  Nothing is lost on an overflow: the loop reconciles (a full plan of every unit).
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, EventEmitter
from watchdog.observers.polling import PollingObserver

from sinagot.patterns import TEMP_PREFIX

try:  # watchdog >= 7's inotify internals, for the pruned observer (else a plain one)
    from watchdog.observers.inotify import InotifyEmitter, InotifyObserver, InotifyWatchGroup
    from watchdog.observers.inotify_c import WATCHDOG_ALL_EVENTS, InotifyConstants
except ImportError:  # not Linux, or another watchdog
    InotifyEmitter = InotifyObserver = InotifyWatchGroup = None  # type: ignore[assignment,misc]

#: Events that can mean "this file's content changed"; opens and reads (our own steps
#: read inputs all the time) are not among them.
CONTENT_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed"})
#: What the observers queue for dispatch. Not a folder's `modified`, which watchdog adds
#: after each event on a file in it (the file's own event says more): it was half of what
#: reached the daemon's loop.
DISPATCHED = [
    FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent, FileClosedEvent,
    DirCreatedEvent, DirMovedEvent, DirDeletedEvent,
]  # fmt: skip
WATCHDOG_LOGGERS = ("watchdog.observers.inotify_c", "watchdog.observers.inotify")
#: Folders directly below a recursively watched folder that are not watched: the record
#: logs and the receipts the workers write at every step (`sinagot.layout.LOG_FOLDER`,
#: `Engine.receipts`' parent); the daemon ignores their events anyway.
UNWATCHED = (b"LOG", b".sinagot")
_MADE_MAX = 100_000
LIMITS = Path("/proc/sys/fs/inotify")
#: A step's outputs under their temporary names (created, written, closed, renamed away):
#: never data, never a marker; about half of a burst's events. Not even queued.
_OURS = os.sep + TEMP_PREFIX
_TEMP_NAME = os.fsencode(TEMP_PREFIX)


@dataclass(frozen=True)
class PathChanged:
    path: str
    directory: bool


@dataclass(frozen=True)
class WatchError:
    error: str


class OpenWrites:
    """Files opened for writing and not closed yet, as inotify reports them: a regular file
    `created` (by `open(O_CREAT)`: not a hard link, which has other links, nor a link or a
    folder) until `closed` (its writer closed it: IN_CLOSE_WRITE comes even when nothing was
    written), `deleted` or moved away. Nothing else marks a file open: not a changed
    attribute (chmod, utime: not even dispatched), nor a write, which inotify is not asked
    for here (`MASK`) and which only watchdog's plain observer, the fallback, reports.
    Written by the observer's thread, read by the loop's: every access holds a lock.

    Events can be lost (an inotify queue overflow, the observer restarted): `clear` then
    forgets every open file, since a close that was lost would hold its file for good. A
    file still being written is then held as the polling observer holds it: until its size
    and modification time hold still for the settle time (`sinagotd.arrivals`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, float] = {}  # path -> since when
        #: Files inotify saw made whose `created` event is not dispatched yet. Not cleared
        #: with the rest: an overflow loses events, not what was read before it.
        self._made: set[str] = set()

    def since(self, path: str) -> float | None:
        """When this file was first written without being closed since, or None."""
        with self._lock:
            return self._open.get(path)

    def forget(self, path: str) -> None:
        with self._lock:
            self._open.pop(path, None)

    def clear(self) -> None:
        with self._lock:
            self._open.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def made(self, path: str) -> None:
        """inotify saw this file made (IN_CREATE), from watchdog's reader thread: its
        `created` event, dispatched later, is a writer's. watchdog dispatches `created`
        too for a file moved in from an unwatched folder (a whole copy, or a step's output
        renamed into place) and for the files found in a folder made under watch (their
        writer may have closed them before the folder was watched): none is open."""
        if os.path.basename(path).startswith("."):
            return  # never tracked (`_Enqueue._track`): its event would not take it away
        with self._lock:
            if len(self._made) >= _MADE_MAX:  # their events were lost: forget them
                self._made.clear()
            self._made.add(path)

    def event(self, kind: str, path: str, dest: str = "") -> None:
        """One watchdog event on a file (not a folder)."""
        now = self._clock()
        if kind == "created":
            with self._lock:
                if path not in self._made:
                    return  # moved in whole, or found by a walk
                self._made.discard(path)
            if not _created_file(path):
                return  # a hard link, a symbolic link, or gone already
        with self._lock:
            if kind == "created":
                self._open.setdefault(path, now)
            elif kind in ("closed", "deleted", "moved"):
                found = self._open.pop(path, None)
                if kind == "moved" and dest and found is not None:  # renamed while open
                    self._open[dest] = found


def _created_file(path: str) -> bool:
    """Is this just-created path a regular file with one link: made by its writer's
    `open(O_CREAT)`, whose close comes as IN_CLOSE_WRITE (if it came already, its event
    follows this one)?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False  # gone already: its deletion follows
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1


class Overflowed(FileSystemEvent):
    """Put in the observer's event queue when inotify overflowed: dispatched after the
    events watchdog had read before the overflow and not yet dispatched."""

    event_type = "sinagot_overflowed"


class _Enqueue(FileSystemEventHandler):
    def __init__(self, messages: queue.Queue, writes: OpenWrites | None = None) -> None:
        self._messages = messages
        self._writes = writes

    def on_sinagot_overflowed(self, _event: Overflowed) -> None:
        """Forget what is open again, here, in order: an open or a write read before the
        overflow but dispatched after the first `clear` marked its file open again, while
        its close was among the events lost; that file then never settled (a record held
        as arriving for good, seen in a 10,000-file burst)."""
        if self._writes is not None:
            self._writes.clear()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, Overflowed):
            return
        if self._writes is not None and not event.is_directory:
            self._track(event)
        if event.event_type in CONTENT_EVENTS:
            path = os.fsdecode(event.dest_path or event.src_path)
            if _OURS not in path:
                self._messages.put(PathChanged(path, event.is_directory))
            if event.event_type == "moved" and event.src_path:
                source = os.fsdecode(event.src_path)
                if _OURS not in source:
                    self._messages.put(PathChanged(source, event.is_directory))

    def _track(self, event: FileSystemEvent) -> None:
        """Never raises: an exception here would stop the observer's thread."""
        src = os.fsdecode(event.src_path)
        if self._writes is None or os.path.basename(src).startswith("."):
            return  # hidden names (rsync's, our temporary outputs) are never acted on
        dest = os.fsdecode(event.dest_path) if event.dest_path else ""
        self._writes.event(event.event_type, src, dest)


class _Errors(logging.Handler):
    """Turns watchdog's warnings (queue overflow, lost watches) into loop messages."""

    def __init__(self, messages: queue.Queue, writes: OpenWrites) -> None:
        super().__init__(logging.WARNING)
        self._messages = messages
        self._writes = writes
        #: The emitters of the observer whose threads log here, listed when it starts: the
        #: observer's own set changes when the loop restarts it, and this is read from
        #: watchdog's reader thread.
        self.emitters: tuple[EventEmitter, ...] = ()

    def emit(self, record: logging.LogRecord) -> None:
        self._writes.clear()  # events were lost: a close among them would hold a file
        for emitter in self.emitters:
            emitter.queue_event(Overflowed(""))  # and again, after what is on its way
        self._messages.put(WatchError(_overflow_advice(record.getMessage(), read_limits())))


#: File systems whose folders count 2 + their subfolders as links (the POSIX convention;
#: GNU find trusts it on these too): a folder with 2 links holds no folder. Not btrfs (1),
#: nor network or FUSE file systems, whose counts may be anything.
COUNTING_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "tmpfs", "f2fs"})
MOUNTS = Path("/proc/self/mountinfo")


def fs_type(path: bytes | str, mounts: Path = MOUNTS) -> str | None:
    """The type of the file system `path` is on ('ext4'), from the mount table; None when
    it cannot be told."""
    real = os.path.realpath(os.fsdecode(path))
    try:
        lines = mounts.read_text(errors="replace").splitlines()
    except OSError:
        return None
    best, found = -1, None
    for line in lines:
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        point = _unescape(fields[4])
        after = fields[fields.index("-", 6) + 1 :]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best and after:
            best, found = len(point), after[0]
    return found


def _unescape(text: str) -> str:
    """A mount point as the mount table writes it (space, tab, newline, backslash as \\ooo)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


class _LeafTest:
    """Does a folder below `root` hold no folder, told by its link count alone (no listing:
    at a million records, `raw/` and `computed/` list three million names to find none)?
    Only on a COUNTING_FS, and only for folders on the root's own device."""

    def __init__(self, root: bytes) -> None:
        try:
            self._device = os.stat(root).st_dev if fs_type(root) in COUNTING_FS else None
        except OSError:
            self._device = None

    def __call__(self, folder: bytes) -> bool:
        if self._device is None:
            return False
        try:
            st = os.stat(folder)
        except OSError:
            return False
        return st.st_dev == self._device and st.st_nlink == 2


#: Which folders below a watched root to watch: a dataset-relative folder ('raw/REC-1') ->
#: may a path the daemon cares about be there, or in or below it (`Layout.may_hold`)?
Keep = Callable[[str], bool]


def _pruned(root: bytes, path: bytes, keep: Keep | None = None) -> bool:
    """Is `path` in (or is) one of the UNWATCHED folders directly below `root`, or a folder
    below it that `keep` has no use for?"""
    if not path.startswith(root + b"/"):
        return False
    relative = path[len(root) + 1 :]
    if relative.split(b"/", 1)[0] in UNWATCHED:
        return True
    return keep is not None and not keep(os.fsdecode(relative))


if InotifyWatchGroup is not None and all(
    hasattr(InotifyWatchGroup, name)
    for name in ("_add_callback", "_add_all_callbacks", "_recursive_simulate", "on_event")
):

    @dataclass
    class _PrunedGroup(InotifyWatchGroup):  # type: ignore[misc,valid-type]
        """A (recursive) watch group that adds no watch in the UNWATCHED folders, nor in a
        folder its `keep` has no use for, at start and when folders are created later."""

        keep: Keep | None = None
        made: Callable[[str], None] | None = None  # `OpenWrites.made`
        #: The cookies of the renames of a step's outputs into place, begun (their
        #: IN_MOVED_FROM, under the temporary name) and not yet ended (IN_MOVED_TO).
        _placing: set[int] = field(default_factory=set, init=False)

        def _add_callback(self, path: bytes) -> None:
            if _pruned(self.path, path, self.keep):
                return
            super()._add_callback(path)

        def on_event(self, event: Any) -> None:
            """A step's output, from its creation under a temporary name to its rename
            into place, reaches neither watchdog nor the loop: the run's results say what
            it wrote (the units that read it are told when they are recorded, see
            `Arrivals.recorded`). Half of a burst's events, through four threads and the
            loop; and each one waiting in watchdog's move pairing was scanned for at every
            rename (most of the daemon's watching CPU). Another writer's change to an
            output still comes, as any file's."""
            if event.name.startswith(_TEMP_NAME):
                if event.is_moved_from:
                    if len(self._placing) >= _MADE_MAX:  # renamed out of sight: forget
                        self._placing.clear()
                    self._placing.add(event.cookie)
                return
            if event.is_moved_to and event.cookie in self._placing:
                self._placing.discard(event.cookie)
                return
            if self.made is not None and event.is_create and not event.is_directory:
                path = self._build_event_source_path(event)
                if path is not None:
                    self.made(os.fsdecode(path))
            super().on_event(event)

        @functools.cached_property
        def _leaf(self) -> _LeafTest:
            """Told once a group: the walk runs again at every folder made in a watched one."""
            return _LeafTest(self.path)

        def _recursive_simulate(self, src_path: bytes) -> list[Any]:
            """The events of what a folder made (or moved in) holds, none for a folder that
            is not watched: watchdog would walk all of it to find no watched folder."""
            if _pruned(self.path, src_path, self.keep):
                return []
            return super()._recursive_simulate(src_path)

        def _add_all_callbacks(self, path: bytes) -> None:
            """watchdog's walk, never into the UNWATCHED folders (`LOG/` holds a file a
            record: a million entries listed for nothing at a million records) nor into a
            folder `keep` has no use for; and listing folders only, where `os.walk` made a
            string of every file's name too (three million, at a million records)."""
            if _pruned(self.path, path, self.keep):
                return
            self._add_callback(path)
            if not (self.is_recursive and os.path.isdir(path)):
                return
            follow, folders = self.follow_symlink, [path]
            while folders:
                folder = folders.pop()
                if self._leaf(folder):
                    continue
                try:
                    with os.scandir(folder) as entries:
                        found = [e.path for e in entries if e.is_dir(follow_symlinks=follow)]
                except OSError:  # gone, or cannot be listed: as `os.walk`, go on
                    continue
                for folder in found:
                    if not _pruned(self.path, folder, self.keep):
                        self._add_callback(folder)
                        folders.append(folder)

    #: What inotify is asked for: watchdog's all, but opens, read-only closes and writes.
    MASK = WATCHDOG_ALL_EVENTS & ~(
        InotifyConstants.IN_OPEN | InotifyConstants.IN_CLOSE_NOWRITE | InotifyConstants.IN_MODIFY
    )

    class _PrunedEmitter(InotifyEmitter):  # type: ignore[misc,valid-type]
        def __init__(
            self,
            *args: Any,
            keep: Mapping[str, Keep] | None = None,
            made: Callable[[str], None] | None = None,
            **kwargs: Any,
        ):
            super().__init__(*args, **kwargs)
            self._keep = (keep or {}).get(self.watch.path)
            self._made = made

        def on_thread_start(self) -> None:
            self._inotify = _PrunedGroup(
                self._inotify_fd,
                os.fsencode(self.watch.path),
                is_recursive=self.watch.is_recursive,
                event_mask=MASK,
                follow_symlink=self.watch.follow_symlink,
                keep=self._keep,
                made=self._made,
            )

    class _PrunedObserver(InotifyObserver):  # type: ignore[misc,valid-type]
        """watchdog's inotify observer, its emitters' recursive watches pruned; `keep`:
        a watched folder's path -> which folders below it to watch; `made`: told the
        files inotify saw made."""

        def __init__(
            self,
            keep: Mapping[str, Keep] | None = None,
            made: Callable[[str], None] | None = None,
        ) -> None:
            super().__init__()
            self._emitter_class = _PrunedEmitter
            self._emitter_kwargs = {**self._emitter_kwargs, "keep": keep, "made": made}

else:  # pragma: no cover - another watchdog: every folder is watched
    _PrunedObserver = None  # type: ignore[assignment,misc]


def _inotify_observer(
    keep: Mapping[str, Keep] | None = None, made: Callable[[str], None] | None = None
) -> BaseObserver:
    """The pruned observer where this watchdog allows it, else watchdog's own."""
    if _PrunedObserver is not None:
        try:
            return _PrunedObserver(keep, made)
        except (AttributeError, TypeError):  # internals moved: watch everything instead
            pass
    return Observer()


def is_inotify(observer: BaseObserver) -> bool:
    """Does this observer report inotify's events (closes among them)?"""
    return InotifyObserver is not None and isinstance(observer, InotifyObserver)


def watch_count(observer: BaseObserver) -> int | None:
    """The inotify watches (folders) an observer holds; None where it cannot be told."""
    total = 0
    for emitter in getattr(observer, "emitters", ()):
        group = getattr(emitter, "_inotify", None)
        watches = getattr(group, "_active_callbacks_by_watch", None)
        if watches is None:
            return None
        total += len(watches)
    return total


def read_limits(folder: Path = LIMITS) -> dict[str, int]:
    """The kernel's inotify limits that matter here (absent ones left out)."""
    limits = {}
    for name in ("max_user_watches", "max_queued_events"):
        try:
            limits[name] = int((folder / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return limits


def check_limits(watches: int | None, limits: dict[str, int], log: Any) -> None:
    """One `watch.limits` event: the watches used and the kernel's limits; a warning naming
    the sysctl to raise when the watches take more than half of `max_user_watches` (the
    dataset's folders may grow, and other programs of the user watch too)."""
    most = limits.get("max_user_watches")
    fields: dict[str, object] = {"watches": watches, **limits}
    if watches is not None and most is not None and watches > most // 2:
        log.warning(
            "watch.limits", **fields,
            action=f"raise it: sysctl fs.inotify.max_user_watches={_room(watches)} "
            "(and in /etc/sysctl.d/ to keep it)",
        )  # fmt: skip
    else:
        log.info("watch.limits", **fields, action=None)


def _room(watches: int) -> int:
    """A max_user_watches with room to grow: four times what is used, a round number."""
    return max(8192, 1 << (4 * watches - 1).bit_length())


def _overflow_advice(message: str, limits: dict[str, int]) -> str:
    if "overflow" not in message.lower():
        return message
    queued = limits.get("max_queued_events")
    now = f", now {queued}" if queued is not None else ""
    return (
        f"{message}; a reconcile follows. To avoid it, raise "
        f"fs.inotify.max_queued_events{now} (sysctl)"
    )


class Watcher:
    """Observers over a few folders, all feeding one queue."""

    def __init__(
        self,
        messages: queue.Queue,
        folders: list[tuple[Path, bool]],  # (folder, recursive)
        kind: str = "auto",
        polling_seconds: float = 1.0,
        keep: Mapping[Path, Keep] | None = None,
    ) -> None:
        self._messages = messages
        self._folders = folders
        #: A recursively watched folder -> which folders below it to watch (inotify only;
        #: the polling observer looks at everything).
        self._keep = {str(folder): rule for folder, rule in (keep or {}).items()}
        self._kind = kind
        self._polling = polling_seconds
        self._observer: BaseObserver | None = None
        #: Files open for writing (inotify only; always empty with the polling observer).
        self.writes = OpenWrites()
        self._errors = _Errors(messages, self.writes)
        self._started = False

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
            observer = _inotify_observer(self._keep, self.writes.made)
        self.writes.clear()  # what was open before a restart is unknown: events were missed
        closes = is_inotify(observer)  # only inotify reports closes
        handler = _Enqueue(self._messages, self.writes if closes else None)
        for folder, recursive in self._folders:
            observer.schedule(handler, str(folder), recursive=recursive, event_filter=DISPATCHED)
        self._errors.emitters = tuple(observer.emitters)
        observer.start()
        first = self._observer is None and not self._started
        self._observer = observer
        self._started = True
        if first and closes:  # once a process: a restart after an error says nothing new
            check_limits(watch_count(observer), read_limits(), structlog.get_logger("sinagotd"))

    def alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)

    def stop(self) -> None:
        """Stop watching. What watchdog says while its threads wind down ("queue_events()
        called when the thread is inactive") is shutdown noise: neither a `watch.error` nor
        a line on stderr (Python's last-resort handler, with no handler left)."""
        loggers = [logging.getLogger(name) for name in WATCHDOG_LOGGERS]
        quiet = logging.NullHandler()
        for logger in loggers:
            logger.addHandler(quiet)
            logger.removeHandler(self._errors)
        try:
            if self._observer is not None:
                self._observer.stop()
                if self._observer.is_alive():
                    self._observer.join(timeout=5)
                self._observer = None
        finally:
            for logger in loggers:
                logger.removeHandler(quiet)

    def restart(self) -> None:
        self.stop()
        self.start()
