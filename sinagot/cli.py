"""`sinagot`: the command line.

Exit codes: 0 ok; 1 a step failed, or the command could not do its work (the state store,
a file or folder it needs, a running sinagotd that refused the request or did not answer);
2 usage; 78 configuration error; 130 interrupted; 141 its output was closed early
(`sinagot status | head -1`): it stops at once and quietly, with the code git and the
shell's own tools give (128 + SIGPIPE).

Exceptions become exit codes here and only here. A user's situation (a SinagotError, an
OSError naming a path) prints one line, never a traceback; any other exception is a bug
in sinagot and keeps its traceback.

Start-up time matters (`sinagot status` in a prompt or a monitoring loop): `rich` is
imported only by what draws with it (`status --grid`, the progress bars of `run` on a
terminal), `shtab` only by `sinagot completion`, and what runs steps or asks a daemon
(`cli_run.py`) only by `sinagot run`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .engine import Engine
from .errors import ConfigError, RecordIdError, SinagotError
from .layout import Scope
from .patterns import PathProblem
from .planner import StepPlan
from .status import StepStatus, cell_status, natural_key

EX_OK, EX_FAILED, EX_USAGE, EX_CONFIG, EX_INTERRUPTED, EX_PIPE = 0, 1, 2, 78, 130, 141
#: `sinagot status --check`: steps are due or in flight, and none failed.
EX_WAITING = 3
SHELLS = ("bash", "zsh", "tcsh")  # `sinagot completion`: what shtab >= 1.7 writes
# How shtab completes a path (its FILE and DIRECTORY), without importing shtab to say so.
_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}
_DIRS = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}


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
        prog="sinagot", description="Run per-record processing scripts over a dataset.",
        epilog="commands have examples in their help: sinagot run --help",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"sinagot {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help: str, examples: str, **kwargs: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=help, epilog=f"examples:\n{examples}",
            formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs,
        )  # fmt: skip

    init = command(
        "init", "scaffold a new workspace",
        "  sinagot init lab          lab/workspace.toml, lab/scripts/, lab/dataset/raw/\n"
        "  cd lab && sinagot run     once recordings are under dataset/raw",
    )  # fmt: skip
    init.add_argument("path", type=Path, metavar="PATH").complete = _DIRS  # type: ignore[attr-defined]
    init.set_defaults(command=cmd_init)

    def workspace_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "workspace", nargs="?", default=".", metavar="WORKSPACE",
            help="workspace folder or .toml file (default: the current folder)",
        ).complete = _FILES  # type: ignore[attr-defined]  # fmt: skip

    def scope_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--record", action="append", metavar="ID", help="only this record")
        p.add_argument("--task", metavar="T", help="only this task")
        p.add_argument("--modality", metavar="M", help="only this modality")

    run = command(
        "run", "run the steps that are due",
        "  sinagot run                         run what is due in the workspace here\n"
        "  sinagot run lab --record REC-20200601 --force\n"
        "  sinagot run --step mean --dry-run   say what would run, run nothing\n"
        "  sinagot run --wait --timeout 600    sinagotd running: wait for what it queues",
        description="Run the steps that are due. While sinagotd runs the workspace, ask it\n"
        "to run them instead (and, with --wait, wait for them).",
    )  # fmt: skip
    workspace_arg(run)
    scope_args(run)
    run.add_argument("--step", metavar="S", help="only this step")
    run.add_argument("--force", action="store_true", help="run steps even if up to date")
    run.add_argument("--dry-run", action="store_true", help="say what would run, run nothing")
    run.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="run on this Dask scheduler (default: $SINAGOT_DASK_ADDRESS, then the config)",
    )  # fmt: skip
    run.add_argument(
        "--wait", action="store_true",
        help="sinagotd running: wait until the steps it queued have ended, and exit as a "
        "run does (0 all done, 1 otherwise); without sinagotd, a run waits anyway",
    )  # fmt: skip
    run.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS",
        help="with --wait: stop waiting after this long, exit 1 (default: no limit)",
    )  # fmt: skip
    run.set_defaults(command=cmd_run)

    status = command(
        "status", "where each step of each record stands, and why",
        "  sinagot status --stale            the steps that would run, and why\n"
        "  sinagot status --grid --failed    one line a record, one mark a step\n"
        "  sinagot status --json | jq -r '.[] | select(.status == \"ERROR\") | .record_id'\n"
        "  sinagot status --check || echo 'not done yet'\n"
        "  sinagot status --html status.html  the status page, one offline file",
    )  # fmt: skip
    workspace_arg(status)
    scope_args(status)
    status.add_argument("--stale", action="store_true", help="only the steps that would run")
    status.add_argument("--failed", action="store_true", help="only the steps that failed")
    status.add_argument(
        "--check", action="store_true",
        help=f"exit {EX_FAILED} if a step failed, {EX_WAITING} if steps are due or in flight "
        "(none failed), 0 if all is done: for scripts and monitoring",
    )  # fmt: skip
    shape = status.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="a JSON array, one object a step")
    shape.add_argument(
        "--grid", action="store_true",
        help="one line a record (a unit with tasks), one mark a step, a legend; with "
        "--stale or --failed, the records with such a step",
    )  # fmt: skip
    shape.add_argument(
        "--html", type=Path, metavar="FILE",
        help="write the status page as one self-contained HTML file (for an email or an "
        "archive); with --stale or --failed, the records with such a step",
    )  # fmt: skip
    status.set_defaults(command=cmd_status)

    logs = command(
        "logs", "the per-record logs",
        "  sinagot logs -n 20\n  sinagot logs --since 2h --step mean\n"
        "  sinagot logs -f --record REC-20200601\n  sinagot logs --json | jq .message",
        description="Every record's log lines, merged in time order.",
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

    completion = command(
        "completion", "print a shell completion script",
        "  sinagot completion bash > ~/.local/share/bash-completion/completions/sinagot\n"
        "  sinagot completion zsh > ~/.zfunc/_sinagot   (fpath+=~/.zfunc before compinit)\n"
        "  sinagot completion tcsh > ~/.sinagot.tcsh   (source it from ~/.tcshrc)",
        description="Print the completion script of a shell: commands, options, and\n"
        "file names for WORKSPACE and PATH.",
    )  # fmt: skip
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL", help=", ".join(SHELLS))
    completion.set_defaults(command=cmd_completion)
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
    from . import scaffold  # tomlkit, to write: only here

    config = scaffold.create(args.path)
    print(f"created {config}; add recordings under {args.path / 'dataset' / 'raw'}")
    return EX_OK


# -- run ----------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .cli_run import cmd_run  # what runs steps and asks a daemon: imported to do so

    return cmd_run(args)


# -- status -------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    with Engine(args.workspace, verbose=False) as ws:
        _, units = _select(ws, args)
        # The grid shows every step of a record that matches: it plans them all.
        whole = args.grid or args.html is not None
        plans = ws.plan(units, stale_only=args.stale and not whole)
        # Records in natural order (REC-2 before REC-10); units and steps keep theirs.
        plans.sort(key=lambda p: natural_key(p.unit.record_id))
        shown = [p for p in plans if p.run] if whole and args.stale else plans
        if args.failed:
            shown = [p for p in shown if p.status == StepStatus.ERROR]
        arriving = ws.arriving()  # what a running sinagotd sees arriving
        if args.json:
            json.dump([_as_json(p, arriving) for p in shown], sys.stdout, indent=1)
            sys.stdout.write("\n")
        elif args.grid:
            _print_grid(plans, shown, ws, arriving)
        elif args.html is not None:
            _write_html(ws, plans, shown, args.html)
        else:
            _print_table(shown, ws, arriving)
    return _check(shown, arriving) if args.check else EX_OK


def _write_html(ws: Engine, plans: list[StepPlan], shown: list[StepPlan], path: Path) -> None:
    """The report holds every step of each unit that has a step shown."""
    from .report import write_report  # the page's assets: only when asked for

    units = {p.unit for p in shown}
    kept = [p for p in plans if p.unit in units]
    write_report(ws, kept, path)
    failed = sum(p.status == StepStatus.ERROR for p in kept)
    records = len({u.record_id for u in units})
    print(f"wrote {path}: {records} record(s), {len(kept)} step(s), {failed} failed")


_WAITING = (StepStatus.DATA_READY, StepStatus.STALE, StepStatus.PROCESSING)


def _check(plans: Sequence[StepPlan], arriving: Arriving | None = None) -> int:
    """Arriving files are work on its way in: 3, as steps due are."""
    statuses = {StepStatus(p.status) for p in plans}
    if StepStatus.ERROR in statuses:
        return EX_FAILED
    if statuses & set(_WAITING) or any(_is_arriving(p, arriving) for p in plans):
        return EX_WAITING
    return EX_OK


#: record_id -> what sinagotd says of its arrival (`Engine.arriving`).
Arriving = dict[str, dict[str, object]]
_NAMED = 5  # arriving records named under the table, at most


def _is_arriving(plan: StepPlan, arriving: Arriving | None) -> bool:
    """A step of a record whose files sinagotd sees still arriving, which those files may
    change (as on the status page: a DONE, PROCESSING or ERROR step stays what it is)."""
    return (
        arriving is not None
        and plan.unit.record_id in arriving
        and cell_status(plan, False, True) == "ARRIVING"
    )


def _status_name(plan: StepPlan, arriving: Arriving | None) -> str:
    return "ARRIVING" if _is_arriving(plan, arriving) else StepStatus(plan.status).name


def _why(plan: StepPlan, arriving: Arriving | None) -> list[str]:
    if arriving is not None and _is_arriving(plan, arriving):
        return [_arrival(arriving[plan.unit.record_id]), *plan.reasons]
    return list(plan.reasons)


def _arrival(info: dict[str, object]) -> str:
    """'files arriving: ...', from what sinagotd wrote (checked: it is only a file)."""
    files = info.get("files")
    writing = info.get("writing")
    what = f"{files} file(s)" if isinstance(files, int) else "files"
    if isinstance(writing, int) and writing > 0:
        return f"files arriving: {what}, {writing} still open for writing"
    ready = info.get("ready_at")
    from datetime import datetime  # only to show a record arriving

    try:
        when = datetime.fromisoformat(str(ready).replace("Z", "+00:00")).astimezone()
    except ValueError:
        return f"files arriving: {what}, settling"
    return f"files arriving: {what}, settled about {when:%H:%M:%S} if nothing changes"


def _as_json(plan: StepPlan, arriving: Arriving | None = None) -> dict[str, object]:
    """`arriving` only on a step whose record's files sinagotd sees arriving: what it
    says of them (files, writing, since, ready_at)."""
    out: dict[str, object] = {
        "record_id": plan.unit.record_id,
        "task": plan.unit.task,
        "modality": plan.unit.modality,
        "step": plan.step.name,
        "status": StepStatus(plan.status).name,
        "reasons": list(plan.reasons),
    }
    if arriving is not None and _is_arriving(plan, arriving):
        out["arriving"] = arriving[plan.unit.record_id]
    return out


def _print_table(plans: list[StepPlan], ws: Engine, arriving: Arriving | None = None) -> None:
    # Plain text, not rich: the table is what scripts read and pipe (awk, grep, head),
    # it must start fast (importing rich costs ~70 ms, a third of `sinagot status`), and
    # rich would wrap or cut long WHY cells to the terminal's width, where a pipe wants
    # each step on one line whatever its length.
    scoped = ws.config.scoped
    header = ["RECORD", *(["TASK", "MODALITY"] if scoped else []), "STEP", "STATUS", "WHY"]
    rows = [
        [
            p.unit.record_id,
            *([p.unit.task or "", p.unit.modality or ""] if scoped else []),
            p.step.name,
            _status_name(p, arriving),
            "; ".join(_why(p, arriving)),
        ]
        for p in plans
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header[:-1])]
    out = sys.stdout
    for row in [header, *rows]:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")
    _print_counts(plans, ws, arriving)


def _print_counts(plans: Sequence[StepPlan], ws: Engine, arriving: Arriving | None = None) -> None:
    """The summary under the table and the grid: the steps by status, and who runs them;
    the records sinagotd sees arriving, named."""
    out = sys.stdout
    counts: dict[str, int] = {}
    for p in plans:
        name = _status_name(p, arriving)
        counts[name] = counts.get(name, 0) + 1
    summary = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    out.write(f"{len(plans)} step(s){': ' + summary if summary else ''}\n")
    due = sum(counts.get(name, 0) for name in ("DATA_READY", "STALE"))
    in_flight = counts.get("PROCESSING", 0)
    if holder := ws.lock.holder():
        out.write(f"{holder} is running: {in_flight} in flight, {due} queued\n")
    elif due:
        out.write(f"no daemon is running: {due} step(s) wait for `sinagot run` or sinagotd\n")
    if names := list(dict.fromkeys(p.unit.record_id for p in plans if _is_arriving(p, arriving))):
        listed = ", ".join(names[:_NAMED]) + (f" and {len(names) - _NAMED} more" if
                                               len(names) > _NAMED else "")  # fmt: skip
        out.write(f"{len(names)} record(s) arriving (acted on once their files settle): "
                  f"{listed}\n")  # fmt: skip


#: `status --grid`: a mark and a colour per status, in the legend's order; ASCII stand-ins
#: for an output that cannot encode the marks (a C locale without UTF-8).
GLYPHS = {
    StepStatus.DONE: ("✓", "+", "green"),
    StepStatus.ERROR: ("✗", "x", "red"),
    StepStatus.PROCESSING: ("●", "*", "cyan"),
    StepStatus.DATA_READY: ("○", "o", "yellow"),
    StepStatus.STALE: ("◐", "~", "magenta"),
    StepStatus.INIT: ("·", ".", "blue"),
    StepStatus.DATA_NOT_AVAILABLE: ("\u2013", "-", "bright_black"),  # an en dash
}


def _print_grid(
    plans: list[StepPlan], shown: list[StepPlan], ws: Engine, arriving: Arriving | None = None
) -> None:
    """One line per record (per unit with tasks or modalities), one mark per step in step
    order under a header of step labels; then the labels' key, the legend, and the summary
    of the table (of `shown`, the steps that match the filters: a line is drawn for every
    unit with one of them, with all its steps).

    Colours come from rich, which decides as the shell's tools do: on a terminal, or with
    FORCE_COLOR; never with NO_COLOR (only colours are used, no bold or dim, which NO_COLOR
    would leave). Each mark is rendered once and lines are joined as plain text: fast for
    100,000 records, and written to stdout as the table is (a closed pipe exits 141)."""
    from rich.console import Console
    from rich.text import Text

    console = Console(file=sys.stdout, highlight=False, markup=False, emoji=False)
    marks: dict[StepStatus, str] = {}
    plain = _encodable(sys.stdout, "".join(glyph for glyph, _, _ in GLYPHS.values()))
    for status, (glyph, ascii_glyph, colour) in GLYPHS.items():
        with console.capture() as captured:
            console.print(Text(glyph if plain else ascii_glyph, style=colour), end="")
        marks[status] = captured.get()

    units = list(dict.fromkeys(p.unit for p in shown))
    wanted = set(units)
    status_of = {(p.unit, p.step.name): StepStatus(p.status) for p in plans if p.unit in wanted}
    columns = list(dict.fromkeys(
        s.name for key in dict.fromkeys((u.task, u.modality) for u in units)
        for s in ws.layout.steps(*key)
    ))  # fmt: skip
    initials = [name[:1] for name in columns]
    labels = initials if len(set(initials)) == len(initials) else [
        str(i) for i in range(1, len(columns) + 1)
    ]  # fmt: skip
    width = max((len(label) for label in labels), default=1)
    scoped = ws.config.scoped
    names = [[u.record_id, *([u.task or "", u.modality or ""] if scoped else [])] for u in units]
    header = ["RECORD", *(["TASK", "MODALITY"] if scoped else [])]
    widths = [max([len(h)] + [len(n[i]) for n in names]) for i, h in enumerate(header)]
    out = sys.stdout
    blank, pad = " " * width, " " * (width - 1)
    out.write(("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  "
               + " ".join(label.ljust(width) for label in labels)).rstrip() + "\n")  # fmt: skip
    for unit, cells in zip(units, names, strict=True):
        line = [
            blank if (status := status_of.get((unit, c))) is None else marks[status] + pad
            for c in columns
        ]
        out.write("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + "  "
                  + " ".join(line).rstrip() + "\n")  # fmt: skip
    if columns:
        out.write("steps: " + ", ".join(f"{label} {name}" for label, name
                                        in zip(labels, columns, strict=True)) + "\n")  # fmt: skip
    out.write("  ".join(f"{marks[status]} {status.name}" for status in GLYPHS) + "\n")
    _print_counts(shown, ws, arriving)


def _encodable(stream: object, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


# -- completion ---------------------------------------------------------------------------


def cmd_completion(args: argparse.Namespace) -> int:
    import shtab  # here only: every other command starts without it

    sys.stdout.write(shtab.complete(_parser(), shell=args.shell))
    return EX_OK


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


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} seconds: give a number above 0")
    return value


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
