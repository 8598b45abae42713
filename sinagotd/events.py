"""Structured events: one JSON object per line under systemd, readable colours on a terminal.

Event names are a contract (DESIGN.md §8): people grep and `jq` them.
"""

from __future__ import annotations

import logging
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
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger("sinagotd")
