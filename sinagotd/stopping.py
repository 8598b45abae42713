"""Stopping: the signals that stop or reload the daemon, and what a stop does to the units
on the cluster.

Handlers only set flags (`stops`, `reload_requested`); the loop acts on them between two
messages. At a stop, the units that no worker has begun leave the cluster at once,
recorded as not run (planned again at the next start): only the steps running get the
grace period, and a second stop signal, however soon, ends even that. The daemon's
`shutdown` closes its parts around these, in its order.
"""

from __future__ import annotations

import contextlib
import queue
import signal
from collections.abc import Callable, Iterator

from sinagot.runner import Outcome, one_line, refused_result

from .flights import Flights, StepEnded

TICK = 0.1  # seconds: how often the grace period looks at the clock when nothing arrives
WITHDRAWN = "withdrawn: sinagotd stopped before it began"


class Stopping:
    """One daemon's stop signals, and its units on the cluster when it stops."""

    def __init__(self, flights: Flights, log: object, clock: Callable[[], float]) -> None:
        self.flights = flights
        self.log = log
        self.clock = clock
        self.stops = 0  # stop signals received (SIGTERM, SIGINT)
        self.reload_requested = False  # SIGHUP, not acted on yet

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Handlers only set flags; the loop acts. A second stop signal stops at once."""

        def stop(signum: int, frame: object) -> None:
            self.stops += 1

        def hup(signum: int, frame: object) -> None:
            self.reload_requested = True

        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, stop),
                (signal.SIGINT, stop),
                (signal.SIGHUP, hup),
            )
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def withdraw(self, cluster_down: bool) -> int:
        """Units on the cluster that no worker has begun leave it now, recorded as not run
        (planned again at the next start); only those running get the grace period."""
        flights = self.flights.books.flights
        if not flights or cluster_down:
            return 0
        try:
            withdrawn = self.flights.loop.executor().withdraw(
                [f.submitted for f in flights.values()]
            )
        except Exception as exc:  # the cluster is going too: the grace period is all there is
            self.log.warning("cluster.unreachable", error=one_line(exc), retry_in_s=None)
            return 0
        results = [
            refused_result(job, Outcome.NOT_RUN, WITHDRAWN)
            for submitted in withdrawn
            for job in submitted.jobs
        ]
        if self.flights.record(results):
            for submitted in withdrawn:
                del flights[submitted.unit]
        return len(withdrawn)

    def grace(
        self,
        messages: queue.Queue,
        ended: Callable[[list[StepEnded]], None],
        deadline: float,
        first: int,
    ) -> None:
        """Land the steps still running as they end, until none is left, `deadline`, or a
        stop signal after the `first` (counted when the stop began; at least one)."""
        flights = self.flights.books.flights
        while flights and self.clock() < deadline and self.stops <= max(first, 1):
            try:
                message = messages.get(timeout=TICK)
            except queue.Empty:
                continue
            if isinstance(message, StepEnded):
                ended([message])
