"""Staleness: which steps of a unit must run, and why. One pure function, `plan_unit`.

It takes the unit, its ordered steps, a way to look up current fingerprints and what the
state store remembers of each step's last run, and returns a `StepPlan` per step, each with
its status and its reasons in words a person understands. The library, the CLI and the
daemon all decide through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .fingerprints import Fingerprint, Lookup
from .layout import StepSpec, Unit
from .status import StepStatus


class RunState(StrEnum):
    STARTED = "started"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What the state store remembers of a step's last run for one unit."""

    state: RunState
    inputs: Mapping[str, Fingerprint] = field(default_factory=dict)
    outputs: Mapping[str, Fingerprint] = field(default_factory=dict)
    code_hash: str | None = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    input_hashes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepPlan:
    """The decision for one step of one unit."""

    unit: Unit
    step: StepSpec
    index: int
    status: StepStatus
    reasons: tuple[str, ...]
    run: bool
    inputs: tuple[str, ...]  # dataset-relative paths
    outputs: tuple[str, ...]

    @property
    def stale(self) -> bool:
        return self.run


def plan_unit(
    unit: Unit,
    steps: Sequence[StepSpec],
    dataset: str,
    lookup: Lookup,
    runs: Mapping[str, RunRecord],
    code_hashes: Mapping[str, str] | None = None,
    *,
    force: bool = False,
    only: str | None = None,
    hasher: Callable[[str], str] | None = None,
) -> list[StepPlan]:
    """Plan one unit's steps in order.

    `runs` maps step name to its last run; `code_hashes` maps script path to the hash of its
    current code (None: script changes are not tracked); `hasher` gives a content hash of a
    dataset-relative path when content hashing is on; `only` restricts running to one step.
    """
    plans: list[StepPlan] = []
    will_write: dict[str, str] = {}  # output path -> earlier step that will (re)write it
    made_in_unit: dict[str, str] = {}  # output path -> earlier step that makes it
    for index, step in enumerate(steps):
        ins = step.inputs.relative(unit.record_id, unit.task)
        outs = step.outputs.relative(unit.record_id, unit.task)
        in_fps = [lookup(os.path.join(dataset, rel)) for rel in ins]
        status, reasons, run = _decide(
            step, ins, outs, in_fps, dataset, lookup, runs.get(step.name),
            code_hashes, will_write, made_in_unit, force, hasher,
        )  # fmt: skip
        if only is not None and step.name != only:
            run = False
        if run:
            will_write.update(dict.fromkeys(outs, step.name))
        made_in_unit.update(dict.fromkeys(outs, step.name))
        plans.append(StepPlan(unit, step, index, status, tuple(reasons), run, ins, outs))
    return plans


def _decide(
    step: StepSpec,
    ins: tuple[str, ...],
    outs: tuple[str, ...],
    in_fps: list[Fingerprint | None],
    dataset: str,
    lookup: Lookup,
    last: RunRecord | None,
    code_hashes: Mapping[str, str] | None,
    will_write: Mapping[str, str],
    made_in_unit: Mapping[str, str],
    force: bool,
    hasher: Callable[[str], str] | None,
) -> tuple[StepStatus, list[str], bool]:
    """The status, its reasons, and whether the step runs."""
    status, reasons = _status(
        step, ins, outs, in_fps, dataset, lookup, last, code_hashes, will_write,
        made_in_unit, force, hasher,
    )  # fmt: skip
    runs = status in (StepStatus.DATA_READY, StepStatus.STALE) or (
        status is StepStatus.INIT and any(rel in will_write for rel in ins)
    )
    return status, reasons, runs


