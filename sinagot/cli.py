"""`sinagot`: the command line.

Exit codes: 0 ok; 1 a step failed, or the command could not do its work (the state store,
a file or folder it needs, a running sinagotd that refused the request or did not answer);
2 usage; 78 configuration error; 130 interrupted; 141 its output was closed early
(`sinagot status | head -1`): it stops at once and quietly, with the code git and the
shell's own tools give (128 + SIGPIPE).

Exceptions become exit codes here and only here. A user's situation (a SinagotError, an
OSError naming a path) prints one line, never a traceback; any other exception is a bug
in sinagot and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__, scaffold
from .engine import Engine
from .errors import ConfigError, RecordIdError, SinagotError
from .layout import Scope
from .patterns import PathProblem
from .planner import StepPlan
from .requests import RequestError, RunRequest, ask
from .runner import Outcome, StepResult
from .status import StepStatus

EX_OK, EX_FAILED, EX_USAGE, EX_CONFIG, EX_INTERRUPTED, EX_PIPE = 0, 1, 2, 78, 130, 141
#: `sinagot status --check`: steps are due or in flight, and none failed.
EX_WAITING = 3
ASK_TIMEOUT = 60.0  # seconds to wait for a running daemon's answer to `sinagot run`


class UsageError(SinagotError):
    """A command-line argument names something the workspace does not have."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code = args.command(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as an ignored exception
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EX_PIPE
    except ConfigError as exc:
        _say(f"configuration error: {exc}")
        return EX_CONFIG
    except (RecordIdError, UsageError) as exc:
        _say(str(exc))
        return EX_USAGE
    except SinagotError as exc:
        _say(str(exc))
        return EX_FAILED
    except OSError as exc:
        _say(_os_error(exc))
        return EX_FAILED
    except KeyboardInterrupt:
        _say("interrupted")
        return EX_INTERRUPTED


def _say(line: str) -> None:
    with contextlib.suppress(OSError):
        print(f"sinagot: {line}", file=sys.stderr)


