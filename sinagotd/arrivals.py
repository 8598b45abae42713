"""Arrivals: when the files of a unit are complete enough to act on, and who is told.

A unit's files settle (`Settler`: `settle_seconds` without an event) before the daemon
plans it, so that a recording being copied starts nothing. Quiet is not enough:

- a copy that pauses between chunks is quiet while its file is still open for writing.
  Under inotify, the watcher knows the files written and not yet closed
  (`watcher.OpenWrites`): a unit holding one does not settle, however long it stays quiet,
  up to `OPEN_LIMIT` of quiet (a writer that hung or a close event that was lost must not
  hold a record for good), after which it settles anyway with a `record.unclosed` warning;
- an observer can coalesce changes (the polling one looks every `polling_seconds`, which
  may be longer than the settle time): a unit settles only once its files' size and
  modification time are what they were at its last event, else it waits another
  `settle_seconds`.

While a record's files settle, people are told once: one `record.arriving` event (record_id,
files, ready_at) when it starts, whatever the number of file events, and `<state>/
arriving.json`, which `sinagot status` (another process) reads while this daemon holds the
workspace (`Engine.arriving`). A record that settles but whose `[records] ready_when` marker
is still missing is said once too (`record.waiting`): its steps wait for the marker.

Pure but for the file it writes and the stats it makes; clock-injected, like `Settler`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sinagot.engine import ARRIVING_FILE, Engine
from sinagot.fingerprints import decode_fingerprints, stat_known
from sinagot.layout import LOG_FOLDER, Layout, Scope, Unit
from sinagot.patterns import Matcher, PathPattern
from sinagot.runner import StepResult
from sinagot.safepaths import PathRefused, open_regular
from sinagot.state import StateStore, run_key

from . import events
from .settle import Settler
from .watcher import OpenWrites

#: Seconds of quiet after which a file still open for writing is acted on anyway.
OPEN_LIMIT = 3600.0
#: At most one rewrite of `arriving.json` this often (seconds); it is removed at once when
#: nothing arrives any more.
WRITE_EVERY = 1.0
#: Records listed in `arriving.json` at most (the rest are counted): a copy of 100,000
#: records must not become a file of megabytes rewritten every second.
LISTED_MAX = 10_000

_UNKNOWN = object()  # no fingerprint taken yet
Fingerprint = tuple[int, int] | None  # (size, mtime_ns); None: gone


@dataclass
class _Record:
    """One record's arrival: from its first file event until its last unit settles."""

    since: float  # wall clock
    units: set[Unit] = field(default_factory=set)
    files: set[str] = field(default_factory=set)


