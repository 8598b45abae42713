"""How many units go in one Dask task: sized from how long their steps take.

A Dask task costs the scheduler and the workers about a millisecond whatever it does, and
Dask's best practices ask for tasks of 100 ms or more. A lab's steps range from a
millisecond (a trivial count) to hours (a source localisation): units of quick steps are
grouped until a task holds about `TASK_SECONDS` of work, long ones keep a task each, so the
workers are never left idle behind one long batch.

How long a step takes is learnt, never guessed: from the state store (the last run of each
unit's steps) and then from every result that comes back. A step never timed yet is run
alone, a few units at a time, until its first result says how long it takes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: Seconds of work a task should hold.
TASK_SECONDS = 0.1
#: Tasks at least per worker thread in one submission, so the last tasks end together.
SPREAD = 2
#: How much a new measure moves the estimate (an exponentially weighted mean).
WEIGHT = 0.2

#: A step, as its duration is known: (task, modality, step name); '' where there is none.
StepKind = tuple[str, str, str]


def kind(task: str | None, modality: str | None, step: str) -> StepKind:
    return (task or "", modality or "", step)


@dataclass
class Durations:
    """Typical seconds of each kind of step."""

    seconds: dict[StepKind, float] = field(default_factory=dict)

    def of(self, kinds: Iterable[StepKind]) -> float | None:
        """Seconds a unit's chain of these steps is expected to take; None: not known."""
        total = 0.0
        for kind in kinds:
            seconds = self.seconds.get(kind)
            if seconds is None:
                return None
            total += seconds
        return total

    def learn(self, kind: StepKind, seconds: float) -> None:
        seconds = max(seconds, 0.0)
        old = self.seconds.get(kind)
        self.seconds[kind] = seconds if old is None else old + WEIGHT * (seconds - old)

    def update(self, known: Mapping[StepKind, float]) -> None:
        """Take the store's figures for the kinds not measured here yet."""
        for kind, seconds in known.items():
            self.seconds.setdefault(kind, max(seconds, 0.0))


def group(estimates: Sequence[float | None], threads: int) -> list[range]:
    """Consecutive units (in the order given: priority order) grouped into tasks.

    A unit with no estimate, or one taking half a task's worth or more, goes alone; the
    others fill tasks up to `TASK_SECONDS`, and never fewer than `SPREAD` tasks per thread
    when there are units enough, so that parallelism is never lost.
    """
    cap = max(1, math.ceil(len(estimates) / (max(threads, 1) * SPREAD)))
    tasks: list[range] = []
    start = 0
    work = 0.0
    for index, estimate in enumerate(estimates):
        alone = estimate is None or estimate >= TASK_SECONDS / 2
        if index > start and (alone or work >= TASK_SECONDS or index - start >= cap):
            tasks.append(range(start, index))
            start, work = index, 0.0
        work += TASK_SECONDS if estimate is None else estimate
        if alone:
            tasks.append(range(start, index + 1))
            start, work = index + 1, 0.0
    if start < len(estimates):
        tasks.append(range(start, len(estimates)))
    return tasks
