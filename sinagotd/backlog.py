"""The daemon's books: units waiting to be submitted, units on the cluster, and units that
changed while on it. Plain bookkeeping, no I/O, so that each rule is tested on its own
(tests/test_backlog.py) and the daemon's loop only says when.

Rules:
- waiting units go out newest input first; one put back after a failed submission goes
  after the others;
- a unit is either waiting or in flight, never both, and waits with its latest plans;
- a unit that changes while in flight is marked dirty, and planned again when it lands;
- a unit the cluster lost keeps the name of its run (its generation) until it is submitted
  again, so that a copy still running on a worker is waited for, not run twice.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

U = TypeVar("U", bound=Hashable)  # a unit
P = TypeVar("P")  # its plans
F = TypeVar("F")  # a flight: what the daemon keeps of a unit on the cluster

#: Says how many of these units' plans (in order) may be submitted now.
Admit = Callable[[Sequence[tuple[U, P]]], int]


@dataclass
class Backlog(Generic[U, P, F]):
    """Waiting and in-flight units, for one daemon."""

    waiting: dict[U, P] = field(default_factory=dict)  # unit -> its plans, to submit
    flights: dict[U, F] = field(default_factory=dict)  # unit -> its run on the cluster
    dirty: set[U] = field(default_factory=set)  # changed while in flight
    lost: dict[U, str] = field(default_factory=dict)  # lost by the cluster -> its run's name
    _heap: list[tuple[float, int, U]] = field(default_factory=list)  # (-priority, seq, unit)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    # -- waiting ---------------------------------------------------------------------------

    def queue(self, unit: U, plans: P, priority: float) -> None:
        """Wait to be submitted with these plans; a unit already waiting keeps its place."""
        if unit not in self.waiting:
            heapq.heappush(self._heap, (-priority, next(self._ids), unit))
        self.waiting[unit] = plans

    def requeue(self, unit: U, plans: P) -> None:
        """Back in the queue, after the others (its submission failed)."""
        self.waiting[unit] = plans
        heapq.heappush(self._heap, (0.0, next(self._ids), unit))

    def drop(self, unit: U) -> None:
        """No longer waiting (up to date, or to be planned afresh)."""
        self.waiting.pop(unit, None)

    def take(self, room: int, admit: Admit[U, P] | None = None) -> dict[U, P]:
        """Up to `room` waiting units, newest first, minus those `admit` holds back (they
        keep their place); none already in flight."""
        taken: list[tuple[float, int, U]] = []
        seen: set[U] = set()
        while self._heap and len(taken) < room:
            entry = heapq.heappop(self._heap)
            unit = entry[2]
            if unit in self.waiting and unit not in self.flights and unit not in seen:
                seen.add(unit)
                taken.append(entry)
        batch = [(entry[2], self.waiting[entry[2]]) for entry in taken]
        admitted = len(batch) if admit is None else admit(batch)
        for entry in taken[admitted:]:
            heapq.heappush(self._heap, entry)
        out = dict(batch[:admitted])
        for unit in out:
            del self.waiting[unit]
        return out

    # -- in flight -------------------------------------------------------------------------

    def fly(self, unit: U, flight: F) -> None:
        self.flights[unit] = flight
        self.lost.pop(unit, None)

    def split(self, units: Iterable[U]) -> list[U]:
        """The units not in flight; those in flight are marked dirty, to plan when they land."""
        free = []
        for unit in units:
            if unit in self.flights:
                self.dirty.add(unit)
            else:
                free.append(unit)
        return free

    def land(self, unit: U) -> bool:
        """The unit's flight is over; whether it changed meanwhile (plan it again)."""
        del self.flights[unit]
        if unit in self.dirty:
            self.dirty.discard(unit)
            return True
        return False

    def lose(self, unit: U, generation: str) -> None:
        """The cluster lost this unit's run: keep its name for the resubmission."""
        self.flights.pop(unit, None)
        self.dirty.discard(unit)
        self.lost[unit] = generation

    def lose_all(self, generation: Callable[[F], str]) -> None:
        """The cluster is gone, and every flight with it."""
        for unit, flight in self.flights.items():
            self.lost[unit] = generation(flight)
        self.flights.clear()

    def idle(self) -> bool:
        """Nothing waits, flies, changed meanwhile, or waits to be resubmitted."""
        return not (self.flights or self.waiting or self.dirty or self.lost)