def _status(
    step: StepSpec,
    ins: tuple[str, ...],
    outs: tuple[str, ...],
    in_fps: list[Fingerprint | None],
    dataset: str,
    lookup: Lookup,
    last: RunRecord | None,
    code_hashes: Mapping[str, str] | None,
    will_write: Mapping[str, str],
    made_in_unit: Mapping[str, str],
    force: bool,
    hasher: Callable[[str], str] | None,
) -> tuple[StepStatus, list[str]]:
    rewritten = [(rel, will_write[rel]) for rel in ins if rel in will_write]
    missing = [rel for rel, fp in zip(ins, in_fps, strict=True) if fp is None]
    waiting = [rel for rel in missing if rel in made_in_unit]
    if rewritten:
        rel, by = rewritten[0]
        status = StepStatus.INIT if missing else StepStatus.STALE
        return status, [f"earlier step {by} will write input {rel}"]
    if waiting:
        return StepStatus.INIT, [f"waits for step {made_in_unit[waiting[0]]} to make {waiting[0]}"]
    if missing:
        return StepStatus.DATA_NOT_AVAILABLE, [f"input {rel} is missing" for rel in missing]

    out_fps = [lookup(os.path.join(dataset, rel)) for rel in outs]
    if all(fp is None for fp in out_fps):
        what = "outputs are" if len(outs) > 1 else "output is"
        reasons = ["forced"] if force else [f"{what} missing ({', '.join(outs)})"]
        return StepStatus.DATA_READY, reasons
    if force:
        return StepStatus.STALE, ["forced"]

    reasons: list[str] = []
    if last is not None and last.state is not RunState.DONE:
        changes = _changes(step, ins, in_fps, last, code_hashes, dataset, hasher)
        if last.state is RunState.FAILED and not changes:
            return StepStatus.ERROR, [f"last run failed: {last.error or 'unknown error'}"]
        if last.state is RunState.STARTED:
            reasons.append("the last run did not finish")
        reasons.extend(changes)
    reasons.extend(f"output {rel} is missing" for rel, fp in zip(outs, out_fps, strict=True)
                   if fp is None)  # fmt: skip
    if last is None:
        reasons.extend(_make_rule(ins, in_fps, outs, out_fps))
    elif last.state is RunState.DONE:
        reasons.extend(_changes(step, ins, in_fps, last, code_hashes, dataset, hasher))
    return (StepStatus.STALE if reasons else StepStatus.DONE), reasons


def _make_rule(
    ins: Sequence[str],
    in_fps: Sequence[Fingerprint | None],
    outs: Sequence[str],
    out_fps: Sequence[Fingerprint | None],
) -> list[str]:
    """make's rule, for outputs sinagot did not produce: is an input newer than an output?"""
    present = [(fp[1], rel) for rel, fp in zip(outs, out_fps, strict=True) if fp is not None]
    if not present:
        return []
    oldest_out, out_rel = min(present)
    newest_in, in_rel = max((fp[1], rel) for rel, fp in zip(ins, in_fps, strict=True) if fp)
    if newest_in > oldest_out:
        return [f"input {in_rel} is newer than output {out_rel}"]
    return []


def _changes(
    step: StepSpec,
    ins: Sequence[str],
    in_fps: Sequence[Fingerprint | None],
    last: RunRecord,
    code_hashes: Mapping[str, str] | None,
    dataset: str,
    hasher: Callable[[str], str] | None,
) -> list[str]:
    """What differs from what the last run read and ran with."""
    reasons = []
    for rel, fp in zip(ins, in_fps, strict=True):
        old = last.inputs.get(rel)
        if old is None:
            reasons.append(f"input {rel} was not read by the last run")
        elif fp != old:
            if (
                hasher is not None
                and rel in last.input_hashes
                and (hasher(rel) == last.input_hashes[rel])
            ):
                continue  # touched, but the same content
            reasons.append(f"input {rel} changed since last run ({_describe(old, fp)})")
    if code_hashes is not None:
        current = code_hashes.get(str(step.script))
        if current is not None and last.code_hash is not None and current != last.code_hash:
            reasons.append(f"script {step.script.name} changed since last run")
    return reasons


def _describe(old: Fingerprint, new: Fingerprint | None) -> str:
    if new is None:
        return "gone"
    if old[0] != new[0]:
        return f"size {old[0]} -> {new[0]}"
    return "same size, modified time differs"
