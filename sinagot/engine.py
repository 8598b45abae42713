"""`Engine`: what the API, the CLI and the daemon share: config, layout, planning, running.

Cheap to build: nothing is started at construction; the state store and the executor are
opened when first needed and released by `close()`. Users meet it through `Workspace`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .collector import paused, young_only
from .config import ENV_ADDRESS, Config, load_config
from .errors import SinagotError
from .fingerprints import DirectoryListing, DirectStat, Lookup, content_hash
from .layout import LOG_FOLDER, Layout, Scope, Unit
from .patterns import Matcher, PathProblem, PathUnreadable, check_record_id
from .planner import PlanContext, SettledCheck, StepPlan, done_plans, plan_unit
from .safepaths import PathRefused, inside_dataset, open_regular
from .scripts import check_script
from .state import RECEIPTS, RunRecord, StateError, StateStore, WriterLock, run_key

if TYPE_CHECKING:  # what runs steps is imported only to run them: `status` starts faster
    from .execute import Executor
    from .runner import StepJob, StepResult

#: Told of a receipt that is not a result: its path, and why.
OnInvalid = Callable[[str, str], None]

#: Planning more units than this, and more than a `_SHARE`-th of those last discovered (or
#: of the entries of the largest folder last listed), lists folders and reads every row of
#: the store once, instead of asking path by path and record by record. A daemon replanning
#: the few hundred records that changed in a burst would otherwise list every folder and
#: read the whole store each time: quadratic.
_LISTING_THRESHOLD = 64
_SHARE = 4


@dataclass
class _Reading:
    """What one plan (or one `iter_plan`, chunk after chunk) reads once."""

    dataset: str
    listing: DirectoryListing | None
    broken: dict[str, str]
    code_hashes: dict[str, str] | None
    receipts: dict[str, RunRecord]
    settled: SettledCheck | None
    _all: dict[str, RunRecord] | None = None

    def all_runs(self, store: StateStore) -> dict[str, RunRecord]:
        """Every row of the store (and the pending receipts), read at the first need."""
        if self._all is None:
            self._all = store.read_all()
            self._all.update(self.receipts)
        return self._all


def _receipt_names(results: Iterable[StepResult]) -> Iterator[str]:
    """The receipts that hold these results: those of runs that ended (a run that never
    began leaves none)."""
    from .runner import receipt_name

    return (receipt_name(r.run_id) for r in results if r.run_id and r.state is not None)


#: In the state folder: the records a running sinagotd sees arriving (files still being
#: written or settling), for `sinagot status` in another process (`Engine.arriving`).
ARRIVING_FILE = "arriving.json"
_ARRIVING_MAX = 64 << 20  # bytes: the daemon caps what it writes far below this


class Engine:
    """A workspace's engine: its configuration, dataset and scripts folders, state store.

    `config`: a folder holding `workspace.toml`, a `.toml` file, or a list of files merged
    in order. `verbose` echoes step log lines to stdout as steps run (main process only).
    `scheduler`, a Dask scheduler address, runs steps on Dask whatever `[run] mode` says.
    """

    def __init__(
        self,
        config: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        *,
        verbose: bool = True,
        scheduler: str | None = None,
        data_path: str | os.PathLike[str] | None = None,
        scripts_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.config: Config = load_config(config, data_path=data_path, scripts_path=scripts_path)
        # A scheduler named by the caller or $SINAGOT_DASK_ADDRESS means Dask, whatever the mode.
        self._scheduler = scheduler or os.environ.get(ENV_ADDRESS) or None
        self.layout = Layout(self.config)
        self.verbose = verbose
        #: Written as `workspace_version` in every log line (`Workspace.version` may differ).
        self.version: str = self.config.version
        self.store = StateStore(self.config.state_dir)
        self.lock = WriterLock(self.config.state_dir)
        self._executor: Executor | None = None
        #: Receipts (file names) whose result this engine recorded: the store holds them,
        #: and a receipt holding a result never changes, so planning does not read them
        #: again. In a daemon's burst every plan read every receipt of the units in flight.
        self._recorded: set[str] = set()
        #: Results read from receipts not recorded yet (a daemon's units in flight), by file
        #: name: read once, not at every plan (each plan of a burst read and parsed hundreds).
        self._receipts_read: dict[str, StepResult] = {}
        self._size = 0  # units last discovered, or entries last listed: "a large share" of what

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release what the engine opened (executor, cluster, state store, lock)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None
        self.store.close()
        self.lock.release()

    @property
    def dataset(self) -> Path:
        return self.config.dataset

    @functools.cached_property
    def receipts(self) -> Path:
        """Where workers leave receipts: in the dataset, which every worker shares, even
        when the state store was moved to the daemon's local disk."""
        return self.config.dataset / ".sinagot" / RECEIPTS

    def check_folders(self) -> None:
        """Refuse to start writing into a dataset whose own folders are in the way: a LOG or
        receipts folder that is a file, or a link out of the dataset. One line naming it."""
        dataset = str(self.config.dataset)
        for folder, what in ((self.dataset / LOG_FOLDER, "LOG folder"),
                             (self.receipts, "receipts folder")):  # fmt: skip
            if os.path.lexists(folder) and not os.path.isdir(folder):
                raise SinagotError(f"{what} {folder} is not a folder: move it out of the way")
            inside_dataset(dataset, str(folder), what)

    def check_id(self, record_id: str) -> str:
        return check_record_id(record_id, self.config.id_regex)

    def units(
        self,
        scope: Scope,
        record_ids: Iterable[str] | None = None,
        problems: list[PathProblem] | None = None,
    ) -> list[Unit]:
        """The units of these records (all discovered ones by default) inside a scope.
        Dataset entries that discovery could not read are added to `problems`, if given."""
        ids = self.layout.discover(scope, problems) if record_ids is None else record_ids
        keys = self.layout.unit_keys(scope)
        with paused(record_ids is None):
            units = [Unit(rid, task, mod) for rid in ids for task, mod in keys]
        if record_ids is None:
            self._size = len(units)
        return units

    def _large(self, count: int) -> bool:
        """Are `count` units enough that listing folders and reading the whole store cost
        less than asking for each?"""
        return count > max(_LISTING_THRESHOLD, self._size // _SHARE)

    def plan(
        self,
        units: Sequence[Unit],
        *,
        force: bool = False,
        only: str | None = None,
        stale_only: bool = False,
        problems: list[PathProblem] | None = None,
        ignore_missing: bool = False,
        waiting: dict[str, str] | None = None,
    ) -> list[StepPlan]:
        """Plan these units: every step of each (or only those that run, with `stale_only`),
        with its status and reasons. Reads only. Paths found unreadable (their steps are
        ERROR) are also added to `problems`, if given, and the records held by their
        `[records] ready_when` marker to `waiting` (id -> why). With `ignore_missing` (sinagot
        0.3's run option), a step whose inputs are missing and that no earlier step makes
        runs anyway: its script decides (see `planner`).

        Many units: folders are listed once, and units are first checked against the store's
        settled signatures; only those that differ are planned rule by rule.
        """
        with paused(self._large(len(units))):
            reading = self._reading(len(units), force)
            return self._plan(
                reading, units, force, only, stale_only, problems, ignore_missing, waiting
            )

    def iter_plan(
        self,
        units: Sequence[Unit],
        chunk: int = 20_000,
        *,
        stale_only: bool = False,
        stopped: Callable[[], bool] | None = None,
    ) -> Iterator[StepPlan]:
        """`plan(units)`, in order, `chunk` units at a time, what is read of the dataset and
        the store read once: a million units' plans (two million StepPlans, ~1.5 GB) are
        never all in memory at once (the status page's full plan). Ends early, between two
        chunks, once `stopped()` says so: a daemon stopping does not wait a minute for it."""
        with paused(self._large(len(units))):
            reading = self._reading(len(units), False)
        for first in range(0, len(units), chunk):
            if stopped is not None and stopped():
                return
            part = units[first : first + chunk]
            with paused(self._large(len(part))):
                plans = self._plan(reading, part, False, None, stale_only, None, False)
            yield from plans

    def _reading(self, count: int, force: bool) -> _Reading:
        """What planning `count` units reads once: folder listings and the store's settled
        signatures for a large share of the workspace, the scripts, pending receipts."""
        dataset = str(self.config.dataset)
        listing = DirectoryListing(dataset) if self._large(count) else None
        scripts = self._scripts_now()
        code_hashes = (
            {key: digest for key, (digest, _) in scripts.items() if digest}
            if self.config.track_scripts
            else None
        )
        receipts = self._pending_receipts()
        settled = None
        if listing is not None and not force and not receipts:
            signatures = self.store.read_settled(
                with_code=code_hashes is not None, with_outputs=True
            )
            settled = SettledCheck(signatures, listing, code_hashes)
        broken = {key: error for key, (_, error) in scripts.items() if error}
        return _Reading(dataset, listing, broken, code_hashes, receipts, settled)

    def _plan(
        self,
        reading: _Reading,
        units: Sequence[Unit],
        force: bool,
        only: str | None,
        stale_only: bool,
        problems: list[PathProblem] | None,
        ignore_missing: bool,
        waiting: dict[str, str] | None = None,
    ) -> list[StepPlan]:
        dataset, listing, settled = reading.dataset, reading.listing, reading.settled
        lookup: Lookup = listing if listing is not None else DirectStat(dataset)
        steps_of = self.layout.steps
        done: dict[int, list[StepPlan]] = {}
        pending = list(enumerate(units))
        if settled is not None:
            pending = []
            for position, unit in enumerate(units):
                steps = steps_of(unit.task, unit.modality)
                if settled(unit, steps):
                    if not stale_only:
                        done[position] = done_plans(unit, steps)
                else:
                    pending.append((position, unit))
        if self._large(len(pending)):
            runs = reading.all_runs(self.store)
        else:  # a few units left: stat their paths rather than list whole folders
            runs = self.store.read_record({unit.record_id for _, unit in pending})
            runs.update(reading.receipts)
            lookup = DirectStat(dataset)
        not_ready = self._not_ready({unit.record_id for _, unit in pending}, lookup)
        if waiting is not None and not_ready:
            waiting.update(not_ready)
        ctx = PlanContext(
            lookup=lookup,
            runs=runs,
            code_hashes=reading.code_hashes,
            hasher=(lambda rel: content_hash(f"{dataset}/{rel}"))
            if self.config.content_hash
            else None,
            live_writer=not self.lock.held and self.lock.holder() is not None,
            broken=reading.broken,
            problems=problems,
            force=force,
            only=only,
            ignore_missing=ignore_missing,
            not_ready=not_ready,
        )
        for position, unit in pending:
            plans = plan_unit(unit, steps_of(unit.task, unit.modality), ctx)
            done[position] = [p for p in plans if p.run] if stale_only else plans
        if listing is not None:
            self._size = max(self._size, listing.largest)
        return [plan for position in sorted(done) for plan in done[position]]

    # -- readiness: `[records] ready_when` -----------------------------------------------------

    def waits_for(self, record_id: str, lookup: Lookup | None = None) -> str | None:
        """Why this record's steps wait for its copy to be declared complete (its
        `[records] ready_when` marker is missing), or None: no rule, or the marker is there.

        Applied by planning, so `sinagot run`, `sinagot status`, the API and the daemon all
        hold the record alike, even with `--force`: creating the marker releases it."""
        pattern = self.config.ready_when
        if pattern is None:
            return None
        marker = pattern.relative(record_id, None)
        try:
            found = (lookup or DirectStat(str(self.config.dataset)))(marker)
        except PathUnreadable as exc:
            return f"waiting for marker {marker}, which cannot be read: {exc.error}"
        return None if found is not None else f"waiting for marker {marker}"

    def _not_ready(self, record_ids: Iterable[str], lookup: Lookup) -> dict[str, str] | None:
        if self.config.ready_when is None:
            return None
        waits = {rid: self.waits_for(rid, lookup) for rid in record_ids}
        return {rid: why for rid, why in waits.items() if why is not None}

    def marker_record(self, relative: str) -> str | None:
        """The record whose `ready_when` marker this dataset-relative path is, if it is one:
        the daemon re-plans that record when its marker lands (or goes)."""
        matcher = self._marker_matcher
        found = matcher.match(relative) if matcher is not None else None
        return found.record_id if found is not None else None

    @functools.cached_property
    def _marker_matcher(self) -> Matcher | None:
        pattern = self.config.ready_when
        return pattern.compile(self.config.id_regex) if pattern is not None else None

    def arriving(self) -> dict[str, dict[str, object]]:
        """What a running sinagotd says is still arriving: record_id -> {files, writing
        (files still open for writing), since, ready_at (ISO 8601, UTC)}. Empty without a
        live sinagotd, or when its file cannot be read: believed only from the process that
        holds the writer lock now (a file left by a daemon that died says nothing)."""
        holder = self.lock.holder() or ""
        name, _, pid = holder.partition(" pid ")
        if name != "sinagotd" or not pid.isdigit():
            return {}
        try:
            fd = open_regular(str(self.config.state_dir / ARRIVING_FILE), os.O_RDONLY, "file")
        except (OSError, PathRefused):  # none (nothing arrives), a link: nothing to show
            return {}
        try:
            data = json.loads(os.read(fd, _ARRIVING_MAX))
        except (OSError, ValueError):
            return {}
        finally:
            os.close(fd)
        records = data.get("records") if isinstance(data, dict) else None
        if not isinstance(records, dict) or data.get("pid") != int(pid):
            return {}
        return {rid: info for rid, info in records.items() if isinstance(info, dict)}

    def _scripts_now(self) -> dict[str, tuple[str | None, str | None]]:
        """Each step script as it is now: script path -> (code hash, why it cannot be
        loaded). A script with a syntax error is found here, by compiling it (cached by
        its bytes), so that its steps wait instead of failing record by record."""
        out: dict[str, tuple[str | None, str | None]] = {}
        for task, modality in self.layout.unit_keys(Scope()):
            for spec in self.layout.steps(task, modality):
                if spec.script_key not in out:
                    out[spec.script_key] = check_script(spec.script)
        return out

    def broken_scripts(self) -> dict[str, str]:
        """Script path -> one line saying why it cannot be loaded, for the broken ones."""
        return {key: error for key, (_, error) in self._scripts_now().items() if error}

    def _pending_receipts(self) -> dict[str, RunRecord]:
        """Results that workers reported but no writer recorded yet (its process died)."""
        out = {}
        for result in self._read_receipts(skip=self._recorded):
            out[run_key(result.unit, result.step)] = RunRecord(
                result.state, result.inputs, result.code_hash, result.error, result.finished,
                None, result.input_hashes, result.outputs,
            )  # fmt: skip
        return out

    def _read_receipts(
        self, on_invalid: OnInvalid | None = None, skip: Container[str] = ()
    ) -> Iterator[StepResult]:
        """The results receipts hold. A receipt that is not a result (torn, wrong types, a
        link, not a file) is skipped; with `on_invalid` (the writer), it is also set aside
        under a hidden name and reported once, so that it neither blocks nor repeats."""
        try:
            names = os.listdir(self.receipts)
        except OSError:  # none yet, or unreadable: planning goes on without them
            return
        read = self._receipts_read
        for gone in read.keys() - set(names):
            del read[gone]
        for name in names:
            if not name.endswith(".json") or name.startswith(".") or name in skip:
                continue
            result = read.get(name)
            if result is None:
                path = os.path.join(self.receipts, name)
                try:
                    result = _load_receipt(path)
                except ValueError as exc:
                    if on_invalid is not None:
                        with contextlib.suppress(OSError):
                            os.rename(path, os.path.join(self.receipts, f".invalid-{name}"))
                        on_invalid(path, str(exc))
                    continue
                if result is None:  # its run goes on
                    continue
                read[name] = result
            yield result

    def job(self, plan: StepPlan, *, debug: bool = False) -> StepJob:
        """The job that runs a plan's step. `debug` jobs run in this process (see
        `execute`), so their lines are echoed whatever the run mode."""
        unit, control = plan.unit, plan.step.control
        from .runner import StepJob

        local = debug or (self.config.run_mode != "dask" and not self._scheduler)
        return StepJob(
            unit=unit,
            spec=plan.step,
            dataset=str(self.config.dataset),
            inputs=plan.inputs,
            outputs=plan.outputs,
            receipts=str(self.receipts),
            workspace_version=self.version,
            hash_inputs=self.config.content_hash,
            echo=self.verbose and local,
            time_limit=self.config.time_limit_for(plan.step.name),
            attempts=self.config.max_attempts,
            durable=self.config.durable,
            controls=control.relative(unit.record_id, unit.task) if control is not None else (),
            ignore_missing=plan.ignore_missing,
            debug=debug,
            log=self.config.log,
        )

    # -- writing: the holder of the writer lock only ----------------------------------------

    @contextlib.contextmanager
    def writing(self, what: str = "sinagot") -> Iterator[None]:
        """Hold the workspace's writer lock (unless already held) and ingest receipts."""
        if self.lock.held:
            yield
            return
        self.check_folders()
        self.lock.acquire(what)
        try:
            self.store.prepare()
            self.layout.remember_patterns()
            self.ingest_receipts()
            yield
        finally:
            self.lock.release()

    def ingest_receipts(
        self, busy: Container[Unit] = (), on_invalid: OnInvalid | None = None
    ) -> list[StepResult]:
        """Record results that a writer's workers reported but it never recorded (it died),
        and return them.

        Receipts of `busy` units (on the cluster now) stay: a worker may need them again.
        Those the store already holds (recorded, then the writer died) are dropped. Invalid
        ones are set aside and passed to `on_invalid(path, error)`.
        """
        results = sorted(
            (r for r in self._read_receipts(on_invalid) if r.unit not in busy),
            key=lambda r: r.finished,
        )
        if not results:
            return []
        known = self.store.read_record({r.unit.record_id for r in results})
        new = [
            r
            for r in results
            if (rec := known.get(run_key(r.unit, r.step))) is None or rec.finished != r.finished
        ]
        self.store.record(new)
        self.forget(results)
        return new

    def forget(self, results: Iterable[StepResult]) -> None:
        """Drop the receipts of recorded runs whose whole unit has landed."""
        for name in _receipt_names(results):
            self._recorded.discard(name)
            self._receipts_read.pop(name, None)
            # Left behind (a read-only folder), it is dropped at the next ingest: the store
            # holds its result by then.
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.receipts, name))

    def _ingest_if_free(self) -> None:
        """Record pending receipts if no other writer is at work (it would ingest them)."""
        if self.lock.held or not any(True for _ in self._read_receipts()):
            return
        try:
            self.lock.acquire("sinagot")
        except StateError:
            return
        try:
            self.ingest_receipts()
        finally:
            self.lock.release()

    def record(self, results: Sequence[StepResult]) -> None:
        """Record finished steps in the store (their receipts stay until `forget`)."""
        self.store.record(results)
        self._recorded.update(_receipt_names(results))

    def execute(
        self,
        plans: Iterable[StepPlan],
        on_result: Callable[[StepResult], None] | None = None,
        *,
        debug: bool = False,
    ) -> list[StepResult]:
        """Run the steps these plans mark to run, each unit's steps in order.

        `debug` (sinagot 0.3's run option): a script that raises makes this call raise that
        same exception, once its failure is recorded as any other and its unit's later steps
        are reported skipped; the units after it are not run. Debug runs are always made in
        this process, whatever `[run] mode` says or a scheduler given: only here is there a
        "same exception" to raise (a worker's would come back as a copy, if its class can be
        unpickled at all, with its frames gone), and a debugger (`%debug`, `pdb.pm()`) can
        then walk into the script's frames. With a daemon holding the workspace, the run is
        refused as any second writer is.
        """
        chains: dict[Unit, list[StepJob]] = {}
        for plan in plans:
            if plan.run:
                chains.setdefault(plan.unit, []).append(self.job(plan, debug=debug))
        if not chains:
            self._ingest_if_free()
            return []

        left = {unit: len(chain) for unit, chain in chains.items()}
        landed: dict[Unit, list[StepResult]] = {}

        def started(named: Sequence[tuple[Sequence[StepJob], str]]) -> None:
            self.store.mark_submitted(
                [
                    (job.unit, job.spec.name, generation)
                    for chain, generation in named
                    for job in chain
                ]
            )

        raised: list[Exception] = []

        def finished(items: Sequence[tuple[StepJob, StepResult]]) -> None:
            self.record([result for _, result in items])
            for job, result in items:
                landed.setdefault(job.unit, []).append(result)
                left[job.unit] -= 1
                if result.exception is not None:
                    raised.append(result.exception)
                if not left[job.unit]:
                    self.forget(landed.pop(job.unit))
                if on_result is not None:
                    on_result(result)
                if raised and not left[job.unit]:  # debug: its unit is over, stop here
                    raise raised[0]

        with self.writing():
            named = list(zip(chains.values(), self.generations(list(chains.items())), strict=True))
            executor = _local() if debug else self.executor
            # Steps run elsewhere: no full pass here to stall the scheduler (see collector).
            # Steps run here: their garbage is collected as ever, full passes and all.
            with contextlib.nullcontext() if executor.in_process else young_only():
                return executor.run(named, started, finished)

    def generation(self, unit: Unit, chain: Sequence[StepJob]) -> str:
        """A new name for this run of a unit's chain, or the name of a run of it that was
        submitted and never finished (its copy may still run on a worker)."""
        return self.generations([(unit, chain)])[0]

    def generations(self, chains: Sequence[tuple[Unit, Sequence[StepJob]]]) -> list[str]:
        """`generation` of many units' chains, read from the store in one go."""
        keys = {unit: [run_key(unit, job.spec.name) for job in chain] for unit, chain in chains}
        pending = self.store.pending_generations([k for ks in keys.values() for k in ks])
        names = []
        for unit, _ in chains:
            found = next((pending[k] for k in keys[unit] if k in pending), None)
            names.append(found or os.urandom(4).hex())
        return names

    @property
    def executor(self) -> Executor:
        """Where steps run: this process, or Dask (`[run] mode = "dask"` or a scheduler)."""
        if self._executor is None:
            if self.config.run_mode == "dask" or self._scheduler:
                from .cluster import (
                    connect,
                    resolve_address,  # Dask's client: only to run on it
                )
                from .execute import DaskExecutor

                address = resolve_address(self._scheduler, self.config.dask)
                self._executor = DaskExecutor(
                    lambda: connect(address, self.config.dask),
                    self.config.dask.max_in_flight,
                    self.store.step_durations,
                )
            else:
                self._executor = _local()
        return self._executor


