"""Shared fixtures: fresh copies of the bundled example workspaces, one per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults.harness import Lab
from test_daemon import sinagotd, ws  # noqa: F401  (fixtures: a real daemon, for any test file)

# Every sinagotd a test starts serves its status page on a free port: never on the default
# one, which two daemons (or a developer's own) cannot share.
os.environ["SINAGOTD_STATUS_PORT"] = "0"

EXAMPLES = Path(__file__).resolve().parents[1] / "example"

# What running an example in place leaves behind (logs, state, results, caches): never copied,
# so every test starts from the raw data alone, whatever was run in the source tree.
_ANYWHERE = shutil.ignore_patterns("__pycache__", ".sinagot-tmp-*")
_IN_DATASET = shutil.ignore_patterns(
    "LOG", ".sinagot", "computed", "processed", "clinical", "scores.json"
)


def copy_example(name: str, dest: Path) -> Path:
    """Copy `example/<name>` (without generated files) to `dest/<name>` and return it."""
    source = EXAMPLES / name

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = set(_ANYWHERE(folder, names))
        if "dataset" in Path(folder).relative_to(source).parts:
            skipped |= set(_IN_DATASET(folder, names))
        return skipped

    target = dest / name
    shutil.copytree(source, target, ignore=ignore)
    return target


@pytest.fixture
def harbor(tmp_path: Path) -> Path:
    """A fresh copy of example/harbor (unit mode: three records, steps count and mean)."""
    return copy_example("harbor", tmp_path)


@pytest.fixture
def eeg(tmp_path: Path) -> Path:
    """A fresh copy of example/eeg (scoped mode: tasks RS, MMN, HDC; three records)."""
    return copy_example("eeg", tmp_path)


def load_generator():
    """example/make_dataset.py as a module: harbor-like workspaces of N records."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_dataset", EXAMPLES / "make_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_workspace():
    """`make_workspace(dest, n, trivial=True, start=0)` from example/make_dataset.py."""
    return load_generator().make_workspace


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
