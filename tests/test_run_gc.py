"""A run and Python's cycle collector: no full pass while steps run (it stalled the
scheduler sharing the process), and the caller's collector given back as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def run_seeing_thresholds(root: Path) -> list[tuple[int, int, int]]:
    """Run every step of the workspace (again, if done); the collector's thresholds as
    each step ended."""
    seen: list[tuple[int, int, int]] = []
    with Engine(root, verbose=False) as ws:
        results = ws.execute(
            ws.plan(ws.units(Scope()), force=True, stale_only=True),
            on_result=lambda _: seen.append(gc.get_threshold()),
        )
    assert results and all(r.ok for r in results)
    return seen


def test_no_full_pass_during_a_run_and_the_thresholds_given_back(
    harbor: Path, collector: None
) -> None:
    gc.set_threshold(700, 10, 10)
    seen = run_seeing_thresholds(harbor)
    assert len(seen) == 6  # three records, two steps
    assert all(t[:2] == (700, 10) and t[2] > 1_000_000 for t in seen)
    assert gc.get_threshold() == (700, 10, 10) and gc.isenabled()


def test_the_thresholds_given_back_when_the_run_raises(harbor: Path, collector: None) -> None:
    gc.set_threshold(500, 7, 9)

    def stop(_: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the results come in

    with Engine(harbor, verbose=False) as ws, pytest.raises(KeyboardInterrupt):
        ws.execute(ws.plan(ws.units(Scope()), stale_only=True), on_result=stop)
    assert gc.get_threshold() == (500, 7, 9) and gc.isenabled()


def test_a_process_managing_its_collector_is_left_alone(harbor: Path, collector: None) -> None:
    gc.set_threshold(700, 10, 10)
    gc.disable()
    assert set(run_seeing_thresholds(harbor)) == {(700, 10, 10)}
    assert not gc.isenabled()

    gc.enable()
    gc.freeze()
    assert set(run_seeing_thresholds(harbor)) == {(700, 10, 10)}
    assert gc.get_freeze_count() > 0  # still frozen: an unfreeze leaves none
