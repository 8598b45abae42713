"""Run one step of one unit: load its script, run it with atomic outputs, log, report.

`run_step` is what a Dask worker executes, so it takes and returns plain picklable data and
never touches the state store: the submitting process records the result. So that a result
is never lost when the submitter dies before hearing of it, the worker also leaves a
*receipt* (the result as JSON) in `<dataset>/.sinagot/receipts/` once the outputs are in
place; the next writer ingests receipts before it plans.

Attempts. A run's receipt is locked while an attempt at the run goes on. Before the script
starts, the attempt adds itself to the receipt (`{"attempts": [token, ...]}`); when it ends,
the receipt holds its result instead. So an attempt that finds attempts listed and no result
knows that they died mid-run (their process was killed: by an operator, the kernel, or the
script itself). It removes their temporary outputs and runs the step again, unless
`StepJob.attempts` of them died already: then the run is FAILED, "the step's process died 3
times while running it", without starting the script again. Dask retries a task whose worker
died up to `distributed.scheduler.allowed-failures` times (3) before giving up on it
(KilledWorker): with the default of 3 attempts, a script that kills its worker is failed on
the 4th try instead of killing a 4th worker. A worker killed once by an operator costs one
attempt; the next one runs the step to success, once. An attempt interrupted in the calling
process (Ctrl-C) is taken off the list: it did not die.

Outputs. A script writes `<folder>/.sinagot-tmp-<token>-<name>`, the token new for each
attempt, so that two attempts writing the same output (two units, a resubmission) never
write the same file; each is renamed into place only when its script returned. A killed
attempt's temporary outputs keep their hidden name, which planning, the watcher and
fingerprints ignore, so they are never taken for a result; the next attempt at the same run
removes them (their tokens are in the receipt). Those of a run never attempted again stay
until removed by hand (they are hidden, and named as sinagot's). With `StepJob.durable`
(`[run] durable`), each output is synced to disk before its rename and its folder after, so
that a power cut cannot leave a renamed output whose data never reached the disk.

Paths. The record log, receipts and outputs are never written through a link out of the
dataset: the LOG folder, the receipts folder and each output folder must have their real path
inside the dataset's, and the log and the receipt are opened with O_NOFOLLOW (a symlink, a
FIFO, a device there is refused). A refusal is FAILED with one line naming the path, and
nothing is written (a refused log gets no line). A folder that cannot be created or written
is NOT_RUN (the submitter may try again later), also with one line. The paths are checked
just before they are used, which stops a dataset's links, not an attacker racing the check.

Time limits. With `StepJob.time_limit` set, a step still running after that many seconds
(its script's loading included) is stopped and FAILED, "time limit of N s exceeded":

- in the main thread of the calling process (`main_process` mode, a notebook, `sinagot run`),
  SIGALRM (`signal.setitimer`) raises `TimeLimitExceeded` inside the script, even in a
  `time.sleep` or a wait; the process lives on, and the caller's SIGALRM handler is put back.
  When the caller runs a timer of its own (ITIMER_REAL), it is left alone and the next way
  is used instead;
- in any other thread (and on a Dask worker without a nanny, whose process nothing would
  start again), `TimeLimitExceeded` is raised asynchronously in the step's thread: it lands
  at the script's next Python instruction, not inside a blocking call;
- on a Dask worker with a nanny (sinagot's own clusters, `dask worker` by default), a thread
  cannot be stopped from outside, so the worker's process is: at the deadline a timer writes
  the FAILED result into the run's receipt and the record log, removes the temporary outputs,
  and ends the process (`os._exit(124)`). The nanny starts a new worker; Dask's retry of the
  task finds the result in the receipt and returns it. Other steps running in that process
  die with it and are run again (each counts one attempt). Without a receipt
  (`StepJob.receipts` None) the result is lost with the process.

`TimeLimitExceeded` is a BaseException, so that a script's `except Exception` does not
swallow it; a script that swallows it anyway still fails on its return.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import functools
import json
import math
import os
import re
import reprlib
import secrets
import shutil
import signal
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from .capture import output_to
from .config import LogSettings
from .fingerprints import (
    Fingerprint,
    content_hash,
    encode_fingerprints,
    stat_known,
    stat_path,
)
from .layout import StepSpec, Unit
from .patterns import TEMP_PREFIX, PathUnreadable
from .recordlog import RecordLog
from .safepaths import PathRefused, WriteError, inside_dataset, open_regular
from .scripts import ScriptPaths, ScriptTemplate, check_script, load_script
from .status import StepStatus

#: How a Dask worker's process ends when a step ran past its time limit (as `timeout`'s).
TIME_LIMIT_EXIT = 124
_ATTEMPTS = "attempts"  # the receipt's list of the attempts started at its run
_TOKEN = re.compile(r"[0-9a-f]{8}")


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"  # the script is at fault: it raised, did not load, or wrote no output
    NOT_RUN = "not_run"  # could not run: an input is missing, an output folder not writable
    SKIPPED = "skipped"  # not run because an earlier step of its unit failed


_OUTCOMES = frozenset(outcome.value for outcome in Outcome)


@dataclass(frozen=True)
class StepJob:
    """Everything a worker needs to run one step of one unit; plain data only."""

    unit: Unit
    spec: StepSpec
    dataset: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    receipts: str | None = None  # folder for receipts; None: leave none
    run_id: str = ""  # names this run (its Dask key): its receipt and its lock
    workspace_version: str | None = None
    hash_inputs: bool = False
    echo: bool = False
    time_limit: float | None = None  # seconds a run may take; None: no limit
    attempts: int = 3  # attempts at one run that may die mid-run before it is FAILED
    durable: bool = False  # `[run] durable`: outputs synced to disk around their rename
    controls: tuple[str, ...] = ()  # PATH_CONTROL, dataset-relative: folders made, no more
    ignore_missing: bool = False  # run without missing inputs, and after a failed step
    debug: bool = False  # the result carries a failed script's exception (this process)
    log: LogSettings = field(default_factory=LogSettings)  # how echoed lines look (`[log]`)

    @property
    def key(self) -> str:
        """A deterministic, readable task key: 'count-REC-20200601'."""
        return f"{self.spec.name}-{self.unit.key}"

    def named(self, run_id: str) -> StepJob:
        """This job under the name of one run of it. Its fields copied as they are:
        `dataclasses.replace` runs `__init__` again, seven times as long (11 against 1.6
        microseconds), for every step of a burst of 10,000 records."""
        job = object.__new__(StepJob)
        job.__dict__.update(self.__dict__, run_id=run_id)
        return job


@dataclass(frozen=True)
class StepResult:
    """What became of one run; fingerprints are encoded as the state store keeps them."""

    unit: Unit
    step: str
    outcome: Outcome
    started: float
    finished: float
    error: str | None = None  # one line
    inputs: str = ""
    outputs: str = ""
    input_hashes: str | None = None
    code_hash: str | None = None
    run_id: str = ""
    #: With `StepJob.debug`: the exception the script (or its loading) raised, for
    #: `Engine.execute` to raise in the same process. Not a field: never in a receipt,
    #: never compared; set by `carrying`.
    exception: ClassVar[Exception | None] = None

    def carrying(self, exc: Exception) -> StepResult:
        """This result, carrying the exception that failed it (see `exception`)."""
        copy = dataclasses.replace(self)
        object.__setattr__(copy, "exception", exc)
        return copy

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DONE

    @property
    def state(self) -> str | None:
        """What the state store records: 'done', 'failed', or None (nothing ran)."""
        if self.outcome in (Outcome.DONE, Outcome.FAILED):
            return self.outcome.value
        return None

    @property
    def duration(self) -> float:
        return self.finished - self.started

    def to_json(self) -> str:
        """`json.dumps` of the fields, `unit` as an object; written for every step, so
        written out here when every field is what it should be (a str, a finite float or
        None: Outcome is a str), and by `json.dumps` otherwise: the same text."""
        unit, started, finished = self.unit, self.started, self.finished
        texts = (
            unit.record_id, unit.task, unit.modality, self.step, self.outcome, self.error,
            self.inputs, self.outputs, self.input_hashes, self.code_hash, self.run_id,
        )  # fmt: skip
        try:
            if not (type(started) is type(finished) is float and isfinite(started + finished)):
                raise TypeError("not two finite floats")
            # encode_basestring_ascii: TypeError for what is not a str (or None, here)
            a, b, c, d, e, f, g, h, i, j, k = (
                "null" if text is None else _json_str(text) for text in texts
            )
            return _RESULT_JSON % (a, b, c, d, e, repr(started), repr(finished), f, g, h, i, j, k)
        except TypeError:
            # Shallow: `asdict`'s deep copy costs a worker more than writing the receipt.
            data = {name: getattr(self, name) for name in _RESULT_FIELDS}
            data["unit"] = unit._asdict()
            return json.dumps(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> StepResult:
        """The result `to_json` wrote. Receipts are files anyone may have torn or written:
        anything else is a ValueError whose message names the field at fault."""
        return cls.from_dict(_parse(text))

    @classmethod
    def from_dict(cls, data: object) -> StepResult:
        """The result of `to_json`'s data, parsed; ValueError naming the field otherwise."""
        if not isinstance(data, dict):
            raise ValueError(f"a result is a JSON object, not {_shown(data)}")
        _check_names("", data, _RESULT_FIELDS)
        return cls(**{name: check(name, data[name]) for name, check in _RESULT_FIELDS.items()})


