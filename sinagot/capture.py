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
    """A text stream that hands each complete line to `emit`, in time linear in the text.

    A carriage return starts the line again, as on a terminal: of a progress bar's
    `\r`-separated updates only the last one reaches the log, not thousands. An empty
    update does not erase (`"done\r\n"` is the line `done`).
    """

    def __init__(self, emit: Callable[[str], None]) -> None:
        self._emit = emit
        self._pending: list[str] = []  # the current line, in pieces: joined once it ends
        self._restart = False  # a \r was seen: the next text replaces the line

    def write(self, text: str) -> int:
        first, *rest = text.split("\n")
        self._add(first)
        for piece in rest:
            self._end_line()
            self._add(piece)
        return len(text)

    def _add(self, piece: str) -> None:
        first, *updates = piece.split("\r")
        self._extend(first)
        for update in updates:
            self._restart = True
            self._extend(update)

    def _extend(self, text: str) -> None:
        if not text:
            return
        if self._restart:
            self._pending.clear()
            self._restart = False
        self._pending.append(text)

    def _end_line(self) -> None:
        line = "".join(self._pending)
        self._pending.clear()
        self._restart = False
        if line.strip():
            self._emit(line)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._end_line()


def _install() -> None:
    if isinstance(sys.stdout, _PerThread) and isinstance(sys.stderr, _PerThread):
        return  # the common case, once per step on a worker: no lock to take
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
