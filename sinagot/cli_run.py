"""`sinagot run`: plan and run here, or ask the running sinagotd and, with --wait, follow
its runs in the state store.

Apart from `cli.py` so that `sinagot status` does not import what runs steps or talks to a
daemon (the status command is timed against snakemake's dry run)."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .cli import (
    EX_FAILED,
    EX_INTERRUPTED,
    EX_OK,
    EX_USAGE,
    UsageError,
    _say,
    _select,
)
from .engine import Engine
from .layout import Scope, Unit
from .planner import StepPlan
from .requests import Ended, RequestError, RunRequest, Waiter, ask, read_rows
from .runner import Outcome, StepResult
from .status import natural_key

ASK_TIMEOUT = 60.0  # seconds to wait for a running daemon's answer to `sinagot run`
POLL_SECONDS = 0.2  # `run --wait`: least time between two reads of the state store


def cmd_run(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout goes with --wait: how long to wait for sinagotd")
    with Engine(args.workspace, verbose=False, scheduler=args.scheduler) as ws:
        scope, units = _select(ws, args)
        if args.step is not None and args.step not in ws.layout.step_names(scope):
            names = ", ".join(ws.layout.step_names(scope))
            print(f"sinagot: no step {args.step!r} here; steps: {names}", file=sys.stderr)
            return EX_USAGE
        if not args.dry_run and (holder := ws.lock.holder()) and "sinagotd" in holder:
            request = RunRequest(
                args.record, args.task, args.modality, args.step, args.force, wait=args.wait
            )
            if args.wait:
                return _wait_for_daemon(ws, request, holder, args.timeout)
            return _ask_daemon(ws.config.state_dir, request, holder)
        # Without a daemon, --wait changes nothing: this run is the one that waits.
        plans = ws.plan(units, force=args.force, only=args.step, stale_only=True)
        if args.dry_run:
            for plan in plans:
                print(f"would run {_where(plan)}: {'; '.join(plan.reasons)}")
            print(f"{len(plans)} step(s) would run; nothing was run (--dry-run)")
            return EX_OK
        with _progress("run", len(plans)) as show:
            seen = dict.fromkeys(Outcome, 0)

            def on_result(result: StepResult) -> None:
                seen[result.outcome] += 1
                if show is not None:
                    show(sum(seen.values()), seen)

            results = ws.execute(plans, on_result=on_result)
        return _summary(results, len(plans))


def _ask_daemon(state_dir: Path, request: RunRequest, holder: str) -> int:
    """The daemon is the only writer: ask it, and say what it answered, not what was hoped."""
    reply = _ask(state_dir, request, holder)
    if reply is None:
        return EX_FAILED
    print(_queued_line(reply, request, "follow with `sinagot status` or its events"))
    return EX_OK


def _ask(state_dir: Path, request: RunRequest, holder: str) -> dict[str, Any] | None:
    """The daemon's reply if it took the request; None once its refusal (or silence) is said."""
    try:
        reply = ask(state_dir, request, timeout=ASK_TIMEOUT)
    except RequestError as exc:
        _say(f"{holder} holds this workspace, but {exc}")
        return None
    if not reply["ok"]:
        error = str(reply.get("error", "no reason given"))
        if request.wait and "unknown key 'wait'" in error:
            error = "it is older than --wait; restart it to update it, or run without --wait"
        _say(f"sinagotd pid {reply['pid']} refused: {error}")
        return None
    return reply


def _queued_line(reply: dict[str, Any], request: RunRequest, then: str) -> str:
    who = f"sinagotd pid {reply['pid']} is running this workspace"
    steps, units, busy = (reply.get(key, 0) for key in ("steps", "units", "busy"))
    if steps or busy:
        queued = f"it queued {steps} step(s) of {units} unit(s)"
        if busy:
            queued += f"; {busy} unit(s) already running are planned again when they end"
        return f"{who}: {queued}; {then}"
    hint = "" if request.force else " (--force runs them again)"
    return f"{who}: nothing to queue, every step asked for is up to date or cannot run{hint}"