class Arrivals(Settler[Unit]):
    """The daemon's `units_settle`: units whose files are arriving, acted on when due.

    `keys()` is what is arriving (the status page's ARRIVING), `due(now)` the units now
    complete. The loop calls `changed` as file events come, `tick` once per pass after
    them, and `due` on each tick."""

    def __init__(
        self,
        seconds: float,
        log: Any,
        state_dir: Path | None = None,
        writes: Callable[[], OpenWrites | None] = lambda: None,
        waits_for: Callable[[str], str | None] = lambda record_id: None,
        *,
        open_limit: float = OPEN_LIMIT,
        wall: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(seconds)
        self.log = log
        self.open_limit = open_limit
        self._path = state_dir / ARRIVING_FILE if state_dir is not None else None
        self._writes = writes
        self._waits_for = waits_for
        self._wall = wall
        self._files: dict[Unit, set[str]] = {}
        self._records: dict[str, _Record] = {}
        self._fresh: list[str] = []  # records that began arriving, to announce
        self._fingerprints: dict[str, Fingerprint] = {}  # at the last event's pass
        self._holders: dict[str, int] = {}  # path -> how many arriving units hold it
        self._to_fingerprint: set[str] = set()
        #: Records said `record.waiting` (id -> why), so that a reconcile says only others.
        self.waiting: dict[str, str] = {}
        self._changed = True  # arriving.json: rewrite (or remove) at the next chance
        self._outputs: tuple[Layout, list[Matcher]] | None = None
        self._next_write = 0.0
        #: The daemon's own steps' outputs: their file events are expected, not news.
        self.own = OwnOutputs()
        #: Where a changed path belongs (the loop's `_path_changed`), remembered per path.
        self.routes = PathRoutes(self.own)

    # -- what the loop says ------------------------------------------------------------------

    def changed(self, path: str, units: Iterable[Unit], now: float, output: bool = False) -> None:
        """A file of these units changed (or their record's `ready_when` marker did). A
        step's `output` (landing as the step ends) settles as any file does, but is no
        arrival: it is neither announced nor shown as arriving."""
        for unit in units:
            self.touch(unit, now)
            files = self._files.setdefault(unit, set())
            if path not in files:
                files.add(path)
                self._holders[path] = self._holders.get(path, 0) + 1
            self._to_fingerprint.add(path)
            if output:
                continue
            record = self._records.get(unit.record_id)
            if record is None:
                record = self._records[unit.record_id] = _Record(self._wall())
                self._fresh.append(unit.record_id)
            record.units.add(unit)
            record.files.add(path)
            self._changed = True

    def data_changed(
        self, route: Route, path: str, flights: Mapping[Unit, Any], store: StateStore, now: float
    ) -> bool:
        """A dataset path changed (`route`: what it concerns): settle those units. An
        output that the daemon's own run wrote is no news (`OwnOutputs`): not for the unit
        that wrote it, nor for a reader in another unit, told when the run was recorded.
        True if any unit is concerned: a sidecar no step reads is no work (no
        `daemon.idle` per event)."""
        units, owner = route.units, route.owner
        flight = flights.get(owner) if owner is not None else None
        results = flight.results if flight is not None else None  # None: not in flight
        if owner is not None and self.own.expected(owner, route.relative, path, results, store):
            return False  # its readers are told as its run is recorded (`recorded`)
        self.changed(path, units, now, owner is not None)
        return bool(units)

    def recorded(self, engine: Engine, results: Iterable[StepResult], now: float) -> bool:
        """Results the store took: the units of other keys that read the outputs these runs
        wrote settle, as for any changed file. The loop hears nothing of a step's outputs
        renamed into place (`watcher`): this is how their readers learn of them. True if
        any unit was told."""
        layout, told = engine.layout, False
        for result in results:
            key = (result.unit.task, result.unit.modality)
            if not (result.ok and result.outputs and layout.read_elsewhere(key)):
                continue
            for relative in decode_fingerprints(result.outputs):
                if readers := layout.readers(relative, key):
                    path = os.path.join(engine.config.dataset, relative)
                    self.changed(path, readers, now, output=True)
                    told = True
        return told

    def settle(self, now: float, in_flight: Container[Unit], store: StateStore) -> list[Unit]:
        """Once a pass, after its events: the units whose files settled (`tick`, `due`).
        An output noted while its unit was on the cluster that changed since its run
        (`OwnOutputs.landed`) settles first as any changed file does."""
        for unit, path in self.own.landed(in_flight, store):
            self.changed(path, [unit], now, output=True)  # changed since its run
        self.tick(now)
        return self.due(now)

    def keys(self) -> frozenset[Unit]:
        """The units whose files are arriving: not those only settling after their own
        steps' outputs landed."""
        return frozenset(u for record in self._records.values() for u in record.units)

    def __contains__(self, unit: object) -> bool:
        record = self._records.get(getattr(unit, "record_id", None))  # type: ignore[arg-type]
        return record is not None and unit in record.units

    def is_output(self, layout: Layout, relative: str) -> bool:
        """Is this dataset-relative path a step's output (by the layout's patterns)?"""
        if self._outputs is None or self._outputs[0] is not layout:
            self._outputs = (layout, _output_matchers(layout))
        return any(m.match(relative) is not None for m in self._outputs[1])

    def tick(self, now: float) -> None:
        """After a pass's events: fingerprint the files they named, announce the records
        that began arriving (once each), keep `arriving.json` current."""
        for path in self._to_fingerprint:
            self._fingerprints[path] = _fingerprint(path)
        self._to_fingerprint.clear()
        with events.batch():  # a burst's thousands of records: one write, not one each
            for record_id in self._fresh:
                if (record := self._records.get(record_id)) is not None:
                    self.log.info("record.arriving", record_id=record_id,
                                  files=len(record.files),
                                  ready_at=_iso(self._ready_at(record, now)))  # fmt: skip
        self._fresh.clear()
        if self._changed and (now >= self._next_write or not self._records):
            self._next_write = now + WRITE_EVERY
            self._changed = False
            self._write(now)

    def due(self, now: float) -> list[Unit]:
        """Units quiet for `seconds` whose files are closed and hold still; forgotten as
        they are returned."""
        writes = self._writes()
        ready = [
            unit
            for unit, last in list(self._last.items())
            if now - last >= self.seconds and not self._held(unit, last, now, writes)
        ]
        for unit in ready:
            self._settled(unit)
        return ready

    def close(self) -> None:
        """The daemon stops: nothing is arriving any more, as far as anyone can tell."""
        self._records.clear()
        self._remove()

    # -- deciding ----------------------------------------------------------------------------

    def _held(self, unit: Unit, last: float, now: float, writes: OpenWrites | None) -> bool:
        """Is this quiet unit still arriving? A file open for writing, or one that changed
        since its last event (an observer that coalesced it), holds it; the latter makes
        it wait `seconds` again."""
        files = self._files.get(unit, ())
        if writes is not None and any(writes.since(path) is not None for path in files):
            if now - last < self.open_limit:
                return True
            for path in sorted(p for p in files if writes.since(p) is not None):
                self.log.warning("record.unclosed", record_id=unit.record_id, path=path,
                                 quiet_s=round(now - last, 1),
                                 action="acted on anyway: still open for writing")  # fmt: skip
                writes.forget(path)
        for path in files:
            now_fp = _fingerprint(path)
            if self._fingerprints.get(path, _UNKNOWN) != now_fp:
                self._fingerprints[path] = now_fp
                self._last[unit] = now
                self._changed = True
                return True
        return False

    def _settled(self, unit: Unit) -> None:
        del self._last[unit]
        for path in self._files.pop(unit, ()):
            left = self._holders.pop(path, 1) - 1
            if left:
                self._holders[path] = left
            else:  # no arriving unit holds it any more
                self._fingerprints.pop(path, None)
        record = self._records.get(unit.record_id)
        if record is None:
            return
        record.units.discard(unit)
        if record.units:
            return
        del self._records[unit.record_id]
        self._changed = True
        if (why := self._waits_for(unit.record_id)) is not None:
            self._say_waiting(unit.record_id, why)

    def found_waiting(self, waiting: dict[str, str]) -> None:
        """What a reconcile found held by its `ready_when` marker (id -> why), at the start
        or after events were lost: one `record.waiting` for each not said already (nor
        arriving); those no longer held are forgotten, to be said again should they be."""
        said, self.waiting = self.waiting, {}
        for record_id, why in waiting.items():
            if said.get(record_id) == why or record_id in self._records:
                self.waiting[record_id] = why
            else:
                self._say_waiting(record_id, why)

    def _say_waiting(self, record_id: str, why: str) -> None:
        self.waiting[record_id] = why
        self.log.info("record.waiting", record_id=record_id, reason=why)

    def _ready_at(self, record: _Record, now: float) -> float:
        """When the record is expected to be complete (wall clock): its latest event plus
        the settle time, if nothing else changes."""
        last = max((self._last[u] for u in record.units if u in self._last), default=now)
        return self._wall() + max(last + self.seconds - now, 0.0)

    # -- arriving.json ---------------------------------------------------------------------

    def _write(self, now: float) -> None:
        """Atomically, with this process's pid (only the lock holder's file is believed);
        removed when nothing arrives. A file that cannot be written is skipped: `sinagot
        status` then shows no arrivals, and the daemon's work goes on."""
        if self._path is None:
            return
        if not self._records:
            self._remove()
            return
        writes = self._writes()
        listed = dict(list(self._records.items())[:LISTED_MAX])
        records = {
            record_id: {
                "files": len(record.files),
                "writing": sum(writes.since(p) is not None for p in record.files) if writes else 0,
                "since": _iso(record.since),
                "ready_at": _iso(self._ready_at(record, now)),
            }
            for record_id, record in listed.items()
        }
        data = {
            "pid": os.getpid(),
            "updated": _iso(self._wall()),
            "records": records,
            "more": len(self._records) - len(listed),
        }
        temp = self._path.with_name(f".{ARRIVING_FILE}.{os.getpid()}.tmp")
        try:
            fd = open_regular(str(temp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "file")
            try:
                os.write(fd, json.dumps(data).encode())
            finally:
                os.close(fd)
            os.replace(temp, self._path)
        except (OSError, PathRefused):
            with contextlib.suppress(OSError):
                os.unlink(temp)

    def _remove(self) -> None:
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


class OwnOutputs:
    """Outputs the daemon's own steps write are no news: a step's outputs land (a worker's
    rename) just before or just after its result reaches the loop, which records their
    fingerprints. Planning their unit again for each landing would make three plans of a
    new two-step record instead of one. An output event is news only when the file differs
    (size, mtime) from what the store recorded of the run that wrote it: a person's edit,
    a truncation. Other units that read the output are told as usual.

    While the unit that writes it is on the cluster, an event is only noted (`expected`);
    once the unit has landed and its results are recorded, `landed` names the noted outputs
    that differ from what its run wrote, to be treated as any changed file."""

    def __init__(self) -> None:
        self._owners: tuple[Layout, list[tuple[Matcher, tuple[str | None, str | None]]]] | None
        self._owners = None
        #: unit in flight -> ({relative: path} of its outputs' events, its flight's results)
        self._awaited: dict[Unit, tuple[dict[str, str], list[StepResult]]] = {}

    def owner(self, layout: Layout, relative: str) -> Unit | None:
        """The unit whose step writes this dataset-relative path; None if no step does."""
        if self._owners is None or self._owners[0] is not layout:
            self._owners = (layout, _owner_matchers(layout))
        for matcher, (task, modality) in self._owners[1]:
            if (found := matcher.match(relative)) is not None:
                return Unit(found.record_id, task, modality)
        return None

    def expected(
        self,
        owner: Unit,
        relative: str,
        path: str,
        results: list[StepResult] | None,
        store: StateStore,
    ) -> bool:
        """Is this event on `owner`'s output its own run's doing? While the unit is on the
        cluster (`results`: its flight's results so far, growing until it lands) the event
        is noted and taken as expected; otherwise the file must be as the store recorded."""
        if results is not None:
            noted = self._awaited.get(owner, ({}, results))[0]
            noted[relative] = path
            self._awaited[owner] = (noted, results)  # a newer run's results, if resubmitted
            return True
        return _as_recorded(store, owner, {relative: path}) == []

    def landed(self, in_flight: Container[Unit], store: StateStore) -> list[tuple[Unit, str]]:
        """(unit, path) of the outputs noted while their unit was on the cluster that, now
        it has landed, differ from what its run wrote (its results, as recorded; the store
        where a result is missing): changed by someone else."""
        done = [unit for unit in self._awaited if unit not in in_flight]
        news: list[tuple[Unit, str]] = []
        for unit in done:
            noted, results = self._awaited.pop(unit)
            wrote: dict[str, tuple[int, int]] = {}
            for result in results:
                if result.state == "done":
                    wrote.update(decode_fingerprints(result.outputs))
            unknown = {rel: path for rel, path in noted.items() if rel not in wrote}
            news.extend((unit, path) for path in _as_recorded(store, unit, unknown))
            news.extend(
                (unit, path)
                for rel, path in noted.items()
                if rel in wrote and stat_known(path) != wrote[rel]
            )
        return news

    def __len__(self) -> int:
        return len(self._awaited)


@dataclass(frozen=True)
class Route:
    """Where a watched path belongs: `kind` "config", "script" or "data" (else None:
    ignored); for data, its dataset-relative path, the units it maps to and the unit whose
    step writes it (None: no step does)."""

    kind: str | None
    relative: str = ""
    units: tuple[Unit, ...] = ()
    owner: Unit | None = None


_IGNORED = Route(None)


class PathRoutes:
    """The loop's mapping of a changed path to what it concerns, remembered per path.

    A burst brings several events per file (created, modified, closed; a folder's own
    `modified` for each of its files), and pattern matching is the dearest part of an
    event's handling: a path is mapped once while the workspace's configuration stays the
    same (`engine`: the `Engine` in use; a reload makes a new one), then looked up. Hidden
    names (rsync's .name.XXXXXX, our temporary outputs) are ignored below the watched
    folders, whatever the folders above them are called; a `[records] ready_when` marker is
    not, hidden or not (`{id}/.done`); the state folder and the record logs are ignored."""

    def __init__(self, own: OwnOutputs, size: int = 20_000) -> None:
        self._own = own
        self._size = size
        self._engine: object = None
        self._routes: dict[str, Route] = {}
        self._folders: tuple[str, str, str, str] = ("", "", "", "")
        self._config_files: frozenset[str] = frozenset()

    def route(self, engine: Engine, path: str) -> Route:
        """Where `path` (absolute, as the watcher reports it) belongs."""
        if engine is not self._engine:
            self._use(engine)
        found = self._routes.get(path)
        if found is None:
            found = self._map(engine, path)
            if len(self._routes) >= self._size:  # a bounded memory: start again
                self._routes.clear()
            self._routes[path] = found
        return found

    def _use(self, engine: Engine) -> None:
        config = engine.config
        self._engine = engine
        self._routes.clear()
        dataset = str(config.dataset)
        self._folders = (str(config.state_dir), os.path.join(dataset, LOG_FOLDER),
                         str(config.scripts), dataset)  # fmt: skip
        self._config_files = frozenset(str(f) for f in config.files)

    def _map(self, engine: Engine, path: str) -> Route:
        state, logs, scripts, dataset = self._folders
        if _under(path, state) or _under(path, logs):
            return _IGNORED
        if path in self._config_files:
            return Route("config")
        if _under(path, scripts):
            relative = path[len(scripts) + 1 :]
            return Route("script") if path.endswith(".py") and not _hidden(relative) else _IGNORED
        if not path.startswith(dataset + os.sep):
            return _IGNORED
        relative = path[len(dataset) + 1 :].replace(os.sep, "/")
        if (record_id := engine.marker_record(relative)) is not None:
            return Route("data", relative, tuple(engine.units(Scope(), [record_id])))
        if _hidden(relative):
            return _IGNORED
        units = tuple(engine.layout.units_for_path(relative))
        owner = self._own.owner(engine.layout, relative) if units else None
        return Route("data", relative, units, owner)


def _hidden(relative: str) -> bool:
    return any(name.startswith(".") for name in relative.split("/"))


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + os.sep)


def _as_recorded(store: StateStore, unit: Unit, paths: dict[str, str]) -> list[str]:
    """The paths (of `paths`: relative -> absolute) that differ from the outputs the store
    recorded for `unit`'s steps (or that it never recorded)."""
    if not paths:
        return []
    prefix = run_key(unit, "")
    recorded: dict[str, tuple[int, int]] = {}
    for key, run in store.read_record([unit.record_id]).items():
        if key.startswith(prefix) and run.outputs:
            recorded.update(decode_fingerprints(run.outputs))
    return [
        path
        for relative, path in paths.items()
        if relative not in recorded or stat_known(path) != recorded[relative]
    ]


def _owner_matchers(layout: Layout) -> list[tuple[Matcher, tuple[str | None, str | None]]]:
    """Each unit key's output patterns, compiled for that key."""
    config = layout.config
    out = []
    for task, modality in layout.unit_keys(Scope()):
        tasks = None if task is None else (task,)
        for step in layout.steps(task, modality):
            for pattern in step.outputs.patterns:
                if "id" in pattern.fields:
                    out.append((pattern.compile(config.id_regex, tasks), (task, modality)))
    return out


def _output_matchers(layout: Layout) -> list[Matcher]:
    config = layout.config
    found: dict[tuple[PathPattern, str | None], Matcher] = {}
    for task, modality in layout.unit_keys(Scope()):
        for step in layout.steps(task, modality):
            for pattern in step.outputs.patterns:
                key = (pattern, task if "task" in pattern.fields else None)
                if "id" in pattern.fields and key not in found:
                    tasks = None if key[1] is None else (key[1],)
                    found[key] = pattern.compile(config.id_regex, tasks)
    return list(found.values())


def _fingerprint(path: str) -> Fingerprint:
    try:
        st = os.stat(path, follow_symlinks=False)
    except (OSError, ValueError):  # gone, unreadable, or a name the OS refuses
        return None
    return (st.st_size, st.st_mtime_ns)


def _iso(when: float) -> str:
    """ISO 8601 in UTC, as the events' own timestamps."""
    return datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
