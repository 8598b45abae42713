"""Staleness: which steps of a unit must run, and why. One pure function, `plan_unit`.

It takes a unit, its ordered steps and a `PlanContext` (current fingerprints, what the
state store remembers, current script hashes) and returns a `StepPlan` per step with its
status and its reasons, in words a person understands. The library, the CLI and the daemon
all decide through it. The rules, in order (DESIGN.md §6):

1. an output is missing;
2. the last run did not finish (killed, crashed);
3. an input is newer than an output (make's rule; the only one for outputs sinagot did not
   produce itself, so a dataset processed before sinagot is adopted, not redone);
4. an input differs from what the last run read (size or mtime; content when hashing);
5. the script's code differs from the last run's (`[staleness] script_changes`);
6. an earlier step of the unit will rewrite one of its inputs;
7. an output differs (size or mtime) from what the step's last run wrote: truncated by a
   full disk, overwritten by hand. Only the step that wrote it; a later step reading it
   has a changed input, or an earlier step that will rewrite it.

A step whose inputs are missing runs when nothing in its unit will make them only with
`ignore_missing` (the script decides what to do without them); otherwise it is
DATA_NOT_AVAILABLE, unless all its outputs exist: then it is DONE, its inputs gone (raw data
archived after processing), and the steps after it plan from its outputs.

A step whose last run failed stays failed (ERROR) until its inputs or its script change.
A step whose input or output exists but cannot be read (a link loop, a FIFO, no permission)
is ERROR too, saying which path and why, and does not run; nor does a step whose script
cannot be loaded (`PlanContext.broken`), nor a later step of its unit waiting on it.
Nor does any step of a record that is not ready (`PlanContext.not_ready`: the marker
`[records] ready_when` names is missing): it keeps its status, with the reason first.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from .fingerprints import (
    DirectoryListing,
    Fingerprint,
    Lookup,
    PathUnreadable,
    decode_fingerprints,
    encode_fingerprints,
    stat_path,
)
from .layout import StepSpec, Unit
from .patterns import PathPattern, PathProblem
from .state import RunRecord, Signatures, run_key
from .status import StepStatus

_stat = os.stat
S_ISREG = stat.S_ISREG


@dataclass(frozen=True, slots=True)
class PlanContext:
    """What planning reads: the world as it is, and as the state store remembers it."""

    lookup: Lookup  # relative path -> fingerprint; None: missing; raises PathUnreadable
    runs: Mapping[str, RunRecord]  # by state.run_key
    code_hashes: Mapping[str, str] | None = None  # script path -> hash; None: not tracked
    hasher: Callable[[str], str] | None = None  # content hash of a relative path, if asked
    live_writer: bool = False  # another live process is running the submitted steps
    broken: Mapping[str, str] | None = None  # script_key -> one line: why it cannot be loaded
    problems: list[PathProblem] | None = None  # paths found unreadable are added here
    force: bool = False
    only: str | None = None  # run just this step
    ignore_missing: bool = False  # run steps whose inputs are missing (and cannot be made)
    #: record_id -> why its steps wait whatever they need (`[records] ready_when`'s marker
    #: is missing): nothing of the record runs until it is there
    not_ready: Mapping[str, str] | None = None


#: The reason of a step planned to run without its inputs (`PlanContext.ignore_missing`).
IGNORE_MISSING = "inputs missing, run anyway (ignore_missing)"


class StepPlan(NamedTuple):
    """The decision for one step of one unit (a NamedTuple: built by the hundred thousand)."""

    unit: Unit
    step: StepSpec
    index: int
    status: StepStatus
    reasons: tuple[str, ...]
    run: bool
    inputs: tuple[str, ...]  # dataset-relative paths
    outputs: tuple[str, ...]
    #: Planned with `ignore_missing`: its run goes on without missing inputs, and after an
    #: earlier step of its unit that failed (the script decides).
    ignore_missing: bool = False


def plan_unit(unit: Unit, steps: Sequence[StepSpec], ctx: PlanContext) -> list[StepPlan]:
    """Plan one unit's steps, in order."""
    plans: list[StepPlan] = []
    will_write: dict[str, str] = {}  # output path -> earlier step that will (re)write it
    made_in_unit: dict[str, str] = {}  # output path -> earlier step that makes it
    held: dict[str, str] = {}  # output path -> earlier step that would write it but waits
    runs, only = ctx.runs, ctx.only
    for index, step in enumerate(steps):
        ins = step.inputs.relative(unit.record_id, unit.task)
        outs = step.outputs.relative(unit.record_id, unit.task)
        last = runs.get(run_key(unit, step.name))
        try:
            status, reasons = _status(step, ins, outs, last, ctx, will_write, made_in_unit)
        except PathUnreadable as exc:
            which = "output" if exc.path in outs else "input"
            status, reasons = StepStatus.ERROR, [f"{which} {exc.path} cannot be read: {exc.error}"]
            if ctx.problems is not None:
                ctx.problems.append(exc.problem)
        run = (
            status in (StepStatus.DATA_READY, StepStatus.STALE)
            or (status is StepStatus.INIT and any(rel in will_write for rel in ins))
        ) and (only is None or only == step.name)
        if run:
            will_write.update(dict.fromkeys(outs, step.name))
            if (ctx.broken or held) and (wait := _waits(step, ins, ctx.broken, held)):
                run, reasons = False, [wait, *reasons]
                held.update(dict.fromkeys(outs, step.name))
            elif ctx.not_ready and (wait := ctx.not_ready.get(unit.record_id)):
                run, reasons = False, [wait, *reasons]
        made_in_unit.update(dict.fromkeys(outs, step.name))
        plans.append(
            StepPlan(unit, step, index, status, tuple(reasons), run, ins, outs, ctx.ignore_missing)
        )
    return plans


