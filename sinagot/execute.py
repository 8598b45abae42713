"""Executors: where steps run. Chosen once per workspace, behind one small Protocol.

Both take *chains*: the steps of one unit that must run, in order. A failure ends its own
chain (the later steps are reported skipped) and never touches the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .runner import Outcome, StepJob, StepResult, one_line, run_after, run_step

if TYPE_CHECKING:
    from distributed import Future

    from .cluster import Connection
    from .layout import Unit

Chain = Sequence[StepJob]
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


class LocalExecutor:
    """Runs steps one after the other in the calling process."""

    def run(
        self, chains: Sequence[Named], on_start: StartCallback, on_results: ResultsCallback
    ) -> list[StepResult]:
        results = []
        for chain, generation in chains:
            on_start([(chain, generation)])
            previous: StepResult | None = None
            token = chain_token(chain, generation)
            for job in (dataclasses.replace(j, run_id=task_key(j, token)) for j in chain):
                result = run_step(job) if previous is None else run_after(job, previous)
                on_results([(job, result)])
                results.append(result)
                previous = result
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
    """A deterministic, readable Dask key: 'count-REC-20200601-3f2a9c1d'."""
    return f"{job.key}-{token}"


class DaskExecutor:
    """Runs chains on a Dask cluster, a bounded number of units at a time, newest first.

    The chain's steps are Dask tasks, step n+1 depending on step n. Results come back to
    this process, which is the only one to record them.
    """

    def __init__(self, connect: Callable[[], Connection], max_in_flight: int) -> None:
        self._connect = connect
        self._connection: Connection | None = None
        self.max_in_flight = max_in_flight

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def submit(
        self, chain: Chain, notify: Callable[[StepJob, Future], None], generation: str
    ) -> list[Future]:
        """Submit one chain; `notify(job, future)` is called (from Dask's thread) as each
        of its tasks ends. Higher priority for newer inputs. See `chain_token` for
        `generation`."""
        client = self.connection.client
        token, priority = chain_token(chain, generation), newest_input(chain)
        futures: list[Future] = []
        for job in chain:
            key = task_key(job, token)
            job = dataclasses.replace(job, run_id=key)
            if futures:
                future = client.submit(
                    run_after, job, futures[-1], key=key, priority=priority, pure=False
                )
            else:
                future = client.submit(run_step, job, key=key, priority=priority, pure=False)
            future.add_done_callback(functools.partial(notify, job))
            futures.append(future)
        return futures

    def run(
        self, chains: Sequence[Named], on_start: StartCallback, on_results: ResultsCallback
    ) -> list[StepResult]:
        waiting = deque(sorted(chains, key=lambda named: newest_input(named[0]), reverse=True))
        ended: queue.Queue[tuple[StepJob, Future]] = queue.Queue()
        left: dict[Unit, int] = {}  # unit -> steps not yet reported
        results: list[StepResult] = []

        def fill() -> None:
            # Refill by halves: a few large submissions, not one per finished unit.
            if len(left) > self.max_in_flight // 2:
                return
            batch = []
            while waiting and len(left) + len(batch) < self.max_in_flight:
                batch.append(waiting.popleft())
            if not batch:
                return
            on_start(batch)
            for chain, generation in batch:
                left[chain[0].unit] = len(chain)
                self.submit(chain, lambda job, future: ended.put((job, future)), generation)

        fill()
        while left:
            batch = [ended.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(ended.get_nowait())
            done = results_of(self.connection.client, batch)
            for job, _ in done:
                left[job.unit] -= 1
                if not left[job.unit]:
                    del left[job.unit]
            on_results(done)
            results.extend(result for _, result in done)
            fill()
        return results


def results_of(client, ended: Sequence[tuple[StepJob, Future]]) -> list[tuple[StepJob, StepResult]]:
    """The results of ended tasks, fetched in one round trip (one by one, only those
    whose task broke), and the futures released."""
    finished = [future for _, future in ended if future.status == "finished"]
    try:
        values = dict(zip((f.key for f in finished), client.gather(finished), strict=True))
    except Exception:  # a result lost on the way: fetched one by one below
        values = {}
    out = []
    for job, future in ended:
        result = values.get(future.key)
        out.append((job, result if result is not None else result_of(future, job)))
        with contextlib.suppress(Exception):
            future.release()
    return out


def result_of(future: Future, job: StepJob) -> StepResult:
    """The step's result, or one that says why the task itself broke (worker died, ...)."""
    try:
        return future.result()
    except Exception as exc:  # KilledWorker, CancelledError (scheduler lost), ...
        error = one_line(exc)
        now = time.time()
        return StepResult(job.unit, job.spec.name, Outcome.NOT_RUN, now, now, error)