_RESULT_JSON = (
    '{"unit": {"record_id": %s, "task": %s, "modality": %s}, "step": %s, "outcome": %s, '
    '"started": %s, "finished": %s, "error": %s, "inputs": %s, "outputs": %s, '
    '"input_hashes": %s, "code_hash": %s, "run_id": %s}'
)
#: A str as `json.dumps` writes it (quotes included, ASCII only).
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
isfinite = math.isfinite


def _parse(text: str | bytes) -> object:
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"not JSON: {exc}") from None


def _shown(value: object) -> str:
    """A JSON value as an error names it, on one line and short."""
    kinds = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "an array", dict: "an object"}  # fmt: skip
    return f"{kinds.get(type(value), type(value).__name__)} {reprlib.repr(value)}"


def _check_names(prefix: str, data: dict[str, Any], expected: Any) -> None:
    missing = [name for name in expected if name not in data]
    if missing:
        raise ValueError(f"missing field {', '.join(prefix + name for name in missing)}")
    extra = [name for name in data if name not in expected]
    if extra:
        unknown = ", ".join(repr(prefix + name) for name in extra)
        raise ValueError(f"unknown field {reprlib.repr(unknown)[1:-1]}")


def _text(name: str, value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"field {name}: expected a string, got {_shown(value)}")