def _waits(
    step: StepSpec, ins: Sequence[str], broken: Mapping[str, str] | None, held: Mapping[str, str]
) -> str | None:
    """Why a step that is due must wait: its script cannot be loaded, or an earlier step of
    its unit that would rewrite one of its inputs waits for that."""
    error = broken.get(step.script_key) if broken else None
    if error is not None:
        return f"script {_script_name(step)} cannot be loaded ({error}); waits until it is fixed"
    for rel in ins:
        if rel in held:
            return f"waits for step {held[rel]}, which cannot run yet and would rewrite {rel}"
    return None


class SettledCheck:
    """Is every step of a unit up to date? Decided with one string comparison per step
    against `StateStore.read_settled` (with outputs): the fast path for planning a whole
    workspace.

    Each step's paths are compiled once per (task, modality) into folders and the text
    around `{id}`: a unit then costs one `stat` per distinct input and output (a step's
    output is often a later step's input: it is looked at once), made relative to its
    folder's descriptor (the kernel walks the dataset's path once per folder, not once per
    file), and one hash comparison per step, that of what its last run read, ran with and
    wrote (`state.Signatures`). It errs only towards False (a path that cannot be read,
    unusual patterns); `plan_unit` then decides, with reasons.
    """

    def __init__(
        self,
        signatures: Signatures,
        listing: DirectoryListing,
        code_hashes: Mapping[str, str] | None,
    ) -> None:
        self._signatures = signatures
        self._root = f"{listing.root}/"
        self._code_hashes = code_hashes
        self._probes: dict[tuple[str | None, str | None], _UnitProbe | None] = {}
        self._folders = _FolderHandles(self._root)
        # The descriptors go with this object (at the end of the plan that made it).
        weakref.finalize(self, self._folders.close)

    def __call__(self, unit: Unit, steps: Sequence[StepSpec]) -> bool:
        key = (unit.task, unit.modality)
        probe = self._probes.get(key, False)
        if probe is False:
            probe = self._probes[key] = self._compile(unit, steps)
        if probe is None:
            return False
        record_id, signatures = unit.record_id, self._signatures.by_key
        expected = [signatures.get(hash(record_id + tail)) for tail in probe.tails]
        if None in expected:
            return False
        lines = []
        for folder, pre, post, fd, prefix in probe.paths:
            name = pre + record_id + post
            try:
                st = _stat(prefix + name, dir_fd=fd)
            except OSError:
                return False
            if S_ISREG(st.st_mode):
                lines.append(f"{folder}{name}\t{st.st_size}\t{st.st_mtime_ns}")
            else:  # a folder (walked as the slow path does), or odd
                line = _other_line(self._root + folder + name, folder + name)
                if line is None:
                    return False
                lines.append(line)
        if probe.single:  # one input and one output a step: the common case, made plain
            for (i, code, o), signature in zip(probe.single, expected, strict=True):
                if hash(lines[i] + code + lines[o]) != signature:
                    return False
            return True
        for (ins, code, outs), signature in zip(probe.steps, expected, strict=True):
            text = "\n".join([lines[i] for i in ins]) + code + "\n".join([lines[i] for i in outs])
            if hash(text) != signature:
                return False
        return True

    def _compile(self, unit: Unit, steps: Sequence[StepSpec]) -> _UnitProbe | None:
        """The paths of a (task, modality)'s units, each once, and what each step's
        signature is made of: the key's end, and which paths it read and wrote."""
        task, anyone = unit.task, unit._replace(record_id="")  # key = record ID + run_key(anyone)
        paths: dict[tuple[str, str, str], int] = {}
        tails: list[str] = []
        probes: list[tuple[tuple[int, ...], str, tuple[int, ...]]] = []
        for step in steps:
            inputs = [_split(p, task) for p in step.inputs.patterns]
            outputs = [_split(p, task) for p in step.outputs.patterns]
            if any(p is None for p in (*inputs, *outputs)):
                return None
            ins = _indexes(paths, inputs)
            outs = _indexes(paths, outputs)
            code = "\x1d"
            if self._code_hashes is not None:
                code = f"\x1e{self._code_hashes.get(step.script_key, '')}\x1d"
            tails.append(run_key(anyone, step.name))
            probes.append((ins, code, outs))
        handles = []
        for folder, pre, post in paths:
            fd = self._folders.open(folder)  # stat by name in it; by path if it cannot open
            handles.append((folder, pre, post, fd, "" if fd is not None else self._root + folder))
        single = []
        if all(len(ins) == len(outs) == 1 for ins, _, outs in probes):
            single = [(ins[0], code, outs[0]) for ins, code, outs in probes]
        return _UnitProbe(handles, tails, probes, single)


