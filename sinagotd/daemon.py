"""The daemon's loop: one thread owns all the state.

Watchdog callbacks and Dask completions only put messages on `self.messages`; the loop
takes them, decides through library calls (plan, record), and submits. Phases, after
uvicorn: `startup()`, `serve()`, `shutdown()`.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sinagot import __version__
from sinagot.batching import kind
from sinagot.cluster import ClusterError, Connection, connect, resolve_address
from sinagot.engine import Engine
from sinagot.errors import ConfigError, SinagotError
from sinagot.execute import DaskExecutor, Submitted, newest_input
from sinagot.layout import Scope, Unit
from sinagot.patterns import PathProblem
from sinagot.planner import StepPlan
from sinagot.requests import Handoff, Peer, RequestError, RequestServer, RunRequest
from sinagot.runner import Outcome, StepResult, one_line, refused_result
from sinagot.state import StateError

from . import events
from .alerts import load_notify
from .arrivals import Arrivals
from .backlog import Backlog
from .clusterwatch import ClusterWatch, in_flight, to_resubmit, why_unreachable
from .monitor import Monitor
from .reload import compare
from .requested import Asked, RequestRefused, check, hand_over, refusal_key, refused_reply, who
from .retries import Retries
from .sdnotify import Notifier
from .settings import DaemonSettings, load_settings
from .settle import Settler
from .throttle import Throttle
from .watcher import PathChanged, Watcher, WatchError

TICK = 0.1  # seconds: how often the loop looks at timers when nothing arrives


@dataclass(frozen=True)
class StepEnded:
    """A step of a chain on the cluster ended (its result), or the chain's task did (None)."""

    submitted: Submitted
    result: StepResult | None