def _text_or_null(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValueError(f"field {name}: expected a string or null, got {_shown(value)}")


def _time(name: str, value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if math.isfinite(number):
            return number
    raise ValueError(f"field {name}: expected a finite number, got {_shown(value)}")


def _outcome(name: str, value: object) -> Outcome:
    if isinstance(value, str) and value in _OUTCOMES:
        return Outcome(value)
    allowed = ", ".join(outcome.value for outcome in Outcome)
    raise ValueError(f"field {name}: expected one of {allowed}, got {_shown(value)}")


def _unit(name: str, value: object) -> Unit:
    if not isinstance(value, dict):
        raise ValueError(f"field {name}: expected an object, got {_shown(value)}")
    _check_names(f"{name}.", value, Unit._fields)
    return Unit(
        _text(f"{name}.record_id", value["record_id"]),
        _text_or_null(f"{name}.task", value["task"]),
        _text_or_null(f"{name}.modality", value["modality"]),
    )


_RESULT_FIELDS: dict[str, Callable[[str, object], Any]] = {
    "unit": _unit, "step": _text, "outcome": _outcome, "started": _time, "finished": _time,
    "error": _text_or_null, "inputs": _text, "outputs": _text, "input_hashes": _text_or_null,
    "code_hash": _text_or_null, "run_id": _text,
}  # fmt: skip
assert list(_RESULT_FIELDS) == [f.name for f in fields(StepResult)]


def receipt_name(run_id: str) -> str:
    return f"{run_id}.json"


def temp_path(final: str, token: str = "") -> str:
    """Where an output is written before its rename: hidden, same folder, same suffix."""
    folder, name = os.path.split(final)
    return os.path.join(folder, f"{TEMP_PREFIX}{token}{'-' if token else ''}{name}")


@dataclass(frozen=True)
class _Attempt:
    """One attempt at a run: the token naming its temporary outputs, the receipt it answers
    in, and the tokens of the attempts at the same run that died before it."""

    token: str = field(default_factory=lambda: secrets.token_hex(4))
    receipt: int | None = None
    dead: tuple[str, ...] = ()


def run_step(job: StepJob) -> StepResult:
    """Run one step. Never raises for a problem of the step itself: it reports it.

    A run is done at most once: its receipt, a file named after its `run_id`, is locked
    while the run goes on and then holds its result, so a second attempt at the same run
    (Dask recomputing a result lost with a worker, a resubmission after the scheduler came
    back while the first attempt still ran) waits for the first and returns its result.
    An attempt that died mid-run is seen by the next one: see the module docstring.
    """
    if job.receipts is None or not job.run_id:
        return _run(job, _Attempt())
    path = os.path.join(job.receipts, receipt_name(job.run_id))
    try:
        fd = _open_receipt(job.dataset, job.receipts, path)
    except PathRefused as exc:
        return refused_result(job, Outcome.FAILED, str(exc))
    except WriteError as exc:
        return refused_result(job, Outcome.NOT_RUN, str(exc))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        earlier, size = _read_receipt(fd)
        if isinstance(earlier, StepResult):
            return earlier
        attempt = _Attempt(receipt=fd, dead=earlier)
        if len(earlier) < max(job.attempts, 1):
            size = _write(fd, _attempts_json((*earlier, attempt.token)), size)
        try:
            result = _run(job, attempt)
        except BaseException:  # interrupted (Ctrl-C), not dead: this attempt does not count
            if earlier:
                _write(fd, _attempts_json(earlier), size)
            else:
                os.unlink(path)
            raise
        if result.state is not None:
            _write(fd, result.to_json(), size)
        else:  # nothing ran: nothing to answer later attempts with
            os.unlink(path)
        return result
    finally:
        os.close(fd)


def _attempts_json(tokens: tuple[str, ...]) -> str:
    """`json.dumps({"attempts": [...]})` of tokens (hex digits: nothing to escape)."""
    listed = ", ".join(f'"{token}"' for token in tokens)
    return f'{{"{_ATTEMPTS}": [{listed}]}}'


def run_after(job: StepJob, previous: StepResult) -> StepResult:
    """Run a step once the previous step of its unit is done; skip it if that one was not,
    unless the run was asked to `ignore_missing` (0.3 ran every step: the script decides
    what to do without its inputs). A failure in `debug` ends its chain all the same."""
    if previous.ok or (job.ignore_missing and previous.exception is None):
        return run_step(job)
    now = time.time()
    return skipped(job, f"not run: earlier step {previous.step} did not succeed", now)


def skipped(job: StepJob, reason: str, when: float) -> StepResult:
    return StepResult(job.unit, job.spec.name, Outcome.SKIPPED, when, when, reason)


def _open_receipt(dataset: str, folder: str, path: str) -> int:
    """The run's receipt, made if need be. A receipts folder the caller put outside the
    dataset is its own business; one inside must not lead out of it."""
    if _named_inside(dataset, folder):
        inside_dataset(dataset, folder, "receipts folder")
    flags = os.O_RDWR | os.O_CREAT
    try:
        try:
            return open_regular(path, flags, "receipt", 0o666)
        except FileNotFoundError:  # the first run of the dataset: no receipts folder yet
            os.makedirs(folder, exist_ok=True)
            return open_regular(path, flags, "receipt", 0o666)
    except OSError as exc:
        raise WriteError(f"cannot write receipt {path}: {exc.strerror or exc}") from None


def _named_inside(dataset: str, folder: str) -> bool:
    """Whether `folder` is named inside `dataset` (links not resolved). Asked for every
    step with the same two paths: the answer for absolute ones (which do not depend on
    the working folder) is kept."""
    if os.path.isabs(dataset) and os.path.isabs(folder):
        return _named_inside_absolute(dataset, folder)
    named = os.path.abspath(dataset)
    return os.path.commonpath((named, os.path.abspath(folder))) == named


@functools.lru_cache(maxsize=64)
def _named_inside_absolute(dataset: str, folder: str) -> bool:
    named = os.path.normpath(dataset)
    return os.path.commonpath((named, os.path.normpath(folder))) == named


def refused_result(job: StepJob, outcome: Outcome, error: str) -> StepResult:
    """A result for a step refused before it started: with its inputs and script as they
    are, so that a failure stays failed until one of them changes, as any failure does."""
    now = time.time()
    inputs = encode_fingerprints(
        job.inputs, [stat_known(os.path.join(job.dataset, rel)) for rel in job.inputs]
    )
    return StepResult(
        job.unit, job.spec.name, outcome, now, now, error, inputs=inputs,
        code_hash=_script_hash(job.spec), run_id=job.run_id,
    )  # fmt: skip


def _script_hash(spec: StepSpec) -> str | None:
    return check_script(spec.script)[0]


def _run(job: StepJob, attempt: _Attempt) -> StepResult:
    unit = job.unit
    log = RecordLog(
        job.dataset, unit.record_id, unit.task, unit.modality, job.spec.name,
        job.workspace_version, job.echo, job.log,
    )  # fmt: skip
    try:
        log.__enter__()
    except PathRefused as exc:
        return refused_result(job, Outcome.FAILED, str(exc))
    except WriteError as exc:
        return refused_result(job, Outcome.NOT_RUN, str(exc))
    try:
        return _Run(job, log, attempt).run()
    finally:
        log.close()


class TimeLimitExceeded(BaseException):
    """Raised in a script that runs past its step's time limit (see the module docstring)."""


class _Deadline:
    """Stops a step that runs past its time limit, the way its thread allows."""

    def __init__(self, seconds: float | None, on_kill: Callable[[], None]) -> None:
        self.seconds = seconds
        self.message = f"time limit of {seconds:g} s exceeded" if seconds is not None else ""
        self.expired = False
        self._on_kill = on_kill
        self._lock = threading.Lock()
        self._armed = False
        self.thread = threading.get_ident()  # the step's
        self._timer: threading.Timer | None = None
        self._handler: Any = None  # the caller's SIGALRM handler, to put back

    def start(self) -> None:
        if self.seconds is None:
            return
        self._armed = True
        if _on_nanny_worker():
            self._start_timer(self._end_process)
        elif _can_alarm():
            self._handler = signal.signal(signal.SIGALRM, self._alarm)
            signal.setitimer(signal.ITIMER_REAL, max(self.seconds, 1e-3))  # 0 would disarm
        else:
            self._start_timer(self._interrupt)

    def stop(self) -> None:
        """From here on the step is not stopped. Safe to call again; never raises once
        the deadline raised (it raises at most once)."""
        if self.seconds is None:
            return  # never started: nothing to stop
        with self._lock:  # on a worker, held for good once the process is being ended
            self._armed = False
        if self._timer is not None:
            self._timer.cancel()
        if self._handler is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._handler)
            self._handler = None
        if self.expired:  # an exception sent to this thread, perhaps not raised yet
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread), None)

    def _start_timer(self, action: Callable[[], None]) -> None:
        assert self.seconds is not None
        self._timer = threading.Timer(self.seconds, action)
        self._timer.daemon = True
        self._timer.start()

    def _alarm(self, signum: int, frame: object) -> None:
        if self._armed:
            self._armed = False
            self.expired = True
            raise TimeLimitExceeded(self.message)

    def _interrupt(self) -> None:
        with self._lock:
            if not self._armed:
                return
            self._armed = False
            self.expired = True
            exc = ctypes.py_object(TimeLimitExceeded)
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread), exc)

    def _end_process(self) -> None:
        self._lock.acquire()  # never released: the process ends
        if not self._armed:
            self._lock.release()
            return
        self.expired = True
        try:
            self._on_kill()
        finally:
            os._exit(TIME_LIMIT_EXIT)


