"""Shared fixtures: fresh copies of the bundled example workspaces, one per test.

Strict skips (`SINAGOT_STRICT_SKIPS=1`, set by `.ci/run` when it runs as root with apt): a
test skipped because a tool, an extra or a privilege is missing here (strace, chattr,
systemd-analyze, Chromium, MNE, root...) FAILS instead, its skip reason in the failure, so
that a CI run cannot pass with parts of the suite silently not run. A whole module skipped
at import (`pytest.importorskip` at module level) becomes a collection error. A skip that is
the test's own logic, not a missing tool, stays a skip where the test (or its parameter)
carries `@pytest.mark.allowed_skip("why")`. Unset, or `0`: skips are skips.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator, Iterator
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


# -- strict skips (SINAGOT_STRICT_SKIPS=1): see the module docstring ---------------------------

STRICT_SKIPS = "SINAGOT_STRICT_SKIPS"


def strict_skips() -> bool:
    """True when a skip must fail: CI provisioned every tool, so a skip is a hole in the run."""
    return os.environ.get(STRICT_SKIPS, "") not in ("", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allowed_skip(why): this test's skip is its own logic, not a missing tool, extra or "
        f"privilege: it stays a skip under {STRICT_SKIPS}=1",
    )


def _skip_reason(longrepr: object) -> str:
    """The reason of a skip report (`(path, line, "Skipped: reason")`), without the prefix."""
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _strict_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Turn a skip report into a failure that says which skip, and why it fails."""
    report.outcome = "failed"
    report.longrepr = (
        f"skipped, and {STRICT_SKIPS}=1 makes a skip a failure: {_skip_reason(report.longrepr)} "
        "(install what it needs, or mark a deliberate skip @pytest.mark.allowed_skip)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Strict skips: a skipped test (skipif, pytest.skip, importorskip in a test or fixture)
    fails, unless it is an xfail or marked allowed_skip. Runs in xdist's workers too: the
    report travels to the controller as a failure."""
    report = yield
    if (
        report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("allowed_skip") is None
        and strict_skips()
    ):
        _strict_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """Strict skips: a module skipped whole at import (a module-level importorskip, as
    tests/test_eeg_bids.py's for the eeg extra) is a collection error naming the reason."""
    report = yield
    if report.skipped and strict_skips():
        _strict_failure(report)
    return report