@dataclass
class Flight:
    """One unit's chain on the cluster."""

    submitted: Submitted
    generation: str  # names this run's Dask keys; kept when resubmitting after a lost cluster
    blocked: bool = False  # a step could not run (not the script's fault): retry later
    lost: bool = False  # the cluster lost it: resubmit
    results: list[StepResult] = field(default_factory=list)


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
        self.failed_steps = 0
        self.broken: dict[str, str] = {}  # script path -> why it cannot be loaded (reported)
        self.unreadable: dict[str, str] = {}  # dataset path -> why it cannot be read (reported)
        self.unrecorded: set[str] = set()  # runs announced whose results the store refused
        self.later: dict[Unit, tuple[bool, str | None]] = {}  # busy unit -> (force, step) asked
        self.stops = 0
        self.reload_requested = False
        self._idle = False
        self.cluster = ClusterWatch()  # the scheduler: up, or lost and when to try again
        self._reconcile_due = False
        self._paused_until: float | None = None  # a store write failed: retry then
        self._pause_backoff = 1.0
        self.throttle = Throttle(1.0)
        self.watcher: Watcher | None = None
        self.connection: Connection | None = None
        self.requests: RequestServer | None = None
        self.monitor = Monitor(self.log, self._queues, self.clock)

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
        self._ingest()
        self.executor = self._executor(self.ws)
        try:
            self.connection = self.executor.connection
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
            scheduler=self.connection.scheduler,
            dashboard=self.connection.dashboard,
            observer=self.settings.observer,
            settle_seconds=self.settings.settle_seconds,
            status_page=page,
            alerts=list(self.monitor.alerts.targets),
        )
        self._check_scripts(self.ws.broken_scripts())
        self.units_settle = Arrivals(
            self.settings.settle_seconds, self.log, self.ws.config.state_dir,
            writes=lambda: self.watcher.writes if self.watcher is not None else None,
            waits_for=lambda record_id: self.ws.waits_for(record_id),
        )  # fmt: skip
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
                self.ws.config.state_dir, self._on_request, self._on_refused
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
            self.messages, folders, self.settings.observer, self.settings.polling_seconds
        )

    # -- the loop -------------------------------------------------------------------------

    def serve(self) -> int:
        """Run until stopped (or, with --once, until everything is done)."""
        with self._signals():
            while not self.stops:
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
        try:
            while message is not None:
                if isinstance(message, StepEnded):
                    ended.append(message)
                else:
                    self._handle(message)
                try:
                    message = self.messages.get_nowait()
                except queue.Empty:
                    message = None
        finally:  # taken off the queue: whatever else fails, these flights land
            if ended:
                self._ended(ended)
        self._timers()

    def _handle(self, message: object) -> None:
        now = self.clock()
        if isinstance(message, Handoff):
            if message.take():
                reply = {"ok": False, "error": "the daemon failed on this request"}
                try:
                    reply = self._requested(message.request, message.peer)
                finally:
                    message.answer(reply)
        elif isinstance(message, RequestRefused):
            self._refused(message.peer, message.error)
        elif isinstance(message, PathChanged):
            self._path_changed(message.path, now)
        elif isinstance(message, WatchError):
            # One rescan per loop pass, and one event a second, however many errors come:
            # an overflowing queue must not turn into a storm of rescans.
            self._reconcile_due = True
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
        elif route.kind == "data":
            units, owner = route.units, route.owner
            flight = self.books.flights.get(owner) if owner is not None else None
            results = flight.results if flight is not None else None  # None: not in flight
            if owner is not None and self.units_settle.own.expected(
                owner, route.relative, path, results, self.ws.store
            ):  # its own run's output: no plan (a reader in another unit still gets one)
                units = tuple(u for u in units if u != owner)
            self.units_settle.changed(path, units, now, owner is not None)
            if units:  # a sidecar no step reads is no work: no `daemon.idle` per event
                self._idle = False

    def _timers(self) -> None:
        now = self.clock()
        if self.reload_requested:
            self.reload_requested = False
            self.reload("SIGHUP")
        if self.config_settle.due(now):
            self.reload("file change")
        scripts = self.scripts_settle.due(now)
        if scripts:
            self._check_scripts(self.ws.broken_scripts())
            keys = {key for script in scripts for key in self.ws.layout.uses_script(script)}
            ids = list(self.ws.layout.discover(Scope()))
            self.replan([Unit(r, t, m) for r in ids for t, m in keys])
        for unit, path in self.units_settle.own.landed(self.books.flights, self.ws.store):
            self.units_settle.changed(path, [unit], now, output=True)  # changed since its run
        self.units_settle.tick(now)
        units = self.units_settle.due(now)
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
        self._check_cluster(now)
        self.monitor.tick(now, self.books.waiting.keys, self.units_settle.keys)
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
        stale = self._queue(self.ws.plan(free, stale_only=True, problems=problems))
        self._path_problems(problems, everything=True)
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

    def _queue(self, plans: list[StepPlan], replanned: Sequence[Unit] = ()) -> int:
        """Queue units with stale steps, newest input first; drop those now up to date."""
        for unit in replanned:
            self.books.drop(unit)
            self.retries.cancel(unit)
        self.monitor.metrics.planned.inc(len(replanned))
        by_unit: dict[Unit, list[StepPlan]] = {}
        for plan in plans:
            by_unit.setdefault(plan.unit, []).append(plan)
        for unit, unit_plans in by_unit.items():
            waiting = unit in self.books.waiting  # keeps its place: no need to look again
            priority = 0 if waiting else newest_input([self.ws.job(unit_plans[0])])
            self.books.queue(unit, unit_plans, priority)
        return len(by_unit)

    def _fill(self) -> None:
        if self.stops or self.cluster.down or self._paused_until is not None:
            return
        room = self.ws.config.dask.max_in_flight - len(self.books.flights)
        # Units of steps never timed go out a few at a time: their first results say how
        # many units a Dask task should hold. The rest wait in the queue, in their order.
        batch = self.books.take(room, self._admit)
        if batch:
            self._submit(batch)

    def _admit(self, batch: Sequence[tuple[Unit, list[StepPlan]]]) -> int:
        return self.executor.admit(
            [[kind(u.task, u.modality, p.step.name) for p in plans] for u, plans in batch]
        )

    def _submit(self, batch: dict[Unit, list[StepPlan]]) -> None:
        """Submit these units' chains, newest first (the order they come in)."""
        units = [(unit, [self.ws.job(plan) for plan in plans]) for unit, plans in batch.items()]
        fresh = [(unit, jobs) for unit, jobs in units if unit not in self.books.lost]
        names = dict(zip([u for u, _ in fresh], self.ws.generations(fresh), strict=True))
        chains = [(jobs, self.books.lost.get(unit) or names[unit]) for unit, jobs in units]
        try:
            self.ws.store.mark_submitted(
                [
                    (job.unit, job.spec.name, generation)
                    for jobs, generation in chains
                    for job in jobs
                ]
            )
        except StateError as exc:
            for unit, plans in batch.items():
                self._requeue(unit, plans)
            self._store_failed(exc)
            return
        self._pause_backoff = 1.0
        for unit in batch:
            self.books.lost.pop(unit, None)
        ended = self.messages.put
        try:
            submitted = self.executor.submit(chains, lambda s, result: ended(StepEnded(s, result)))
        except Exception as exc:  # the client closed under us: the scheduler is gone
            for (unit, plans), (_, generation) in zip(batch.items(), chains, strict=True):
                self.books.lost[unit] = generation
                self._requeue(unit, plans)
            self._cluster_lost(one_line(exc))
            return
        self._idle = False
        self.monitor.submitted(batch, self.clock())
        with events.batch():
            for (unit, plans), one, (_, generation) in zip(
                batch.items(), submitted, chains, strict=True
            ):
                self.books.fly(unit, Flight(one, generation))
                for plan in plans:
                    self.log.info("step.submitted", **_where(unit), step=plan.step.name,
                                  reasons=list(plan.reasons))  # fmt: skip

    def _requeue(self, unit: Unit, plans: list[StepPlan]) -> None:
        self.books.requeue(unit, plans)

    # -- results ----------------------------------------------------------------------------

    def _ended(self, messages: list[StepEnded]) -> None:
        # Reports of flights given up when the cluster was lost (resubmitted since) are old.
        current = [
            (m.submitted, m.result)
            for m in messages
            if (f := self.books.flights.get(m.submitted.unit)) and f.submitted is m.submitted
        ]
        results: list[StepResult] = []
        with events.batch():  # announced (in one write) before they are recorded
            for submitted, _, result in self.executor.collect(current):
                flight = self.books.flights[submitted.unit]
                client_down = self.connection is None or self.connection.client.status != "running"
                if result.outcome is Outcome.NOT_RUN and (_lost(result) or client_down):
                    flight.lost = True
                else:
                    results.append(result)
                    flight.results.append(result)
                    self._report(result)
                flight.blocked |= result.outcome is Outcome.NOT_RUN and not flight.lost
        recorded = self._record(results)  # recorded before any receipt is dropped
        if not recorded:  # announced already: not again when their receipts are ingested
            self.unrecorded.update(r.run_id for r in results if r.run_id)
        landed = {s.unit: self.books.flights[s.unit] for s, _ in current if s.ended}
        self.monitor.changed(landed)
        for unit, flight in landed.items():
            self._landed(unit, flight, recorded)
        self._fill()

    def _record(self, results: list[StepResult]) -> bool:
        """Record results; False if the store refused (their receipts then stay on disk,
        and the reconcile after the store's retry records them)."""
        try:
            self.ws.record(results)
        except StateError as exc:
            self._store_failed(exc)
            return False
        return True

    def _ingest(self) -> list[StepResult]:
        """Record and announce what the receipts of units not on the cluster hold."""
        results = self.ws.ingest_receipts(busy=self.books.flights, on_invalid=self._invalid_receipt)
        self._recovered(results)
        return results

    def _invalid_receipt(self, path: str, error: str) -> None:
        self._say("receipt.invalid", self.log.error, path=path, error=error,
                  action="set aside as .invalid-<name>")  # fmt: skip

    def _recovered(self, results: list[StepResult]) -> None:
        """Runs that finished while nobody listened (receipts): announced now (and so a
        `daemon.idle` follows them)."""
        fresh = [r for r in results if r.run_id not in self.unrecorded]
        self.unrecorded.difference_update(r.run_id for r in results)
        with events.batch():
            for result in fresh:
                self._report(result, recovered=True)
        if fresh:
            self._idle = False

    def _report(self, result: StepResult, **extra: object) -> None:
        self.monitor.step_ended(result)
        where = {**_where(result.unit), "step": result.step}
        duration = round(result.duration, 3)
        if result.ok:
            self.log.info("step.finished", **where, duration_s=duration, **extra)
        elif result.outcome is Outcome.SKIPPED:
            self.log.info("step.skipped", **where, reason=result.error, **extra)
        else:
            self.failed_steps += 1
            self.log.error("step.failed", **where, error=result.error, duration_s=duration, **extra)

    def _landed(self, unit: Unit, flight: Flight, recorded: bool = True) -> None:
        if flight.lost:  # submitted again, under the same name, once the cluster is back
            self.books.lose(unit, flight.generation)
            return
        changed = self.books.land(unit)
        if not recorded:  # its receipts stay, for the reconcile after the store's retry
            return
        self.ws.forget(flight.results)
        if flight.blocked:  # could not run (not the script's fault): retry, waiting longer
            most = self.ws.config.max_attempts
            attempts = self.retries.attempt(unit, self.clock(), self.settings.retry_seconds, most)
            if attempts >= most:
                self._give_up(flight, attempts)
        else:
            self.retries.forget(unit)
        if changed:
            force, only = self.later.pop(unit, (False, None))
            self.replan([unit], force=force, only=only)

    def _give_up(self, flight: Flight, attempts: int) -> None:
        """Steps that could not run `max_attempts` times in a row are recorded as failed:
        ERROR in `sinagot status`, not retried until an input or the script changes."""
        unit = flight.submitted.unit
        # Steps that ended before their worker died may not have been heard of: their
        # receipts say so. The first step with neither a result nor a receipt is at fault;
        # those after it never began.
        recovered = self._ingest()
        ended = {r.run_id for r in recovered} | {r.run_id for r in flight.results if r.state}
        errors = {r.step: r.error for r in flight.results if r.outcome is Outcome.NOT_RUN}
        job = next((j for j in flight.submitted.jobs if j.run_id not in ended), None)
        if job is None or job.spec.name not in errors:
            return
        error = f"{errors[job.spec.name]} (gave up after {attempts} attempts)"
        if self._record([refused_result(job, Outcome.FAILED, error)]):
            self.monitor.gave_up(unit, job.spec.name, error)
            self.log.error("step.gave_up", **_where(unit), step=job.spec.name,
                           attempts=attempts, error=error)  # fmt: skip

    # -- the cluster (when and why: sinagotd/clusterwatch.py) --------------------------------

    def _check_cluster(self, now: float) -> None:
        """A scheduler that went away: the client gives up; make a new one, resubmit."""
        if self.connection is None:
            return
        self.monitor.cluster(self.cluster.healthy(self.connection.client.status))
        if not self.cluster.down:
            lost, paused = bool(self.books.lost), self._paused_until is not None
            if self.cluster.resubmit_now(self.connection.client.status, lost, paused):
                self._resubmit_lost()
            why = self.cluster.gone(self.connection.client.status)
            if why is None:
                return
            self._cluster_lost(why)
        if not self.cluster.due(now):
            return
        try:
            self.connection = self.executor.connection
        except Exception as exc:
            error = why_unreachable(exc)
            wait, say = self.cluster.failed(now, self.clock(), error)
            if say:
                self.log.warning("cluster.unreachable", error=error, retry_in_s=wait,
                                 tries=self.cluster.failures)  # fmt: skip
            return
        self.cluster.reconnected()
        self._idle = False  # a `daemon.idle` follows the recovery, even with nothing to redo
        self.books.lose_all(lambda flight: flight.generation)
        self.log.info("cluster.reconnected", scheduler=self.connection.scheduler,
                      resubmitting=len(self.books.lost))  # fmt: skip
        self._resubmit_lost()

    def _resubmit_lost(self) -> None:
        """Units the cluster lost: record what their workers finished, plan them again
        (fresh: the plans made before may be out of date), submit under their old names."""
        lost = to_resubmit(self.books.lost, self.books.flights)
        self._ingest()
        for unit in lost:
            self.books.drop(unit)
        self.replan(lost)
        for unit in lost:  # up to date after all: nothing to resubmit under that name
            if unit not in self.books.flights and unit not in self.books.waiting:
                self.books.lost.pop(unit, None)

    def _cluster_lost(self, why: str) -> None:
        """Say the loss once per outage; tries begin at once, counted afresh."""
        if not self.cluster.lose(self.clock()):
            return
        units = in_flight(self.books.flights, self.books.lost)
        scheduler = self.connection.scheduler if self.connection else None
        self.log.warning("cluster.lost", scheduler=scheduler, in_flight=units, error=why)
        self._idle = False  # what was said before the loss is out of date
        with contextlib.suppress(Exception):
            self.executor.close()

    # -- `sinagot run` requests (what they name, what the reply says: sinagotd/requested.py) --

    def _on_request(self, request: RunRequest, peer: Peer) -> dict[str, object]:
        """A request server thread: hand the request to the loop, wait for its answer."""
        return hand_over(self.messages.put, request, peer)

    def _refused(self, peer: Peer, error: str) -> None:
        key = refusal_key(peer, error)  # one user's flood of one mistake: once a second
        self._say("run.refused", self.log.warning, key=key, error=error, **who(peer))

    def _on_refused(self, peer: Peer, error: str) -> None:
        self.messages.put(RequestRefused(peer, error))

    def _requested(self, request: RunRequest, peer: Peer) -> dict[str, object]:
        """`sinagot run` while the daemon runs: plan as asked (forced, one step) and queue;
        the reply says what was queued, or why nothing was. Asked to (`sinagot run --wait`),
        it also names them: `queued_steps` [[record_id, task, modality, step], ...], and
        `busy_units` [[record_id, task, modality, generation in flight], ...], the units on
        the cluster already, planned again as asked when they land (`Asked.reply`)."""
        try:
            scope, ids = check(self.ws, request)
        except ValueError as exc:
            self._refused(peer, str(exc))
            return refused_reply(str(exc))
        units = self.ws.units(scope, ids)
        free = self.books.split(units)  # those in flight are planned again when they land
        busy = [u for u in units if u in self.books.flights]
        generations = {u: self.books.flights[u].generation for u in busy}  # what --wait follows
        plans = self.ws.plan(free, force=request.force, only=request.step, stale_only=True)
        asked = Asked(request, units, plans, busy, generations)
        self.log.info("run.requested", **asked.fields(), **who(peer))
        self.later.update(asked.later())  # a forced or one-step request: applied when each lands
        self._queue(plans, replanned=free)
        self._fill()
        return asked.reply()

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
        if self.watcher is not None and change.folders_moved:
            self.watcher.stop()
            self.watcher = self._watcher()
            self.watcher.start()
        self._check_scripts(self.ws.broken_scripts())
        self.reconcile()

    # -- shutdown ---------------------------------------------------------------------------

    def shutdown(self) -> int:
        """Stop taking work; let running steps finish within the grace period; record."""
        once = self.options.once and not self.stops
        first = self.stops  # a second signal from now on, however soon, stops at once
        if not once:
            withdrawn = self._withdraw()
            self.log.info("daemon.stopping", in_flight=len(self.books.flights), withdrawn=withdrawn)
            self.notifier.stopping()
        if self.requests is not None:
            self.requests.close()
        if self.watcher is not None:
            self.watcher.stop()
        self.units_settle.close()  # no `arriving.json` left behind
        deadline = self.clock() + self.settings.stop_grace_seconds
        while self.books.flights and self.clock() < deadline and self.stops <= max(first, 1):
            try:
                message = self.messages.get(timeout=TICK)
            except queue.Empty:
                continue
            if isinstance(message, StepEnded):
                self._ended([message])
        left = len(self.books.flights)
        self.monitor.close(alerts_timeout=max(min(deadline - self.clock(), 5.0), 1.0))
        with contextlib.suppress(Exception):
            self.executor.close()
        self.ws.close()
        if not once:
            self.log.info("daemon.stopped", in_flight=left)
        return 1 if once and self.failed_steps else 0

    def _withdraw(self) -> int:
        """Units on the cluster that no worker has begun leave it now, recorded as not run
        (planned again at the next start); only those running get the grace period."""
        if not self.books.flights or self.cluster.down:
            return 0
        try:
            withdrawn = self.executor.withdraw([f.submitted for f in self.books.flights.values()])
        except Exception as exc:  # the cluster is going too: the grace period is all there is
            self.log.warning("cluster.unreachable", error=one_line(exc), retry_in_s=None)
            return 0
        results = [
            refused_result(job, Outcome.NOT_RUN, "withdrawn: sinagotd stopped before it began")
            for submitted in withdrawn
            for job in submitted.jobs
        ]
        if self._record(results):
            for submitted in withdrawn:
                del self.books.flights[submitted.unit]
        return len(withdrawn)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """Handlers only set flags; the loop acts. A second stop signal stops at once."""

        def stop(signum: int, frame: object) -> None:
            self.stops += 1

        def hup(signum: int, frame: object) -> None:
            self.reload_requested = True

        previous = {
            sig: signal.signal(sig, handler)
            for sig, handler in (
                (signal.SIGTERM, stop),
                (signal.SIGINT, stop),
                (signal.SIGHUP, hup),
            )
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _where(unit: Unit) -> dict[str, str | None]:
    return {"record_id": unit.record_id, "task": unit.task, "modality": unit.modality}


def _lost(result: StepResult) -> bool:
    """The cluster lost the task (scheduler gone): not the step's fault, not a result."""
    error = result.error or ""
    return error.startswith(
        ("CancelledError", "FutureCancelledError", "CommClosedError", "ClosedClientError",
         "RuntimeError: IOLoop is closed", "FutureLostError")
    )  # fmt: skip
