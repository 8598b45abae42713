"""What the status page shows of an engine: an empty board shaped by its layout, and one
record's detail: each step's status and reasons, its last run, and the tail of the record's
log for that step (`/api/records/<id>`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .board import API_VERSION, NO_OVERLAY, Board, Overlay
from .errors import SinagotError
from .layout import Scope, Unit
from .recordlog import history, log_time, parse_entries
from .safepaths import open_regular
from .state import LastRun, run_key
from .status import StepStatus, cell_status

if TYPE_CHECKING:
    from .engine import Engine

LOG_TAIL = 20  # log lines shown per step
LOG_BYTES = 256 * 1024  # of a record's log read for them (its end)


def board_for(engine: Engine, live: bool = True, generation: int = 0) -> Board:
    """An empty board with the engine's units' steps as its columns; its generations
    continue from `generation` (a page re-renders only when the number moves)."""
    layout = engine.layout
    steps_of = {key: tuple(s.name for s in layout.steps(*key)) for key in layout.unit_keys(Scope())}
    return Board(
        str(engine.config.files[0]), engine.config.scoped, __version__, steps_of, live, generation
    )


def record_detail(
    engine: Engine, units: Sequence[Unit], overlay: Overlay = NO_OVERLAY, live: bool = True
) -> dict[str, Any]:
    """The detail of one record's units (all of the same record)."""
    record_id = units[0].record_id
    plans = engine.plan(units)
    runs = engine.store.last_runs(record_id)
    log = _log_by_step(engine, record_id)
    out: dict[Unit, list[dict[str, Any]]] = {unit: [] for unit in units}
    for plan in plans:
        unit = plan.unit
        queued, arriving = unit in overlay.queued, unit in overlay.arriving
        out[unit].append(
            {
                "step": plan.step.name,
                "index": plan.index + 1,
                "status": cell_status(plan, queued, arriving),
                "reasons": list(plan.reasons),
                "inputs": list(plan.inputs),
                "outputs": list(plan.outputs),
                "last_run": _last_run(runs.get(run_key(unit, plan.step.name))),
                "log": log.get((unit.task, unit.modality, plan.step.name), [])[-LOG_TAIL:],
            }
        )
    return {
        "api": API_VERSION,
        "record_id": record_id,
        "live": live,
        "units": [
            {
                "task": unit.task,
                "modality": unit.modality,
                "arriving": any(step["status"] == "ARRIVING" for step in steps),
                "steps": steps,
            }
            for unit, steps in out.items()
        ],
    }


def _last_run(run: LastRun | None) -> dict[str, Any] | None:
    if run is None or run.state is None:
        return None
    duration = None
    if run.started is not None and run.finished is not None:
        duration = round(max(run.finished - run.started, 0.0), 3)
    return {
        "result": "done" if run.state == "done" else "failed",
        "started": _iso(run.started),
        "finished": _iso(run.finished),
        "duration_s": duration,
        "error": run.error,
    }


def _log_by_step(engine: Engine, record_id: str) -> dict[tuple, list[dict[str, Any]]]:
    """The record's log lines (0.3's rotated files too), oldest first, by (task, modality,
    step). A log that cannot be read leaves the detail without its tail, not without an
    answer."""
    out: dict[tuple, list[dict[str, Any]]] = {}
    try:
        entries = _tail(history(engine.dataset, record_id), LOG_BYTES)
    except (SinagotError, OSError):  # a log that is a link, a FIFO, unreadable
        return out
    for entry in entries:
        key = (entry.get("task"), entry.get("modality"), entry.get("step_label"))
        when = log_time(entry.get("time"))
        out.setdefault(key, []).append(
            {
                "time": when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None,
                "status": _status_name(entry.get("step_status")),
                "message": str(entry.get("message", "")),
            }
        )
    return out


def _tail(paths: list[Path], budget: int) -> list[dict[str, Any]]:
    """The entries of the last `budget` bytes of these files (oldest first): a detail costs
    the same whatever the size of a record's log."""
    chunks: list[list[str]] = []
    for path in reversed(paths):
        if budget <= 0:
            break
        try:
            fd = open_regular(str(path), os.O_RDONLY, "log file")
        except (FileNotFoundError, NotADirectoryError):
            continue
        with open(fd, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = max(size - budget, 0)
            fh.seek(start)
            data = fh.read(size - start)
        budget -= len(data)
        lines = data.decode("utf-8", errors="replace").splitlines()
        chunks.append(lines[1:] if start else lines)  # the first may be cut: dropped
    return list(parse_entries(line for chunk in reversed(chunks) for line in chunk))


def _status_name(code: object) -> object:
    """A log line's step status by name (the lines carry 0.3's numbers)."""
    try:
        return StepStatus(code).name  # type: ignore[arg-type]
    except ValueError:
        return code


def _iso(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
