"""The daemon's loop: one thread owns all the state.

Watchdog callbacks and Dask completions only put messages on `self.messages`; the loop
takes them, decides through library calls (plan, record), and submits. Phases, after
uvicorn: `startup()`, `serve()`, `shutdown()`.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sinagot import __version__
from sinagot.cluster import ClusterError, connect, resolve_address
from sinagot.collector import Collector
from sinagot.engine import Engine
from sinagot.errors import ConfigError, SinagotError
from sinagot.execute import GATHER_WINDOW, DaskExecutor, input_times
from sinagot.layout import Scope, Unit
from sinagot.patterns import PathProblem
from sinagot.planner import StepPlan
from sinagot.requests import Handoff, RequestError, RequestServer
from sinagot.runner import StepResult, one_line
from sinagot.state import StateError

from .alerts import load_notify
from .arrivals import Arrivals
from .backlog import Backlog
from .clusterwatch import ClusterLink
from .flights import Flight, Flights, Loop, StepEnded
from .monitor import Monitor
from .reload import compare
from .requested import RequestRefused, RunDesk
from .retries import Retries
from .sdnotify import Notifier
from .settings import DaemonSettings, load_settings
from .settle import Settler
from .stopping import Stopping
from .throttle import Throttle
from .watcher import PathChanged, Watcher, WatchError

TICK = 0.1  # seconds: how often the loop looks at timers when nothing arrives
#: Seconds of messages one pass takes at most before its timers: in a flood of file
#: events (10,000 new records, while the loop was slower than the files came), settling
#: waited for the flood's end, and with it the first submission.
PASS_SECONDS = 0.1


@dataclass
class Options:
    workspace: str | list[str]
    scheduler: str | None = None
    once: bool = False
    log_format: str | None = None
    settle_seconds: float | None = None


@dataclass
class Daemon:
    options: Options
    log: object
    notifier: Notifier = field(default_factory=Notifier)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.messages: queue.Queue = queue.Queue()
        # What waits, what flies, what changed meanwhile (see sinagotd/backlog.py).
        self.books: Backlog[Unit, list[StepPlan], Flight] = Backlog()
        self.retries: Retries[Unit] = Retries()  # units whose steps could not run
        self.broken: dict[str, str] = {}  # script path -> why it cannot be loaded (reported)
        self.unreadable: dict[str, str] = {}  # dataset path -> why it cannot be read (reported)
        self._idle = False
        self._reconcile_due = False
        self._paused_until: float | None = None  # a store write failed: retry then
        self._pause_backoff = 1.0
        self.throttle = Throttle(1.0)
        self.watcher: Watcher | None = None
        self.requests: RequestServer | None = None
        self.monitor = Monitor(self.log, self._queues, self.clock)
        # The scheduler: its connection, outages, reconnects (sinagotd/clusterwatch.py).
        self.cluster = ClusterLink(
            self.books, self.monitor, self.log, self.clock,
            executor=lambda: self.executor, paused=lambda: self._paused_until is not None,
            ingest=self._ingest, replan=self.replan, news=self._news,
        )  # fmt: skip
        # Submitting and landing (sinagotd/flights.py); what it asks of the loop, late-bound
        # (the workspace, the executor and the client are made at startup, replaced later).
        loop = Loop(
            engine=lambda: self.ws, executor=lambda: self.executor,
            client_running=self.cluster.running,
            retry_seconds=lambda: self.settings.retry_seconds, put=self.messages.put,
            replan=self.replan, ingest=self._ingest, recorded=self._recorded,
            store_failed=self._store_failed, cluster_lost=self.cluster.lost,
        )  # fmt: skip
        self.flights = Flights(self.books, self.retries, self.monitor, self.log, self.clock, loop)
        self.stopping = Stopping(self.flights, self.log, self.clock)  # signals; withdraw, grace
        # No full pass of Python's cycle collector while units fly (sinagot/collector.py).
        self.collector = Collector(self.clock)
        # `sinagot run` requests (sinagotd/requested.py); startup hands the server its two ends.
        self.desk = RunDesk(
            self.books, self.flights, self.log, engine=lambda: self.ws, put=self.messages.put,
            say=self._say, queue=self._queue, fill=self._fill,
        )  # fmt: skip

    # -- startup ------------------------------------------------------------------------------

    def startup(self) -> None:
        """Config, state store and lock, cluster, first scan, observer. Raises ConfigError."""
        started = self.clock()
        self.ws = Engine(self.options.workspace, verbose=False)
        self.settings = self._settings(self.ws)
        notify = load_notify(self.ws.config)
        self.ws.check_folders()
        self.ws.lock.acquire("sinagotd")
        self.ws.store.prepare()
        self.ws.layout.remember_patterns()
        self.units_settle = Arrivals(
            self.settings.settle_seconds, self.log, self.ws.config.state_dir,
            writes=lambda: self.watcher.writes if self.watcher is not None else None,
            waits_for=lambda record_id: self.ws.waits_for(record_id),
        )  # fmt: skip
        self._ingest()
        self.executor = self._executor(self.ws)
        try:
            connection = self.cluster.connection = self.executor.connection
        except (ClusterError, ConfigError):
            raise  # already one line naming the address (or the key) and the cause
        except Exception as exc:  # OSError, TimeoutError, ...: said plainly, exit 1
            address = resolve_address(self.options.scheduler, self.ws.config.dask)
            first = one_line(exc)
            raise SinagotError(f"cannot reach the Dask scheduler {address}: {first}") from None
        self.monitor.alert_with(notify, str(self.ws.config.files[0]), self.ws.store.failed_steps)
        page = None
        if self.settings.status_page and not self.options.once:
            page = self.monitor.serve(
                self.options.workspace, self.settings.status_host, self.settings.status_port
            )
        self.log.info(
            "daemon.started",
            workspace=str(self.ws.config.files[0]),
            version=__version__,
            scheduler=connection.scheduler,
            dashboard=connection.dashboard,
            observer=self.settings.observer,
            settle_seconds=self.settings.settle_seconds,
            status_page=page,
            alerts=list(self.monitor.alerts.targets),
        )
        self._check_scripts(self.ws.broken_scripts())
        self.scripts_settle: Settler[Path] = Settler(self.settings.settle_seconds)
        self.config_settle: Settler[Path] = Settler(self.settings.settle_seconds)
        if not self.options.once:
            self.watcher = self._watcher()
            self.watcher.start()
        units, stale = self.reconcile()
        self.log.info(
            "daemon.ready", units=units, stale_units=stale,
            duration_s=round(self.clock() - started, 3),
        )  # fmt: skip
        self.monitor.start_board()
        try:
            self.requests = RequestServer(
                self.ws.config.state_dir, self.desk.on_request, self.desk.on_refused
            ).start()
        except RequestError as exc:  # `sinagot run` will say nothing answers; the rest goes on
            self.log.error("run.unavailable", error=str(exc))
        self.notifier.ready()
        self._next_rescan = self.clock() + self.settings.rescan_seconds
        self._next_ping = self.clock()

    def _queues(self) -> tuple[int, int]:
        """(queued, in flight) units, read by a `/metrics` scrape from the web thread."""
        return len(self.books.waiting), len(self.books.flights)

    def _settings(self, ws: Engine) -> DaemonSettings:
        return load_settings(
            ws.config,
            settle_seconds=self.options.settle_seconds,
            log_format=self.options.log_format,
        )

    def _executor(self, ws: Engine) -> DaskExecutor:
        address = resolve_address(self.options.scheduler, ws.config.dask)
        return DaskExecutor(
            lambda: connect(address, ws.config.dask),
            ws.config.dask.max_in_flight,
            ws.store.step_durations,
        )

    def _watcher(self) -> Watcher:
        config = self.ws.config
        folders = [(config.dataset, True), (config.scripts, True)]
        folders += [(folder, False) for folder in {f.parent for f in config.files}]
        config.dataset.mkdir(parents=True, exist_ok=True)
        return Watcher(
            self.messages, folders, self.settings.observer, self.settings.polling_seconds,
            keep={config.dataset: self.ws.layout.may_hold},
        )  # fmt: skip

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> int:
        """Run until stopped (or, with --once, until everything is done)."""
        with self.stopping.signals():
            while not self.stopping.stops:
                try:
                    self._step()
                except StateError as exc:
                    self._store_failed(exc)
                except Exception as exc:  # the daemon outlives what it reads: say, resync
                    self._loop_failed(exc)
                self._ping()
                if self.options.once and self._is_idle():
                    break
            return self.shutdown()

    def _say(
        self, event: str, emit: Callable[..., object], key: str = "", **fields: object
    ) -> None:
        """An event about bad input or a fault, at most one a second per kind and `key`;
        `held_back` counts those left unsaid since the last one."""
        held = self.throttle.allow((event, key), self.clock())
        if held is not None:
            emit(event, **fields, **({"held_back": held} if held else {}))

    def _ping(self) -> None:
        """systemd's watchdog: the loop turns, even if its passes fail."""
        now = self.clock()
        if self.notifier.watchdog_interval and now >= self._next_ping:
            self.notifier.watchdog()
            self._next_ping = now + self.notifier.watchdog_interval

    def _store_failed(self, exc: StateError) -> None:
        """The state store refused a write (disk full, read-only): nothing is submitted
        until a retry, with backoff; results stay in their receipts meanwhile."""
        self._pause(self.log.error, "store.error", error=str(exc))

    def _loop_failed(self, exc: Exception) -> None:
        """Anything else that went wrong in a pass of the loop: logged with its traceback,
        then a reconcile after a pause (a fault that repeats repeats slowly)."""
        self._pause(self.log.exception, "daemon.error", error=one_line(exc))

    def _pause(self, emit: Callable[..., object], event: str, **fields: object) -> None:
        self._say(event, emit, retry_in_s=self._pause_backoff, **fields)
        self._paused_until = self.clock() + self._pause_backoff
        self._pause_backoff = min(self._pause_backoff * 2, 60.0)

    def _step(self) -> None:
        try:
            message = self.messages.get(timeout=TICK)
        except queue.Empty:
            message = None
        ended: list[StepEnded] = []
        until = 0.0  # tasks ending this soon after the first are landed with it
        cut = time.monotonic() + PASS_SECONDS
        try:
            while message is not None:
                if isinstance(message, StepEnded):
                    if not ended:
                        until = time.monotonic() + GATHER_WINDOW
                    ended.append(message)
                else:
                    self._handle(message)
                if time.monotonic() > cut:
                    break  # the rest next pass, after the timers
                try:
                    message = self.messages.get_nowait()
                except queue.Empty:
                    # One round trip to the scheduler fetches the results of every task
                    # ended meanwhile, not one per task (as `sinagot run` does).
                    left = until - time.monotonic() if ended else 0.0
                    message = None
                    if left > 0:
                        with contextlib.suppress(queue.Empty):
                            message = self.messages.get(timeout=left)
        finally:  # taken off the queue: whatever else fails, these flights land
            if ended:
                self._ended(ended)
        self._timers()

    def _handle(self, message: object) -> None:
        now = self.clock()
        if isinstance(message, Handoff):
            self.desk.take(message)
        elif isinstance(message, RequestRefused):
            self.desk.refused(message.peer, message.error)
        elif isinstance(message, PathChanged):
            self._path_changed(message.path, now)
        elif isinstance(message, WatchError):
            # One rescan per loop pass, and one event a second, however many errors come:
            # an overflowing queue must not turn into a storm of rescans.
            self._reconcile_due = True
            self._idle = False  # events were lost: a `daemon.idle` follows the reconcile
            self.monitor.watch_error()
            self._say("watch.error", self.log.warning, error=message.error)

    def _path_changed(self, path: str, now: float) -> None:
        """A watched path changed: settle what it concerns (`Arrivals.routes` says what:
        hidden names, the state folder and the logs are ignored). An output that the
        daemon's own run wrote is no news for the unit that wrote it (`OwnOutputs`)."""
        route = self.units_settle.routes.route(self.ws, path)
        if route.kind == "config":
            self.config_settle.touch(Path(path), now)
        elif route.kind == "script":
            self.scripts_settle.touch(Path(path), now)
        elif route.kind == "data" and self.units_settle.data_changed(
            route, path, self.books.flights, self.ws.store, now
        ):  # a sidecar no step reads is no work: no `daemon.idle` per event
            self._idle = False

    def _timers(self) -> None:
        now = self.clock()
        if self.stopping.reload_requested:
            self.stopping.reload_requested = False
            self.reload("SIGHUP")
        if self.config_settle.due(now):
            self.reload("file change")
        scripts = self.scripts_settle.due(now)
        if scripts:
            self._check_scripts(self.ws.broken_scripts())
            keys = {key for script in scripts for key in self.ws.layout.uses_script(script)}
            ids = list(self.ws.layout.discover(Scope()))
            self.replan([Unit(r, t, m) for r in ids for t, m in keys])
        units = self.units_settle.settle(now, self.books.flights, self.ws.store)
        if units:
            self.monitor.settled(units, now)
            for unit in units:  # its files changed: a retry need not wait any more
                self.retries.forget(unit)
            self.replan(units)
        for unit in self.retries.due(now):
            if unit not in self.books.flights and self._paused_until is None:
                self.replan([unit])
        if self._paused_until is not None and now >= self._paused_until:
            self._paused_until = None
            self._reconcile_due = True
        if self._reconcile_due and self._paused_until is None:
            self.reconcile()
            self._pause_backoff = 1.0  # the store answered: the next fault waits 1 s again
        if self.watcher is not None and not self.watcher.alive():
            self.log.warning("watch.error", error="the file-system observer stopped; restarting")
            self.watcher.restart()
            self.reconcile()
        if now >= self._next_rescan:
            self._next_rescan = now + self.settings.rescan_seconds
            self.reconcile()
        self.cluster.check(now)
        self._fill()  # what waited for its turn (`flights.REFILL_WAIT`)
        self.monitor.tick(now, self.books.waiting.keys, self.units_settle.keys)
        self.collector.busy(bool(self.books.flights))
        if self._is_idle() and not self._idle:
            self._idle = True
            self.log.info("daemon.idle")

    def _is_idle(self) -> bool:
        return not (
            not self.books.idle() or len(self.units_settle)
            or len(self.scripts_settle) or len(self.config_settle)
        )  # fmt: skip

    def _check_scripts(self, broken: dict[str, str]) -> None:
        """One `script.invalid` per script that broke (its steps wait, planning says so),
        one `script.fixed` when it loads again."""
        for path, error in broken.items():
            if self.broken.get(path) != error:
                self.log.error("script.invalid", path=path, error=error)
        for path in self.broken.keys() - broken.keys():
            self.log.info("script.fixed", path=path)
        self.broken = broken

    # -- planning and submitting -------------------------------------------------------

    def reconcile(self) -> tuple[int, int]:
        """Plan every unit not in flight and queue what is stale: events are only hints."""
        self._reconcile_due = False
        self._ingest()
        problems: list[PathProblem] = []
        units = self.ws.units(Scope(), problems=problems)
        # A unit whose files are still arriving is planned when they settle, not before.
        free = [u for u in self.books.split(units) if u not in self.units_settle]
        waiting: dict[str, str] = {}  # records held by their `ready_when` marker
        plans = self.ws.plan(free, stale_only=True, problems=problems, waiting=waiting)
        stale = self._queue(plans, young_settle=True)
        self._path_problems(problems, everything=True)
        self.units_settle.found_waiting(waiting)
        self.monitor.changed_everything()
        self._fill()
        return len(units), stale

    def _path_problems(self, problems: list[PathProblem], everything: bool = False) -> None:
        """One `path.error` per dataset path that cannot be read, until its error changes
        (rescans find it again). After a full scan, paths no longer found are forgotten."""
        found = {p.path: p.error for p in problems}
        for path, error in found.items():
            if self.unreadable.get(path) != error:
                self._say("path.error", self.log.warning, key=path, path=path, error=error)
        if everything:
            self.unreadable = found
        else:
            self.unreadable.update(found)

    def replan(self, units: Sequence[Unit], force: bool = False, only: str | None = None) -> None:
        self.monitor.changed(units)
        # A unit whose files are arriving is planned once they settle, unless a person asked.
        asked = force or only is not None
        free = [u for u in self.books.split(units) if asked or u not in self.units_settle]
        if free:
            problems: list[PathProblem] = []
            plans = self.ws.plan(free, stale_only=True, force=force, only=only, problems=problems)
            self._queue(plans, replanned=free)
            self._path_problems(problems)
            self._fill()

    def _queue(
        self, plans: list[StepPlan], replanned: Sequence[Unit] = (), *, young_settle: bool = False
    ) -> int:
        """Queue units with stale steps, newest input first; drop those now up to date.

        `young_settle`, for a reconcile (what no event said: files copied in while the
        daemon was down, or during an inotify overflow): a unit whose inputs changed within
        the settle time settles first, as if their events had come, rather than run on a
        file still being written (a file written in place makes no event until its close)."""
        for unit in replanned:
            self.books.drop(unit)
            self.retries.cancel(unit)
        self.monitor.metrics.planned.inc(len(replanned))
        by_unit: dict[Unit, list[StepPlan]] = {}
        for plan in plans:
            by_unit.setdefault(plan.unit, []).append(plan)
        recent = time.time() - self.settings.settle_seconds if young_settle else None
        now = self.clock()
        for unit, unit_plans in by_unit.items():
            if unit in self.books.waiting:  # keeps its place: no need to look again
                self.books.queue(unit, unit_plans, 0)
                continue
            times = input_times(self.ws.job(unit_plans[0]))
            if recent is not None and (young := [p for p, t in times if t >= recent]):
                for path in young:
                    self.units_settle.changed(path, [unit], now)
                continue
            self.books.queue(unit, unit_plans, int(max((t for _, t in times), default=0)))
        return len(by_unit)

    def _fill(self) -> None:
        """Submit what waits (sinagotd/flights.py), unless stopping, the cluster is lost or
        the store paused."""
        if self.stopping.stops or self.cluster.down or self._paused_until is not None:
            return
        if self.flights.fill():  # the store took it: it answers, and there is news
            self._pause_backoff = 1.0
            self._idle = False

    # -- results (recorded and landed: sinagotd/flights.py) -----------------------------------

    def _ended(self, messages: list[StepEnded]) -> None:
        self.flights.ended(messages)
        self._fill()

    def _news(self) -> None:
        """Something happened: a `daemon.idle` follows once all is done again."""
        self._idle = False

    def _ingest(self) -> list[StepResult]:
        """Record and announce what the receipts of units not on the cluster hold."""
        results = self.ws.ingest_receipts(busy=self.books.flights, on_invalid=self._invalid_receipt)
        self._recorded(results)
        if self.flights.recovered(results):
            self._idle = False
        return results

    def _recorded(self, results: list[StepResult]) -> None:
        """The store took these results: the units that read their outputs settle."""
        if self.units_settle.recorded(self.ws, results, self.clock()):
            self._idle = False

    def _invalid_receipt(self, path: str, error: str) -> None:
        self._say("receipt.invalid", self.log.error, path=path, error=error,
                  action="set aside as .invalid-<name>")  # fmt: skip

    # -- reload (what changed: sinagotd/reload.py) -------------------------------------------

    def reload(self, why: str) -> None:
        """Apply a changed configuration (a file saved, or SIGHUP); a bad one, or one that
        moves what cannot move while running, is refused and the running one kept."""
        path = str(self.ws.config.files[0])
        try:
            ws = Engine(self.options.workspace, verbose=False)
            settings = self._settings(ws)
            notify = load_notify(ws.config)
        except ConfigError as exc:
            self.log.error("config.invalid", path=path, error=str(exc), trigger=why)
            return
        change = compare(self.ws.config, ws.config, self.settings, settings)
        if change.refused is not None:
            ws.close()
            self.log.error("config.invalid", path=path, error=change.refused, trigger=why)
            return
        ws.lock = self.ws.lock  # the lock stays with this process
        ws.store.close()
        old, self.ws, self.settings = self.ws, ws, settings
        ws.layout.remember_patterns()
        old.store.close()
        self.log.info("config.reloaded", path=path, error=None, trigger=why)
        self.monitor.reloaded()
        self.monitor.alert_with(notify, path, self.ws.store.failed_steps)
        if self.watcher is not None and (
            change.folders_moved or old.layout.watched != ws.layout.watched
        ):
            self.watcher.stop()
            self.watcher = self._watcher()
            self.watcher.start()
        self._check_scripts(self.ws.broken_scripts())
        self.reconcile()

    # -- shutdown (signals, what is withdrawn, the grace period: sinagotd/stopping.py) -------

    def shutdown(self) -> int:
        """Stop taking work; let running steps finish within the grace period; record."""
        once = self.options.once and not self.stopping.stops
        first = self.stopping.stops  # a second signal from now on, however soon, stops at once
        if not once:
            withdrawn = self.stopping.withdraw(self.cluster.down)
            self.log.info("daemon.stopping", in_flight=len(self.books.flights), withdrawn=withdrawn)
            self.notifier.stopping()
        if self.requests is not None:
            self.requests.close()
        if self.watcher is not None:
            self.watcher.stop()
        self.units_settle.close()  # no `arriving.json` left behind
        deadline = self.clock() + self.settings.stop_grace_seconds
        self.stopping.grace(self.messages, self._ended, deadline, first)
        left = len(self.books.flights)
        self.monitor.close(alerts_timeout=max(min(deadline - self.clock(), 5.0), 1.0))
        with contextlib.suppress(Exception):
            self.executor.close()
        self.ws.close()
        self.collector.busy(False)
        if not once:
            self.log.info("daemon.stopped", in_flight=left)
        return 1 if once and self.flights.failed_steps else 0
