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
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
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
        data = asdict(self)
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


def lock_name(run_id: str) -> str:
    return f".{run_id}.lock"


def temp_path(final: Path, token: str = "") -> Path:
    """Where an output is written before its rename: hidden, same folder, same suffix."""
    return final.with_name(f"{TEMP_PREFIX}{token}{'-' if token else ''}{final.name}")


def run_step(job: StepJob) -> StepResult:
    """Run one step. Never raises for a problem of the step itself: it reports it.

    A run is done at most once: it holds a lock named after its `run_id` while it runs and
    leaves a receipt when it is done, so a second attempt at the same run (Dask recomputing
    a result lost with a worker, a resubmission after the scheduler came back while the
    first attempt still ran) waits for the first and returns its result.
    """
    if job.receipts is None or not job.run_id:
        return _run(job)
    folder = Path(job.receipts)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / lock_name(job.run_id), os.O_RDWR | os.O_CREAT, 0o664)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        receipt = folder / receipt_name(job.run_id)
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            return StepResult.from_json(receipt.read_text())
        result = _run(job)
        if result.state is not None:
            _write_receipt(receipt, result)
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
    unit, spec = job.unit, job.spec
    log = RecordLog(
        job.dataset, unit.record_id, unit.task, unit.modality, spec.name,
        job.workspace_version, job.echo,
    )  # fmt: skip
    started = time.time()

    def finish(outcome: Outcome, error: str | None = None, **extra: str | None) -> StepResult:
        return StepResult(
            unit, spec.name, outcome, started, time.time(), error, run_id=job.run_id, **extra
        )

    log.write(StepStatus.INIT, "Init run")
    dataset = Path(job.dataset)
    in_paths = tuple(dataset / rel for rel in job.inputs)
    fingerprints: list[Fingerprint] = []
    for rel, path in zip(job.inputs, in_paths, strict=True):
        fp = stat_path(str(path))
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

    finals = tuple(dataset / rel for rel in job.outputs)
    # One name per output, so that the next run replaces what a killed run left behind.
    temps = tuple(temp_path(p) for p in finals)
    _remove(temps)
    try:
        for path in finals:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise PermissionError(f"output folder {path.parent} is not writable")
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
            path=ScriptPaths(spec.inputs.shape(in_paths), spec.outputs.shape(temps)),
            logger=log.logger(),
        )
        if job.echo:
            script.run()
        else:
            with output_to(lambda line: log.write(StepStatus.PROCESSING, line)):
                script.run()
        unwritten = [rel for rel, t in zip(job.outputs, temps, strict=True) if not t.exists()]
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
    outputs = encode_fingerprints(job.outputs, [stat_path(str(p)) for p in finals])
    log.write(StepStatus.DONE, "Run finished")
    return finish(Outcome.DONE, outputs=outputs, **ran)


def _write_receipt(final: Path, result: StepResult) -> None:
    temp = temp_path(final, uuid.uuid4().hex[:8])
    temp.write_text(result.to_json())
    os.replace(temp, final)


def _replace(temp: Path, final: Path) -> None:
    """Move a finished output into place; a folder output replaces the old folder."""
    if temp.is_dir() and final.is_dir():
        old = final.with_name(f"{TEMP_PREFIX}old-{final.name}")
        final.rename(old)
        temp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temp, final)


def _remove(paths: tuple[Path, ...]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def one_line(exc: BaseException) -> str:
    """'ValueError: the first line of its message', for events and the state store."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
