"""Fixtures of the fault-injection suite; the machinery is in harness.py (shared with
tests/bench/bench_faults.py)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import Lab

if not sys.platform.startswith("linux"):
    collect_ignore_glob = ["test_*.py"]  # signals, process groups, /proc, inotify


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Make labs (workspace + control folder + processes); every process group they
    started is killed afterwards, holds released, cleanups run."""
    labs: list[Lab] = []

    def make(n: int, **settings: float) -> Lab:
        lab = Lab.create(tmp_path / f"lab{len(labs)}", n, **settings)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()
