"""Executors: where steps run. Chosen once per workspace, behind one small Protocol.

Both take *chains*: the steps of one unit that must run, in order. A failure ends its own
chain (the later steps are reported skipped) and never touches the others.

On Dask, a chain is one task (`run_chain`), not one task per step: a task costs the
scheduler and the workers about a millisecond whatever it does, and a unit's steps run one
after the other on one worker anyway. Each step's result still reaches the submitter as
soon as the step ends (at most `PROGRESS_DELAY` later), through Dask's pub/sub (`Publish`),
so a long chain's first steps are recorded when they end, not when the chain does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .runner import Outcome, StepJob, StepResult, one_line, run_after, run_step

if TYPE_CHECKING:
    from distributed import Future, Worker

    from .cluster import Connection
    from .layout import Unit

Chain = Sequence[StepJob]
#: Seconds a step's result may wait to come back with its chain's, if the chain ends by then.
PROGRESS_DELAY = 0.5
#: Seconds the submitter waits for more results after one, to record them together.
GATHER_WINDOW = 0.02
#: A chain to run and the name of this run of it (see `chain_token`).
Named = tuple[Chain, str]
#: Called with chains just before any of their steps may start (the store marks them then).
StartCallback = Callable[[Sequence[Named]], None]
#: Called with results as they arrive, in batches (the store records them then).
ResultsCallback = Callable[[Sequence[tuple[StepJob, StepResult]]], None]


class Executor(Protocol):
    def run(
        self, chains: Sequence[Named], on_start: StartCallback, on_results: ResultsCallback
    ) -> list[StepResult]:
        """Run each chain's jobs in order; a failure ends its chain, never the others."""
        ...

    def close(self) -> None: ...


def run_chain(chain: Chain, report: Callable[[StepResult | None], None]) -> list[StepResult]:
    """Run a unit's steps in order, each once the one before succeeded, telling `report` of
    each as it ends, then None: the chain ended. The task a Dask worker runs for a unit."""
    results: list[StepResult] = []
    try:
        for job in chain:
            results.append(run_after(job, results[-1]) if results else run_step(job))
            report(results[-1])
    finally:
        report(None)
    return results


def named_jobs(chain: Chain, generation: str) -> tuple[StepJob, ...]:
    """The chain's jobs, each carrying the name of this run of it (see `chain_token`)."""
    token = chain_token(chain, generation)
    return tuple(dataclasses.replace(job, run_id=task_key(job, token)) for job in chain)


class LocalExecutor:
    """Runs steps one after the other in the calling process."""

    def run(
        self, chains: Sequence[Named], on_start: StartCallback, on_results: ResultsCallback
    ) -> list[StepResult]:
        results = []
        for chain, generation in chains:
            on_start([(chain, generation)])
            jobs = {job.spec.name: job for job in named_jobs(chain, generation)}

            def report(result: StepResult | None, jobs: dict[str, StepJob] = jobs) -> None:
                if result is not None:
                    on_results([(jobs[result.step], result)])

            results += run_chain(tuple(jobs.values()), report)
        return results

    def close(self) -> None:
        pass


def newest_input(chain: Chain) -> int:
    """The newest mtime (s) among a chain's first inputs: fresh recordings go first."""
    newest = 0
    for rel in chain[0].inputs:
        with contextlib.suppress(OSError):
            newest = max(newest, int(os.stat(f"{chain[0].dataset}/{rel}").st_mtime))
    return newest


def chain_token(chain: Chain, generation: str) -> str:
    """Names one run of a chain: its dataset and the submitter's `generation` for it (new
    for each run, kept when the same run is submitted again after its submitter lost the
    scheduler or died). Same run, same Dask keys: a copy of a step still running on a worker
    is waited for (see `run_step`), never run twice."""
    return hashlib.blake2b(f"{chain[0].dataset}\0{generation}".encode(), digest_size=4).hexdigest()


def task_key(job: StepJob, token: str) -> str:
    """A step's run name, deterministic and readable: 'count-REC-20200601-3f2a9c1d'."""
    return f"{job.key}-{token}"


