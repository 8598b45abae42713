"""The status board: one row per unit, one cell per step, for the status page and its report.

Plain data and pure functions. The planner's word (`StepPlan`) is turned into cells, with
what only a running daemon knows laid over it (`Overlay`: queued, arriving); a `Board` keeps
the rows in natural record order and answers the page's queries (filters, pages, counts) in
the JSON shape that `docs/design.md` fixes (`/api/status`).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import groupby
from operator import attrgetter

from .layout import Unit
from .planner import StepPlan
from .status import cell_status, natural_key

API_VERSION = 1

#: Every status a cell can show, in the legend's order.
CELL_STATUSES = (
    "DONE", "STALE", "DATA_READY", "QUEUED", "PROCESSING", "ERROR", "DATA_NOT_AVAILABLE",
    "ARRIVING", "INIT",
)  # fmt: skip
#: The `show` filter: which cells make a row shown.
SHOWS: dict[str, frozenset[str]] = {
    "all": frozenset(CELL_STATUSES),
    "failed": frozenset({"ERROR"}),
    "stale": frozenset({"STALE", "DATA_READY"}),
    "in_flight": frozenset({"PROCESSING"}),
    "queued": frozenset({"QUEUED"}),
    "arriving": frozenset({"ARRIVING"}),
}
ORDERS = ("natural", "newest")
MAX_PER_PAGE = 1000
#: Cells that will run: the backlog the page's time estimate is about.
_BACKLOG = frozenset({"STALE", "DATA_READY", "QUEUED", "PROCESSING"})


@dataclass(frozen=True)
class Overlay:
    """What the daemon knows that the state store does not (yet)."""

    queued: frozenset[Unit] = frozenset()
    arriving: frozenset[Unit] = frozenset()


NO_OVERLAY = Overlay()


@dataclass(frozen=True, slots=True)
class Row:
    """A unit's row as handed to the board (and built for a page): the board keeps it
    compactly, not as this object."""

    unit: Unit
    steps: tuple[str, ...]
    cells: tuple[str, ...]  # a status name per step, overlay applied
    arriving: bool = False


def iter_rows(plans: Iterable[StepPlan], overlay: Overlay = NO_OVERLAY) -> Iterator[Row]:
    """A row per unit, one at a time: the planner gives each unit's steps in order, units
    one after the other, so a million units never stand as a million rows at once."""
    for unit, unit_plans in groupby(plans, key=attrgetter("unit")):
        queued, arriving = unit in overlay.queued, unit in overlay.arriving
        steps, cells = [], []
        for plan in unit_plans:
            steps.append(plan.step.name)
            cells.append(cell_status(plan, queued, arriving))
        yield Row(unit, tuple(steps), tuple(cells), "ARRIVING" in cells)


def rows_from_plans(plans: Iterable[StepPlan], overlay: Overlay = NO_OVERLAY) -> list[Row]:
    """A row per unit, in the order the plans come."""
    return list(iter_rows(plans, overlay))


@dataclass(frozen=True)
class Query:
    """The page's question, checked: a bad parameter raises ValueError naming it."""

    page: int = 0
    per_page: int = 100
    show: str = "all"
    task: str | None = None
    modality: str | None = None
    q: str = ""
    order: str = "natural"

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Query:
        known = {"page", "per_page", "show", "task", "modality", "q", "order"}
        for key in params:
            if key not in known:
                raise ValueError(f"unknown parameter {key!r}; known: {', '.join(sorted(known))}")
        page = _int(params, "page", 0, 0, 10**9)
        per_page = _int(params, "per_page", 100, 1, MAX_PER_PAGE)
        show = params.get("show") or "all"
        if show not in SHOWS:
            raise ValueError(f"show={show!r}: expected one of {', '.join(SHOWS)}")
        order = params.get("order") or "natural"
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: expected one of {', '.join(ORDERS)}")
        return cls(
            page, per_page, show, params.get("task") or None, params.get("modality") or None,
            (params.get("q") or "")[:200], order,
        )  # fmt: skip

    def as_json(self) -> dict[str, object]:
        return {
            "page": self.page, "per_page": self.per_page, "show": self.show,
            "task": self.task, "modality": self.modality, "q": self.q, "order": self.order,
        }  # fmt: skip


def _int(params: Mapping[str, str], key: str, default: int, low: int, high: int) -> int:
    text = params.get(key)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{key}={value}: expected {low} to {high}")
    return value