def _os_error(exc: OSError) -> str:
    """ "<path>: <strerror>", as the shell's tools say it."""
    what = exc.strerror or str(exc)
    if exc.filename is None:
        return what
    where = os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    return f"{where}: {what}"


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sinagot", description="Run per-record processing scripts over a dataset."
    )
    parser.add_argument("--version", action="version", version=f"sinagot {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="scaffold a new workspace")
    init.add_argument("path", type=Path, metavar="PATH")
    init.set_defaults(command=cmd_init)

    def workspace_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "workspace", nargs="?", default=".", metavar="WORKSPACE",
            help="workspace folder or .toml file (default: the current folder)",
        )  # fmt: skip

    def scope_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--record", action="append", metavar="ID", help="only this record")
        p.add_argument("--task", metavar="T", help="only this task")
        p.add_argument("--modality", metavar="M", help="only this modality")

    run = sub.add_parser("run", help="run the steps that are due")
    workspace_arg(run)
    scope_args(run)
    run.add_argument("--step", metavar="S", help="only this step")
    run.add_argument("--force", action="store_true", help="run steps even if up to date")
    run.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    run.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run on this Dask scheduler (default: $SINAGOT_DASK_ADDRESS, then the config)",
    )  # fmt: skip
    run.set_defaults(command=cmd_run)

    status = sub.add_parser("status", help="where each step of each record stands, and why")
    workspace_arg(status)
    scope_args(status)
    status.add_argument("--stale", action="store_true", help="only the steps that would run")
    status.add_argument("--failed", action="store_true", help="only the steps that failed")
    status.add_argument(
        "--check", action="store_true",
        help=f"exit {EX_FAILED} if a step failed, {EX_WAITING} if steps are due or in flight "
        "(none failed), 0 if all is done: for scripts and monitoring",
    )  # fmt: skip
    status.add_argument("--json", action="store_true", help="a JSON array, one object a step")
    status.set_defaults(command=cmd_status)

    logs = sub.add_parser(
        "logs", help="the per-record logs",
        description="Every record's log lines, merged in time order.",
        epilog="examples:\n  sinagot logs -n 20\n  sinagot logs --since 2h --step mean\n"
        "  sinagot logs -f --record REC-20200601\n  sinagot logs --json | jq .message",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    workspace_arg(logs)
    logs.add_argument("--record", metavar="ID", help="only this record")
    logs.add_argument("--step", metavar="S", help="only this step")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    logs.add_argument(
        "-n", "--lines", type=_count, metavar="N",
        help="only the last N lines (default: all; 10 with --follow)",
    )  # fmt: skip
    logs.add_argument("--since", metavar="WHEN", help="only lines from then: 2h, 30m, 2020-06-01")
    logs.add_argument("--json", action="store_true", help="the lines as JSON, one a line")
    logs.set_defaults(command=cmd_logs)
    return parser


def _select(ws: Engine, args: argparse.Namespace) -> tuple[Scope, list]:
    """The scope and units the arguments name. Dataset entries that discovery could not
    read (a folder it cannot list, a name that is not UTF-8) are said on stderr, one line
    each: a record missing from the table is never silent."""
    try:
        scope = ws.layout.scope(args.task, args.modality)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    ids = None if not args.record else [ws.check_id(r) for r in args.record]
    problems: list[PathProblem] = []
    units = ws.units(scope, ids, problems)
    for problem in dict.fromkeys(problems):
        print(f"sinagot: {problem.path}: {problem.error}", file=sys.stderr)
    return scope, units


# -- init ---------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    config = scaffold.create(args.path)
    print(f"created {config}; add recordings under {args.path / 'dataset' / 'raw'}")
    return EX_OK


# -- run ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    with Engine(args.workspace, verbose=False, scheduler=args.scheduler) as ws:
        scope, units = _select(ws, args)
        if args.step is not None and args.step not in ws.layout.step_names(scope):
            names = ", ".join(ws.layout.step_names(scope))
            print(f"sinagot: no step {args.step!r} here; steps: {names}", file=sys.stderr)
            return EX_USAGE
        if not args.dry_run and (holder := ws.lock.holder()) and "sinagotd" in holder:
            request = RunRequest(args.record, args.task, args.modality, args.step, args.force)
            return _ask_daemon(ws.config.state_dir, request, holder)
        plans = ws.plan(units, force=args.force, only=args.step, stale_only=True)
        if args.dry_run:
            for plan in plans:
                print(f"would run {_where(plan)}: {'; '.join(plan.reasons)}")
            print(f"{len(plans)} step(s) would run; nothing was run (--dry-run)")
            return EX_OK
        progress = _Progress(len(plans)) if sys.stderr.isatty() else None
        results = ws.execute(plans, on_result=progress.update if progress else None)
        if progress:
            progress.close()
        return _summary(results, len(plans))


def _ask_daemon(state_dir: Path, request: RunRequest, holder: str) -> int:
    """The daemon is the only writer: ask it, and say what it answered, not what was hoped."""
    try:
        reply = ask(state_dir, request, timeout=ASK_TIMEOUT)
    except RequestError as exc:
        _say(f"{holder} holds this workspace, but {exc}")
        return EX_FAILED
    who = f"sinagotd pid {reply['pid']}"
    if not reply["ok"]:
        _say(f"{who} refused: {reply.get('error', 'no reason given')}")
        return EX_FAILED
    steps, units, busy = (reply.get(key, 0) for key in ("steps", "units", "busy"))
    if steps or busy:
        queued = f"it queued {steps} step(s) of {units} unit(s)"
        if busy:
            queued += f"; {busy} unit(s) already running are planned again when they end"
        print(f"{who} is running this workspace: {queued}; "
              "follow with `sinagot status` or its events")  # fmt: skip
    else:
        hint = "" if request.force else " (--force runs them again)"
        print(f"{who} is running this workspace: nothing to queue, every step asked for "
              f"is up to date or cannot run{hint}")  # fmt: skip
    return EX_OK


def _where(plan: StepPlan) -> str:
    scope = "/".join(p for p in (plan.unit.task, plan.unit.modality) if p)
    return f"{plan.unit.record_id}{' ' + scope if scope else ''} {plan.step.name}"


def _summary(results: list[StepResult], planned: int) -> int:
    """Say what happened to each step that did not end done, then the counts: a step skipped
    because an earlier one of its unit failed is not counted as failed itself."""
    by = {outcome: [r for r in results if r.outcome is outcome] for outcome in Outcome}
    for outcome, label in ((Outcome.FAILED, "FAILED"), (Outcome.NOT_RUN, "NOT RUN"),
                           (Outcome.SKIPPED, "SKIPPED")):  # fmt: skip
        for r in by[outcome]:
            scope = "/".join(p for p in (r.unit.task, r.unit.modality) if p)
            print(f"{label} {r.unit.record_id}{' ' + scope if scope else ''} {r.step}: {r.error}")
    counts = [f"{len(by[Outcome.DONE])} step(s) done", f"{len(by[Outcome.FAILED])} failed"]
    if by[Outcome.NOT_RUN]:
        counts.append(f"{len(by[Outcome.NOT_RUN])} could not run")
    if by[Outcome.SKIPPED]:
        counts.append(f"{len(by[Outcome.SKIPPED])} skipped after a failure in their unit")
    if not_run := planned - len(results):
        counts.append(f"{not_run} not run after a failure")
    print(", ".join(counts))
    return EX_OK if len(by[Outcome.DONE]) == len(results) == planned else EX_FAILED


class _Progress:
    """A one-line progress bar on a terminal's stderr."""

    def __init__(self, total: int) -> None:
        self.total, self.count, self.failed = total, 0, 0
        self._last = 0.0

    def update(self, result: StepResult) -> None:
        self.count += 1
        self.failed += not result.ok
        now = time.monotonic()
        if now - self._last > 0.1 or self.count == self.total:
            self._last = now
            width = 30
            filled = width * self.count // max(self.total, 1)
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r[{bar}] {self.count}/{self.total} ({self.failed} failed)")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


# -- status -------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with Engine(args.workspace, verbose=False) as ws:
        _, units = _select(ws, args)
        plans = ws.plan(units, stale_only=args.stale)
        # Records in natural order (REC-2 before REC-10); units and steps keep theirs.
        plans.sort(key=lambda p: natural_key(p.unit.record_id))
        if args.failed:
            plans = [p for p in plans if p.status == StepStatus.ERROR]
        if args.json:
            json.dump([_as_json(p) for p in plans], sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            _print_table(plans, ws)
    return _check(plans) if args.check else EX_OK


def natural_key(text: str) -> list[str | int]:
    """Sort key putting 'REC-2' before 'REC-10': digit runs compare as numbers."""
    return [int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(text))]


_DIGITS = re.compile(r"(\d+)")
_WAITING = (StepStatus.DATA_READY, StepStatus.STALE, StepStatus.PROCESSING)


def _check(plans: Sequence[StepPlan]) -> int:
    statuses = {StepStatus(p.status) for p in plans}
    if StepStatus.ERROR in statuses:
        return EX_FAILED
    return EX_WAITING if statuses & set(_WAITING) else EX_OK


def _as_json(plan: StepPlan) -> dict[str, object]:
    return {
        "record_id": plan.unit.record_id,
        "task": plan.unit.task,
        "modality": plan.unit.modality,
        "step": plan.step.name,
        "status": StepStatus(plan.status).name,
        "reasons": list(plan.reasons),
    }


def _print_table(plans: list[StepPlan], ws: Engine) -> None:
    scoped = ws.config.scoped
    header = ["RECORD", *(["TASK", "MODALITY"] if scoped else []), "STEP", "STATUS", "WHY"]
    rows = [
        [
            p.unit.record_id,
            *([p.unit.task or "", p.unit.modality or ""] if scoped else []),
            p.step.name,
            StepStatus(p.status).name,
            "; ".join(p.reasons),
        ]
        for p in plans
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header[:-1])]
    out = sys.stdout
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
    counts: dict[str, int] = {}
    for p in plans:
        counts[StepStatus(p.status).name] = counts.get(StepStatus(p.status).name, 0) + 1
    summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    out.write(f"{len(plans)} step(s){': ' + summary if summary else ''}\n")
    due = sum(counts.get(name, 0) for name in ("DATA_READY", "STALE"))
    in_flight = counts.get("PROCESSING", 0)
    if holder := ws.lock.holder():
        out.write(f"{holder} is running: {in_flight} in flight, {due} queued\n")
    elif due:
        out.write(f"no daemon is running: {due} step(s) wait for `sinagot run` or sinagotd\n")


# -- logs ---------------------------------------------------------------------------------


def cmd_logs(args: argparse.Namespace) -> int:
    from .logview import follow, show, since

    try:
        after = since(args.since) if args.since else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    last = args.lines if args.lines is not None else (10 if args.follow else None)
    with Engine(args.workspace, verbose=False) as ws:
        record = ws.check_id(args.record) if args.record else None
        width = show(ws.dataset, record, args.step, last=last, after=after, as_json=args.json)
        if args.follow:
            follow(ws.dataset, record, args.step, as_json=args.json, width=width)
    return EX_OK


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lines") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} lines: give 0 or more")
    return value


if __name__ == "__main__":
    sys.exit(main())
