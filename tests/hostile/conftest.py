"""Fixtures of the adversarial suite: hostile or odd input, and the daemon outliving it.

Every daemon-level test here ends the same way (`still_processing`): the daemon is alive
and still processes a new valid record, and nothing outside the workspace changed
(`outside`). The machinery (a workspace, real sinagotd and Dask processes) is the fault
suite's `Lab` (tests/faults/harness.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults.harness import DaemonRun, Lab

if not sys.platform.startswith("linux"):
    collect_ignore_glob = ["test_*.py"]  # signals, process groups, /proc, inotify


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder with a short path that other users may enter (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="sinagot-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Outside:
    """A folder outside every workspace, with a file in it: symlinks in a dataset point
    here, and the test checks at the end that nothing in it changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.file = root / "victim.txt"
        self.file.write_text("participant data that must not change\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, tuple[int, str]]:
        out = {}
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = Path(folder, name)
                data = path.read_bytes()
                out[str(path.relative_to(self.root))] = (len(data), hashlib.sha1(data).hexdigest())
        return out

    def assert_unchanged(self) -> None:
        assert self.snapshot() == self.before, "something was written outside the dataset"


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Outside]:
    """A folder outside the dataset; asserted unchanged when the test ends."""
    out = Outside(tmp_path / "outside")
    yield out
    out.assert_unchanged()


def still_processing(lab: Lab, daemon: DaemonRun, number: int = 900, timeout: float = 60) -> None:
    """The daemon is alive and still processes a new valid record to the end."""
    assert daemon.proc.poll() is None, f"sinagotd exited\n{daemon.diagnosis()}"
    (rid,) = lab.add([number])
    for step in ("count", "mean"):
        daemon.wait_for("step.finished", timeout=timeout, record_id=rid, step=step)
    assert daemon.proc.poll() is None, f"sinagotd exited\n{daemon.diagnosis()}"
