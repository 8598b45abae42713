"""Structured events: one JSON object per line under systemd, readable colours on a terminal.

Event names are a contract (DESIGN.md §8): people grep and `jq` them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
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
        processors=[  # no `merge_contextvars`: nothing binds any, and it was a quarter
            structlog.processors.add_log_level,  # of what an event cost
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *([] if as_json else [for_people]),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=Lines(stream),
        cache_logger_on_first_use=False,
    )
    # Bound now, not a lazy proxy: the proxy builds a new logger at every call (a third of
    # what an event costs, at 40,000 events a burst of 10,000 records).
    return structlog.get_logger("sinagotd").bind()


class Lines:
    """The daemon's structlog logger (and its factory): each event one line on the stream,
    written and flushed at once (people tail it; the journal reads it as it comes), except
    inside `batch()`, where the lines the loop says in one pass (a burst of `step.submitted`
    or `step.finished`) go out in one write when the pass ends. A write per event was 7% of
    the daemon's CPU in a burst of 10,000 records. Only the thread that opened the batch is
    held back; other threads' events are written at once."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._held = threading.local()

    def __call__(self, *_args: object) -> Lines:
        return self

    def msg(self, message: str) -> None:
        held = getattr(self._held, "lines", None)
        if held is None:
            self._write(message)
        else:
            held.append(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if getattr(self._held, "lines", None) is not None:  # within one: it writes
            yield
            return
        self._held.lines = []
        try:
            yield
        finally:
            lines, self._held.lines = self._held.lines, None
            if lines:
                self._write("\n".join(lines))

    def _write(self, text: str) -> None:
        with self._lock:
            self._stream.write(text + "\n")
            self._stream.flush()


def batch() -> contextlib.AbstractContextManager[None]:
    """Events said in this block (by this thread) are written together when it ends: say
    them before recording what they announce, so that a crash never leaves a recorded run
    unannounced."""
    factory = structlog.get_config()["logger_factory"]
    return factory.batch() if isinstance(factory, Lines) else contextlib.nullcontext()


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
