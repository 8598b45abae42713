"""Executors: where steps run. Chosen once per workspace, behind one small Protocol.

Both take *chains*: the steps of one unit that must run, in order. A failure ends its own
chain (the later steps are reported skipped) and never touches the others.

On Dask, a task runs whole chains (`run_chains`), not one step: a task costs the scheduler
and the workers about a millisecond whatever it does, and a unit's steps run one after the
other on one worker anyway. Units of quick steps share a task, sized from how long their
steps took before (`sinagot.batching`); a long unit has a task of its own. Each step's
result still reaches the submitter as soon as the step ends (at most `PROGRESS_DELAY`
later), through Dask's pub/sub (`Publish`), so a task's first steps are recorded when they
end, not when the task does.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .batching import Durations, StepKind, group, kind
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
#: Units of steps never timed that may be out at once, each a task of its own.
PROBES = 8
#: Seconds the count of the cluster's worker threads is trusted (workers come and go).
THREADS_TTL = 10.0
#: A chain to run and the name of this run of it (see `chain_token`).
Named = tuple[Chain, str]
#: Called with chains just before any of their steps may start (the store marks them then).
StartCallback = Callable[[Sequence[Named]], None]
#: Called with results as they arrive, in batches (the store records them then).
ResultsCallback = Callable[[Sequence[tuple[StepJob, StepResult]]], None]


class Executor(Protocol):
    #: Steps run in this process (their garbage is this process's to collect, as ever).
    in_process: bool

    def run(
        self, chains: Sequence[Named], on_start: StartCallback, on_results: ResultsCallback
    ) -> list[StepResult]:
        """Run each chain's jobs in order; a failure ends its chain, never the others."""
        ...

    def close(self) -> None: ...


def run_chain(chain: Chain, report: Callable[[StepResult], None]) -> list[StepResult]:
    """Run a unit's steps in order, each once the one before succeeded, telling `report` of
    each as it ends."""
    results: list[StepResult] = []
    for job in chain:
        results.append(run_after(job, results[-1]) if results else run_step(job))
        report(results[-1])
    return results


def run_chains(
    chains: Sequence[Chain], report: Callable[[StepResult | None], None]
) -> list[list[StepResult]]:
    """Run units' chains one after the other, then tell `report` None: the task a Dask
    worker runs for a few units (or one)."""
    try:
        return [run_chain(chain, report) for chain in chains]
    finally:
        report(None)


def named_jobs(chain: Chain, generation: str) -> tuple[StepJob, ...]:
    """The chain's jobs, each carrying the name of this run of it (see `chain_token`)."""
    token = chain_token(chain, generation)
    return tuple(job.named(task_key(job, token)) for job in chain)


class LocalExecutor:
    """Runs steps one after the other in the calling process."""

    in_process = True

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
    return int(max((mtime for _, mtime in input_times(chain[0])), default=0))


def input_times(job: StepJob) -> list[tuple[str, float]]:
    """(path, mtime) of each of a job's inputs that can be read."""
    found = []
    for rel in job.inputs:
        path = f"{job.dataset}/{rel}"
        with contextlib.suppress(OSError):
            found.append((path, os.stat(path).st_mtime))
    return found


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


def task_name(chains: Sequence[Sequence[StepJob]]) -> str:
    """A task's Dask key: its one chain's, or the first chain's with how many more follow
    and a digest of them all ('count+mean-REC-20200601-3f2a9c1d+63-0c1d2e3f'). Two tasks
    with one key are one task to Dask: the digest keeps different groups apart."""
    first = chain_key(chains[0])
    if len(chains) == 1:
        return first
    names = "\0".join(job.run_id for chain in chains for job in chain)
    digest = hashlib.blake2b(names.encode(), digest_size=4).hexdigest()
    return f"{first}+{len(chains) - 1}-{digest}"


def step_kind(job: StepJob) -> StepKind:
    return kind(job.unit.task, job.unit.modality, job.spec.name)


@dataclass
class Publish:
    """Tells the submitter of a step's result while the rest of its task runs (Dask's
    pub/sub: the worker's `log_event`, the client's `subscribe_topic`).

    A result is sent only if its task still runs `delay` seconds after the step ended: a
    quick task's results all come back with the task's own result, in one message, and a
    long step never holds up news of the one before it by more than about `delay`. The
    step's thread only notes the result; one thread per worker (`_Progress`) sends what is
    due, so a task of many quick steps wakes nobody.
    """

    topic: str
    last: str  # the run name of the task's last step: its result comes with the task's
    delay: float = PROGRESS_DELAY
    ended: bool = False
    pending: list[tuple[float, StepResult]] = field(default_factory=list)

    def __call__(self, result: StepResult | None) -> None:
        if result is None:
            self.ended = True
            _PROGRESS.drop(self)
            return
        if result.run_id == self.last:
            return  # the task ends now
        first = not self.pending
        self.pending.append((time.monotonic() + self.delay, result))
        if first:
            _PROGRESS.add(self)

    def due(self, now: float) -> list[StepResult]:
        """The results to send now: those whose task still runs `delay` after they ended."""
        due = []
        while self.pending and self.pending[0][0] <= now and not self.ended:
            due.append(self.pending.pop(0)[1])
        return due


