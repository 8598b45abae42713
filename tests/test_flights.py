"""What the daemon's flights (sinagotd.flights) and stop (sinagotd.stopping) decide without a
daemon: which errors mean the cluster lost a task, which step a unit that gives up is
recorded as failed for, that a run announced before the store refused it is not announced
twice, and that stop and reload signals only set flags, restored afterwards. The daemon's
own tests (tests/test_daemon*.py, tests/faults/) cover the whole on a real cluster."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from said import Said

from sinagot.engine import Engine
from sinagot.layout import Unit
from sinagot.runner import Outcome, StepJob, StepResult
from sinagotd.backlog import Backlog
from sinagotd.flights import REFILL_WAIT, Flights, Loop, at_fault, lost, refill_now, where
from sinagotd.monitor import Monitor
from sinagotd.retries import Retries
from sinagotd.stopping import Stopping

DAY1 = Unit("REC-20200601")


@pytest.fixture
def chain(harbor: Path) -> Iterator[list[StepJob]]:
    """REC-20200601's chain in example/harbor (count, then mean), named as one run."""
    with Engine(harbor, verbose=False) as ws:
        jobs = [ws.job(plan) for plan in ws.plan([DAY1], stale_only=True)]
        yield [dataclasses.replace(j, run_id=f"{j.spec.name}-run1") for j in jobs]


def result(job: StepJob, outcome: Outcome, error: str | None = None) -> StepResult:
    return StepResult(job.unit, job.spec.name, outcome, 0.0, 1.0, error, run_id=job.run_id)


@pytest.mark.parametrize(
    "error",
    [
        "CommClosedError: in <TCP (closed)>: Stream is closed",
        "FutureCancelledError: count-REC-20200601 cancelled for reason: unknown.",
        "RuntimeError: IOLoop is closed",
    ],
)
def test_errors_of_a_lost_scheduler_are_not_the_steps_fault(chain, error):
    assert lost(result(chain[0], Outcome.NOT_RUN, error))


@pytest.mark.parametrize(
    "error", [None, "worker died twice running it", "RuntimeError: division by zero"]
)
def test_other_errors_are_the_steps_own(chain, error):
    assert not lost(result(chain[0], Outcome.NOT_RUN, error))


def test_a_chain_whose_first_step_could_not_run_blames_that_step_with_its_error(chain):
    count, mean = chain
    results = [result(count, Outcome.NOT_RUN, "worker died"), result(mean, Outcome.NOT_RUN, "x")]
    assert at_fault(chain, results, recovered=[]) == (count, "worker died")


def test_a_step_that_ended_is_not_blamed_the_next_one_is(chain):
    count, mean = chain
    heard = [result(count, Outcome.DONE), result(mean, Outcome.NOT_RUN, "worker died")]
    assert at_fault(chain, heard, recovered=[]) == (mean, "worker died")
    # Not heard of before the worker died, but its receipt says it ended: the same.
    unheard = [result(count, Outcome.NOT_RUN, "lost"), result(mean, Outcome.NOT_RUN, "died")]
    assert at_fault(chain, unheard, recovered=[result(count, Outcome.FAILED)]) == (mean, "died")


def test_nothing_is_blamed_when_every_step_ended_or_the_culprit_said_nothing(chain):
    count, mean = chain
    done = [result(count, Outcome.DONE), result(mean, Outcome.DONE)]
    assert at_fault(chain, done, recovered=[]) is None
    assert at_fault(chain, [result(mean, Outcome.NOT_RUN, "died")], recovered=[]) is None


def unused(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("announcing receipts asks nothing of the loop")


def test_receipts_of_runs_announced_already_are_not_announced_again(chain):
    said = Said()
    loop = Loop(*[unused] * len(dataclasses.fields(Loop)))
    flights = Flights(Backlog(), Retries(), Monitor(said, lambda: (0, 0)), said, lambda: 0.0, loop)
    count, mean = chain
    flights.unrecorded.add(count.run_id)  # said when it ended; the store refused it then
    found = [result(count, Outcome.DONE), result(mean, Outcome.FAILED, "ValueError: no rows")]
    assert flights.recovered(found)
    assert said.lines == [
        ("error", "step.failed", {**where(DAY1), "step": "mean", "error": "ValueError: no rows",
                                  "duration_s": 1.0, "recovered": True}),
    ]  # fmt: skip
    assert flights.failed_steps == 1  # `sinagotd --once` exits 1
    assert not flights.recovered([])  # no news: no `daemon.idle` again


def test_stop_and_reload_signals_only_set_flags_and_the_handlers_are_restored():
    stopping = Stopping(flights=None, log=None, clock=lambda: 0.0)  # type: ignore[arg-type]
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    with stopping.signals():
        os.kill(os.getpid(), signal.SIGHUP)
        assert stopping.reload_requested and not stopping.stops
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert stopping.stops == 2  # the second one: stop at once
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_what_waits_goes_at_once_when_half_the_cluster_is_free():
    never = lambda: pytest.fail("no need to ask how long the flights take")  # noqa: E731
    assert refill_now(0, 256, 0.0, never), "nothing in flight"
    assert refill_now(128, 256, 0.0, never), "half the room free"
    assert not refill_now(129, 256, 0.0, never), "less than half, just after a submission"


def test_quick_steps_wait_for_half_the_room_long_ones_go_after_the_refill_wait():
    """A burst of quick steps: half the room frees within REFILL_WAIT anyway, and what waits
    then goes in tasks of a useful size, not every 0.2 s in tasks of a few units. Long
    steps (or steps never timed): a fresh record waits no longer than REFILL_WAIT."""
    later = REFILL_WAIT + 0.01
    assert not refill_now(256, 256, later, lambda: 0.3)  # 128 units more: 0.15 s
    assert refill_now(256, 256, later, lambda: 0.5)  # 0.25 s
    assert refill_now(256, 256, later, lambda: 3600.0)
    assert refill_now(256, 256, later, lambda: None)
    assert not refill_now(256, 256, REFILL_WAIT / 2, lambda: 3600.0)