def chain_key(jobs: Sequence[StepJob]) -> str:
    """A chain's Dask key, from its steps' run names: 'count+mean-REC-20200601-3f2a9c1d'."""
    steps = "+".join(job.spec.name for job in jobs)
    return f"{steps}{jobs[0].run_id[len(jobs[0].spec.name) :]}"


@dataclass
class Publish:
    """Tells the submitter of a step's result while the rest of its chain runs (Dask's
    pub/sub: the worker's `log_event`, the client's `subscribe_topic`).

    A result is sent only if its chain still runs `delay` seconds after the step ended: a
    quick chain's results all come back with the task's own result, in one message, and
    a long step never holds up news of the one before it by more than `delay`.
    """

    topic: str
    last: str  # the run name of the chain's last step: its result comes with the chain's
    delay: float = PROGRESS_DELAY
    ended: bool = False

    def __call__(self, result: StepResult | None) -> None:
        if result is None:
            self.ended = True
            return
        if result.run_id == self.last or result.outcome is Outcome.SKIPPED:
            return  # the chain ends now
        from distributed import get_worker

        # News of progress is a hint, the task's own result the record: never fail a chain
        # over it (e.g. run outside a worker).
        with contextlib.suppress(Exception):
            worker = get_worker()
            # The worker's event loop sends, not this thread: call_later wants its own loop.
            worker.loop.add_callback(worker.loop.call_later, self.delay, self._send, worker, result)

    def _send(self, worker: Worker, result: StepResult) -> None:
        if not self.ended:
            worker.log_event(self.topic, result.to_json())


@dataclass(eq=False)
class Submitted:
    """One chain on the cluster: its task, and which of its steps were reported already."""

    jobs: tuple[StepJob, ...]
    future: Future
    notify: Notify
    reported: set[str] = field(default_factory=set)
    ended: bool = False

    @property
    def unit(self) -> Unit:
        return self.jobs[0].unit


#: What the cluster tells of a submitted chain: a step's result as it ends, or None when
#: the chain's task ended (its results are then fetched by `DaskExecutor.collect`).
Report = tuple[Submitted, StepResult | None]
Notify = Callable[[Submitted, StepResult | None], None]