class _FolderHandles:
    """Descriptors of the dataset's folders that hold units' files, opened once each; None
    for one that cannot be opened (missing yet): its files are then stat-ed by path."""

    def __init__(self, root: str) -> None:
        self._root = root
        self._fds: dict[str, int | None] = {}

    def open(self, folder: str) -> int | None:
        """`folder` is dataset-relative with a trailing '/' ('' for the dataset itself)."""
        if folder not in self._fds:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            try:
                self._fds[folder] = os.open(self._root + folder, flags)
            except (OSError, ValueError):
                self._fds[folder] = None
        return self._fds[folder]

    def close(self) -> None:
        for fd in self._fds.values():
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds.clear()


def _indexes(
    paths: dict[tuple[str, str, str], int], parts: list[tuple[str, str, str]]
) -> tuple[int, ...]:
    """Where each (folder, before {id}, after) is in `paths`, added if new."""
    return tuple(paths.setdefault((_slash(d), pre, post), len(paths)) for d, pre, post in parts)


def _other_line(path: str, relative: str) -> str | None:
    """The line of a path that is not a regular file, as planning would fingerprint it (a
    folder is walked); None when it cannot be read: the slow path says why."""
    try:
        fp = stat_path(path)
    except PathUnreadable:
        return None
    return None if fp is None else f"{relative}\t{fp[0]}\t{fp[1]}"


def _split(pattern: PathPattern, task: str | None) -> tuple[str, str, str] | None:
    """(folder, text before {id}, text after) when only the file name holds {id}."""
    *folders, last = pattern.parts
    if task is not None:
        folders = [f.replace("{task}", task) for f in folders]
        last = last.replace("{task}", task)
    if any("{" in f for f in folders) or last.count("{id}") != 1 or "{task}" in last:
        return None
    pre, post = last.split("{id}")
    return "/".join(folders), pre, post


def _slash(folder: str) -> str:
    return f"{folder}/" if folder else ""


