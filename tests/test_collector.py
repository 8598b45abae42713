"""Python's cycle collector while steps run: no full pass (one stalled the scheduler
sharing the process), and the caller's collector given back as it was; the daemon's
switch, busy while units fly, with a full pass at least every so often."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinagot.collector import Collector
from sinagot.engine import Engine
from sinagot.layout import Scope


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector as this test found it, whatever the test did to it."""
    thresholds, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    """A real cluster on loopback, one worker process, started as sinagot embeds one."""
    from sinagot.cluster import connect
    from sinagot.config import DaskSettings

    connection = connect(
        None, DaskSettings(n_workers=1, threads_per_worker=1, dashboard_address=":0")
    )
    try:
        assert connection.cluster is not None
        yield connection.cluster.scheduler_address
    finally:
        connection.close()


def run_seeing_thresholds(root: Path, scheduler: str | None) -> list[tuple[int, int, int]]:
    """Run every step of the workspace (again, if done), on the cluster or, without one,
    in this process; the collector's thresholds as each step ended."""
    seen: list[tuple[int, int, int]] = []
    with Engine(root, verbose=False, scheduler=scheduler) as ws:
        results = ws.execute(
            ws.plan(ws.units(Scope()), force=True, stale_only=True),
            on_result=lambda _: seen.append(gc.get_threshold()),
        )
    assert len(results) == 6 and all(r.ok for r in results)  # three records, two steps
    return seen


def test_no_full_pass_during_a_run_on_dask_and_the_thresholds_given_back(
    harbor: Path, scheduler: str, collector: None
) -> None:
    gc.set_threshold(700, 10, 10)
    seen = run_seeing_thresholds(harbor, scheduler)
    assert seen and all(t[:2] == (700, 10) and t[2] > 1_000_000 for t in seen)
    assert gc.get_threshold() == (700, 10, 10) and gc.isenabled()


def test_steps_run_in_this_process_keep_full_passes(harbor: Path, collector: None) -> None:
    """A script's garbage is this process's: it is collected as ever while steps run."""
    gc.set_threshold(700, 10, 10)
    assert set(run_seeing_thresholds(harbor, None)) == {(700, 10, 10)}


def test_the_thresholds_given_back_when_the_run_raises(
    harbor: Path, scheduler: str, collector: None
) -> None:
    gc.set_threshold(500, 7, 9)

    def stop(_: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the results come in

    with Engine(harbor, verbose=False, scheduler=scheduler) as ws:
        with pytest.raises(KeyboardInterrupt):
            ws.execute(ws.plan(ws.units(Scope()), stale_only=True), on_result=stop)
        assert gc.get_threshold() == (500, 7, 9) and gc.isenabled()


def test_a_process_managing_its_collector_is_left_alone(
    harbor: Path, scheduler: str, collector: None
) -> None:
    gc.set_threshold(700, 10, 10)
    gc.disable()
    assert set(run_seeing_thresholds(harbor, scheduler)) == {(700, 10, 10)}
    assert not gc.isenabled()

    gc.enable()
    gc.freeze()
    assert set(run_seeing_thresholds(harbor, scheduler)) == {(700, 10, 10)}
    assert gc.get_freeze_count() > 0  # still frozen: an unfreeze leaves none


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def counting_full_passes() -> Iterator[list[int]]:
    """A list that grows by one at each full pass of the collector made meanwhile."""
    passes: list[int] = []

    def seen(phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2:
            passes.append(1)

    gc.callbacks.append(seen)
    try:
        yield passes
    finally:
        gc.callbacks.remove(seen)


def test_the_daemon_holds_full_passes_while_busy_and_not_once_idle(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    clock = Clock()
    switch = Collector(clock, every=600.0)
    switch.busy(True)
    assert switch.holding and gc.get_threshold()[:2] == (700, 10)
    assert gc.get_threshold()[2] > 1_000_000
    clock.now = 599.0
    switch.busy(True)
    assert gc.get_threshold()[2] > 1_000_000
    switch.busy(False)
    assert not switch.holding and gc.get_threshold() == (700, 10, 10)
    switch.busy(False)  # idle again: nothing to give back twice
    assert gc.get_threshold() == (700, 10, 10)


def test_a_daemon_busy_without_a_break_still_gets_a_full_pass(collector: None) -> None:
    clock = Clock()
    switch = Collector(clock, every=600.0)
    with counting_full_passes() as passes:
        switch.busy(True)
        clock.now = 300.0
        switch.busy(True)
        assert not passes
        clock.now = 600.0
        switch.busy(True)
        assert len(passes) == 1  # one full pass, then held again
    assert switch.holding and gc.get_threshold()[2] > 1_000_000
    switch.busy(False)


def test_the_daemon_leaves_a_collector_that_is_off_alone(collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc.disable()
    switch = Collector(Clock())
    switch.busy(True)
    assert not switch.holding and gc.get_threshold() == (700, 10, 10)