#: A unit's row as kept: (steps, cells, arriving), interned (a few distinct ones per board).
_Entry = tuple[tuple[str, ...], tuple[str, ...], bool]
#: A record's rows as kept: an entry per kind (None: no such unit), interned too.
_Combo = tuple[_Entry | None, ...]
#: Statuses a filter asks for: only these get an index (DONE, the bulk, gets none).
_INDEXED = frozenset().union(*(statuses for show, statuses in SHOWS.items() if show != "all"))


def _sort_key(record_id: str) -> tuple[list[str | int], str]:
    """Natural order; two IDs equal to it ('R-01', 'R-1') by their text."""
    return natural_key(record_id), record_id


def _in_order(record_ids: Iterable[str]) -> list[str]:
    """Sorted by `_sort_key`, in two stable passes (text, then natural order): a tuple key
    would compare each pair's lists twice, and the first full board sorts a million."""
    ordered = sorted(record_ids)
    ordered.sort(key=natural_key)
    return ordered


class _Table:
    """The rows, compactly: a record ID (one str per record, shared with the order and the
    status index) -> one interned tuple of its units' interned entries. A million
    up-to-date units cost a dict slot and a list slot each, not a row object, a set and a
    sort key (`tests/bench/bench_status_page.py` prints what it costs)."""

    __slots__ = ("_combos", "_entries", "_statuses", "cells", "kind_at", "kinds", "order", "rows",
                 "sizes", "units", "with_")  # fmt: skip

    def __init__(self, kinds: list[tuple[str | None, str | None]]) -> None:
        self.rows: dict[str, _Combo] = {}
        self.order: list[str] = []  # record IDs in natural order
        self.cells: Counter[str] = Counter()
        self.with_: dict[str, set[str]] = {status: set() for status in _INDEXED}
        self.units = 0
        self.sizes: Counter[int] = Counter()  # units per record -> records
        self.kinds = kinds  # (task, modality) by position: a record's units sort by it
        self.kind_at = {kind: i for i, kind in enumerate(kinds)}
        self._entries: dict[_Entry, _Entry] = {}
        self._combos: dict[_Combo, _Combo] = {}
        self._statuses: dict[_Combo, frozenset[str]] = {}

    def kind(self, unit: Unit) -> int:
        key = (unit.task, unit.modality)
        if key not in self.kind_at:  # a unit of a kind the layout did not name: after them
            self.kind_at[key] = len(self.kinds)
            self.kinds.append(key)
        return self.kind_at[key]

    def put(self, row: Row, ordered: bool = True) -> bool:
        """A unit's row: False if it was there already, the same."""
        entry: _Entry = (row.steps, row.cells, row.arriving)
        entry = self._entries.setdefault(entry, entry)
        i, old = self.kind(row.unit), self.rows.get(row.unit.record_id)
        if old is not None and i < len(old) and old[i] is entry:
            return False
        combo = list(old or ())
        combo.extend([None] * (i + 1 - len(combo)))
        combo[i] = entry
        self._set(row.unit.record_id, old, tuple(combo), ordered)
        return True

    def remove(self, unit: Unit) -> bool:
        old, i = self.rows.get(unit.record_id), self.kind_at.get((unit.task, unit.modality))
        if old is None or i is None or i >= len(old) or old[i] is None:
            return False
        combo = list(old)
        combo[i] = None
        self._set(unit.record_id, old, tuple(combo) if any(combo) else None)
        return True

    def _set(self, record_id: str, old: _Combo | None, new: _Combo | None, ordered: bool = True):
        if old is not None:
            self._count(record_id, old, -1)
        if new is None:
            del self.rows[record_id]
            del self.order[self._position(record_id)]
            return
        new = self._combos.setdefault(new, new)
        if old is None:
            if ordered:
                bisect.insort(self.order, record_id, key=_sort_key)
            else:
                self.order.append(record_id)
        self.rows[record_id] = new
        self._count(record_id, new, 1)

    def _position(self, record_id: str) -> int:
        at = bisect.bisect_left(self.order, _sort_key(record_id), key=_sort_key)
        assert self.order[at] == record_id, record_id
        return at

    def _count(self, record_id: str, combo: _Combo, sign: int) -> None:
        entries = [entry for entry in combo if entry is not None]
        for entry in entries:
            (self.cells.update if sign > 0 else self.cells.subtract)(entry[1])
        self.units += sign * len(entries)
        self.sizes[len(entries)] += sign
        if not self.sizes[len(entries)]:
            del self.sizes[len(entries)]
        statuses = self._statuses.get(combo)
        if statuses is None:
            statuses = frozenset(s for entry in entries for s in entry[1]) & _INDEXED
            self._statuses[combo] = statuses
        for status in statuses:
            if sign > 0:
                self.with_[status].add(record_id)
            else:
                self.with_[status].discard(record_id)

    def units_in(self, record_id: str, kinds: Iterable[int]) -> Iterator[tuple[str, int]]:
        combo = self.rows[record_id]
        return ((record_id, i) for i in kinds if i < len(combo) and combo[i] is not None)

    def row(self, record_id: str, i: int) -> Row:
        steps, cells, arriving = self.rows[record_id][i]  # type: ignore[misc]
        return Row(Unit(record_id, *self.kinds[i]), steps, cells, arriving)


