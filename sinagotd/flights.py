"""Flights: units' chains submitted to the cluster, and landed when they end.

The hot path of a burst. The loop says when (`fill` after a plan, `ended` with what Dask
reported this pass); this object takes what waits from the books (sinagotd/backlog.py),
marks it submitted in the state store, hands it to the executor, announces each step,
records what ended, and decides what a landing means: done, planned again because its
files changed meanwhile or a person asked, retried later because a step could not run
(not the script's fault), given up after `max_attempts` such tries, or lost with the
cluster (submitted again under the same name).

The loop keeps what is its own (`Loop`): the workspace and the Dask client (a reload, a
reconnect replace them), planning, and what a store that refused a write or a lost cluster
does to the whole loop. Which step a give-up blames (`at_fault`) and which errors mean the
cluster lost a task (`lost`) are pure, and tested alone (tests/test_flights.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sinagot.batching import kind
from sinagot.engine import Engine
from sinagot.execute import DaskExecutor, Submitted
from sinagot.layout import Unit
from sinagot.planner import StepPlan
from sinagot.runner import Outcome, StepJob, StepResult, one_line, refused_result
from sinagot.state import StateError

from . import events
from .backlog import Backlog
from .monitor import Monitor
from .retries import Retries

#: While units are on the cluster, what waits is submitted once half the room is free,
#: as `sinagot run` does: filling each slot as its unit landed made tasks of one unit in a
#: burst of quick steps (a millisecond of Dask's overhead each, for the scheduler in this
#: process). Only if half the room will not be free within this many seconds after the
#: last submission (long steps, by their durations learnt) does what waits go sooner, in
#: the room there is: a fresh record waits about this long at most. Refilling every 0.2 s
#: whatever the steps cut a burst of quick steps into tasks of a few units: about 720
#: tasks for 10,000 records, against 274 for `sinagot run` (`refill_now`).
REFILL_WAIT = 0.2
#: The start of the error of a step whose task the cluster lost (scheduler gone).
LOST = (
    "CancelledError", "FutureCancelledError", "CommClosedError", "ClosedClientError",
    "RuntimeError: IOLoop is closed", "FutureLostError",
)  # fmt: skip


@dataclass(frozen=True)
class StepEnded:
    """A step of a chain on the cluster ended (its result), or the chain's task did (None)."""

    submitted: Submitted
    result: StepResult | None


@dataclass
class Flight:
    """One unit's chain on the cluster."""

    submitted: Submitted
    generation: str  # names this run's Dask keys; kept when resubmitting after a lost cluster
    blocked: bool = False  # a step could not run (not the script's fault): retry later
    lost: bool = False  # the cluster lost it: resubmit
    results: list[StepResult] = field(default_factory=list)


@dataclass(frozen=True)
class Loop:
    """What the flights read of the daemon's loop, and ask of it."""

    engine: Callable[[], Engine]  # the workspace (a reload replaces it)
    executor: Callable[[], DaskExecutor]  # made at startup
    client_running: Callable[[], bool]  # the Dask client answers (a reconnect replaces it)
    retry_seconds: Callable[[], float]  # the first wait before a retry (`[daemon]`)
    put: Callable[[StepEnded], object]  # the loop's queue: Dask's threads report there
    replan: Callable[..., None]  # plan these units again (force, only step) and submit
    ingest: Callable[[], list[StepResult]]  # record and announce what receipts hold
    recorded: Callable[[list[StepResult]], object]  # the store took these: tell their readers
    store_failed: Callable[[StateError], None]  # the store refused a write: pause
    cluster_lost: Callable[[str], None]  # the client closed under us: reconnect


