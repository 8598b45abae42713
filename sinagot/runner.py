"""Run one step of one unit: load its script, run it with atomic outputs, log, report.

`run_step` is what a Dask worker executes, so it takes and returns plain picklable data
and never touches the state store: the submitting process records the result.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from .fingerprints import Fingerprint, content_hash, stat_path
from .layout import StepSpec, Unit
from .patterns import TEMP_PREFIX
from .recordlog import RecordLog
from .scripts import ScriptPaths, load_script
from .status import StepStatus


class Outcome(StrEnum):
    DONE = "done"
    FAILED = "failed"  # the script raised, or did not write its outputs
    NOT_RUN = "not_run"  # the step could not be run: inputs missing, script or folder unusable


@dataclass(frozen=True)
class StepJob:
    """Everything a worker needs to run one step of one unit; plain data only."""

    unit: Unit
    spec: StepSpec
    dataset: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    workspace_version: str | None = None
    hash_inputs: bool = False
    echo: bool = False

    @property
    def key(self) -> str:
        """A deterministic, readable task key: 'count-REC-20200601'."""
        return f"{self.spec.name}-{self.unit.key}"


@dataclass(frozen=True)
class StepResult:
    unit: Unit
    step: str
    outcome: Outcome
    started: float
    finished: float
    error: str | None = None  # one line
    inputs: dict[str, Fingerprint] = field(default_factory=dict)
    outputs: dict[str, Fingerprint] = field(default_factory=dict)
    input_hashes: dict[str, str] = field(default_factory=dict)
    code_hash: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.DONE

    @property
    def duration(self) -> float:
        return self.finished - self.started


def temp_path(final: Path, token: str) -> Path:
    """Where an output is written before its rename: hidden, same folder, same suffix."""
    return final.with_name(f"{TEMP_PREFIX}{token}-{final.name}")


def run_step(job: StepJob) -> StepResult:
    """Run one step. Never raises for a problem of the step itself: it reports it."""
    unit, spec = job.unit, job.spec
    log = RecordLog(
        job.dataset, unit.record_id, unit.task, unit.modality, spec.name,
        job.workspace_version, job.echo,
    )  # fmt: skip
    started = time.time()

    def finish(outcome: Outcome, error: str | None = None, **extra) -> StepResult:
        return StepResult(unit, spec.name, outcome, started, time.time(), error, **extra)

    log.write(StepStatus.INIT, "Init run")
    dataset = Path(job.dataset)
    in_paths = tuple(dataset / rel for rel in job.inputs)
    fingerprints: dict[str, Fingerprint] = {}
    for rel, path in zip(job.inputs, in_paths, strict=True):
        fp = stat_path(str(path))
        if fp is None:
            message = f"input {rel} is missing"
            log.write(StepStatus.DATA_NOT_AVAILABLE, f"Data not available: {message}")
            return finish(Outcome.NOT_RUN, message)
        fingerprints[rel] = fp
    hashes = (
        {rel: content_hash(p) for rel, p in zip(job.inputs, in_paths, strict=True)}
        if job.hash_inputs
        else {}
    )

    try:
        loaded = load_script(spec.script)
    except Exception as exc:
        error = _one_line(exc)
        log.write(StepStatus.ERROR, f"Cannot load script: {error}\n{_traceback(exc)}")
        return finish(Outcome.NOT_RUN, f"cannot load script {spec.script.name}: {error}")

    finals = tuple(dataset / rel for rel in job.outputs)
    token = uuid.uuid4().hex[:8]
    temps = tuple(temp_path(p, token) for p in finals)
    try:
        for path in finals:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(path.parent, os.W_OK):
                raise PermissionError(f"output folder {path.parent} is not writable")
    except OSError as exc:
        error = _one_line(exc)
        log.write(StepStatus.ERROR, f"Cannot write outputs: {error}")
        return finish(Outcome.NOT_RUN, error, inputs=fingerprints, code_hash=loaded.code_hash)

    log.write(StepStatus.PROCESSING, "Processing run")
    try:
        script = loaded.cls(
            id=unit.record_id,
            task=unit.task,
            modality=unit.modality,
            path=ScriptPaths(spec.inputs.shape(in_paths), spec.outputs.shape(temps)),
            logger=log.logger(),
        )
        script.run()
        unwritten = [rel for rel, t in zip(job.outputs, temps, strict=True) if not t.exists()]
        if unwritten:
            raise RuntimeError(f"the script did not write output {', '.join(unwritten)}")
        for temp, final in zip(temps, finals, strict=True):
            _replace(temp, final)
    except Exception as exc:
        _remove(temps)
        error = _one_line(exc)
        log.write(StepStatus.ERROR, f"Run failed: {error}\n{_traceback(exc)}")
        return finish(
            Outcome.FAILED, error, inputs=fingerprints, input_hashes=hashes,
            code_hash=loaded.code_hash,
        )  # fmt: skip
    outputs = {rel: stat_path(str(p)) or (0, 0) for rel, p in zip(job.outputs, finals, strict=True)}
    log.write(StepStatus.DONE, "Run finished")
    return finish(
        Outcome.DONE, inputs=fingerprints, outputs=outputs, input_hashes=hashes,
        code_hash=loaded.code_hash,
    )  # fmt: skip


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


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
