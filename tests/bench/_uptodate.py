"""Build N harbor records that are up to date without running their 2N steps.

    python tests/bench/_uptodate.py DEST N

Running two trivial steps per record goes at about 500 steps/s on a small machine: a
million records would take over an hour before a benchmark could time a daemon's start on
them. This writes what such a run leaves behind instead, through the library's own code,
so that the daemon finds them up to date for real rather than by a shortcut:

- the raw file, and each step's output with the bytes the trivial script writes;
- per step, the `StepResult` a run returns (fingerprints read with the runner's own
  `stat_known` and `encode_fingerprints`, the script's code hash from `check_script`),
  stored as a run is: `StateStore.mark_submitted`, then `Engine.record`, under the
  workspace's writer lock (`Engine.writing`).

It then checks its work with the planner: at a small N every unit is planned (the fast
path a daemon's start takes), at any N a sample of units is planned one by one through
`plan_unit`'s full rules; any step found stale is an error naming it and why. Not written:
the per-record `LOG/<id>.log` files a real run appends to (nothing reads them to decide
what is stale, and a million more files would only cost disk).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import load_make_dataset

from sinagot.engine import Engine
from sinagot.fingerprints import encode_fingerprints, stat_known
from sinagot.layout import Scope, StepSpec, Unit
from sinagot.runner import Outcome, StepResult
from sinagot.scripts import check_script

MAKE = load_make_dataset()
CHUNK = 20_000  # records written and stored per transaction
FULL_CHECK_MAX = 20_000  # up to this many records, the check plans every unit
SAMPLE = 1_000  # beyond it, this many units, planned one by one through the full rules


class NotUpToDate(RuntimeError):
    """The planner finds steps to run in what was built: the builder is wrong."""


def build_uptodate(dest: Path, n: int, *, seed: int = 1, check: bool = True) -> Engine:
    """A harbor workspace (trivial steps) at `dest` with records 0..n-1 up to date.

    `dest` must not hold records yet. Returns the workspace's engine, closed."""
    MAKE.make_workspace(dest, 0, trivial=True)
    engine = Engine(dest, verbose=False)
    try:
        with engine.writing("sinagot (bench builder)"):
            rng = random.Random(seed)
            for first in range(0, n, CHUNK):
                _store_chunk(engine, range(first, min(n, first + CHUNK)), rng)
        if check:
            check_uptodate(engine, n, seed)
    finally:
        engine.close()
    return engine


def _steps(engine: Engine) -> tuple[tuple[str | None, str | None], tuple[StepSpec, ...]]:
    """The harbor's one (task, modality) and its steps; anything else is not this builder's."""
    keys = engine.layout.unit_keys(Scope())
    if len(keys) != 1:
        raise SystemExit(f"{engine.dataset}: expected the harbor's one kind of unit, got {keys}")
    return keys[0], engine.layout.steps(*keys[0])


def _store_chunk(engine: Engine, numbers: range, rng: random.Random) -> None:
    """Write these records' files as a run of their steps would, and store the runs."""
    (task, modality), steps = _steps(engine)
    dataset = str(engine.dataset)
    code = {spec.name: check_script(spec.script)[0] for spec in steps}
    first_inputs = set(steps[0].inputs.relative("{id}", task))
    made: set[str] = set()
    for spec in steps:  # each step reads the raw file only, and writes files nobody else does
        ins = set(spec.inputs.relative("{id}", task))
        outs = spec.outputs.relative("{id}", task)
        if ins != first_inputs or made & set(outs):
            raise SystemExit(f"{spec.script}: not the harbor's shape (raw -> one output)")
        made.update(outs)
    folders = {os.path.dirname(f"{dataset}/{rel}") for rel in (*first_inputs, *made)}
    for folder in folders:
        os.makedirs(folder, exist_ok=True)

    units, results = [], []
    for number in numbers:
        rid = MAKE.record_id(number)
        unit = Unit(rid, task, modality)
        raw = MAKE.raw_csv(rng)
        out = f"rows\n{len(raw.splitlines()) - 1}\n"  # what the trivial script writes
        started = time.time()
        for rel in steps[0].inputs.relative(rid, task):
            _write(f"{dataset}/{rel}", raw)
        for spec in steps:
            ins = spec.inputs.relative(rid, task)
            outs = spec.outputs.relative(rid, task)
            for rel in outs:
                _write(f"{dataset}/{rel}", out)
            results.append(_result(dataset, unit, spec, ins, outs, code[spec.name], started))
        units.append(unit)
    named = [(unit, secrets.token_hex(4)) for unit in units]  # as `Engine.generation` names
    engine.store.mark_submitted([(unit, spec.name, gen) for unit, gen in named for spec in steps])
    engine.record(results)


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _result(
    dataset: str,
    unit: Unit,
    spec: StepSpec,
    ins: Sequence[str],
    outs: Sequence[str],
    code_hash: str | None,
    started: float,
) -> StepResult:
    """What `run_step` returns for a run that read `ins` and wrote `outs` as they are now."""
    return StepResult(
        unit,
        spec.name,
        Outcome.DONE,
        started,
        time.time(),
        inputs=encode_fingerprints(ins, [stat_known(f"{dataset}/{rel}") for rel in ins]),
        outputs=encode_fingerprints(outs, [stat_known(f"{dataset}/{rel}") for rel in outs]),
        code_hash=code_hash,
    )


def check_uptodate(engine: Engine, n: int, seed: int = 1) -> int:
    """Raise NotUpToDate if the planner would run any step of what was built; the number of
    units planned. Every unit at a small N; else a sample, in groups of 64 or fewer, which
    `Engine.plan` decides rule by rule (no listing, no settled signatures)."""
    ids = [MAKE.record_id(x) for x in range(n)]
    if n > FULL_CHECK_MAX:
        ids = sorted(random.Random(seed).sample(ids, SAMPLE))
    checked = 0
    groups = [ids] if n <= FULL_CHECK_MAX else [ids[i : i + 64] for i in range(0, len(ids), 64)]
    for group in groups:
        units = engine.units(Scope(), group)
        stale = engine.plan(units, stale_only=True)
        if stale:
            first = stale[0]
            raise NotUpToDate(
                f"{len(stale)} step(s) stale after building, first {first.unit.record_id} "
                f"{first.step.name}: {'; '.join(first.reasons)}"
            )
        checked += len(units)
    return checked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("n", type=int)
    args = parser.parse_args()
    if (args.dest / "dataset").exists():
        print(f"{args.dest}: already holds a dataset; pick a new folder", file=sys.stderr)
        return 1
    start = time.perf_counter()
    try:
        build_uptodate(args.dest, args.n)
    except NotUpToDate as exc:
        print(f"{args.dest}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.dest}: {args.n} records up to date in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