class Flights:
    """Submitting and landing, for one daemon: its books, retries, monitor and log."""

    def __init__(
        self,
        books: Backlog[Unit, list[StepPlan], Flight],
        retries: Retries[Unit],
        monitor: Monitor,
        log: object,
        clock: Callable[[], float],
        loop: Loop,
    ) -> None:
        self.books = books
        self.retries = retries
        self.monitor = monitor
        self.log = log
        self.clock = clock
        self.loop = loop
        self.failed_steps = 0  # `--once` exits 1 if any
        self.unrecorded: set[str] = set()  # runs announced whose results the store refused
        self.later: dict[Unit, tuple[bool, str | None]] = {}  # busy unit -> (force, step) asked
        self._last_fill = float("-inf")

    # -- submitting -------------------------------------------------------------------------

    def fill(self) -> bool:
        """Submit what waits, as room on the cluster allows; True if the state store took a
        submission (it answers again, and there is news). The loop says whether it may,
        and asks again at every pass (see `REFILL_WAIT`)."""
        if not self.books.waiting:
            return False
        now = self.clock()
        most = self.loop.engine().config.dask.max_in_flight
        flying = len(self.books.flights)
        # Asked only for an early refill: the flights are not listed at every pass.
        chains = (flight.submitted for flight in self.books.flights.values())
        seconds_left = functools.partial(self.loop.executor().seconds_left, chains)
        if not refill_now(flying, most, now - self._last_fill, seconds_left):
            return False
        # Units of steps never timed go out a few at a time: their first results say how
        # many units a Dask task should hold. The rest wait in the queue, in their order.
        batch = self.books.take(most - flying, self._admit)
        if not batch:
            return False
        self._last_fill = now
        return self._submit(batch)

    def _admit(self, batch: Sequence[tuple[Unit, list[StepPlan]]]) -> int:
        return self.loop.executor().admit(
            [[kind(u.task, u.modality, p.step.name) for p in plans] for u, plans in batch]
        )

    def _submit(self, batch: dict[Unit, list[StepPlan]]) -> bool:
        """Submit these units' chains, newest first (the order they come in)."""
        ws = self.loop.engine()
        units = [(unit, [ws.job(plan) for plan in plans]) for unit, plans in batch.items()]
        fresh = [(unit, jobs) for unit, jobs in units if unit not in self.books.lost]
        names = dict(zip([u for u, _ in fresh], ws.generations(fresh), strict=True))
        chains = [(jobs, self.books.lost.get(unit) or names[unit]) for unit, jobs in units]
        try:
            ws.store.mark_submitted(
                [
                    (job.unit, job.spec.name, generation)
                    for jobs, generation in chains
                    for job in jobs
                ]
            )
        except StateError as exc:
            for unit, plans in batch.items():
                self._requeue(unit, plans)
            self.loop.store_failed(exc)
            return False
        for unit in batch:
            self.books.lost.pop(unit, None)
        ended = self.loop.put
        try:
            submitted = self.loop.executor().submit(
                chains, lambda s, result: ended(StepEnded(s, result))
            )
        except Exception as exc:  # the client closed under us: the scheduler is gone
            for (unit, plans), (_, generation) in zip(batch.items(), chains, strict=True):
                self.books.lost[unit] = generation
                self._requeue(unit, plans)
            self.loop.cluster_lost(one_line(exc))
            return True
        self.monitor.submitted(batch, self.clock())
        with events.batch():
            for (unit, plans), one, (_, generation) in zip(
                batch.items(), submitted, chains, strict=True
            ):
                self.books.fly(unit, Flight(one, generation))
                for plan in plans:
                    self.log.info("step.submitted", **where(unit), step=plan.step.name,
                                  reasons=list(plan.reasons))  # fmt: skip
        return True

    def _requeue(self, unit: Unit, plans: list[StepPlan]) -> None:
        self.books.requeue(unit, plans)

    # -- landing ----------------------------------------------------------------------------

    def ended(self, messages: list[StepEnded]) -> None:
        """What Dask reported in one pass of the loop: announce, record, land."""
        # Reports of flights given up when the cluster was lost (resubmitted since) are old.
        current = [
            (m.submitted, m.result)
            for m in messages
            if (f := self.books.flights.get(m.submitted.unit)) and f.submitted is m.submitted
        ]
        results: list[StepResult] = []
        with events.batch():  # announced (in one write) before they are recorded
            for submitted, _, result in self.loop.executor().collect(current):
                flight = self.books.flights[submitted.unit]
                if result.outcome is Outcome.NOT_RUN and (
                    lost(result) or not self.loop.client_running()
                ):
                    flight.lost = True
                else:
                    results.append(result)
                    flight.results.append(result)
                    self.report(result)
                flight.blocked |= result.outcome is Outcome.NOT_RUN and not flight.lost
        recorded = self.record(results)  # recorded before any receipt is dropped
        if not recorded:  # announced already: not again when their receipts are ingested
            self.unrecorded.update(r.run_id for r in results if r.run_id)
        landed = {s.unit: self.books.flights[s.unit] for s, _ in current if s.ended}
        self.monitor.changed(landed)
        # Those that changed while on the cluster, planned again together: one reading of
        # the dataset and the store for all (after a reconcile, every flight lands so).
        again: dict[tuple[bool, str | None], list[Unit]] = {}
        for unit, flight in landed.items():
            if (asked := self._landed(unit, flight, recorded)) is not None:
                again.setdefault(asked, []).append(unit)
        for (force, only), units in again.items():
            self.loop.replan(units, force=force, only=only)

    def record(self, results: list[StepResult]) -> bool:
        """Record results; False if the store refused (their receipts then stay on disk,
        and the reconcile after the store's retry records them)."""
        try:
            self.loop.engine().record(results)
        except StateError as exc:
            self.loop.store_failed(exc)
            return False
        self.loop.recorded(results)
        return True

    def recovered(self, results: list[StepResult]) -> bool:
        """Runs that finished while nobody listened (receipts): announced now; True if any
        was news (and so a `daemon.idle` follows them)."""
        fresh = [r for r in results if r.run_id not in self.unrecorded]
        self.unrecorded.difference_update(r.run_id for r in results)
        with events.batch():
            for result in fresh:
                self.report(result, recovered=True)
        return bool(fresh)

    def report(self, result: StepResult, **extra: object) -> None:
        self.monitor.step_ended(result)
        at = {**where(result.unit), "step": result.step}
        duration = round(result.duration, 3)
        if result.ok:
            self.log.info("step.finished", **at, duration_s=duration, **extra)
        elif result.outcome is Outcome.SKIPPED:
            self.log.info("step.skipped", **at, reason=result.error, **extra)
        else:
            self.failed_steps += 1
            self.log.error("step.failed", **at, error=result.error, duration_s=duration, **extra)

    def _landed(
        self, unit: Unit, flight: Flight, recorded: bool = True
    ) -> tuple[bool, str | None] | None:
        """A flight is over: its receipts dropped, a retry or a give-up decided. Returns
        (force, only step) if the unit is to be planned again (it changed meanwhile)."""
        if flight.lost:  # submitted again, under the same name, once the cluster is back
            self.books.lose(unit, flight.generation)
            return None
        changed = self.books.land(unit)
        if not recorded:  # its receipts stay, for the reconcile after the store's retry
            return None
        ws = self.loop.engine()
        ws.forget(flight.results)
        if flight.blocked:  # could not run (not the script's fault): retry, waiting longer
            most = ws.config.max_attempts
            first = self.loop.retry_seconds()
            attempts = self.retries.attempt(unit, self.clock(), first, most)
            if attempts >= most:
                self._give_up(flight, attempts)
        else:
            self.retries.forget(unit)
        if changed:
            return self.later.pop(unit, (False, None))
        return None

    def _give_up(self, flight: Flight, attempts: int) -> None:
        """Steps that could not run `max_attempts` times in a row are recorded as failed:
        ERROR in `sinagot status`, not retried until an input or the script changes."""
        unit = flight.submitted.unit
        blamed = at_fault(flight.submitted.jobs, flight.results, self.loop.ingest())
        if blamed is None:
            return
        job, why = blamed
        error = f"{why} (gave up after {attempts} attempts)"
        if self.record([refused_result(job, Outcome.FAILED, error)]):
            self.monitor.gave_up(unit, job.spec.name, error)
            self.log.error("step.gave_up", **where(unit), step=job.spec.name,
                           attempts=attempts, error=error)  # fmt: skip


