"""Opening and making paths in the dataset without being led out of it: a link (or a
'..') that points outside, a FIFO that would block, a device written through, are refused
with one line naming the path.

Apart from `recordlog` (logging) so that what only reads and checks paths (`sinagot
status`, the daemon's arrivals) loads nothing more.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import SinagotError


class PathRefused(SinagotError):
    """A path sinagot would write is a link out of the dataset, or not a plain file: the
    message is one line naming it."""


class WriteError(SinagotError):
    """A path sinagot would write cannot be (permissions, a full disk): one line naming it."""


def inside_dataset(dataset: str, folder: str, what: str) -> bool:
    """Refuse a folder whose real path (links resolved, as a write would follow them) is not
    inside the dataset's real path. The folder need not exist yet: what does is resolved.
    True when the folder was seen to be there, a real folder (so a caller about to make it
    need not look again); False when that is not known.

    A worker asks this for every step: below the dataset, a folder reached through real
    folders only is inside it, which one `lstat` per level tells; a link (or a '..') on the
    way is resolved in full. Nothing is remembered from one call to the next: a link put in
    place of a checked folder between two steps must be refused at the second, and
    `O_NOFOLLOW` guards only the last component of a path, never its folders."""
    if folder == dataset:
        return False
    through = _through_folders(dataset, folder)
    if through is not None:
        return through
    root = os.path.realpath(dataset)
    real = os.path.realpath(folder)
    if os.path.commonpath((root, real)) == root:
        return False
    named = os.path.abspath(dataset)
    if os.path.commonpath((named, os.path.abspath(folder))) != named:
        raise PathRefused(f"{what} {folder} is outside the dataset")
    raise PathRefused(f"{what} {folder} is a link out of the dataset (to {real})")


def _through_folders(dataset: str, folder: str) -> bool | None:
    """None unless `folder` is named below `dataset` and no level between is a link (a
    level not there yet will be made a real folder); then whether the folder itself is
    there, a real folder."""
    prefix = dataset.rstrip(os.sep) + os.sep
    if not folder.startswith(prefix):
        return None
    parts = folder[len(prefix) :].split(os.sep)
    if ".." in parts:
        return None
    path = prefix[:-1]
    mode = 0
    for part in parts:
        path = f"{path}{os.sep}{part}"  # os.path.join, without its checks
        try:
            mode = os.lstat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError:  # cannot look (no search permission): let the real path decide
            return None
        if stat.S_ISLNK(mode):
            return None
    return stat.S_ISDIR(mode)


def open_regular(path: str, flags: int, what: str, mode: int = 0o644) -> int:
    """`os.open` that never follows a symlink and never blocks on a FIFO: a link, a FIFO, a
    device or a folder at `path` is refused rather than written through."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PathRefused(f"{what} {path} is a symlink: refused") from None
        if exc.errno in (errno.EISDIR, errno.ENXIO):
            raise PathRefused(f"{what} {path} is not a regular file: refused") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathRefused(f"{what} {path} is not a regular file: refused")
    return fd