def _wait_for_daemon(ws: Engine, request: RunRequest, holder: str, timeout: float | None) -> int:
    """`run --wait` with sinagotd running: ask it, then follow the steps it queued in the
    state store (read-only; `requests.Waiter` says how a step's end is told) until each has
    ended, and report them as a batch run does. Stopping the wait (Ctrl-C, --timeout)
    cancels nothing: the daemon goes on with what it queued. If the daemon stops (nobody
    holds the workspace any more), so does the wait: what it left is not ours to run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    before = read_rows(ws.store, request.records)  # just before asking: what "new" is against
    try:
        reply = _ask(ws.config.state_dir, request, holder)
        if reply is None:
            return EX_FAILED
        waiter = Waiter(
            reply, before, lambda u: [s.name for s in ws.layout.steps(u.task, u.modality)],
            force=request.force, only=request.step,
        )  # fmt: skip
        print(_queued_line(reply, request, "waiting for them (Ctrl-C stops the wait, not them)"))
        sys.stdout.flush()
        stopped = _follow(ws, waiter, deadline)
    except KeyboardInterrupt:
        _say("interrupted: stopped waiting; sinagotd goes on with the steps it queued "
             "(nothing was cancelled)")  # fmt: skip
        return EX_INTERRUPTED
    left = waiter.waiting
    code = _report(_in_order(ws, waiter.ended.values()), [f"{left} still waiting"] if left else [])
    if stopped == "timeout":
        _say(f"stopped waiting after {timeout:g} s (--timeout): {left} step(s) still waiting; "
             "sinagotd goes on with them: see `sinagot status`")  # fmt: skip
    elif stopped == "daemon":
        _say(f"{holder} stopped before {left} step(s) ended; see `sinagot status`")
    return code


def _follow(ws: Engine, waiter: Waiter, deadline: float | None) -> str | None:
    """Read the store until the waiter is done (None), the deadline passes ("timeout") or
    nobody holds the workspace any more ("daemon"); a progress bar on a terminal."""

    def plan(units: list[Unit], force: bool, only: str | None) -> list[StepPlan]:
        return ws.plan(units, force=force, only=only)

    with _progress("sinagotd", waiter.total) as show:
        while True:
            began = time.monotonic()
            records = waiter.records()
            rows = read_rows(ws.store, records if len(records) <= 64 else None)
            waiter.update(rows, plan)
            if show is not None:
                counts = dict.fromkeys(Outcome, 0)
                for item in waiter.ended.values():
                    counts[item.outcome] += 1
                show(waiter.total - waiter.waiting, counts)
            if waiter.done:
                return None
            if ws.lock.holder() is None:
                return "daemon"
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "timeout"
            pause = max(POLL_SECONDS, 2 * (now - began))  # a huge queue: read it less often
            time.sleep(pause if deadline is None else min(pause, deadline - now))


def _in_order(ws: Engine, ended: Iterable[Ended]) -> list[Ended]:
    """Records in natural order, then units and steps in the layout's order."""
    keys = {key: i for i, key in enumerate(ws.layout.unit_keys(Scope()))}

    def position(e: Ended) -> tuple[list[str | int], int, int]:
        steps = [s.name for s in ws.layout.steps(e.unit.task, e.unit.modality)]
        where = (e.unit.task, e.unit.modality)
        index = steps.index(e.step) if e.step in steps else len(steps)
        return (natural_key(e.unit.record_id), keys.get(where, len(keys)), index)

    return sorted(ended, key=position)


def _where(plan: StepPlan) -> str:
    scope = "/".join(p for p in (plan.unit.task, plan.unit.modality) if p)
    return f"{plan.unit.record_id}{' ' + scope if scope else ''} {plan.step.name}"


def _summary(results: list[StepResult], planned: int) -> int:
    """Say what happened to each step that did not end done, then the counts: a step skipped
    because an earlier one of its unit failed is not counted as failed itself."""
    extra = [f"{not_run} not run after a failure"] if (not_run := planned - len(results)) else []
    return _report([Ended(r.unit, r.step, r.outcome, r.error) for r in results], extra)


def _report(ended: Sequence[Ended], extra: Sequence[str] = ()) -> int:
    """The lines of the steps that did not end done (`FAILED`: the script failed; `NOT RUN`:
    it could not be run; `SKIPPED`: an earlier step of its unit failed), then the counts;
    EX_OK if every step ended done and nothing is left (`extra` says what is)."""
    by: dict[Outcome, list[Ended]] = {outcome: [] for outcome in Outcome}
    for item in ended:
        by[item.outcome].append(item)
    for outcome, label in ((Outcome.FAILED, "FAILED"), (Outcome.NOT_RUN, "NOT RUN"),
                           (Outcome.SKIPPED, "SKIPPED")):  # fmt: skip
        for unit, step, _, error in by[outcome]:
            scope = "/".join(p for p in (unit.task, unit.modality) if p)
            print(f"{label} {unit.record_id}{' ' + scope if scope else ''} {step}: {error}")
    counts = [f"{len(by[Outcome.DONE])} step(s) done", f"{len(by[Outcome.FAILED])} failed"]
    if by[Outcome.NOT_RUN]:
        counts.append(f"{len(by[Outcome.NOT_RUN])} could not run")
    if by[Outcome.SKIPPED]:
        counts.append(f"{len(by[Outcome.SKIPPED])} skipped after a failure in their unit")
    print(", ".join([*counts, *extra]))
    return EX_OK if len(by[Outcome.DONE]) == len(ended) and not extra else EX_FAILED


def _tally(counts: dict[Outcome, int]) -> str:
    """The progress bar's note: '3 done, 1 failed, 1 skipped'."""
    words = {Outcome.DONE: "done", Outcome.FAILED: "failed", Outcome.NOT_RUN: "could not run",
             Outcome.SKIPPED: "skipped"}  # fmt: skip
    return ", ".join(f"{n} {words[outcome]}" for outcome, n in counts.items() if n)


@contextlib.contextmanager
def _progress(what: str, total: int) -> Iterator[Callable[[int, dict[Outcome, int]], None] | None]:
    """A progress bar on stderr while the body runs, if stderr is a terminal (None
    otherwise: a log file or a pipe gets the summary alone). `show(completed, counts)`
    moves it. rich draws it (and honours NO_COLOR); it redirects nothing: the steps' and
    the summary's lines go where they would go without it."""
    if not sys.stderr.isatty() or total == 0:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    progress = Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(), console=Console(stderr=True), redirect_stdout=False,
        redirect_stderr=False,
    )  # fmt: skip
    with progress:
        task = progress.add_task(what, total=total, note="")
        last = 0.0

        def show(completed: int, counts: dict[Outcome, int]) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= 0.05 or completed >= total:  # it redraws 10 times a second
                last = now
                progress.update(task, completed=completed, note=_tally(counts))

        yield show
