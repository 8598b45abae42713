"""The daemon's view of its Dask scheduler: up, or lost and when to try it again.

A scheduler that went away: the client gives up; the daemon makes a new one and resubmits.
`ClusterWatch` holds the outage (when the next try is due, its `Reconnects`) and answers
the questions asked of the client's status, with no I/O and no clock of its own, so that
each rule is tested alone (tests/test_clusterwatch.py). `ClusterLink` acts on its answers:
it owns the connection, tries it again, says so (`cluster.lost`, `cluster.unreachable`,
`cluster.reconnected`) and resubmits what the cluster lost; what it asks of the loop
(planning, receipts, whether the store is paused) is late-bound, as sinagotd/flights.py's
`Loop` is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sinagot.cluster import ClusterError
from sinagot.runner import one_line

from .retries import Reconnects

if TYPE_CHECKING:
    from sinagot.cluster import Connection
    from sinagot.execute import DaskExecutor
    from sinagot.layout import Unit

    from .backlog import Backlog
    from .monitor import Monitor

U = TypeVar("U", bound=Hashable)  # a unit

RUNNING = "running"
ALIVE = (RUNNING, "connecting")  # a client in these states is not lost (yet)


class ClusterWatch:
    """One daemon's scheduler: up (no outage) or down since a loss, until a reconnect."""

    def __init__(self) -> None:
        self.reconnect_at: float | None = None  # down: when to try again; None: up
        self.reconnects = Reconnects()  # this outage's tries (see sinagotd/retries.py)

    @property
    def down(self) -> bool:
        """Lost, and not reconnected yet: nothing is submitted meanwhile."""
        return self.reconnect_at is not None

    def healthy(self, status: str) -> bool:
        """What the status page and `/metrics` say: up, and the client running."""
        return not self.down and status == RUNNING

    def resubmit_now(self, status: str, lost: bool, paused: bool) -> bool:
        """Units the cluster lost wait to go out again, the client runs, and the store
        takes writes (a paused store resubmits at its retry)."""
        return not self.down and status == RUNNING and lost and not paused

    @staticmethod
    def gone(status: str) -> str | None:
        """Why a client in this state counts as lost (`cluster.lost`'s error), or None."""
        return None if status in ALIVE else f"client {status}"

    def lose(self, now: float) -> bool:
        """The scheduler is lost as of `now`: the first try is due at once, and the tries are
        counted afresh. False if it was lost already: one `cluster.lost` per outage."""
        if self.down:
            return False
        self.reconnect_at = now
        self.reconnects = Reconnects()
        return True

    def due(self, now: float) -> bool:
        """Down, and the next try is due."""
        return self.reconnect_at is not None and now >= self.reconnect_at

    def failed(self, began: float, ended: float, error: str) -> tuple[float, bool]:
        """A try from `began` to `ended` failed with `error`: the wait before the next (from
        `ended`), and whether to say so (`Reconnects` decides both)."""
        wait, say = self.reconnects.failed(began, ended - began, error)
        self.reconnect_at = ended + wait
        return wait, say

    @property
    def failures(self) -> int:
        """Tries that failed in this outage (`cluster.unreachable`'s `tries`)."""
        return self.reconnects.failures

    def reconnected(self) -> None:
        """A try succeeded: up again."""
        self.reconnect_at = None


def why_unreachable(exc: BaseException) -> str:
    """A failed try's error: a `ClusterError` is one line naming the address already."""
    return str(exc) if isinstance(exc, ClusterError) else one_line(exc)


def in_flight(flights: Iterable[U], lost: Iterable[U]) -> int:
    """Units a loss concerns: those on the cluster and those lost before, once each."""
    return len(set(flights) | set(lost))


def to_resubmit(lost: Iterable[U], flights: Mapping[U, object]) -> list[U]:
    """Units the cluster lost that are not on it again (in the order they were lost)."""
    return [unit for unit in lost if unit not in flights]


class ClusterLink:
    """One daemon's connection to its scheduler, and what an outage does to its units.

    The loop asks once a pass (`check`); the flights report a client that closed under them
    (`lost`). Between the two, the connection, the outage (`watch`) and the units to
    resubmit belong together: a loss closes the executor's client, a reconnect replaces
    it, and the units in flight then go out again under their old names."""

    def __init__(
        self,
        books: Backlog[Unit, Any, Any],
        monitor: Monitor,
        log: Any,
        clock: Callable[[], float],
        *,
        executor: Callable[[], DaskExecutor],  # made at startup
        paused: Callable[[], bool],  # the store refuses writes: resubmit at its retry
        ingest: Callable[[], object],  # record and announce what receipts hold
        replan: Callable[[Sequence[Unit]], None],  # plan these units again and submit
        news: Callable[[], None],  # something happened: a `daemon.idle` follows
    ) -> None:
        self.books = books
        self.monitor = monitor
        self.log = log
        self.clock = clock
        self.executor = executor
        self.paused = paused
        self.ingest = ingest
        self.replan = replan
        self.news = news
        self.watch = ClusterWatch()  # up, or lost and when to try again
        self.connection: Connection | None = None  # the executor's (startup sets it)

    @property
    def down(self) -> bool:
        """Lost, and not reconnected yet: nothing is submitted meanwhile."""
        return self.watch.down

    def running(self) -> bool:
        """The Dask client answers (a reconnect replaces it)."""
        return self.connection is not None and self.connection.client.status == RUNNING

    def check(self, now: float) -> None:
        """A scheduler that went away: the client gives up; make a new one, resubmit."""
        if self.connection is None:
            return
        self.monitor.cluster(self.watch.healthy(self.connection.client.status))
        if not self.watch.down:
            lost, paused = bool(self.books.lost), self.paused()
            if self.watch.resubmit_now(self.connection.client.status, lost, paused):
                self.resubmit()
            why = self.watch.gone(self.connection.client.status)
            if why is None:
                return
            self.lost(why)
        if not self.watch.due(now):
            return
        try:
            self.connection = self.executor().connection
        except Exception as exc:
            error = why_unreachable(exc)
            wait, say = self.watch.failed(now, self.clock(), error)
            if say:
                self.log.warning("cluster.unreachable", error=error, retry_in_s=wait,
                                 tries=self.watch.failures)  # fmt: skip
            return
        self.watch.reconnected()
        self.news()  # a `daemon.idle` follows the recovery, even with nothing to redo
        self.books.lose_all(lambda flight: flight.generation)
        self.log.info("cluster.reconnected", scheduler=self.connection.scheduler,
                      resubmitting=len(self.books.lost))  # fmt: skip
        self.resubmit()

    def resubmit(self) -> None:
        """Units the cluster lost: record what their workers finished, plan them again
        (fresh: the plans made before may be out of date), submit under their old names."""
        lost = to_resubmit(self.books.lost, self.books.flights)
        self.ingest()
        for unit in lost:
            self.books.drop(unit)
        self.replan(lost)
        for unit in lost:  # up to date after all: nothing to resubmit under that name
            if unit not in self.books.flights and unit not in self.books.waiting:
                self.books.lost.pop(unit, None)

    def lost(self, why: str) -> None:
        """Say the loss once per outage; tries begin at once, counted afresh."""
        if not self.watch.lose(self.clock()):
            return
        units = in_flight(self.books.flights, self.books.lost)
        scheduler = self.connection.scheduler if self.connection else None
        self.log.warning("cluster.lost", scheduler=scheduler, in_flight=units, error=why)
        self.news()  # what was said before the loss is out of date
        with contextlib.suppress(Exception):
            self.executor().close()
