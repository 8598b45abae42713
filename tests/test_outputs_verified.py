"""Outputs verified (issue 14, item 5): an output that changed since the run that wrote it
(truncated by a full disk, overwritten by hand) makes that step stale, with the reason; and
`[run] durable`: outputs synced to disk around their rename into place.

Real files, real runs (this process, `sinagot run`, or a real sinagotd). Modification
times are moved with `os.utime(ns=...)`, never waited for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_daemon import counted_boats, raw_rows
from test_staleness import init_runs, new_runs, not_done, touch

from sinagot import ConfigError, StepStatus, Workspace
from sinagot.layout import Scope

TOML = r"""
[records]
id_pattern = 'REC-\d+'

[steps]
scripts = ["count", "parts", "mean"]
"""

# A chain: count reads the raw file; parts (a folder output) and mean read count's output.
SCRIPTS = {
    "count": """
    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-count.csv")

    def run(self):
        lines = self.path.input.read_text().splitlines()
        self.path.output.write_text(f"{len(lines)} lines\\n")
""",
    "parts": """
    PATH_IN = ("computed", "{id}-count.csv")
    PATH_OUT = ("computed", "{id}-parts")

    def run(self):
        text = self.path.input.read_text()
        self.path.output.mkdir()
        (self.path.output / "a.txt").write_text(text)
        (self.path.output / "b.txt").write_text(text.upper())
""",
    "mean": """
    PATH_IN = ("computed", "{id}-count.csv")
    PATH_OUT = ("computed", "{id}-mean.csv")

    def run(self):
        self.path.output.write_text("mean of " + self.path.input.read_text())
""",
}
SECOND = 1_000_000_000


def chain_workspace(root: Path, n: int, extra_toml: str = "") -> Path:
    """Records REC-0 .. REC-<n-1> (record i has i + 2 raw lines) and the three-step chain."""
    (root / "scripts").mkdir(parents=True)
    (root / "dataset" / "raw").mkdir(parents=True)
    (root / "workspace.toml").write_text(TOML + extra_toml)
    for name, body in SCRIPTS.items():
        source = f"from sinagot import ScriptTemplate\n\n\nclass Script(ScriptTemplate):{body}"
        (root / "scripts" / f"{name}.py").write_text(source)
    for i in range(n):
        rows = "".join(f"row {j}\n" for j in range(i + 1))
        (root / "dataset" / "raw" / f"REC-{i}-raw.csv").write_text("header\n" + rows)
    return root


def run_all(root: Path) -> None:
    with Workspace(root, verbose=False) as ws:
        ws.steps.run()
        assert not not_done(ws)


def key(record_id: str, step: str) -> tuple:
    return (record_id, None, None, step)


def changed(rel: str, what: str) -> str:
    return f"output {rel} changed since the run that wrote it ({what})"


# -- 1. a changed output: its step is stale, and only its step -------------------------------


def test_a_truncated_output_makes_its_step_stale_and_the_run_restores_it(tmp_path: Path) -> None:
    root = chain_workspace(tmp_path / "ws", 3)
    computed = root / "dataset" / "computed"
    run_all(root)
    count = computed / "REC-1-count.csv"
    good, mean = count.read_text(), (computed / "REC-1-mean.csv").read_text()
    size = count.stat().st_size
    runs = init_runs(root / "dataset")
    count.write_text("")  # what a full disk or a power cut leaves: the name, no data

    will_write = ["earlier step count will write input computed/REC-1-count.csv"]
    with Workspace(root, verbose=False) as ws:
        assert not_done(ws) == {
            key("REC-1", "count"): (
                StepStatus.STALE,
                [changed("computed/REC-1-count.csv", f"size {size} -> 0")],
            ),
            # The steps reading it are stale because count will rewrite their input, not
            # because of an output of theirs.
            key("REC-1", "parts"): (StepStatus.STALE, will_write),
            key("REC-1", "mean"): (StepStatus.STALE, will_write),
        }
        assert ws.records.get("REC-1").steps.get("count").reasons() == [
            changed("computed/REC-1-count.csv", f"size {size} -> 0")
        ]
        ws.steps.run()
        assert not not_done(ws)

    assert count.read_text() == good
    assert (computed / "REC-1-mean.csv").read_text() == mean
    assert new_runs(runs, init_runs(root / "dataset")) == {
        key("REC-1", "count"): 1,
        key("REC-1", "parts"): 1,
        key("REC-1", "mean"): 1,
    }


def test_an_output_at_the_end_of_the_chain_makes_only_its_own_step_stale(tmp_path: Path) -> None:
    root = chain_workspace(tmp_path / "ws", 3)
    run_all(root)
    mean = root / "dataset" / "computed" / "REC-2-mean.csv"
    before = mean.stat().st_size
    with mean.open("a") as fh:
        fh.write("a line added by hand\n")
    after = mean.stat().st_size

    with Workspace(root, verbose=False) as ws:
        assert not_done(ws) == {
            key("REC-2", "mean"): (
                StepStatus.STALE,
                [changed("computed/REC-2-mean.csv", f"size {before} -> {after}")],
            )
        }


def test_an_output_overwritten_with_the_same_size_is_stale_too(tmp_path: Path) -> None:
    root = chain_workspace(tmp_path / "ws", 3)
    run_all(root)
    mean = root / "dataset" / "computed" / "REC-0-mean.csv"
    mean.write_text(mean.read_text().upper())  # same size, other content
    touch(mean)  # and surely another mtime, whatever the file system's clock tick

    with Workspace(root, verbose=False) as ws:
        assert not_done(ws) == {
            key("REC-0", "mean"): (
                StepStatus.STALE,
                [changed("computed/REC-0-mean.csv", "same size, modified time differs")],
            )
        }


def test_a_folder_output_with_a_file_added_is_stale(tmp_path: Path) -> None:
    root = chain_workspace(tmp_path / "ws", 3)
    run_all(root)
    parts = root / "dataset" / "computed" / "REC-2-parts"
    before = sum(p.stat().st_size for p in parts.iterdir())
    (parts / "stray.txt").write_text("12345")

    with Workspace(root, verbose=False) as ws:
        assert not_done(ws) == {
            key("REC-2", "parts"): (
                StepStatus.STALE,
                [changed("computed/REC-2-parts", f"size {before} -> {before + 5}")],
            )
        }
        ws.steps.run()
        assert not not_done(ws)
    assert sorted(p.name for p in parts.iterdir()) == ["a.txt", "b.txt"]


def test_a_missing_output_is_said_once_as_missing(tmp_path: Path) -> None:
    root = chain_workspace(tmp_path / "ws", 3)
    run_all(root)
    (root / "dataset" / "computed" / "REC-1-mean.csv").unlink()

    with Workspace(root, verbose=False) as ws:
        assert not_done(ws) == {
            key("REC-1", "mean"): (
                StepStatus.DATA_READY,
                ["output computed/REC-1-mean.csv is missing"],
            )
        }


def test_outputs_no_run_of_sinagot_wrote_are_not_checked(tmp_path: Path) -> None:
    """Without a run on record (a dataset processed before sinagot, a store deleted) there is
    nothing to compare an output with: make's rule alone decides, as before."""
    root = chain_workspace(tmp_path / "ws", 3)
    run_all(root)
    shutil.rmtree(root / "dataset" / ".sinagot")
    mean = root / "dataset" / "computed" / "REC-1-mean.csv"
    mean.write_text("edited by hand\n")

    with Workspace(root, verbose=False) as ws:
        assert not not_done(ws)


