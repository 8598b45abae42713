"""What a file looks like right now: size and mtime, cheaply, for one path or a whole dataset.

A fingerprint is a plain `(size, mtime_ns)` tuple (plus a content hash where asked), so that
comparing the current state with the recorded one is tuple equality. A folder's fingerprint
sums its files' sizes and takes their newest mtime, so a recording that is a folder counts
as changed when any file in it changes.

Only regular files and folders are data. A path that exists but cannot be read as one (a
link loop, a dangling link, a link to a folder, a FIFO, a socket, a device, no permission,
or a folder holding such a thing) raises `PathUnreadable`, never `OSError`: planning then
says so for that unit and goes on with the others. Missing is None. A FIFO is never opened
(opening one blocks until a writer comes), and links to folders are not followed (one to
`/` would have sinagot walk the whole machine).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_module
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeAlias

from .patterns import (
    NAME_MAX,
    TEMP_PREFIX,
    PathProblem,
    PathUnreadable,
    os_reason,
    printable,
)

__all__ = [
    "DirectStat",
    "DirectoryListing",
    "Fingerprint",
    "Lookup",
    "PathProblem",
    "PathUnreadable",
    "content_hash",
    "decode_fingerprints",
    "encode_fingerprints",
    "folder_fingerprint",
    "stat_path",
]

Fingerprint: TypeAlias = tuple[int, int]
"""(size in bytes, mtime in nanoseconds)"""

Lookup: TypeAlias = Callable[[str], Fingerprint | None]
"""Maps a dataset-relative path ('raw/REC-1-raw.csv') to its fingerprint, or None when it is
missing; raises `PathUnreadable` when it exists but cannot be read."""

_LINK_TO_FOLDER = "a symbolic link to a folder (not followed)"
_DANGLING = "a dangling symbolic link"
_TOO_LONG = os_reason(OSError(errno.ENAMETOOLONG, "File name too long"))


def _kind(mode: int) -> str:
    """Why an entry of this type is not data, for a user."""
    if stat_module.S_ISFIFO(mode):
        what = "a FIFO (named pipe)"
    elif stat_module.S_ISSOCK(mode):
        what = "a socket"
    elif stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        what = "a device file"
    else:
        what = "an unknown kind of file"
    return f"{what}, not a regular file or folder"


def _unreadable(shown: str, error: str) -> PathUnreadable:
    return PathUnreadable(printable(shown), error)


def _fingerprint(path: str, shown: str) -> Fingerprint | None:
    """One path's fingerprint: one `stat` for a regular file, the common case."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if _too_long(path.rpartition("/")[2]):  # the kernel says ENOENT if a folder is missing
            raise _unreadable(shown, _TOO_LONG) from None
        if _is_link(path):
            raise _unreadable(shown, _DANGLING) from None
        return None
    except OSError as exc:
        raise _unreadable(shown, os_reason(exc)) from None
    except ValueError:  # a NUL or a lone surrogate: no file has that name
        return None
    if stat_module.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns)
    if stat_module.S_ISDIR(st.st_mode):
        if _is_link(path):
            raise _unreadable(shown, _LINK_TO_FOLDER)
        return _walk(path, shown, st.st_mtime_ns)
    raise _unreadable(shown, _kind(st.st_mode))


def _too_long(name: str) -> bool:
    """Is this file name longer than any file system holds? (A cheap test first.)"""
    return len(name) > NAME_MAX // 4 and len(name.encode("utf-8", "surrogatepass")) > NAME_MAX


def _is_link(path: str) -> bool:
    try:
        return stat_module.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def folder_fingerprint(path: str, shown: str | None = None) -> Fingerprint:
    """A folder's fingerprint: the sum of its files' sizes and the newest mtime of its files
    and folders (so that a deletion counts). `shown` names it in errors."""
    shown = path if shown is None else shown
    try:
        top = os.stat(path).st_mtime_ns
    except OSError as exc:
        raise _unreadable(shown, os_reason(exc)) from None
    return _walk(path, shown, top)


def _walk(path: str, shown: str, newest: int) -> Fingerprint:
    size = 0
    pending = [path]
    while pending:
        folder = pending.pop()
        for entry, st in _entries(folder, path, shown):
            if stat_module.S_ISREG(st.st_mode):
                size += st.st_size
                newest = max(newest, st.st_mtime_ns)
            else:  # a folder, and not a link: `_entries` refuses the rest
                newest = max(newest, st.st_mtime_ns)
                pending.append(entry.path)
    return (size, newest)


