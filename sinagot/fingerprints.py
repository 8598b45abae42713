"""What a file looks like right now: size and mtime, cheaply, for one path or a whole dataset.

A fingerprint is a plain `(size, mtime_ns)` tuple (plus a content hash where asked), so that
comparing the current state with the recorded one is tuple equality. A folder's fingerprint
sums its files' sizes and takes their newest mtime, so a recording that is a folder counts
as changed when any file in it changes.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_module
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeAlias

from .patterns import TEMP_PREFIX

Fingerprint: TypeAlias = tuple[int, int]
"""(size in bytes, mtime in nanoseconds)"""

Lookup: TypeAlias = Callable[[str], Fingerprint | None]
"""Maps a dataset-relative path ('raw/REC-1-raw.csv') to its fingerprint, or None."""


def _from_stat(path: str, st: os.stat_result) -> Fingerprint:
    if stat_module.S_ISDIR(st.st_mode):
        return folder_fingerprint(path)
    return (st.st_size, st.st_mtime_ns)


def folder_fingerprint(path: str) -> Fingerprint:
    size, newest = 0, 0
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(TEMP_PREFIX)]
        for name in files:
            if name.startswith(TEMP_PREFIX):
                continue
            try:
                st = os.stat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            size += st.st_size
            newest = max(newest, st.st_mtime_ns)
        newest = max(newest, os.stat(folder).st_mtime_ns)
    return (size, newest)


def stat_path(path: str) -> Fingerprint | None:
    """One path, one stat."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return _from_stat(path, st)


class DirectStat:
    """Fingerprints of dataset-relative paths, one stat each: for planning a few units
    without touching the rest of the dataset."""

    def __init__(self, root: str) -> None:
        self._root = root

    def __call__(self, relative: str) -> Fingerprint | None:
        return stat_path(f"{self._root}/{relative}")


_FOLDER: Fingerprint = (-1, -1)


class DirectoryListing:
    """Fingerprints of dataset-relative paths, listing each folder once and caching it.

    Planning a whole workspace asks about every input and output of every unit; most share
    a few folders, so one `os.scandir` per folder replaces a `stat` (often a failing one)
    per path.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self._folders: dict[str, dict[str, Fingerprint]] = {}
        self._names: dict[str, set[str]] = {}

    def names(self, relative: str) -> set[str]:
        """The names in one folder, without a stat each: enough to know what exists."""
        found = self._names.get(relative)
        if found is None:
            try:
                found = set(os.listdir(f"{self.root}/{relative}" if relative else self.root))
            except (FileNotFoundError, NotADirectoryError):
                found = set()
            self._names[relative] = found
        return found

    def folder(self, relative: str) -> dict[str, Fingerprint]:
        """One folder's entries: name -> fingerprint (a folder's is (-1, -1) until asked)."""
        listing = self._folders.get(relative)
        if listing is None:
            path = f"{self.root}/{relative}" if relative else self.root
            listing = self._folders[relative] = self._list(path)
        return listing

    def __call__(self, relative: str) -> Fingerprint | None:
        folder, _, name = relative.rpartition("/")
        listing = self._folders.get(folder)
        if listing is None:
            listing = self.folder(folder)
        found = listing.get(name)
        if found is _FOLDER:
            found = listing[name] = folder_fingerprint(f"{self.root}/{relative}")
        return found

    @staticmethod
    def _list(folder: str) -> dict[str, Fingerprint]:
        out: dict[str, Fingerprint] = {}
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return out
        with entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                # A folder is walked only if somebody asks about it.
                out[entry.name] = (
                    _FOLDER if stat_module.S_ISDIR(st.st_mode) else (st.st_size, st.st_mtime_ns)
                )
        return out


def content_hash(path: Path | str) -> str:
    """A file's (or folder's) content digest, for `[staleness] content_hash = true`."""
    digest = hashlib.blake2b(digest_size=16)
    path = str(path)
    if os.path.isdir(path):
        for folder, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted(files):
                digest.update(os.path.relpath(os.path.join(folder, name), path).encode())
                with open(os.path.join(folder, name), "rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        digest.update(block)
    else:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
