"""Run one step of one unit: load its script, run it with atomic outputs, log, report.

`run_step` is what a Dask worker executes, so it takes and returns plain picklable data and
never touches the state store: the submitting process records the result. So that a result
is never lost when the submitter dies before hearing of it, the worker also leaves a
*receipt* (the result as JSON) in `<dataset>/.sinagot/receipts/` once the outputs are in
place; the next writer ingests receipts before it plans.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import time
import traceback
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path

from .capture import output_to
from .fingerprints import Fingerprint, content_hash, encode_fingerprints, stat_path
from .layout import StepSpec, Unit
from .patterns import TEMP_PREFIX
from .recordlog import RecordLog
from .scripts import ScriptPaths, code_hash, load_script
from .status import StepStatus


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"  # the script is at fault: it raised, did not load, or wrote no output
    NOT_RUN = "not_run"  # could not run: an input is missing, an output folder not writable
    SKIPPED = "skipped"  # not run because an earlier step of its unit failed


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

    @property
    def key(self) -> str:
        """A deterministic, readable task key: 'count-REC-20200601'."""
        return f"{self.spec.name}-{self.unit.key}"


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
        # Shallow: every field but `unit` is a str, float or None (Outcome is a str), and
        # `asdict`'s deep copy costs a worker more than writing the receipt.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["unit"] = self.unit._asdict()
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> StepResult:
        data = json.loads(text)
        data["unit"] = Unit(**data["unit"])
        data["outcome"] = Outcome(data["outcome"])
        return cls(**data)


def receipt_name(run_id: str) -> str:
    return f"{run_id}.json"


def temp_path(final: str, token: str = "") -> str:
    """Where an output is written before its rename: hidden, same folder, same suffix."""
    folder, name = os.path.split(final)
    return os.path.join(folder, f"{TEMP_PREFIX}{token}{'-' if token else ''}{name}")


def run_step(job: StepJob) -> StepResult:
    """Run one step. Never raises for a problem of the step itself: it reports it.

    A run is done at most once: its receipt, a file named after its `run_id`, is locked
    while the run goes on and then holds its result, so a second attempt at the same run
    (Dask recomputing a result lost with a worker, a resubmission after the scheduler came
    back while the first attempt still ran) waits for the first and returns its result.
    """
    if job.receipts is None or not job.run_id:
        return _run(job)
    path = os.path.join(job.receipts, receipt_name(job.run_id))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:  # the first run of the dataset: no receipts folder yet
        os.makedirs(job.receipts, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        earlier = _read_receipt(fd)
        if earlier is not None:
            return earlier
        result = _run(job)
        if result.state is not None:
            _write_receipt(fd, result)
        else:  # nothing ran: nothing to answer later attempts with
            os.unlink(path)
        return result
    finally:
        os.close(fd)


def run_after(job: StepJob, previous: StepResult) -> StepResult:
    """Run a step once the previous step of its unit is done; skip it if that one was not."""
    if previous.ok:
        return run_step(job)
    now = time.time()
    return skipped(job, f"not run: earlier step {previous.step} did not succeed", now)


def skipped(job: StepJob, reason: str, when: float) -> StepResult:
    return StepResult(job.unit, job.spec.name, Outcome.SKIPPED, when, when, reason)


def _run(job: StepJob) -> StepResult:
    unit = job.unit
    with RecordLog(
        job.dataset, unit.record_id, unit.task, unit.modality, job.spec.name,
        job.workspace_version, job.echo,
    ) as log:  # fmt: skip
        return _run_logged(job, log)


def _run_logged(job: StepJob, log: RecordLog) -> StepResult:
    # Paths are plain strings here (a worker runs this for every step and pathlib is slow
    # to build); the script alone gets `Path`s.
    unit, spec = job.unit, job.spec
    started = time.time()

    def finish(outcome: Outcome, error: str | None = None, **extra: str | None) -> StepResult:
        return StepResult(
            unit, spec.name, outcome, started, time.time(), error, run_id=job.run_id, **extra
        )

    log.write(StepStatus.INIT, "Init run")
    in_paths = tuple(os.path.join(job.dataset, rel) for rel in job.inputs)
    fingerprints: list[Fingerprint] = []
    for rel, path in zip(job.inputs, in_paths, strict=True):
        fp = stat_path(path)
        if fp is None:
            message = f"input {rel} is missing"
            log.write(StepStatus.DATA_NOT_AVAILABLE, f"Data not available: {message}")
            return finish(Outcome.NOT_RUN, message)
        fingerprints.append(fp)
    inputs = encode_fingerprints(job.inputs, fingerprints)
    hashes = (
        json.dumps({rel: content_hash(p) for rel, p in zip(job.inputs, in_paths, strict=True)})
        if job.hash_inputs
        else None
    )

    try:
        loaded = load_script(spec.script)
    except Exception as exc:
        error = f"cannot load script {spec.script.name}: {one_line(exc)}"
        log.write(StepStatus.ERROR, f"Run failed: {error}\n{_traceback(exc)}")
        try:
            current = code_hash(spec.script.read_bytes())
        except OSError:
            current = None
        return finish(Outcome.FAILED, error, inputs=inputs, code_hash=current)
    ran = {"inputs": inputs, "input_hashes": hashes, "code_hash": loaded.code_hash}

    finals = tuple(os.path.join(job.dataset, rel) for rel in job.outputs)
    # One name per output, so that the next run replaces what a killed run left behind.
    temps = tuple(temp_path(p) for p in finals)
    _remove(temps)
    try:
        for folder in dict.fromkeys(os.path.dirname(p) for p in finals):
            if not os.path.isdir(folder):
                os.makedirs(folder, exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"output folder {folder} is not writable")
    except OSError as exc:
        error = one_line(exc)
        log.write(StepStatus.ERROR, f"Cannot write outputs: {error}")
        return finish(Outcome.NOT_RUN, error, **ran)

    log.write(StepStatus.PROCESSING, "Processing run")
    try:
        script = loaded.cls(
            id=unit.record_id,
            task=unit.task,
            modality=unit.modality,
            path=ScriptPaths(
                spec.inputs.shape(tuple(map(Path, in_paths))),
                spec.outputs.shape(tuple(map(Path, temps))),
            ),
            logger=log.logger(),
        )
        if job.echo:
            script.run()
        else:
            with output_to(lambda line: log.write(StepStatus.PROCESSING, line)):
                script.run()
        unwritten = [
            rel for rel, t in zip(job.outputs, temps, strict=True) if not os.path.exists(t)
        ]
        if unwritten:
            raise RuntimeError(f"the script did not write output {', '.join(unwritten)}")
        for temp, final in zip(temps, finals, strict=True):
            _replace(temp, final)
    except (Exception, SystemExit) as exc:  # a script's sys.exit() fails its step, no more
        error = one_line(exc)
        log.write(StepStatus.ERROR, f"Run failed: {error}\n{_traceback(exc)}")
        return finish(Outcome.FAILED, error, **ran)
    finally:
        _remove(temps)  # whatever was not renamed into place, even on KeyboardInterrupt
    outputs = encode_fingerprints(job.outputs, [stat_path(p) for p in finals])
    log.write(StepStatus.DONE, "Run finished")
    return finish(Outcome.DONE, outputs=outputs, **ran)


def _read_receipt(fd: int) -> StepResult | None:
    """The result a receipt holds; None while it is empty (its run never ended) or torn."""
    data = b""
    while chunk := os.pread(fd, 1 << 16, len(data)):
        data += chunk
    try:
        return StepResult.from_json(data.decode()) if data else None
    except (ValueError, TypeError, KeyError):
        return None


def _write_receipt(fd: int, result: StepResult) -> None:
    os.ftruncate(fd, 0)  # whatever a torn write left
    data = result.to_json().encode()
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], written)


def _replace(temp: str, final: str) -> None:
    """Move a finished output into place; a folder output replaces the old folder."""
    if os.path.isdir(temp) and os.path.isdir(final):
        old = temp_path(final, "old")
        os.rename(final, old)
        os.rename(temp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)


def _remove(paths: tuple[str, ...]) -> None:
    for path in paths:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # the common case: nothing there, found with one system call
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def one_line(exc: BaseException) -> str:
    """'ValueError: the first line of its message', for events and the state store."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
