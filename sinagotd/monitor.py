"""What lets people watch the daemon: the status page and its API, Prometheus metrics, and
failure alerts. One object, so the loop says what happened in one line and never minds
whether the page is on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from sinagot.board import Overlay
from sinagot.layout import Unit
from sinagot.runner import Outcome, StepResult

from .alerts import Alerts, NotifySettings
from .metrics import Metrics
from .statusview import StatusKeeper
from .web import StatusServer

OVERLAY_EVERY = 0.5  # seconds between two looks at the queue for the page


class Monitor:
    def __init__(
        self,
        log: Any,
        queues: Callable[[], tuple[int, int]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.clock = clock
        self.keeper: StatusKeeper | None = None
        self.server: StatusServer | None = None
        self.metrics = Metrics(lambda: self.keeper.board if self.keeper else None, queues)
        self.alerts = Alerts(NotifySettings(), log)  # off until `alert_with`
        self._settled: dict[Unit, float] = {}
        self._next_overlay = 0.0

    def serve(self, workspace: str | list[str], host: str, port: int) -> str | None:
        """Start the status page; its address, or None (said as `status.unavailable`) when
        the port cannot be bound: the daemon's work goes on without it."""
        self.keeper = StatusKeeper(workspace, self.log, self.clock)
        try:
            self.server = StatusServer(self.keeper, self.metrics.registry, host, port)
        except OSError as exc:
            self.keeper = None
            error = exc.strerror or str(exc)
            if exc.filename is not None:  # an asset missing from the installed package
                error = f"{exc.filename}: {error}"
            self.log.error("status.unavailable", address=f"{host}:{port}", error=error)
            return None
        self.server.start()  # answers 503 until `start_board` and the first plan
        return self.server.url

    def start_board(self) -> None:
        """Plan the page's board, once the daemon's own first plan is done: the work
        comes first."""
        if self.keeper is not None:
            self.keeper.start()

    def alert_with(
        self, settings: NotifySettings, workspace: str, failed: Callable[[], list]
    ) -> None:
        """Failure alerts as `[notify]` says (at start, and after a reload): what failed
        before (`failed`, read only when alerts are on) recovers with an alert."""
        old = self.alerts
        if settings == old.settings:
            return
        if settings.enabled:
            before = old.failed if old.settings.enabled else failed()
            self.alerts = Alerts(settings, self.log, failed_before=before, clock=self.clock,
                                 workspace=workspace)  # fmt: skip
        else:
            self.alerts = Alerts(settings, self.log)
        old.close(timeout=1.0)

    # -- what the loop says ------------------------------------------------------------------

    def changed(self, units: Iterable[Unit]) -> None:
        if self.keeper is not None:
            self.keeper.touch(units)

    def changed_everything(self) -> None:
        if self.keeper is not None:
            self.keeper.refresh_all()

    def reloaded(self) -> None:
        if self.keeper is not None:
            self.keeper.reload()

    def settled(self, units: Iterable[Unit], now: float) -> None:
        self._settled.update(dict.fromkeys(units, now))

    def submitted(self, units: Iterable[Unit], now: float) -> None:
        units = list(units)
        for unit in units:
            if (since := self._settled.pop(unit, None)) is not None:
                self.metrics.latency.observe(now - since)
        self.changed(units)

    def step_ended(self, result: StepResult) -> None:
        if result.outcome is Outcome.DONE:
            self.metrics.finished.labels(result.step).inc()
            self.metrics.duration.labels(result.step).observe(result.duration)
        elif result.outcome is Outcome.FAILED:
            self.metrics.failed.labels(result.step).inc()
            self.metrics.duration.labels(result.step).observe(result.duration)
        if result.outcome in (Outcome.DONE, Outcome.FAILED):
            unit = result.unit
            self.alerts.step_ended(unit.record_id, unit.task, unit.modality, result.step,
                                   result.outcome is Outcome.DONE, result.error)  # fmt: skip
            if self.keeper is not None:
                self.keeper.finished()

    def gave_up(self, unit: Unit, step: str, error: str) -> None:
        self.alerts.step_ended(unit.record_id, unit.task, unit.modality, step, False, error)

    def watch_error(self) -> None:
        self.metrics.watch_errors.inc()

    def cluster(self, connected: bool) -> None:
        self.metrics.cluster_connected.set(1 if connected else 0)

    def tick(self, now: float, queued: Callable[[], Iterable[Unit]],
             arriving: Callable[[], Iterable[Unit]]) -> None:  # fmt: skip
        """Alerts due, and the queue as the page shows it (every `OVERLAY_EVERY` seconds)."""
        self.alerts.tick(now)
        if now < self._next_overlay:
            return
        self._next_overlay = now + OVERLAY_EVERY
        waiting = frozenset(queued())
        # A settle that queued nothing (the steps' own outputs landing) is no latency to
        # measure later: only units still waiting for the cluster keep their settle time.
        self._settled = {u: t for u, t in self._settled.items() if u in waiting}
        if self.keeper is not None:
            self.keeper.set_overlay(Overlay(waiting, frozenset(arriving())))

    def close(self, alerts_timeout: float = 5.0) -> None:
        self.alerts.close(timeout=alerts_timeout)
        if self.server is not None:
            self.server.stop()
        if self.keeper is not None and self.keeper.started:
            self.keeper.stop()
