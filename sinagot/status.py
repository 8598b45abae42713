"""The status of one step of one unit, with the codes of the original sinagot, and how a
person is shown it (a cell of the table, records in natural order): the command line's
`status` needs no more, and imports no more."""

from __future__ import annotations

import re
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .planner import StepPlan


class StepStatus(IntEnum):
    INIT = 0
    """Its inputs are not there yet, but an earlier step of the unit will make them."""

    DATA_READY = 10
    """Its inputs are there and its outputs are not: it will run."""

    STALE = 15
    """Its outputs exist but are out of date: it will run again."""

    PROCESSING = 20
    """A run has started and has not finished (or was killed before it could)."""

    DONE = 30
    """Its outputs exist and are up to date."""

    ERROR = 40
    """Its last run failed; it runs again only when an input or its script changes."""

    DATA_NOT_AVAILABLE = 41
    """Its inputs are missing and nothing in the unit will make them."""


#: Cells a settling record's files may still change.
_UNSETTLED = frozenset({"STALE", "DATA_READY", "QUEUED", "INIT", "DATA_NOT_AVAILABLE"})


def cell_status(plan: StepPlan, queued: bool, arriving: bool) -> str:
    """The name a table cell shows: the plan's status, or QUEUED (the daemon holds it) or
    ARRIVING (its record's files are still being copied and may change it)."""
    name = StepStatus(plan.status).name
    if queued and plan.run and name != "PROCESSING":
        name = "QUEUED"
    if arriving and name in _UNSETTLED:
        name = "ARRIVING"
    return name


def natural_key(text: str) -> list[str | int]:
    """Sort key putting 'REC-2' before 'REC-10': digit runs compare as numbers."""
    return [int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(text))]


_DIGITS = re.compile(r"(\d+)")
