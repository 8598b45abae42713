"""The daemon's view of its Dask scheduler: up, or lost and when to try it again.

A scheduler that went away: the client gives up; the daemon makes a new one and resubmits.
This object holds the outage (when the next try is due, its `Reconnects`) and answers the
loop's questions from the client's status; the loop does the trying, the logging and the
resubmitting. No I/O and no clock of its own, so that each rule is tested alone
(tests/test_clusterwatch.py).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

from sinagot.cluster import ClusterError
from sinagot.runner import one_line

from .retries import Reconnects

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