def _on_nanny_worker() -> bool:
    """Whether this thread runs a task of a Dask worker whose nanny restarts its process."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        worker = distributed.get_worker()
    except ValueError:
        return False
    return bool(getattr(worker, "nanny", None))


def _can_alarm() -> bool:
    return (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) is not None
        and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    )


class _Run:
    """One attempt at a step, with its log open."""

    def __init__(self, job: StepJob, log: RecordLog, attempt: _Attempt) -> None:
        # Paths are plain strings here (a worker runs this for every step and pathlib is
        # slow to build); the script alone gets `Path`s.
        self.job, self.log, self.attempt = job, log, attempt
        self.started = time.time()
        self.in_paths = tuple(os.path.join(job.dataset, rel) for rel in job.inputs)
        self.finals = tuple(os.path.join(job.dataset, rel) for rel in job.outputs)
        self.temps = tuple(temp_path(p, attempt.token) for p in self.finals)
        self.controls = tuple(os.path.join(job.dataset, rel) for rel in job.controls)
        self.ran: dict[str, str | None] = {"inputs": "", "input_hashes": None}
        self.placed = False  # every output renamed into place: no temporary one is left
        self.deadline = _Deadline(job.time_limit, self._killed)

    def finish(self, outcome: Outcome, error: str | None = None, **extra: Any) -> StepResult:
        return StepResult(
            self.job.unit, self.job.spec.name, outcome, self.started, time.time(), error,
            run_id=self.job.run_id, **extra,
        )  # fmt: skip

    def failed(self, exc: BaseException, error: str, **extra: Any) -> StepResult:
        """FAILED, logged with the traceback; in `debug`, the result carries the exception."""
        self.log.write(StepStatus.ERROR, f"Run failed: {error}\n{_traceback(exc)}")
        result = self.finish(Outcome.FAILED, error, **extra)
        if self.job.debug and isinstance(exc, Exception):
            result = result.carrying(exc)
        return result

    def run(self) -> StepResult:
        job, log = self.job, self.log
        if len(self.attempt.dead) >= max(job.attempts, 1):
            return self._given_up()
        log.write(StepStatus.INIT, "Init run")
        try:
            fingerprints = [stat_path(path) for path in self.in_paths]
            missing = [i for i, fp in enumerate(fingerprints) if fp is None]
            if missing and not job.ignore_missing:  # ignore_missing: the script decides
                paths = ", ".join(self.in_paths[i] for i in missing)
                log.write(StepStatus.DATA_NOT_AVAILABLE, f"Input data {paths} not available")
                return self.finish(Outcome.NOT_RUN, f"input {job.inputs[missing[0]]} is missing")
            self.ran["inputs"] = encode_fingerprints(job.inputs, fingerprints)
            if job.hash_inputs:
                pairs = zip(job.inputs, self.in_paths, fingerprints, strict=True)
                hashes = {rel: content_hash(p) for rel, p, fp in pairs if fp is not None}
                self.ran["input_hashes"] = json.dumps(hashes)
        except PathUnreadable as exc:
            message = f"input {os.path.relpath(exc.path, job.dataset)} cannot be read: {exc.error}"
            log.write(StepStatus.DATA_NOT_AVAILABLE, f"Input data not available: {message}")
            return self.finish(Outcome.NOT_RUN, message)
        try:
            try:
                self.deadline.start()
                return self._load_and_run()
            finally:
                self.deadline.stop()
        except TimeLimitExceeded as exc:
            self.deadline.stop()
            return self.failed(exc, self.deadline.message, **self.ran)
        finally:
            if not self.placed:  # whatever was not renamed into place, even on Ctrl-C
                _remove(self.temps)

    def _load_and_run(self) -> StepResult:
        job, spec, log = self.job, self.job.spec, self.log
        try:
            loaded = load_script(spec.script)
        except Exception as exc:
            error = f"cannot load script {spec.script.name}: {one_line(exc)}"
            return self.failed(exc, error, **self.ran, code_hash=_script_hash(spec))
        self.ran["code_hash"] = loaded.code_hash
        problem = self._output_folders()
        if problem is not None:
            return problem
        log.write(StepStatus.PROCESSING, "Processing run")
        try:
            script = self._script(loaded.cls)
            if job.echo:
                script.run()
            else:
                with output_to(lambda line: log.write(StepStatus.PROCESSING, line)):
                    script.run()
            self.deadline.stop()
            if self.deadline.expired:  # the script caught it, and went on
                raise TimeLimitExceeded(self.deadline.message)
            written = [_stat(t) for t in self.temps]
            unwritten = [rel for rel, st in zip(job.outputs, written, strict=True) if st is None]
            if unwritten:
                raise RuntimeError(f"the script did not write output {', '.join(unwritten)}")
            _place(job.outputs, self.temps, self.finals, job.durable, written)
            self.placed = True
        except (Exception, SystemExit) as exc:  # a script's sys.exit() fails its step, no more
            return self.failed(exc, one_line(exc), **self.ran)
        outputs = encode_fingerprints(job.outputs, list(map(_fingerprint, written, self.finals)))
        log.write(StepStatus.DONE, "Run finished")
        return self.finish(Outcome.DONE, outputs=outputs, **self.ran)

    def _script(self, cls: type[ScriptTemplate]) -> ScriptTemplate:
        """The script, bound to this run: outputs under their temporary names."""
        job, spec, unit = self.job, self.job.spec, self.job.unit
        control = (
            spec.control.shape(tuple(map(Path, self.controls)))
            if spec.control is not None
            else None
        )
        return cls(
            id=unit.record_id,
            task=unit.task,
            modality=unit.modality,
            path=ScriptPaths(
                spec.inputs.shape(tuple(map(Path, self.in_paths))),
                spec.outputs.shape(tuple(map(Path, self.temps))),
                control,
            ),
            logger=self.log.logger(),
            label=spec.name,
            debug=job.debug,
            ignore_missing=job.ignore_missing,
            data_path=_path(job.dataset),
        )

    def _output_folders(self) -> StepResult | None:
        """Make the output folders (and the control paths' folders); a result when one is
        refused or cannot be written. The temporary outputs of the attempts that died are
        removed then, once it is safe."""
        error = None
        outcome = Outcome.NOT_RUN
        for folder in dict.fromkeys(os.path.dirname(p) for p in (*self.finals, *self.controls)):
            try:
                there = inside_dataset(self.job.dataset, folder, "output folder")
            except PathRefused as exc:
                error, outcome = str(exc), Outcome.FAILED
                break
            error = _make_folder(folder, there)
            if error is not None:
                break
        if error is None:
            dead = self.attempt.dead
            _remove(tuple(temp_path(p, token) for token in dead for p in self.finals))
            return None
        self.log.write(StepStatus.ERROR, f"Cannot write outputs: {error}")
        return self.finish(outcome, error, **self.ran)

    def _given_up(self) -> StepResult:
        """The attempts at this run all died: a FAILED result, without a new one."""
        deaths = len(self.attempt.dead)
        self.ran = {
            "inputs": encode_fingerprints(self.job.inputs, [stat_known(p) for p in self.in_paths]),
            "code_hash": _script_hash(self.job.spec),
        }
        error = f"the step's process died {deaths} time{'s' * (deaths != 1)} while running it"
        refused = self._output_folders()  # and the dead attempts' temporary outputs go
        if refused is not None:
            return refused
        self.log.write(StepStatus.ERROR, f"Run failed: {error}")
        return self.finish(Outcome.FAILED, error, **self.ran)

    def _killed(self) -> None:
        """On a worker, the step past its time limit: what to leave before the process ends."""
        error = self.deadline.message
        frame = sys._current_frames().get(self.deadline.thread)
        where = "".join(traceback.format_stack(frame)).rstrip() if frame is not None else ""
        with contextlib.suppress(Exception):
            self.log.write(
                StepStatus.ERROR,
                f"Run failed: {error} (its worker process was ended to stop it)\n{where}",
            )
        if self.attempt.receipt is not None:
            _write(self.attempt.receipt, self.finish(Outcome.FAILED, error, **self.ran).to_json())
        _remove(self.temps)


@functools.lru_cache(maxsize=16)
def _path(dataset: str) -> Path:
    """The dataset's `Path` (immutable, so shared by the steps of a process)."""
    return Path(dataset)


def _make_folder(folder: str, there: bool = False) -> str | None:
    """Why an output folder cannot be made or written, in one line naming it; None if it can.
    `there`: the folder was just seen to be a folder."""
    try:
        if not there and not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
    except FileExistsError:
        return f"output folder {folder} cannot be created: a file is in the way"
    except OSError as exc:
        return f"output folder {folder} cannot be created: {exc.strerror or exc}"
    if not os.access(folder, os.W_OK):
        return f"output folder {folder} is not writable"
    return None


def read_receipt(data: bytes | str) -> StepResult | tuple[str, ...]:
    """What a receipt holds: its run's result, or the tokens of the attempts at the run that
    started and have not ended (none: a receipt just made, or one left by an older sinagot).
    An attempt's list is no result and no fault: a reader of receipts skips it, as it skips
    an empty receipt. ValueError, naming what is wrong, for anything else."""
    if not data:
        return ()
    parsed = _parse(data)
    if isinstance(parsed, dict) and list(parsed) == [_ATTEMPTS]:
        tokens = parsed[_ATTEMPTS]
        if isinstance(tokens, list) and all(
            isinstance(t, str) and _TOKEN.fullmatch(t) for t in tokens
        ):
            return tuple(tokens)
        raise ValueError(f"field {_ATTEMPTS}: expected tokens, got {_shown(tokens)}")
    return StepResult.from_dict(parsed)


def _read_receipt(fd: int) -> tuple[StepResult | tuple[str, ...], int]:
    """What the run's receipt holds, and its length; a torn one (or not sinagot's) is one
    without attempts."""
    data = b""
    while chunk := os.pread(fd, 1 << 16, len(data)):
        data += chunk
    try:
        return read_receipt(data), len(data)
    except ValueError:
        return (), len(data)


def _write(fd: int, text: str, size: int | None = None) -> int:
    """Replace what the receipt holds: written over, then cut to its length (when it held
    more than that, or `size`, its length, is not known); the new length. Not cut to
    zero first: on ext4 a file truncated to zero and written again is flushed to disk when
    it is unlinked (`auto_da_alloc`), which made dropping a receipt cost a millisecond.
    A write torn half-way leaves no JSON (the new text's start, the old one's end): a
    receipt without attempts, as a torn write always did."""
    data = text.encode()
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], written)
    if size is None or size > len(data):
        os.ftruncate(fd, len(data))
    return len(data)