class _Progress:
    """A worker's sender of progress news (see `Publish`): one thread, started when a
    task first has news, waking every quarter of `PROGRESS_DELAY`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, tuple[Publish, Worker]] = {}
        self._thread: threading.Thread | None = None

    def add(self, publish: Publish) -> None:
        from distributed import get_worker

        # News of progress is a hint, the task's own result the record: never fail a task
        # over it (e.g. run outside a worker).
        try:
            worker = get_worker()
        except ValueError:
            return
        with self._lock:
            self._live[id(publish)] = (publish, worker)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="sinagot-progress", daemon=True
                )
                self._thread.start()

    def drop(self, publish: Publish) -> None:
        with self._lock:
            self._live.pop(id(publish), None)

    def _loop(self) -> None:
        while True:
            time.sleep(PROGRESS_DELAY / 4)
            now = time.monotonic()
            with self._lock:
                live = list(self._live.values())
            for publish, worker in live:
                for result in publish.due(now):
                    with contextlib.suppress(Exception):
                        worker.log_event(publish.topic, result.to_json())


_PROGRESS = _Progress()


@dataclass(eq=False)
class Task:
    """One Dask task: the chains it runs, and their results once fetched."""

    future: Future
    members: list[Submitted] = field(default_factory=list)
    results: list[list[StepResult]] | None = None
    left: int = 0  # members whose results are not all out yet

    def end(self, submitted: Submitted) -> None:
        """One member's results are all out: once all are, the task is let go on Dask."""
        submitted.ended = True
        self.left -= 1
        if self.left <= 0:
            with contextlib.suppress(Exception):
                self.future.release()


@dataclass(eq=False)
class Submitted:
    """One chain on the cluster: the task that runs it (with others, maybe), its place in
    that task, and which of its steps were reported already."""

    jobs: tuple[StepJob, ...]
    task: Task
    index: int
    notify: Notify
    reported: set[str] = field(default_factory=set)
    ended: bool = False
    probe: bool = False  # its steps' durations were not known when it was submitted

    @property
    def unit(self) -> Unit:
        return self.jobs[0].unit

    @property
    def future(self) -> Future:
        return self.task.future


#: What the cluster tells of a submitted chain: a step's result as it ends, or None when
#: the chain's task ended (its results are then fetched by `DaskExecutor.collect`).
Report = tuple[Submitted, StepResult | None]
Notify = Callable[[Submitted, StepResult | None], None]