def _entries(
    folder: str, top: str, shown: str, skip_temp: bool = True
) -> Iterator[tuple[os.DirEntry[str], os.stat_result]]:
    """(entry, stat) of each regular file and folder in `folder`; `PathUnreadable` naming
    `shown` and the entry (relative to `top`) for anything else."""

    def fail(path: str, error: str) -> PathUnreadable:
        if path == top:
            return _unreadable(shown, error)
        return _unreadable(shown, f"{printable(os.path.relpath(path, top))}: {error}")

    try:
        entries = os.scandir(folder)
    except FileNotFoundError:
        return  # removed while it was walked: its parent's mtime says so
    except OSError as exc:
        raise fail(folder, f"cannot list the folder: {os_reason(exc)}") from None
    with entries:
        for entry in entries:
            if skip_temp and entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                st = entry.stat()
            except FileNotFoundError:
                if entry.is_symlink():
                    raise fail(entry.path, _DANGLING) from None
                continue  # removed since it was listed
            except OSError as exc:
                raise fail(entry.path, os_reason(exc)) from None
            if stat_module.S_ISDIR(st.st_mode) and entry.is_symlink():
                raise fail(entry.path, _LINK_TO_FOLDER)
            if not (stat_module.S_ISREG(st.st_mode) or stat_module.S_ISDIR(st.st_mode)):
                raise fail(entry.path, _kind(st.st_mode))
            yield entry, st


def stat_path(path: str) -> Fingerprint | None:
    """One path, one stat (a folder is walked). None when missing; `PathUnreadable` when
    it exists but cannot be read."""
    return _fingerprint(path, path)


def stat_known(path: str) -> Fingerprint | None:
    """`stat_path`, with a path that cannot be read taken as missing: for recording what a
    refused or failed run saw, where the planner reports the reason anyway."""
    try:
        return _fingerprint(path, path)
    except PathUnreadable:
        return None


class DirectStat:
    """Fingerprints of dataset-relative paths, one stat each: for planning a few units
    without touching the rest of the dataset."""

    def __init__(self, root: str) -> None:
        self._root = root

    def __call__(self, relative: str) -> Fingerprint | None:
        return _fingerprint(f"{self._root}/{relative}", relative)


_ASK: Fingerprint = (-1, -1)  # a folder, or an odd entry: looked at when asked about


class _Unlisted(dict):
    """The listing of a folder that cannot be listed: every lookup in it says why."""

    def __init__(self, folder: str, error: str) -> None:
        super().__init__()
        self.folder, self.error = folder, error

    def get(self, name: str, default: object = None) -> Fingerprint | None:
        relative = f"{self.folder}/{name}" if self.folder else name
        raise _unreadable(relative, self.error)


