"""Units grouped into Dask tasks by how long their steps take (sinagot.batching).

The pure sizing rules first, then real runs on an embedded Dask cluster: quick units share
tasks, long ones keep a task each and still run side by side, a step never timed is tried
on a few units before the rest go out, and a step's result still reaches the store while
the rest of its task runs.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import pytest

from sinagot import StepStatus, Workspace
from sinagot.batching import SPREAD, TASK_SECONDS, Durations, group
from sinagot.engine import Engine
from sinagot.execute import PROBES
from sinagot.layout import Scope

QUICK = 0.001


def flat(tasks: list[range]) -> list[int]:
    return [index for task in tasks for index in task]


# -- sizing ---------------------------------------------------------------------------


def test_quick_units_fill_tasks_of_about_a_tenth_of_a_second() -> None:
    tasks = group([QUICK] * 1000, threads=2)
    assert flat(tasks) == list(range(1000)), "every unit once, in priority order"
    sizes = {len(task) for task in tasks[:-1]}
    assert sizes == {round(TASK_SECONDS / QUICK)}, "each task holds ~TASK_SECONDS of work"


def test_a_small_backlog_is_still_spread_over_every_thread() -> None:
    tasks = group([QUICK] * 10, threads=2)
    assert flat(tasks) == list(range(10))
    assert len(tasks) >= 2 * SPREAD, "at least SPREAD tasks per thread when units allow"


def test_long_and_untimed_units_go_alone_and_keep_their_place() -> None:
    estimates = [QUICK, QUICK, None, QUICK, TASK_SECONDS, QUICK, QUICK, 3600.0]
    tasks = group(estimates, threads=1)
    assert flat(tasks) == list(range(len(estimates)))
    alone = {task[0] for task in tasks if len(task) == 1}
    assert {2, 4, 7} <= alone, "an untimed unit and long ones have a task each"
    assert all(len(task) == 1 for task in tasks if {2, 4, 7} & set(task))


def test_one_unit_is_one_task() -> None:
    assert group([QUICK], threads=8) == [range(1)]
    assert group([], threads=2) == []


def test_durations_learn_from_results_and_keep_what_they_measured() -> None:
    durations = Durations()
    kind = ("", "", "count")
    assert durations.of([kind]) is None, "never timed: unknown"
    durations.learn(kind, 0.010)
    assert durations.of([kind]) == pytest.approx(0.010)
    durations.learn(kind, 0.020)
    assert 0.010 < durations.of([kind]) < 0.020, "moves towards new measures, smoothly"
    durations.update({kind: 5.0, ("", "", "mean"): 0.5})
    assert durations.of([kind]) < 0.020, "the store's older figure does not overwrite"
    assert durations.of([kind, ("", "", "mean")]) == pytest.approx(durations.of([kind]) + 0.5)
    assert durations.of([kind, ("", "", "other")]) is None


# -- on a real cluster --------------------------------------------------------------------

DASK = """
[run]
mode = "dask"

[dask]
n_workers = {workers}
threads_per_worker = 1
dashboard_address = ":0"
"""


def lab(make_workspace, root: Path, n: int, workers: int = 2) -> Path:
    workspace = make_workspace(root / "lab", n, trivial=True)
    with (workspace / "workspace.toml").open("a") as fh:
        fh.write(DASK.format(workers=workers))
    return workspace


def touch_raw(workspace: Path) -> None:
    """Every recording newer (same bytes): every step is due again."""
    later = time.time() + 10
    for path in (workspace / "dataset" / "raw").iterdir():
        os.utime(path, (later, later))


def task_keys(engine: Engine) -> list[str]:
    """The keys of the tasks the embedded scheduler has been given."""
    scheduler = engine.executor.connection.cluster.scheduler
    return sorted({str(key) for key, *_ in scheduler.transition_log})


def test_quick_units_share_tasks_and_every_step_is_still_recorded(tmp_path, make_workspace):
    workspace = lab(make_workspace, tmp_path, 120)
    with Engine(workspace, verbose=False) as engine:
        first = engine.execute(engine.plan(engine.units(Scope()), stale_only=True))
        assert len(first) == 240 and all(r.ok for r in first)
        known = engine.store.step_durations()
        assert set(known) == {("", "", "count"), ("", "", "mean")}, "the store times each step"
        before = set(task_keys(engine))

        touch_raw(workspace)
        again = engine.execute(engine.plan(engine.units(Scope()), stale_only=True))
        assert len(again) == 240 and all(r.ok for r in again)
        tasks = set(task_keys(engine)) - before
    assert len(tasks) <= 120 // 4, f"120 quick units in {len(tasks)} tasks"
    assert any("+" in key.split("-")[-2] for key in tasks), "a task names how many units follow"
    with Workspace(workspace, verbose=False) as ws:
        assert set(ws.steps.status()["step_status"]) == {StepStatus.DONE}


SLOW = """import time