class DaskExecutor:
    """Runs chains on a Dask cluster, a bounded number of units at a time, newest first.

    Results come back to this process, which is the only one to record them.
    """

    def __init__(self, connect: Callable[[], Connection], max_in_flight: int) -> None:
        self._connect = connect
        self._connection: Connection | None = None
        self._running: dict[str, Submitted] = {}  # step run name -> its chain
        self._topics: set[str] = set()  # subscribed to, by the current client
        self.max_in_flight = max_in_flight

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = self._connect()
            self._topics = set()
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._running.clear()  # their tasks went with the client

    def submit(self, chains: Sequence[Named], notify: Notify) -> list[Submitted]:
        """Submit chains, one task each, newer inputs first; `notify` is called (from Dask's
        thread) with each step's result as it ends, then with None when its task ends. Chains
        of equal priority go in one message to the scheduler. See `chain_token` for the
        generation that names each chain's run."""
        client = self.connection.client
        topic = f"sinagot.steps:{chains[0][0][0].dataset}" if chains else ""
        if chains and topic not in self._topics:
            client.subscribe_topic(topic, self._published)
            self._topics.add(topic)
        submitted: list[Submitted] = []
        by_priority = itertools.groupby(chains, key=lambda named: newest_input(named[0]))
        for priority, group in by_priority:
            jobs = [named_jobs(chain, generation) for chain, generation in group]
            futures = client.map(
                run_chain, jobs, [Publish(topic, chain[-1].run_id) for chain in jobs],
                key=[chain_key(chain) for chain in jobs], priority=priority, pure=False,
            )  # fmt: skip
            for chain, future in zip(jobs, futures, strict=True):
                one = Submitted(chain, future, notify)
                for job in chain:
                    self._running[job.run_id] = one
                future.add_done_callback(lambda _, one=one: notify(one, None))
                submitted.append(one)
        return submitted

    def withdraw(self, chains: Sequence[Submitted]) -> list[Submitted]:
        """Cancel the tasks of these chains that no worker has begun (a stop: only what
        runs gets the grace period); the chains withdrawn. A task that begins between the
        look and the cancel runs on, unheard: its steps' receipts record it next time."""
        client = self.connection.client
        begun: set[str] = set()
        for keys in client.run(_executing, on_error="return").values():
            if isinstance(keys, list):
                begun.update(keys)
        waiting = [s for s in chains if not s.ended and s.future.key not in begun]
        if waiting:
            client.cancel([s.future for s in waiting])
        for submitted in waiting:
            submitted.ended = True
            for job in submitted.jobs:
                self._running.pop(job.run_id, None)
        return waiting

    def _published(self, event: tuple[float, str]) -> None:
        result = StepResult.from_json(event[1])
        submitted = self._running.get(result.run_id)
        if submitted is not None:
            submitted.notify(submitted, result)

    def collect(self, reports: Sequence[Report]) -> list[tuple[Submitted, StepJob, StepResult]]:
        """Each step's result, once, in the order reported; the results of ended tasks
        fetched in one round trip (one by one, only those of tasks that broke). A chain
        is `ended` once all its results are out."""
        ending = {s.future.key: s for s, r in reports if r is None and not s.ended}
        finished = [s.future for s in ending.values() if s.future.status == "finished"]
        try:
            gathered = self.connection.client.gather(finished) if finished else []
            values = dict(zip((f.key for f in finished), gathered, strict=True))
        except Exception:  # a result lost on the way: fetched one by one below
            values = {}
        out = []
        for submitted, result in reports:
            if submitted.ended:
                continue
            if result is not None:
                if result.step not in submitted.reported:
                    submitted.reported.add(result.step)
                    out.append((submitted, _job(submitted, result.step), result))
                continue
            results = values.get(submitted.future.key) or chain_results(submitted)
            for job, step_result in zip(submitted.jobs, results, strict=True):
                if job.spec.name not in submitted.reported:
                    out.append((submitted, job, step_result))
            submitted.ended = True
            for job in submitted.jobs:
                self._running.pop(job.run_id, None)
            with contextlib.suppress(Exception):
                submitted.future.release()
        return out

    def run(
        self, chains: Sequence[Named], on_start: StartCallback, on_results: ResultsCallback
    ) -> list[StepResult]:
        waiting = deque(sorted(chains, key=lambda named: newest_input(named[0]), reverse=True))
        reports: queue.Queue[Report] = queue.Queue()
        running: set[Submitted] = set()
        results: list[StepResult] = []

        def fill() -> None:
            # Refill by halves: a few large submissions, not one per finished unit.
            if len(running) > self.max_in_flight // 2:
                return
            batch = []
            while waiting and len(running) + len(batch) < self.max_in_flight:
                batch.append(waiting.popleft())
            if not batch:
                return
            on_start(batch)
            running.update(self.submit(batch, lambda s, r: reports.put((s, r))))

        fill()
        while running:
            batch = [reports.get()]
            until = time.monotonic() + GATHER_WINDOW
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(reports.get(timeout=max(0.0, until - time.monotonic())))
            done = self.collect(batch)
            on_results([(job, result) for _, job, result in done])
            results.extend(result for _, _, result in done)
            running.difference_update(s for s, _ in batch if s.ended)
            fill()
        return results


def _executing(dask_worker: Worker) -> list[str]:
    """On a worker: the keys of the tasks it is running now."""
    return [
        str(key)
        for key, task in dask_worker.state.tasks.items()
        if task.state in ("executing", "long-running")
    ]


def _job(submitted: Submitted, step: str) -> StepJob:
    return next(job for job in submitted.jobs if job.spec.name == step)


def chain_results(submitted: Submitted) -> list[StepResult]:
    """The chain's results, or, for each step, one that says why the task itself broke
    (worker died, scheduler lost, ...)."""
    try:
        return submitted.future.result()
    except Exception as exc:  # KilledWorker, CancelledError (scheduler lost), ...
        error = one_line(exc)
        now = time.time()
        return [
            StepResult(job.unit, job.spec.name, Outcome.NOT_RUN, now, now, error)
            for job in submitted.jobs
        ]