def _place(
    outputs: tuple[str, ...],
    temps: tuple[str, ...],
    finals: tuple[str, ...],
    durable: bool,
    written: list[os.stat_result | None] | None = None,
) -> None:
    """Move a run's finished outputs into place.

    `durable` (`[run] durable`): each output's data is synced to disk before its rename,
    and each output folder after, so that a power cut leaves the old output or the whole
    new one: never a renamed file whose data had not reached the disk (empty, or short).
    An output that cannot be synced fails the step, naming it."""
    if durable:
        for rel, temp in zip(outputs, temps, strict=True):
            _synced(rel, temp, _sync_tree)
    for i, (temp, final) in enumerate(zip(temps, finals, strict=True)):
        st = written[i] if written is not None else None
        _replace(temp, final, stat.S_ISDIR(st.st_mode) if st is not None else None)
    if durable:
        folders = {os.path.dirname(final): rel for rel, final in zip(outputs, finals, strict=True)}
        for folder, rel in folders.items():
            _synced(rel, folder, _sync)


def _synced(rel: str, path: str, sync: Callable[[str], None]) -> None:
    """`sync(path)`, an error naming the output it was for (the step fails on it)."""
    try:
        sync(path)
    except OSError as exc:
        raise OSError(exc.errno, f"output {rel} cannot be synced to disk: {exc.strerror}") from None