class _UnitProbe(NamedTuple):
    #: Each path once: (folder/, before {id}, after, the folder's descriptor or None, and
    #: what to put before the name to stat it: '' with a descriptor, else root + folder/).
    paths: list[tuple[str, str, str, int | None, str]]
    #: Per step: the end of its store key (after the record ID).
    tails: list[str]
    #: Per step: the indexes in `paths` of its inputs, what comes between ('\x1e' + the
    #: script's hash, if tracked; '\x1d'), and the indexes of its outputs.
    steps: list[tuple[tuple[int, ...], str, tuple[int, ...]]]
    #: The same when each step has one input and one output (else empty): (in, code, out).
    single: list[tuple[int, str, int]]


def done_plans(unit: Unit, steps: Sequence[StepSpec]) -> list[StepPlan]:
    """The plans of a unit `settled` found up to date."""
    record_id, task = unit.record_id, unit.task
    plans = []
    for index, step in enumerate(steps):
        ins = step.inputs.relative(record_id, task)
        outs = step.outputs.relative(record_id, task)
        plans.append(StepPlan(unit, step, index, StepStatus.DONE, (), False, ins, outs))
    return plans


def _status(
    step: StepSpec,
    ins: tuple[str, ...],
    outs: tuple[str, ...],
    last: RunRecord | None,
    ctx: PlanContext,
    will_write: Mapping[str, str],
    made_in_unit: Mapping[str, str],
) -> tuple[StepStatus, list[str]]:
    if last is not None and last.submitted is not None and ctx.live_writer:
        since = time.strftime("%H:%M:%S", time.localtime(last.submitted))
        return StepStatus.PROCESSING, [f"in flight since {since}"]
    lookup = ctx.lookup
    in_fps = [lookup(rel) for rel in ins]
    missing = [rel for rel, fp in zip(ins, in_fps, strict=True) if fp is None]
    if missing and (gone := _inputs_gone(ins, in_fps, missing, outs, last, ctx, will_write,
                                         made_in_unit, step)):  # fmt: skip
        return gone
    for rel in ins:
        if rel in will_write:
            status = StepStatus.INIT if missing else StepStatus.STALE
            return status, [f"earlier step {will_write[rel]} will write input {rel}"]
    if missing:
        return StepStatus.INIT, [f"waits for step {made_in_unit[missing[0]]} ({missing[0]})"]

    out_fps = [lookup(rel) for rel in outs]
    if all(fp is None for fp in out_fps):
        if ctx.force:
            return StepStatus.DATA_READY, ["forced"]
        if _still_failed(step, ins, in_fps, last, ctx):
            return StepStatus.ERROR, [f"last run failed: {last.error or 'unknown error'}"]
        reasons = [f"output {rel} is missing" for rel in outs]
        if last is not None and last.submitted is not None:
            reasons.insert(0, "the last run did not finish")
        return StepStatus.DATA_READY, reasons
    if ctx.force:
        return StepStatus.STALE, ["forced"]

    if _still_failed(step, ins, in_fps, last, ctx):
        return StepStatus.ERROR, [f"last run failed: {last.error or 'unknown error'}"]
    reasons: list[str] = []
    if last is not None and last.submitted is not None:
        reasons.append("the last run did not finish")
    if last is None or last.state is None:
        reasons.extend(_make_rule(ins, in_fps, outs, out_fps))
    else:
        reasons.extend(_changes(step, ins, in_fps, last, ctx))
        if last.state == "done" and last.outputs:
            reasons.extend(_outputs_changed(outs, out_fps, last.outputs))
    reasons.extend(f"output {rel} is missing" for rel, fp in zip(outs, out_fps, strict=True)
                   if fp is None)  # fmt: skip
    return (StepStatus.STALE if reasons else StepStatus.DONE), reasons