def at_fault(
    jobs: Sequence[StepJob], results: Sequence[StepResult], recovered: Sequence[StepResult]
) -> tuple[StepJob, str | None] | None:
    """Of a chain that gives up (its `jobs`, the `results` heard of its last try), the step
    recorded as failed, and why it could not run; None when that step said nothing.

    Steps that ended before their worker died may not have been heard of: their receipts
    (`recovered`) say so. The first step with neither a result nor a receipt is at fault;
    those after it never began."""
    ended = {r.run_id for r in recovered} | {r.run_id for r in results if r.state}
    errors = {r.step: r.error for r in results if r.outcome is Outcome.NOT_RUN}
    job = next((j for j in jobs if j.run_id not in ended), None)
    if job is None or job.spec.name not in errors:
        return None
    return job, errors[job.spec.name]


def refill_now(
    flying: int, most: int, waited: float, seconds_left: Callable[[], float | None]
) -> bool:
    """Whether what waits goes to the cluster now (see `REFILL_WAIT`): `flying` units of
    `most` are on it, the last submission was `waited` seconds ago, and `seconds_left` says
    how long the cluster's threads need for the steps in flight (None: never timed)."""
    short = flying - (most - most // 2)  # units to land before half the room is free
    if not flying or short <= 0:
        return True
    if waited < REFILL_WAIT:
        return False
    seconds = seconds_left()
    return seconds is None or seconds * short / flying > REFILL_WAIT


def where(unit: Unit) -> dict[str, str | None]:
    """A unit, as events name it."""
    return {"record_id": unit.record_id, "task": unit.task, "modality": unit.modality}


def lost(result: StepResult) -> bool:
    """The cluster lost the task (scheduler gone): not the step's fault, not a result."""
    return (result.error or "").startswith(LOST)
