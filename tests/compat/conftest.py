"""Fixtures of the sinagot 0.3 compatibility suite: fresh copies of 0.3-shaped workspaces.

`data/sonetaa` is shaped like 0.3's own test data (tasks RS/MMN/HDC; modalities EEG,
behavior with custom models, clinical with the pandas plugin, processed; a `custom_conf.toml`
to merge on top; a 0.3 `LOG` file). `data/minimal_mode` is a 0.3 unit-mode workspace and
`data/pandas` the pandas plugin's own. Every test works on a copy in its `tmp_path`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sinagot import Workspace

DATA = Path(__file__).resolve().parent / "data"
IDS = ("REC-200319-A", "REC-200320-A")
ID = "REC-200319-A"
TASKS = ("RS", "MMN", "HDC")
MODALITIES = ("EEG", "behavior", "clinical", "processed")
#: 0.3's order of the units of the sonetaa root: tasks in config order, then modalities in
#: config order (`processed` belongs to no task).
UNITS = (
    ("RS", "EEG"), ("RS", "clinical"), ("MMN", "EEG"), ("MMN", "clinical"),
    ("HDC", "EEG"), ("HDC", "behavior"), ("HDC", "clinical"),
)  # fmt: skip
#: The columns of a 0.3 log line (the LOG file of a record), in 0.3's order.
LOG_KEYS = (
    "log_from", "workspace_version", "record_id", "scope", "task", "modality",
    "step_label", "step_status", "message", "time",
)  # fmt: skip

# Committed results are given modification times after their inputs' (a checkout writes
# files in any order): the number of steps before them, in minutes after the raw data.
_LATER = {"behavior-scores.csv": 1, "norm-scores.csv": 2}


def copy_data(name: str, dest: Path) -> Path:
    """Copy `data/<name>` to `dest/<name>`, results newer than their inputs; return it."""
    target = dest / name
    shutil.copytree(DATA / name, target, ignore=shutil.ignore_patterns("__pycache__"))
    base = time.time() - 3600
    for path in target.rglob("*"):
        if path.is_file():
            stamp = base + 60 * _LATER.get(path.name, 0)
            os.utime(path, (stamp, stamp))
    return target


def log_lines(dataset: Path, record_id: str) -> list[dict]:
    """The lines of `LOG/<record_id>.log`, as dicts (none if there is no such file)."""
    path = dataset / "LOG" / f"{record_id}.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def dataset_files(dataset: Path) -> dict[str, str]:
    """{relative path: text} of every file of a dataset but the logs and the state."""
    return {
        str(path.relative_to(dataset)): path.read_text()
        for path in sorted(dataset.rglob("*"))
        if path.is_file() and path.relative_to(dataset).parts[0] not in ("LOG", ".sinagot")
    }


@pytest.fixture
def sonetaa(tmp_path: Path) -> Path:
    """A fresh copy of data/sonetaa (its workspace.toml says `[run] mode = "dask"`)."""
    return copy_data("sonetaa", tmp_path)


@pytest.fixture
def minimal_mode(tmp_path: Path) -> Path:
    """A fresh copy of data/minimal_mode (unit mode: RAW/REC-001.txt, RAW/REC-002.txt)."""
    return copy_data("minimal_mode", tmp_path)


@pytest.fixture
def pandas_workspace(tmp_path: Path) -> Path:
    """A fresh copy of data/pandas (one JSON Series per record)."""
    return copy_data("pandas", tmp_path)


@pytest.fixture
def workspace(sonetaa: Path) -> Iterator[Workspace]:
    """The sonetaa workspace with custom_conf.toml merged on top: main process, v0.3.0."""
    ws = Workspace([sonetaa, sonetaa / "custom_conf.toml"], verbose=False)
    yield ws
    ws.close()


@pytest.fixture
def records(workspace: Workspace):
    return workspace.records


@pytest.fixture
def record(records):
    """REC-200319-A: its raw EEG data for the three tasks, scores done, scores_norm ready."""
    return records.get(ID)
