"""Executors: where steps run. Chosen once per workspace, behind one small Protocol."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from .planner import StepPlan
from .runner import StepJob, StepResult, run_step

#: Called with each result as it arrives (the state store records it there).
ResultCallback = Callable[[StepJob, StepResult], None]
#: Called with each job just before it may start (the state store marks it started there).
StartCallback = Callable[[StepJob], None]


class Executor(Protocol):
    def run(
        self,
        chains: Iterable[Sequence[StepJob]],
        on_start: StartCallback,
        on_result: ResultCallback,
    ) -> list[StepResult]:
        """Run each chain's jobs in order; a failure ends its chain, never the others."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs steps one after the other in the calling process."""

    def run(
        self,
        chains: Iterable[Sequence[StepJob]],
        on_start: StartCallback,
        on_result: ResultCallback,
    ) -> list[StepResult]:
        results = []
        for chain in chains:
            for job in chain:
                on_start(job)
                result = run_step(job)
                on_result(job, result)
                results.append(result)
                if not result.ok:
                    break
        return results

    def close(self) -> None:
        pass


def chains_of(plans: Iterable[StepPlan], job: Callable[[StepPlan], StepJob]) -> list[list[StepJob]]:
    """Group the steps that run into one chain per unit, in unit order."""
    chains: dict[object, list[StepJob]] = {}
    for plan in plans:
        if plan.run:
            chains.setdefault(plan.unit, []).append(job(plan))
    return list(chains.values())