def _inputs_gone(
    ins: Sequence[str],
    in_fps: Sequence[Fingerprint | None],
    missing: Sequence[str],
    outs: Sequence[str],
    last: RunRecord | None,
    ctx: PlanContext,
    will_write: Mapping[str, str],
    made_in_unit: Mapping[str, str],
    step: StepSpec,
) -> tuple[StepStatus, list[str]] | None:
    """The status of a step some of whose inputs are missing and will not be written by an
    earlier step of this plan; None when earlier steps will write them all, or when one is
    made in the unit (the step then waits for it, INIT).

    All its outputs there: DONE, its inputs gone (0.3 said DONE too); it runs anyway only
    with both `ignore_missing` and `force`, as 0.3 did. Otherwise, with `ignore_missing`, it
    runs anyway (unless its last run failed with the same inputs); without, it is
    DATA_NOT_AVAILABLE when nothing in the unit makes the missing inputs.
    """
    pending = [rel for rel in missing if rel not in will_write]
    if not pending:
        return None
    if not (ctx.ignore_missing and ctx.force):
        out_fps = [ctx.lookup(rel) for rel in outs]
        if outs and all(fp is not None for fp in out_fps):
            said = ", ".join(f"input {rel} is missing" for rel in pending)
            return StepStatus.DONE, [f"inputs gone: {said}; outputs kept"]
    if ctx.ignore_missing:
        if not ctx.force and _still_failed(step, ins, in_fps, last, ctx):
            return StepStatus.ERROR, [f"last run failed: {last.error or 'unknown error'}"]  # type: ignore[union-attr]
        return StepStatus.DATA_READY, [IGNORE_MISSING]
    if unmade := [rel for rel in pending if rel not in made_in_unit]:
        return StepStatus.DATA_NOT_AVAILABLE, [f"input {rel} is missing" for rel in unmade]
    return None


def _still_failed(
    step: StepSpec,
    ins: Sequence[str],
    in_fps: Sequence[Fingerprint | None],
    last: RunRecord | None,
    ctx: PlanContext,
) -> bool:
    """A failed step is not retried until its inputs or its script change."""
    return (
        last is not None
        and last.state == "failed"
        and last.submitted is None
        and not _changes(step, ins, in_fps, last, ctx)
    )


def _make_rule(
    ins: Sequence[str],
    in_fps: Sequence[Fingerprint | None],
    outs: Sequence[str],
    out_fps: Sequence[Fingerprint | None],
) -> list[str]:
    """make's rule, for outputs sinagot did not produce: is an input newer than an output?"""
    present = [(fp[1], rel) for rel, fp in zip(outs, out_fps, strict=True) if fp is not None]
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
    ctx: PlanContext,
) -> list[str]:
    """What differs from what the last run read and ran with (fast path: one string compare)."""
    reasons = []
    if last.inputs != encode_fingerprints(ins, in_fps):
        old = last.input_map()
        hashes = last.hashes() if ctx.hasher is not None else {}
        for rel, fp in zip(ins, in_fps, strict=True):
            before = old.get(rel)
            if before is None:
                reasons.append(f"input {rel} was not read by the last run")
            elif fp != before:
                if (
                    rel in hashes
                    and ctx.hasher is not None
                    and _hash(ctx.hasher, rel) == hashes[rel]
                ):
                    continue  # touched, same content
                reasons.append(f"input {rel} changed since last run ({_describe(before, fp)})")
    if ctx.code_hashes is not None and last.code_hash is not None:
        current = ctx.code_hashes.get(step.script_key)
        if current is not None and current != last.code_hash:
            reasons.append(f"script {_script_name(step)} changed since last run")
    return reasons


def _outputs_changed(
    outs: Sequence[str], out_fps: Sequence[Fingerprint | None], recorded: str
) -> list[str]:
    """Outputs that differ from what the run that wrote them left (truncated by a full disk,
    overwritten by hand): that run's result is not what is there, so its step runs again.
    Only the writer's own outputs are compared; a missing one is said elsewhere, and a
    later step reading it sees a changed input instead."""
    if recorded == encode_fingerprints(outs, out_fps):  # fast path: one string compare
        return []
    written = decode_fingerprints(recorded)
    return [
        f"output {rel} changed since the run that wrote it ({_describe(before, fp)})"
        for rel, fp in zip(outs, out_fps, strict=True)
        if fp is not None and (before := written.get(rel)) is not None and fp != before
    ]


def _hash(hasher: Callable[[str], str], relative: str) -> str:
    try:
        return hasher(relative)
    except PathUnreadable as exc:  # the hasher names the path as it likes: name it here
        raise PathUnreadable(relative, exc.error) from None


def _script_name(step: StepSpec) -> str:
    return f"{step.modality}/{step.script.name}" if step.modality else step.script.name


def _describe(old: Fingerprint, new: Fingerprint | None) -> str:
    if new is None:
        return "gone"
    if old[0] != new[0]:
        return f"size {old[0]} -> {new[0]}"
    return "same size, modified time differs"