class DaskExecutor:
    """Runs chains on a Dask cluster, a bounded number of units at a time, newest first.

    Results come back to this process, which is the only one to record them.
    """

    in_process = False

    def __init__(
        self,
        connect: Callable[[], Connection],
        max_in_flight: int,
        durations: Callable[[], Mapping[StepKind, float]] = dict,
    ) -> None:
        self._connect = connect
        self._connection: Connection | None = None
        self._running: dict[str, Submitted] = {}  # step run name -> its chain
        self._topics: set[str] = set()  # subscribed to, by the current client
        self._probes: set[Submitted] = set()  # chains of steps not timed yet, on the cluster
        self._threads = (0, 0.0)  # the cluster's worker threads, and when they were counted
        self._known = durations  # the store's figures, read at the first submission
        self.durations: Durations | None = None
        self.max_in_flight = max_in_flight

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = self._connect()
            self._topics = set()
            self._threads = (0, 0.0)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        self._running.clear()  # their tasks went with the client
        self._probes.clear()

    def threads(self) -> int:
        """The cluster's worker threads (counted again every `THREADS_TTL` seconds): how
        many tasks run at once, and how many units of untimed steps may be out at once."""
        count, when = self._threads
        now = time.monotonic()
        if not count or now - when > THREADS_TTL:
            client = self.connection.client  # a scheduler never reached: said here, once
            with contextlib.suppress(Exception):  # one lost since: the submit will tell
                count = sum(client.nthreads().values())
            self._threads = (max(count, 1), now)
        return self._threads[0]

    def _durations(self) -> Durations:
        if self.durations is None:
            self.durations = Durations()
            with contextlib.suppress(Exception):  # no figures: the first results give them
                self.durations.update(self._known())
        return self.durations

    def admit(self, chains: Sequence[Sequence[StepKind]]) -> int:
        """How many of these chains (their steps' kinds, in priority order) to submit now:
        all, but only so many chains of steps never timed at once (`PROBES`, or one per
        worker thread if there are more); the rest wait for the first results, which say
        how many units a task should hold."""
        if not chains:
            return 0
        durations = self._durations()
        room = max(self.threads(), PROBES) - len(self._probes)
        for index, chain in enumerate(chains):
            if durations.of(chain) is None:
                if room <= 0:
                    return index
                room -= 1
        return len(chains)

    def seconds_left(self, chains: Iterable[Submitted]) -> float | None:
        """Seconds the cluster's threads need for these chains' steps not reported yet, by
        the durations learnt (Dask's own cost apart); None if one was never timed."""
        durations = self._durations()
        total = 0.0
        for submitted in chains:
            unreported = (
                step_kind(j) for j in submitted.jobs if j.spec.name not in submitted.reported
            )
            seconds = durations.of(unreported)
            if seconds is None:
                return None
            total += seconds
        return total / self.threads()

    def submit(self, chains: Sequence[Named], notify: Notify) -> list[Submitted]:
        """Submit chains, grouped into tasks (see `sinagot.batching`), newer inputs first;
        `notify` is called (from Dask's thread) with each step's result as it ends, then
        with None when its chain's task ends. Tasks of equal priority go in one message to
        the scheduler. See `chain_token` for the generation that names each chain's run."""
        client = self.connection.client
        topic = f"sinagot.steps:{chains[0][0][0].dataset}" if chains else ""
        if chains and topic not in self._topics:
            client.subscribe_topic(topic, self._published)
            self._topics.add(topic)
        durations = self._durations()
        jobs = [named_jobs(chain, generation) for chain, generation in chains]
        estimates = [durations.of(step_kind(job) for job in chain) for chain in jobs]
        groups = group(estimates, self.threads())
        submitted: list[Submitted] = []
        for priority, same in itertools.groupby(groups, key=lambda g: newest_input(jobs[g[0]])):
            same = list(same)
            members = [[jobs[i] for i in g] for g in same]
            futures = client.map(
                run_chains, members, [Publish(topic, m[-1][-1].run_id) for m in members],
                key=[task_name(m) for m in members], priority=priority, pure=False,
            )  # fmt: skip
            for indexes, future in zip(same, futures, strict=True):
                task = Task(future, left=len(indexes))
                for index, at in enumerate(indexes):
                    one = Submitted(jobs[at], task, index, notify, probe=estimates[at] is None)
                    task.members.append(one)
                    for job in one.jobs:
                        self._running[job.run_id] = one
                    if one.probe:
                        self._probes.add(one)
                    submitted.append(one)
                future.add_done_callback(lambda _, task=task: _task_ended(task))
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
            client.cancel(list({id(s.task): s.future for s in waiting}.values()))
        for submitted in waiting:
            self._forget(submitted)
        return waiting

    def _forget(self, submitted: Submitted) -> None:
        submitted.task.end(submitted)
        self._probes.discard(submitted)
        for job in submitted.jobs:
            self._running.pop(job.run_id, None)

    def _published(self, event: tuple[float, str]) -> None:
        result = StepResult.from_json(event[1])
        submitted = self._running.get(result.run_id)
        if submitted is not None:
            submitted.notify(submitted, result)

    def collect(self, reports: Sequence[Report]) -> list[tuple[Submitted, StepJob, StepResult]]:
        """Each step's result, once, in the order reported; the results of ended tasks
        fetched in one round trip (one by one, only those of tasks that broke). A chain
        is `ended` once all its results are out."""
        ending = {
            id(s.task): s.task
            for s, r in reports
            if r is None and not s.ended and s.task.results is None
        }
        finished = [t for t in ending.values() if t.future.status == "finished"]
        try:
            gathered = (
                self.connection.client.gather([t.future for t in finished]) if finished else []
            )
            for task, value in zip(finished, gathered, strict=True):
                task.results = value
        except Exception:  # a result lost on the way: fetched one by one below
            pass
        durations = self._durations()
        out = []
        for submitted, result in reports:
            if submitted.ended:
                continue
            if result is not None:
                if result.step not in submitted.reported:
                    submitted.reported.add(result.step)
                    out.append((submitted, _job(submitted, result.step), result))
                continue
            results = chain_results(submitted)
            for job, step_result in zip(submitted.jobs, results, strict=True):
                if job.spec.name not in submitted.reported:
                    out.append((submitted, job, step_result))
            self._forget(submitted)
        for _, job, result in out:
            if result.outcome in (Outcome.DONE, Outcome.FAILED):
                durations.learn(step_kind(job), result.duration)
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
            admitted = self.admit([[step_kind(job) for job in chain] for chain, _ in batch])
            waiting.extendleft(reversed(batch[admitted:]))
            batch = batch[:admitted]
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


def _task_ended(task: Task) -> None:
    """Dask's callback when a task ends: each of its chains is told (from Dask's thread)."""
    for submitted in task.members:
        submitted.notify(submitted, None)


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
        if submitted.task.results is None:
            submitted.task.results = submitted.future.result()
        return submitted.task.results[submitted.index]
    except Exception as exc:  # KilledWorker, CancelledError (scheduler lost), ...
        error = one_line(exc)
        now = time.time()
        return [
            StepResult(job.unit, job.spec.name, Outcome.NOT_RUN, now, now, error)
            for job in submitted.jobs
        ]
