"""What a script prints goes to its record's log, not to the worker's standard output.

On Dask workers (and so under sinagotd, whose standard output is a stream of JSON events),
a script's `print` would otherwise land in the middle of the events. Workers may run
several steps at once in threads, so `sys.stdout` is replaced once by a proxy that writes
to the current thread's target, if it has one, and to the real stream otherwise.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

_local = threading.local()
_install_lock = threading.Lock()


class _PerThread:
    def __init__(self, original: TextIO, name: str) -> None:
        self._original = original
        self._name = name

    def _target(self) -> TextIO:
        return getattr(_local, self._name, None) or self._original

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> object:
        return getattr(self._original, name)


class _Lines:
    """A text stream that hands each complete line to `emit`."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._buffer = ""

    def write(self, text: str) -> int:
        self._buffer += text
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line.strip():
                self._emit(line)
        return len(text)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._buffer.strip():
            self._emit(self._buffer)
        self._buffer = ""


def _install() -> None:
    with _install_lock:
        if not isinstance(sys.stdout, _PerThread):
            sys.stdout = _PerThread(sys.stdout, "stdout")  # type: ignore[assignment]
        if not isinstance(sys.stderr, _PerThread):
            sys.stderr = _PerThread(sys.stderr, "stderr")  # type: ignore[assignment]


@contextlib.contextmanager
def output_to(emit: Callable[[str], None]) -> Iterator[None]:
    """Send this thread's stdout and stderr, line by line, to `emit` while inside."""
    _install()
    lines = _Lines(emit)
    _local.stdout = _local.stderr = lines
    try:
        yield
    finally:
        _local.stdout = _local.stderr = None
        lines.close()