from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{{id}}-raw.csv")
    PATH_OUT = ("computed", "{{id}}-{name}.csv")

    def run(self):
        time.sleep(0.3)
        with open(self.path.output, "w") as fh:
            fh.write("slow\\n")
"""


def test_long_units_keep_a_task_each_and_run_side_by_side(tmp_path, make_workspace):
    workspace = lab(make_workspace, tmp_path, 4)
    for name in ("count", "mean"):
        (workspace / "scripts" / f"{name}.py").write_text(SLOW.format(name=name))
    with Engine(workspace, verbose=False) as engine:
        engine.execute(engine.plan(engine.units(Scope()), stale_only=True))
        before = set(task_keys(engine))
        touch_raw(workspace)
        results = engine.execute(engine.plan(engine.units(Scope()), stale_only=True))
        tasks = set(task_keys(engine)) - before
    assert len(tasks) == 4, f"4 units of 0.6 s: one task each, got {sorted(tasks)}"
    spans = sorted((r.started, r.finished) for r in results if r.step == "count")
    overlapping = any(b[0] < a[1] for a, b in itertools.pairwise(spans))
    assert overlapping, f"the two workers ran units at once: {spans}"


def test_a_step_never_timed_is_tried_on_a_few_units_first(tmp_path, make_workspace):
    """Nothing is known of a new workspace's steps: a few units go out (PROBES, as there
    are fewer threads), and the rest only once a result says how long a step takes."""
    workspace = lab(make_workspace, tmp_path, 30)
    submitted_at_first_result = []
    with Engine(workspace, verbose=False) as engine:

        def on_result(result) -> None:
            if not submitted_at_first_result:
                db = engine.store._connect(write=False)
                rows = db.execute(
                    "SELECT count(DISTINCT record_id) FROM runs "
                    "WHERE submitted IS NOT NULL OR state IS NOT NULL"
                ).fetchone()
                submitted_at_first_result.append(rows[0])

        results = engine.execute(engine.plan(engine.units(Scope()), stale_only=True), on_result)
    assert len(results) == 60 and all(r.ok for r in results)
    assert submitted_at_first_result == [PROBES], "a few units tried first"


WAITING = """import os
import time

from sinagot import ScriptTemplate

RELEASE = {release!r}
WAITER = {waiter!r}


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{{id}}-raw.csv")
    PATH_OUT = ("computed", "{{id}}-mean.csv")

    def run(self):
        text = "quick"
        if self.id == WAITER:
            deadline = time.monotonic() + 30
            while not os.path.exists(RELEASE) and time.monotonic() < deadline:
                time.sleep(0.02)
            text = "released" if os.path.exists(RELEASE) else "never released"
        with open(self.path.output, "w") as fh:
            fh.write(text)
"""


def test_a_step_is_recorded_while_the_rest_of_its_task_runs(tmp_path, make_workspace):
    """One worker, 8 quick units: 2 tasks of 4. The 4th unit of the first task waits until
    the three before it are recorded in the store, as `sinagot status` would see them."""
    workspace = lab(make_workspace, tmp_path, 8, workers=1)
    raw = workspace / "dataset" / "raw"
    with Engine(workspace, verbose=False) as engine:
        engine.execute(engine.plan(engine.units(Scope()), stale_only=True))  # times the steps
    ids = sorted(path.name[: -len("-raw.csv")] for path in raw.iterdir())
    now = time.time() + 10
    for age, rid in enumerate(ids):  # newest first: ids[0], ids[1], ...
        os.utime(raw / f"{rid}-raw.csv", (now - age, now - age))
    release = tmp_path / "release"
    mean = workspace / "scripts" / "mean.py"
    mean.write_text(WAITING.format(release=str(release), waiter=ids[3]))
    first_three = set(ids[:3])
    recorded: set[str] = set()
    with Engine(workspace, verbose=False) as engine:

        def on_result(result) -> None:
            if result.step == "mean" and result.unit.record_id in first_three:
                recorded.add(result.unit.record_id)
                if recorded == first_three:
                    release.touch()

        engine.execute(engine.plan(engine.units(Scope()), stale_only=True), on_result)
    out = workspace / "dataset" / "computed" / f"{ids[3]}-mean.csv"
    assert out.read_text() == "released", "the first units' results came before their task ended"
