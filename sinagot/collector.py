"""Python's cycle collector, kept from stalling the work: paused while a large plan is
built, and making no full pass while steps run.

Planning many units allocates millions of small containers (units, plans, lists) and
keeps most of them: the collector would walk the growing heap again and again (a tenth of
a million-record plan) to find no cycle in data that has none. It is paused for a large
plan only (`paused`), and resumed as it was (another thread planning at the same time may
resume it early: only slower, never wrong).

While steps run on Dask (`young_only` for a run, `Collector` for the daemon), young
objects only, no full pass. Steps run in this process keep every pass: a script's garbage
(an EEG recording held in a cycle, say) is this process's, and must not wait for the end.

A full pass walks every object of the process while holding the GIL, and one comes each
time the heap has grown by a quarter. The process that submits steps also runs Dask's
scheduler when the cluster is embedded: during a run of 10,000 records, three or four
passes of 0.2-0.4 s each, and both workers sat idle at those same moments, sent nothing
(freezing what existed at the start, `gc.freeze`, only shortened them: results and Dask's
state made the heap grow again). Young objects are collected as ever; what is older waits
for the next full pass, once the steps are done. A process that manages the collector
itself (it is off, or something is frozen) is left alone.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

#: A third threshold no run reaches: passes of the middle generation before a full one.
_NO_FULL_PASS = 1 << 30


@contextlib.contextmanager
def paused(large: bool) -> Iterator[None]:
    """No collection at all while a large plan is built."""
    if not large or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _hold() -> tuple[int, ...] | None:
    """No full pass from now on; the thresholds to give back, None if left alone."""
    if not gc.isenabled() or gc.get_freeze_count():
        return None
    thresholds = gc.get_threshold()
    if thresholds[2] >= _NO_FULL_PASS:  # held already (a run inside a run)
        return None
    gc.set_threshold(thresholds[0], thresholds[1], _NO_FULL_PASS)
    return thresholds


@contextlib.contextmanager
def young_only() -> Iterator[None]:
    """For one run of steps on Dask (`Engine.execute`): the thresholds are given back
    after it."""
    held = _hold()
    try:
        yield
    finally:
        if held is not None:
            gc.set_threshold(*held)


class Collector:
    """The daemon's switch: young objects only while units are on the cluster, full passes
    again once none is. A daemon busy without a break still gets one full pass every
    `every` seconds, so that old garbage never piles up for hours."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, every: float = 600.0) -> None:
        self._clock = clock
        self._every = every
        self._held: tuple[int, ...] | None = None
        self._since = 0.0

    @property
    def holding(self) -> bool:
        return self._held is not None

    def busy(self, flying: bool) -> None:
        """Said at every pass of the daemon's loop: whether units are on the cluster."""
        if not flying:
            self._release()
            return
        if self._held is not None and self._clock() - self._since >= self._every:
            self._release()
            gc.collect()
        if self._held is None:
            self._held = _hold()
            self._since = self._clock()

    def _release(self) -> None:
        if self._held is not None:
            gc.set_threshold(*self._held)
            self._held = None