# -- 2. the whole-workspace fast path agrees ----------------------------------------------------


def test_planning_the_whole_workspace_agrees_with_planning_each_unit(tmp_path: Path) -> None:
    """Enough units for the settled fast path (folder listings, one string per step),
    which must find exactly what planning unit by unit finds, reasons included."""
    root = chain_workspace(tmp_path / "ws", 70)
    dataset, computed = root / "dataset", root / "dataset" / "computed"
    run_all(root)
    with Workspace(root, verbose=False) as ws:
        engine = ws._engine
        units = engine.units(Scope())
        assert len(units) > 64, "large enough to take the fast path"
        assert engine.plan(units, stale_only=True) == []

    (computed / "REC-3-count.csv").write_text("")  # truncated
    mean = computed / "REC-4-mean.csv"
    mean.write_text(mean.read_text().upper())  # same size, another mtime
    touch(mean)
    (computed / "REC-5-parts" / "b.txt").write_text("")  # inside a folder output
    (computed / "REC-6-mean.csv").unlink()  # missing
    touch(dataset / "raw" / "REC-7-raw.csv")  # an input, for company

    with Workspace(root, verbose=False) as ws:
        engine = ws._engine
        bulk = engine.plan(units)
        one_by_one = [plan for unit in units for plan in engine.plan([unit])]

    def decisions(plans):
        return [(p.unit, p.step.name, p.status, p.run, p.reasons) for p in plans]

    assert decisions(bulk) == decisions(one_by_one)
    due = {(p.unit.record_id, p.step.name): p.reasons for p in bulk if p.run}
    assert set(due) == {
        ("REC-3", "count"), ("REC-3", "parts"), ("REC-3", "mean"),
        ("REC-4", "mean"),
        ("REC-5", "parts"),
        ("REC-6", "mean"),
        ("REC-7", "count"), ("REC-7", "parts"), ("REC-7", "mean"),
    }  # fmt: skip
    assert due[("REC-3", "count")][0].startswith("output computed/REC-3-count.csv changed")
    assert due[("REC-4", "mean")] == (
        changed("computed/REC-4-mean.csv", "same size, modified time differs"),
    )
    assert due[("REC-5", "parts")][0].startswith("output computed/REC-5-parts changed")
    assert due[("REC-6", "mean")] == ("output computed/REC-6-mean.csv is missing",)

    run_all(root)
    with Workspace(root, verbose=False) as ws:
        assert ws._engine.plan(units, stale_only=True) == []


