"""The status page's board, kept up to date beside the daemon's loop.

The loop only says what changed (`touch`, `refresh_all`, `set_overlay`, `finished`); a
thread of its own plans those units with its own read-only `Engine` (its own state-store
connection: SQLite connections stay in the thread that made them) and updates the `Board`
the web server reads. The loop never waits for the page, and a page never slows the loop by
more than the planning it asks for: a full plan at start and after each reconcile, then only
the units that changed, at most every `INTERVAL` seconds, each update waiting
`UPDATE_SPACING` times what the last one took: at most a tenth of the time (a burst of
thousands of new records: the daemon and the workers need the CPU more than the page needs
to be a quarter-second fresh; at a quarter, the page took a sixth of the daemon's CPU).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

from sinagot.board import Board, Overlay, iter_rows, rows_from_plans
from sinagot.engine import Engine
from sinagot.layout import Scope, Unit
from sinagot.pageview import board_for, record_detail
from sinagot.runner import one_line

INTERVAL = 0.25  # seconds between two updates of the board, at least
UPDATE_SPACING = 9.0  # and at least this many times the last update took
#: A full plan (after each reconcile) waits at least this many times the last one took, and
#: `FULL_MIN` seconds: a storm of reconciles (watcher overflows) is not a storm of full plans.
FULL_SPACING, FULL_MIN = 3.0, 5.0
WINDOW = 300.0  # seconds of finished steps the throughput is measured over
#: The daemon waits this long at most for the thread to end at a stop. A thread left
#: running at exit is killed where it stands, and one inside RE2's matching (C++) then
#: aborts the whole process ("terminate called without an active exception", exit 134
#: after a clean `daemon.stopped`): a full plan ends between two chunks at a stop.
JOIN_TIMEOUT = 30.0


class NotReady(Exception):
    """The first board is not planned yet."""


class StatusKeeper:
    def __init__(
        self,
        workspace: str | list[str],
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workspace = workspace
        self.log = log
        self.clock = clock
        self.board: Board | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self._full = True
        self._reload = False
        self._pending: set[Unit] = set()
        self._overlay = Overlay()
        self._finished: collections.deque[float] = collections.deque()
        self._started = clock()
        self._details: queue.SimpleQueue[tuple[str, Future]] = queue.SimpleQueue()
        self._engine: Engine | None = None
        self._next_full = 0.0
        self._last_error, self._last_error_at = "", 0.0
        self._thread = threading.Thread(target=self._run, name="sinagotd-status", daemon=True)

    # -- from the loop (cheap, never blocking) ---------------------------------------------

    def start(self) -> StatusKeeper:
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread.is_alive()

    def touch(self, units: Iterable[Unit]) -> None:
        self._pend(units)

    def refresh_all(self) -> None:
        self._full = True
        self._wake.set()

    def reload(self) -> None:
        """The configuration changed: a new engine, then a full plan, at once."""
        self._reload = self._full = True
        self._next_full = 0.0
        self._wake.set()

    def set_overlay(self, overlay: Overlay) -> None:
        with self._lock:
            old, self._overlay = self._overlay, overlay
        self._pend((old.queued ^ overlay.queued) | (old.arriving ^ overlay.arriving))

    def _pend(self, units: Iterable[Unit]) -> None:
        """To plan at the next update. Only the first unit pending since the last update
        wakes the thread, which then sleeps until that update is due (a burst touches units
        thousands of times a second; each wake was a pass of the thread for nothing, and
        each `set` a lock and a notify)."""
        with self._lock:
            first = not self._pending
            self._pending.update(units)
            woken = first and bool(self._pending)
        if woken and not self._wake.is_set():
            self._wake.set()

    def finished(self, steps: int = 1) -> None:
        now = self.clock()
        self._finished.extend([now] * steps)

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=JOIN_TIMEOUT)

    # -- from the web server ---------------------------------------------------------------

    def detail(self, record_id: str) -> Future:
        """A record's detail, computed by the keeper's thread (its engine lives there):
        resolves to None when the board has no such record."""
        future: Future = Future()
        self._details.put((record_id, future))
        self._wake.set()
        return future

    # -- the thread --------------------------------------------------------------------------

    def _run(self) -> None:
        next_update = 0.0
        while not self._stop:
            if self._pending:
                due: float | None = next_update
            elif self._full:
                due = max(next_update, self._next_full)
            else:
                due = None
            self._wake.wait(timeout=1.0 if due is None else max(due - self.clock(), 0.0))
            self._wake.clear()
            try:
                self._serve_details()
                now = self.clock()
                full = self._full and (self.board is None or now >= self._next_full)
                if now >= next_update and (full or self._pending):
                    self._update(full)
                    took = 0.0 if full else self.clock() - now  # (full plans: FULL_SPACING)
                    next_update = self.clock() + max(INTERVAL, UPDATE_SPACING * took)
                if self.board is not None:
                    self.board.throughput = self._throughput()
            except Exception as exc:  # the page shows older data; the daemon goes on
                self._failed(one_line(exc))
                self._full = True
                next_update = self.clock() + 5.0
        if self._engine is not None:
            self._engine.close()
        self._fail_details("the daemon is stopping")

    def _update(self, full: bool) -> None:
        """A full plan (`full`), else the units touched since the last update."""
        if self._reload or self._engine is None:
            engine = Engine(self.workspace, verbose=False)  # raises: retried, reload kept
            if self._engine is not None:
                self._engine.close()
            self._engine, self._reload, full = engine, False, True
        engine = self._engine
        with self._lock:
            overlay = self._overlay
            pending, self._pending = self._pending, set()
        if full or self.board is None:
            self._full = False
            started = self.clock()
            board = board_for(engine, generation=self.board.generation if self.board else 0)
            # Rows one at a time into the board's compact table: no million Row objects.
            plans = engine.iter_plan(engine.units(Scope()), stopped=lambda: self._stop)
            board.replace_all(iter_rows(plans, overlay))
            if self._stop:  # ended early: a partial board is no board
                return
            self.board = board
            cost = self.clock() - started
            self._next_full = self.clock() + max(FULL_MIN, FULL_SPACING * cost)
        elif pending:
            ids = sorted({u.record_id for u in pending})
            rows = rows_from_plans(engine.plan(engine.units(Scope(), ids)), overlay)
            # A record with nothing left of it (its files deleted or moved) leaves the board.
            there = {r.unit.record_id for r in rows if set(r.cells) != {"DATA_NOT_AVAILABLE"}}
            self.board.update(
                [r for r in rows if r.unit.record_id in there],
                gone=[r.unit for r in rows if r.unit.record_id not in there],
            )

    def _failed(self, error: str) -> None:
        """`status.error` with its traceback, once per error and at most once a minute
        while it lasts."""
        now = self.clock()
        if error != self._last_error or now - self._last_error_at >= 60.0:
            self.log.exception("status.error", error=error)
            self._last_error, self._last_error_at = error, now

    def _throughput(self) -> dict[str, object]:
        now = self.clock()
        while self._finished and self._finished[0] < now - WINDOW:
            self._finished.popleft()
        span = max(min(WINDOW, now - self._started), 1.0)
        return {"steps_per_minute": round(len(self._finished) / span * 60.0, 1), "window_s": WINDOW}

    def _serve_details(self) -> None:
        while True:
            try:
                record_id, future = self._details.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if self.board is None or self._engine is None:
                    future.set_exception(NotReady("the status is being computed"))
                    continue
                units = self.board.units_of(record_id)
                if not units:
                    future.set_result(None)
                else:
                    with self._lock:
                        overlay = self._overlay
                    future.set_result(record_detail(self._engine, units, overlay))
            except Exception as exc:
                future.set_exception(exc)

    def _fail_details(self, why: str) -> None:
        while True:
            try:
                _, future = self._details.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                future.set_exception(RuntimeError(why))
