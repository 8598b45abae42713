"""The status of one step of one unit, with the codes of the original sinagot."""

from enum import IntEnum


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