class DirectoryListing:
    """Fingerprints of dataset-relative paths, listing each folder once and caching it.

    Planning a whole workspace asks about every input and output of every unit; most share
    a few folders, so one `os.scandir` per folder replaces a `stat` (often a failing one)
    per path. It raises `PathUnreadable` as `DirectStat` does.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._folders: dict[str, dict[str, Fingerprint]] = {}
        self._odd: dict[str, str] = {}  # dataset-relative path -> why it is not data

    @property
    def largest(self) -> int:
        """Entries of the largest folder listed: what a listing costs, next time."""
        return max(map(len, self._folders.values()), default=0)

    def folder(self, relative: str) -> dict[str, Fingerprint]:
        """One folder's entries: name -> fingerprint ((-1, -1) for a folder or an odd entry,
        until asked about)."""
        listing = self._folders.get(relative)
        if listing is None:
            listing = self._folders[relative] = self._list(relative)
        return listing

    def __call__(self, relative: str) -> Fingerprint | None:
        folder, _, name = relative.rpartition("/")
        listing = self._folders.get(folder)
        if listing is None:
            listing = self.folder(folder)
        found = listing.get(name)
        if found is _ASK:
            found = listing[name] = self._closer(relative)
        elif found is None and _too_long(name):
            raise _unreadable(relative, _TOO_LONG)
        return found

    def _closer(self, relative: str) -> Fingerprint:
        error = self._odd.get(relative)
        if error is not None:
            raise _unreadable(relative, error)
        return _fingerprint(f"{self.root}/{relative}", relative)

    def _list(self, relative: str) -> dict[str, Fingerprint]:
        out: dict[str, Fingerprint] = {}
        try:
            entries = os.scandir(f"{self.root}/{relative}" if relative else self.root)
        except (FileNotFoundError, NotADirectoryError):
            return out
        except OSError as exc:
            where = printable(relative or ".")
            return _Unlisted(relative, f"folder {where} cannot be listed: {os_reason(exc)}")
        prefix = f"{relative}/" if relative else ""
        with entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except OSError as exc:
                    if exc.errno == errno.ENOENT and not entry.is_symlink():
                        continue  # removed since it was listed
                    out[entry.name] = _ASK
                    self._odd[prefix + entry.name] = (
                        _DANGLING if exc.errno == errno.ENOENT else os_reason(exc)
                    )
                    continue
                if stat_module.S_ISREG(st.st_mode):
                    out[entry.name] = (st.st_size, st.st_mtime_ns)
                    continue
                # A folder is walked only if somebody asks about it.
                out[entry.name] = _ASK
                if not stat_module.S_ISDIR(st.st_mode):
                    self._odd[prefix + entry.name] = _kind(st.st_mode)
                elif entry.is_symlink():
                    self._odd[prefix + entry.name] = _LINK_TO_FOLDER
        return out


def content_hash(path: Path | str, shown: str | None = None) -> str:
    """A file's (or folder's) content digest, for `[staleness] content_hash = true`.

    Each file is opened non-blocking and checked to be a regular file once open, so that
    a FIFO or a device swapped in after the stat is never read. `PathUnreadable` names
    `shown` (the path by default) when it cannot be read.
    """
    path = str(path)
    shown = path if shown is None else shown
    digest = hashlib.blake2b(digest_size=16)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _unreadable(shown, os_reason(exc)) from None
    if stat_module.S_ISDIR(st.st_mode):
        if _is_link(path):
            raise _unreadable(shown, _LINK_TO_FOLDER)
        for folder, files in sorted(_tree(path, shown)):
            for name in sorted(files):
                inner = os.path.join(folder, name)
                member = os.path.relpath(inner, path)
                digest.update(os.fsencode(member))
                _hash_file(inner, digest, shown, member)
    elif stat_module.S_ISREG(st.st_mode):
        _hash_file(path, digest, shown)
    else:
        raise _unreadable(shown, _kind(st.st_mode))
    return digest.hexdigest()


def _tree(path: str, shown: str) -> list[tuple[str, list[str]]]:
    """(folder, its file names) for every folder under `path`, temporary names included."""
    out = []
    pending = [path]
    while pending:
        folder = pending.pop()
        files = []
        for entry, st in _entries(folder, path, shown, skip_temp=False):
            if stat_module.S_ISDIR(st.st_mode):
                pending.append(entry.path)
            else:
                files.append(entry.name)
        out.append((folder, files))
    return out


def _hash_file(path: str, digest: hashlib.blake2b, shown: str, member: str = "") -> None:
    """Add a regular file's bytes to `digest`; `member` names it inside the folder `shown`."""

    def fail(error: str) -> PathUnreadable:
        return _unreadable(shown, f"{printable(member)}: {error}" if member else error)

    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise fail(os_reason(exc)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat_module.S_ISREG(mode):
            raise fail(_kind(mode))
        while block := os.read(fd, 1 << 20):
            digest.update(block)
    except OSError as exc:
        raise fail(os_reason(exc)) from None
    finally:
        os.close(fd)


def encode_fingerprints(paths: Sequence[str], fingerprints: Sequence[Fingerprint | None]) -> str:
    """A canonical text for 'these paths had these fingerprints': compared as a string."""
    if len(paths) == 1:  # the common case, without a generator
        fp = fingerprints[0]
        return f"{paths[0]}\t{fp[0]}\t{fp[1]}" if fp else f"{paths[0]}\t-\t-"
    return "\n".join(
        f"{rel}\t{fp[0]}\t{fp[1]}" if fp else f"{rel}\t-\t-"
        for rel, fp in zip(paths, fingerprints, strict=True)
    )


def decode_fingerprints(text: str | None) -> dict[str, Fingerprint]:
    out: dict[str, Fingerprint] = {}
    for line in (text or "").split("\n"):
        rel, _, rest = line.partition("\t")
        size, _, mtime = rest.partition("\t")
        if rel and size != "-":
            out[rel] = (int(size), int(mtime))
    return out