def _local() -> Executor:
    from .execute import LocalExecutor

    return LocalExecutor()


#: A receipt is a few hundred bytes; anything much larger is not one.
_RECEIPT_MAX = 1 << 20


def _load_receipt(path: str) -> StepResult | None:
    """A receipt's result; None while its run goes on (locked) or if it died mid-run;
    ValueError naming what is wrong otherwise. Never follows a link, never blocks on a
    FIFO."""
    from .runner import StepResult, one_line, read_receipt

    try:
        fd = open_regular(path, os.O_RDONLY, "receipt")
    except PathRefused as exc:  # a link, a folder, a FIFO
        raise ValueError(str(exc)) from None
    except OSError:  # gone meanwhile, out of descriptors, I/O error: not its fault; next pass
        return None
    try:
        st = os.fstat(fd)
        if st.st_size > _RECEIPT_MAX:
            raise ValueError(f"{st.st_size} bytes: too large to be a receipt")
        try:  # a run holds its receipt locked until its result is written in full
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        data = os.read(fd, _RECEIPT_MAX + 1)
    finally:
        os.close(fd)
    try:
        found = read_receipt(data)
    except ValueError as exc:
        raise ValueError(f"not a receipt: {one_line(exc)}") from None
    return found if isinstance(found, StepResult) else None  # attempts: under way, or died
