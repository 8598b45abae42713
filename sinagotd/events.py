"""Structured events: one JSON object per line under systemd, readable colours on a terminal.

Event names are a contract (DESIGN.md §8): people grep and `jq` them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog


def configure(
    log_format: str | None, stream: TextIO | None = None
) -> structlog.typing.FilteringBoundLogger:
    """Set up structlog for this process and return the daemon's logger."""
    stream = stream or sys.stdout
    as_json = log_format == "json" or (log_format is None and not stream.isatty())
    renderer = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=colors(stream))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([] if as_json else [for_people]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("sinagotd")


def colors(stream: TextIO) -> bool:
    """Colours on a terminal, unless `NO_COLOR` says otherwise (no-color.org); `FORCE_COLOR`
    asks for them anywhere."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


def for_people(
    _logger: object, _method: str, event: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """Console lines only (JSON keeps every key, a contract): leave out empty fields
    (`task=None` in a workspace without tasks) and say lists as text."""
    for key in [k for k, v in event.items() if v is None or v == [] or v == ""]:
        del event[key]
    for key, value in event.items():
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            event[key] = "; ".join(value)
    return event