def _sync_tree(path: str) -> None:
    """fsync a file, or every file and folder of a folder; links and odd entries are left
    alone (a link's target is not the output's data; a FIFO would block)."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        _sync(path)
    elif stat.S_ISDIR(mode):
        for folder, _, files in os.walk(path, onerror=_raise):
            for name in files:
                inner = os.path.join(folder, name)
                if stat.S_ISREG(os.lstat(inner).st_mode):
                    _sync(inner)
            _sync(folder)


def _sync(path: str) -> None:
    """fsync one regular file or folder, opened read-only without following a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _raise(exc: OSError) -> None:
    """`os.walk` skips a folder it cannot list: an output left unsynced must fail instead."""
    raise exc


def _stat(path: str) -> os.stat_result | None:
    """`os.stat`, None where `os.path.exists` says False."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _fingerprint(st: os.stat_result | None, final: str) -> Fingerprint | None:
    """An output's fingerprint once renamed into place: a regular file's from its stat
    before the rename (which changes neither its size nor its mtime), anything else looked
    at again."""
    if st is not None and stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns)
    return stat_known(final)


def _replace(temp: str, final: str, is_dir: bool | None = None) -> None:
    """Move a finished output into place; a folder output replaces the old folder (a link
    in its place is replaced, never followed). `is_dir`: whether `temp` is a folder, if
    known already."""
    if is_dir is None:
        is_dir = os.path.isdir(temp)
    if is_dir and os.path.lexists(final):
        if os.path.islink(final) or not os.path.isdir(final):
            os.unlink(final)
        else:
            old = temp_path(final, secrets.token_hex(4))
            os.rename(final, old)
            os.rename(temp, final)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(temp, final)


def _remove(paths: tuple[str, ...]) -> None:
    """Remove temporary outputs, best effort: what cannot be reached or removed stays under
    its hidden name, which nothing takes for a result."""
    for path in paths:
        try:
            st = os.lstat(path)
        except OSError:
            continue  # the common case: nothing there, found with one system call
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def one_line(exc: BaseException) -> str:
    """'ValueError: the first line of its message', for events and the state store."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