@dataclass
class Board:
    """The rows of a workspace in natural order, kept up to date row by row.

    Written by one thread (the daemon's status keeper), read by another (the web server):
    every method takes the lock, and each holds it only for work proportional to a page,
    except the filtered queries, which scan the rows (a few ms per 10,000).
    """

    workspace: str
    scoped: bool
    version: str
    #: (task, modality) -> its step names, in config order
    steps_of: Mapping[tuple[str | None, str | None], tuple[str, ...]] = field(default_factory=dict)
    live: bool = True
    generation: int = 0
    generated: datetime | None = None
    throughput: dict[str, object] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._t = _Table(list(self.steps_of))

    # -- writing ----------------------------------------------------------------------------

    def replace_all(self, rows: Iterable[Row]) -> None:
        """The whole board from a full plan (rows taken one at a time): rows not in it are
        gone."""
        fresh = _Table(list(self.steps_of))
        for row in rows:
            fresh.put(row, ordered=False)
        fresh.order = _in_order(fresh.order)
        with self._lock:
            self._t = fresh
            self._changed()

    def update(self, rows: Iterable[Row], gone: Iterable[Unit] = ()) -> bool:
        """Some rows anew (and some units gone): True if anything changed."""
        changed = False
        with self._lock:
            for unit in gone:
                changed = self._t.remove(unit) or changed
            for row in rows:
                changed = self._t.put(row) or changed
            if changed:
                self._changed()
        return changed

    def _changed(self) -> None:
        self.generation += 1
        self.generated = datetime.now(UTC)

    def units(self) -> list[Unit]:
        """Every unit, in the board's order."""
        with self._lock:
            t = self._t
            every = range(len(t.kinds))
            return [Unit(r, *t.kinds[i]) for rid in t.order for r, i in t.units_in(rid, every)]

    def units_of(self, record_id: str) -> list[Unit]:
        """A record's units, in the board's order."""
        with self._lock:
            t = self._t
            if record_id not in t.rows:
                return []
            return [Unit(r, *t.kinds[i]) for r, i in t.units_in(record_id, range(len(t.kinds)))]

    # -- reading ----------------------------------------------------------------------------

    def counts(self) -> dict[str, object]:
        with self._lock:
            return self._counts()

    def _counts(self) -> dict[str, object]:
        cells = +self._t.cells  # drop the zeros
        return {
            "records": len(self._t.rows),
            "units": self._t.units,
            "steps": sum(cells.values()),
            "done": cells["DONE"],
            "stale": cells["STALE"] + cells["DATA_READY"],
            "queued": cells["QUEUED"],
            "in_flight": cells["PROCESSING"],
            "failed": cells["ERROR"],
            "arriving": cells["ARRIVING"],
            "by_status": {name: cells[name] for name in CELL_STATUSES if cells[name]},
        }

    def _records(self, statuses: frozenset[str]) -> list[str]:
        """The records with a cell in one of these statuses, in order: the few ones sorted,
        many picked from the whole order (a failed filter on 100,000 rows stays cheap)."""
        t = self._t
        if statuses == SHOWS["all"]:
            return t.order
        hit: set[str] = set().union(*(t.with_[s] for s in statuses))
        if len(hit) * 8 < len(t.order):
            return _in_order(hit)
        return [record_id for record_id in t.order if record_id in hit]

    def _matching(self, query: Query) -> Iterator[tuple[str, int]]:
        """The units the query asks for, in its order, as (record ID, kind)."""
        t, wanted, needle = self._t, SHOWS[query.show], query.q.casefold()
        kinds = [
            i
            for i, (task, modality) in enumerate(t.kinds)
            if (query.task is None or task == query.task)
            and (query.modality is None or modality == query.modality)
        ]
        records: Iterable[str] = self._records(wanted)
        if query.order == "newest":
            records, kinds = reversed(records), kinds[::-1]  # type: ignore[arg-type]
        every = query.show == "all"
        for record_id in records:
            if needle and needle not in record_id.casefold():
                continue
            combo = t.rows[record_id]
            for i in kinds:
                entry = combo[i] if i < len(combo) else None
                if entry is not None and (every or not wanted.isdisjoint(entry[1])):
                    yield record_id, i

    def _plain_page(self, start: int, end: int, newest: bool) -> list[tuple[str, int]]:
        """A page of the whole board: when every record has as many units (the usual
        board), its first record is found by arithmetic, not by walking the ones before."""
        t = self._t
        records: Iterable[str] = reversed(t.order) if newest else t.order
        if len(t.sizes) == 1:
            size = next(iter(t.sizes))
            first, start = divmod(start, size)
            end -= first * size
            last = min(first + end // size + 1, len(t.order))  # a page's records, no more
            if first >= last:
                return []
            if newest:
                records = t.order[len(t.order) - last : len(t.order) - first][::-1]
            else:
                records = t.order[first:last]
        kinds = range(len(t.kinds) - 1, -1, -1) if newest else range(len(t.kinds))
        page: list[tuple[str, int]] = []
        seen = 0
        for record_id in records:
            for unit in t.units_in(record_id, kinds):
                if seen >= start:
                    page.append(unit)
                seen += 1
            if seen >= end:
                break
        return page[: end - start]

    def backlog(self) -> int:
        with self._lock:
            return sum(self._t.cells[name] for name in _BACKLOG)

    def query(self, query: Query) -> dict[str, object]:
        """The `/api/status` answer."""
        with self._lock:
            start, end = query.page * query.per_page, (query.page + 1) * query.per_page
            if query.show == "all" and not (query.q or query.task or query.modality):
                total = self._t.units
                picked = self._plain_page(start, end, query.order == "newest")
            else:
                total, picked = 0, []
                for unit in self._matching(query):
                    if start <= total < end:
                        picked.append(unit)
                    total += 1
            page = [self._t.row(record_id, i) for record_id, i in picked]
            generation, generated = self.generation, self.generated
            counts = self._counts()
        backlog = sum(counts["by_status"].get(name, 0) for name in _BACKLOG)  # type: ignore[union-attr]
        return {
            "api": API_VERSION,
            "workspace": self.workspace,
            "version": self.version,
            "live": self.live,
            "generated": _iso(generated),
            "scoped": self.scoped,
            "tasks": list(dict.fromkeys(t for t, _ in self.steps_of if t)),
            "modalities": list(dict.fromkeys(m for _, m in self.steps_of if m)),
            "steps": _common_steps(self.steps_of),
            "counts": counts,
            "throughput": self.throughput,
            "backlog": {"steps": backlog, "eta_s": _eta(backlog, self.throughput)},
            "query": query.as_json(),
            "total": total,
            "rows": [row_json(row) for row in page],
            "generation": generation,
        }


def _common_steps(steps_of: Mapping[object, tuple[str, ...]]) -> list[str]:
    """The step names when every unit has the same ones (a header row), else []."""
    kinds = set(steps_of.values())
    return list(kinds.pop()) if len(kinds) == 1 else []


def row_json(row: Row) -> dict[str, object]:
    unit = row.unit
    return {
        "record_id": unit.record_id,
        "task": unit.task,
        "modality": unit.modality,
        "arriving": row.arriving,
        "cells": [{"step": s, "status": c} for s, c in zip(row.steps, row.cells, strict=True)],
    }


def _eta(backlog: int, throughput: Mapping[str, object] | None) -> float | None:
    if not backlog:
        return 0.0
    rate = (throughput or {}).get("steps_per_minute")
    if not isinstance(rate, int | float) or rate <= 0:
        return None
    return round(backlog / rate * 60.0, 1)


def _iso(when: datetime | None) -> str | None:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None
