"""The status board: one row per unit, one cell per step, for the status page and its report.

Plain data and pure functions. The planner's word (`StepPlan`) is turned into cells, with
what only a running daemon knows laid over it (`Overlay`: queued, arriving); a `Board` keeps
the rows in natural record order and answers the page's queries (filters, pages, counts) in
the JSON shape that `docs/design.md` fixes (`/api/status`).
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .layout import Unit
from .planner import StepPlan
from .status import StepStatus

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
#: Cells a settling record's files may still change.
_UNSETTLED = frozenset({"STALE", "DATA_READY", "QUEUED", "INIT", "DATA_NOT_AVAILABLE"})


def natural_key(text: str) -> list[str | int]:
    """Sort key putting 'REC-2' before 'REC-10': digit runs compare as numbers."""
    return [int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(text))]


_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class Overlay:
    """What the daemon knows that the state store does not (yet)."""

    queued: frozenset[Unit] = frozenset()
    arriving: frozenset[Unit] = frozenset()


NO_OVERLAY = Overlay()


@dataclass(frozen=True)
class Row:
    unit: Unit
    steps: tuple[str, ...]
    cells: tuple[str, ...]  # a status name per step, overlay applied
    arriving: bool = False


def cell_status(plan: StepPlan, queued: bool, arriving: bool) -> str:
    name = StepStatus(plan.status).name
    if queued and plan.run and name != "PROCESSING":
        name = "QUEUED"
    if arriving and name in _UNSETTLED:
        name = "ARRIVING"
    return name


def rows_from_plans(plans: Iterable[StepPlan], overlay: Overlay = NO_OVERLAY) -> list[Row]:
    """A row per unit, in the order the plans come (the planner gives each unit's steps in
    order, units one after the other)."""
    by_unit: dict[Unit, list[StepPlan]] = {}
    for plan in plans:
        by_unit.setdefault(plan.unit, []).append(plan)
    rows = []
    for unit, unit_plans in by_unit.items():
        queued, arriving = unit in overlay.queued, unit in overlay.arriving
        cells = tuple(cell_status(p, queued, arriving) for p in unit_plans)
        rows.append(Row(unit, tuple(p.step.name for p in unit_plans), cells, "ARRIVING" in cells))
    return rows


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
    _rows: dict[Unit, Row] = field(default_factory=dict)
    _order: list[tuple[list[str | int], int, Unit]] = field(default_factory=list)
    _cells: Counter[str] = field(default_factory=Counter)
    _by_record: dict[str, set[Unit]] = field(default_factory=dict)
    _with: dict[str, set[Unit]] = field(default_factory=dict)  # status -> units with a cell so
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- writing ----------------------------------------------------------------------------

    def replace_all(self, rows: Iterable[Row]) -> None:
        """The whole board from a full plan: rows not in it are gone."""
        fresh = {row.unit: row for row in rows}
        order = sorted(self._entry(u) for u in fresh)
        with self._lock:
            self._rows, self._order = {}, order
            self._cells, self._by_record, self._with = Counter(), {}, {}
            for row in fresh.values():
                self._add(row)
            self._changed()

    def update(self, rows: Iterable[Row], gone: Iterable[Unit] = ()) -> bool:
        """Some rows anew (and some units gone): True if anything changed."""
        changed = False
        with self._lock:
            for unit in gone:
                if unit in self._rows:
                    self._drop(self._rows[unit])
                    self._order.remove(self._entry(unit))
                    changed = True
            for row in rows:
                old = self._rows.get(row.unit)
                if old == row:
                    continue
                changed = True
                if old is None:
                    bisect.insort(self._order, self._entry(row.unit))
                else:
                    self._drop(old)
                self._add(row)
            if changed:
                self._changed()
        return changed

    def __post_init__(self) -> None:
        self._position = {key: i for i, key in enumerate(self.steps_of)}

    def _entry(self, unit: Unit) -> tuple[list[str | int], int, Unit]:
        """Where a unit sorts: its record in natural order, then its (task, modality)."""
        return natural_key(unit.record_id), self._position.get((unit.task, unit.modality), 0), unit

    def _add(self, row: Row) -> None:
        self._rows[row.unit] = row
        self._cells.update(row.cells)
        self._by_record.setdefault(row.unit.record_id, set()).add(row.unit)
        for status in set(row.cells):
            self._with.setdefault(status, set()).add(row.unit)

    def _drop(self, row: Row) -> None:
        del self._rows[row.unit]
        self._cells.subtract(row.cells)
        units = self._by_record[row.unit.record_id]
        units.discard(row.unit)
        if not units:
            del self._by_record[row.unit.record_id]
        for status in set(row.cells):
            self._with[status].discard(row.unit)

    def _changed(self) -> None:
        self.generation += 1
        self.generated = datetime.now(UTC)

    def units(self) -> list[Unit]:
        with self._lock:
            return list(self._rows)

    def units_of(self, record_id: str) -> list[Unit]:
        """A record's units, in the board's order."""
        with self._lock:
            return sorted(self._by_record.get(record_id, ()), key=self._entry)

    # -- reading ----------------------------------------------------------------------------

    def counts(self) -> dict[str, object]:
        with self._lock:
            return self._counts()

    def _counts(self) -> dict[str, object]:
        cells = +self._cells  # drop the zeros
        return {
            "records": len(self._by_record),
            "units": len(self._rows),
            "steps": sum(cells.values()),
            "done": cells["DONE"],
            "stale": cells["STALE"] + cells["DATA_READY"],
            "queued": cells["QUEUED"],
            "in_flight": cells["PROCESSING"],
            "failed": cells["ERROR"],
            "arriving": cells["ARRIVING"],
            "by_status": {name: cells[name] for name in CELL_STATUSES if cells[name]},
        }

    def _candidates(self, statuses: frozenset[str], newest: bool) -> list[Unit]:
        """The units with a cell in one of these statuses, in order: the few ones sorted,
        many picked from the whole order (a failed filter on 100,000 rows stays cheap)."""
        if statuses == SHOWS["all"]:
            units = [unit for _, _, unit in self._order]
        else:
            hit: set[Unit] = set().union(*(self._with.get(s, ()) for s in statuses))
            if len(hit) * 8 < len(self._order):
                units = [entry[2] for entry in sorted(map(self._entry, hit))]
            else:
                units = [unit for _, _, unit in self._order if unit in hit]
        return units[::-1] if newest else units

    def backlog(self) -> int:
        with self._lock:
            return sum(self._cells[name] for name in _BACKLOG)

    def query(self, query: Query) -> dict[str, object]:
        """The `/api/status` answer."""
        wanted = SHOWS[query.show]
        needle = query.q.casefold()
        with self._lock:
            start, end = query.page * query.per_page, (query.page + 1) * query.per_page
            if query.show == "all" and not (needle or query.task or query.modality):
                total = len(self._order)
                entries = self._order if query.order == "natural" else self._order[::-1]
                units = [unit for _, _, unit in entries[start:end]]
            else:
                units = [
                    unit
                    for unit in self._candidates(wanted, query.order == "newest")
                    if (query.task is None or unit.task == query.task)
                    and (query.modality is None or unit.modality == query.modality)
                    and (not needle or needle in unit.record_id.casefold())
                ]
                total = len(units)
                units = units[start:end]
            page = [self._rows[unit] for unit in units]
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
