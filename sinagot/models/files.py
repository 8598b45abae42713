"""Reading a data file a plugin names: inside the dataset, a regular file, of a sane size,
and any mistake in it one `SinagotError` naming the file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import SinagotError
from ..safepaths import PathRefused, inside_dataset, open_regular

#: A plugin's data file is a table of values; anything larger is not one.
MAX_BYTES = 64 << 20


def read_text(dataset: Path, path: Path) -> str | None:
    """The file's text; None when it does not exist. Never follows a link out of the dataset,
    never blocks on a FIFO."""
    try:
        inside_dataset(str(dataset), str(path.parent), "data folder")
        fd = open_regular(str(path), os.O_RDONLY, "data file")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PathRefused as exc:
        raise SinagotError(str(exc)) from None
    except OSError as exc:
        raise SinagotError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        size = os.fstat(fd).st_size
        if size > MAX_BYTES:
            raise SinagotError(f"{path}: {size} bytes, too large for a data file")
        data = os.read(fd, MAX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SinagotError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


@contextlib.contextmanager
def parsing(path: Path) -> Iterator[None]:
    """Turn what a parser says about a file's content (pandas' errors are ValueErrors) into
    one line naming the file."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SinagotError(f"{path}: cannot read it: {first}") from None