# -- 3. the daemon puts a damaged output right ------------------------------------------------


def test_the_daemon_reruns_a_step_whose_output_was_truncated(ws, sinagotd) -> None:
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    count = ws / "dataset" / "computed" / "REC-20200602-count.csv"
    size = count.stat().st_size
    mark = daemon.mark()
    count.write_text("")

    submitted = daemon.wait_for("step.submitted", record_id="REC-20200602", step="count")
    assert submitted["reasons"] == [changed("computed/REC-20200602-count.csv", f"size {size} -> 0")]
    daemon.wait_for("step.finished", record_id="REC-20200602", step="count")
    daemon.wait_for("daemon.idle")
    assert counted_boats(ws, "REC-20200602") == raw_rows(ws, "REC-20200602")
    # mean reads the raw file, not count's output: it is not run again.
    assert [(e["record_id"], e["step"]) for e in daemon.seen("step.submitted", since=mark)] == [
        ("REC-20200602", "count")
    ]
    assert daemon.stop() == 0


# -- 4. [run] durable ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ['"yes"', "1", "[true]"])
def test_durable_must_be_true_or_false(tmp_path: Path, value: str) -> None:
    root = chain_workspace(tmp_path / "ws", 1, f"\n[run]\ndurable = {value}\n")
    with pytest.raises(ConfigError) as info:
        Workspace(root)
    message = str(info.value)
    assert str(root / "workspace.toml") in message
    assert "[run] durable" in message
    assert "true or false" in message
    assert "Traceback" not in message


def test_durable_is_off_unless_asked(tmp_path: Path) -> None:
    root = chain_workspace(tmp_path / "ws", 1)
    with Workspace(root, verbose=False) as ws:
        assert ws._engine.config.durable is False
    with (root / "workspace.toml").open("a") as fh:
        fh.write("\n[run]\ndurable = true\n")
    with Workspace(root, verbose=False) as ws:
        assert ws._engine.config.durable is True


def traced_run(root: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`sinagot run` under strace: its exit, and the syncs and renames it made, in order
    (each fsync with the path of its descriptor)."""
    trace = root.parent / "strace.txt"
    command = [
        "strace", "-f", "-qq", "-y", "-e", "signal=none",
        "-e", "trace=fsync,fdatasync,rename,renameat,renameat2", "-o", str(trace),
        sys.executable, "-m", "sinagot", "run", str(root),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done, trace.read_text().splitlines()


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(["strace", "-qq", "-o", os.devnull, "true"], capture_output=True)
    return probe.returncode == 0


needs_strace = pytest.mark.skipif(not _strace_works(), reason="needs a working strace")


@needs_strace
def test_durable_outputs_are_synced_before_their_rename_and_their_folder_after(
    tmp_path: Path,
) -> None:
    root = chain_workspace(tmp_path / "ws", 1, "\n[run]\ndurable = true\n")
    computed = root / "dataset" / "computed"
    done, trace = traced_run(root)
    assert done.returncode == 0, done.stderr

    def first(pattern: str) -> int:
        found = [i for i, line in enumerate(trace) if re.search(pattern, line)]
        assert found, f"nothing matches {pattern!r} in:\n" + "\n".join(trace)
        return found[0]

    temp = r"\.sinagot-tmp-[0-9a-f]{8}-"
    for name in ("REC-0-count.csv", "REC-0-mean.csv"):
        synced = first(rf"fsync\(\d+<{re.escape(str(computed))}/{temp}{re.escape(name)}>")
        renamed = first(rf"rename\w*\(.*{temp}{re.escape(name)}\".*{re.escape(name)}\"")
        folder = [
            i
            for i, line in enumerate(trace)
            if i > renamed and re.search(rf"fsync\(\d+<{re.escape(str(computed))}>\)", line)
        ]
        assert synced < renamed and folder, "\n".join(trace)
    # A folder output: each of its files and the folder itself, before its rename.
    renamed = first(rf"rename\w*\(.*{temp}REC-0-parts\".*REC-0-parts\"")
    for inner in ("/a.txt", "/b.txt", ""):
        synced = first(rf"fsync\(\d+<{re.escape(str(computed))}/{temp}REC-0-parts{inner}>")
        assert synced < renamed
    assert (computed / "REC-0-parts" / "b.txt").read_text() == "2 LINES\n"
    assert (computed / "REC-0-mean.csv").read_text() == "mean of 2 lines\n"


@needs_strace
def test_outputs_are_not_synced_unless_durable(tmp_path: Path) -> None:
    """The default costs nothing: no output is synced (the state store syncs its own)."""
    root = chain_workspace(tmp_path / "ws", 1)
    done, trace = traced_run(root)
    assert done.returncode == 0, done.stderr
    computed = re.escape(str(root / "dataset" / "computed"))
    assert not [line for line in trace if re.search(rf"sync\(\d+<{computed}", line)]
    assert (root / "dataset" / "computed" / "REC-0-mean.csv").read_text() == "mean of 2 lines\n"
