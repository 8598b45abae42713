"""`sinagot run --wait` while sinagotd runs: a real daemon (embedded Dask cluster, one
worker) on a copy of example/harbor, and the real `sinagot` command asking it.

The daemon's JSON events are read as it writes them; every wait has a deadline. A step is
held mid-run by a control file outside the dataset (its script polls for it), so that a
test knows a run is in flight without sleeping for it.

Also `requests.Waiter`'s rules on rows as the state store holds them, without processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_cli import fail_for, init_runs, sinagot, sinagot_command, status_json
from test_daemon import Sinagotd

from sinagot.layout import Unit
from sinagot.requests import NOT_RUN_ERROR, RunRow, Waiter
from sinagot.runner import Outcome
from sinagot.state import run_key

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="signals, process groups, AF_UNIX"
)


def hold_count(ws: Path) -> Path:
    """Make the count step wait while the returned file exists (it is outside the dataset)."""
    hold = ws.parent / "hold"
    script = ws / "scripts" / "count.py"
    text = script.read_text().replace("import pandas as pd\n", "import os\nimport time\n\n"
                                      "import pandas as pd\n")  # fmt: skip
    wait = f"        while os.path.exists({str(hold)!r}):\n            time.sleep(0.02)\n"
    script.write_text(text.replace("    def run(self):\n", "    def run(self):\n" + wait))
    return hold


def ready(sinagotd: Callable[[Path], Sinagotd], ws: Path) -> Sinagotd:
    """A daemon that has processed what was due at its start."""
    one = sinagotd(ws)
    one.wait_for("daemon.ready", timeout=60)
    one.wait_for("daemon.idle", timeout=60)
    return one


def start_wait(ws: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "SINAGOT_DASK_ADDRESS"}
    return subprocess.Popen(
        [*sinagot_command(), "run", str(ws), "--wait", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


# -- against a real daemon ------------------------------------------------------------------


def test_wait_returns_when_the_queued_steps_are_done(ws, sinagotd):
    daemon = ready(sinagotd, ws)
    pid = daemon.proc.pid

    done = sinagot("run", ws, "--wait", "--force", "--record", "REC-20200601")

    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        f"sinagotd pid {pid} is running this workspace: it queued 2 step(s) of 1 unit(s); "
        "waiting for them"
    ), lines
    assert lines[-1] == "2 step(s) done, 0 failed"
    # It returned once both runs were recorded, not merely queued.
    assert init_runs(ws / "dataset", "REC-20200601") == ["count", "mean"] * 2
    rows = status_json(ws, "--record", "REC-20200601")
    assert [(r["step"], r["status"]) for r in rows] == [("count", "DONE"), ("mean", "DONE")]
    daemon.wait_for("run.requested", wait=True, steps=2, busy=0, timeout=60)

    # Nothing due: nothing queued, nothing to wait for.
    again = sinagot("run", ws, "--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to queue" in again.stdout
    assert again.stdout.splitlines()[-1] == "0 step(s) done, 0 failed"


def test_wait_exits_1_and_names_the_failed_step_and_the_skipped_one(ws, sinagotd):
    fail_for(ws / "scripts" / "count.py", "REC-20200602", "bad boat")
    ready(sinagotd, ws)  # it ran everything once already: REC-20200602's count failed

    done = sinagot("run", ws, "--wait", "--force")

    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "FAILED REC-20200602 count: ValueError: bad boat" in lines
    assert "SKIPPED REC-20200602 mean: not run: earlier step count did not succeed" in lines
    assert lines[-1] == "4 step(s) done, 1 failed, 1 skipped after a failure in their unit"
    assert "Traceback" not in done.stderr


def test_timeout_exits_1_naming_what_still_waits_and_the_daemon_goes_on(ws, sinagotd):
    hold = hold_count(ws)
    daemon = ready(sinagotd, ws)
    hold.touch()
    try:
        began = time.monotonic()
        done = sinagot("run", ws, "--wait", "--force", "--record", "REC-20200603", "--timeout", "1")
        took = time.monotonic() - began
    finally:
        hold.unlink()
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "0 step(s) done, 0 failed, 2 still waiting"
    assert done.stderr.splitlines() == [
        "sinagot: stopped waiting after 1 s (--timeout): 2 step(s) still waiting; sinagotd "
        "goes on with them: see `sinagot status`"
    ]
    assert took < 30
    # Nothing was cancelled: the daemon runs them once the hold is lifted.
    daemon.wait_for("step.finished", record_id="REC-20200603", step="mean", timeout=60)


def test_a_unit_in_flight_is_waited_for_until_its_forced_rerun_ends(ws, sinagotd):
    hold = hold_count(ws)
    daemon = ready(sinagotd, ws)
    hold.touch()
    waiting = None
    try:
        first = sinagot("run", ws, "--force", "--record", "REC-20200601")
        assert first.returncode == 0, first.stdout + first.stderr
        daemon.wait_for("step.submitted", record_id="REC-20200601", step="mean", timeout=60)
        waiting = start_wait(ws, "--force", "--record", "REC-20200601")
        daemon.wait_for("run.requested", wait=True, busy=1, steps=0, timeout=60)
        assert waiting.poll() is None, "it waits while the unit is on the cluster"
    finally:
        hold.unlink()
    assert waiting is not None
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, out + err
    assert "1 unit(s) already running are planned again when they end" in out
    assert out.splitlines()[-1] == "2 step(s) done, 0 failed"
    # Three runs of the unit by then: at the daemon's start, the held one, and the rerun
    # asked while it was held: --wait did not stop at the held run's landing.
    assert init_runs(ws / "dataset", "REC-20200601") == ["count", "mean"] * 3


def test_ctrl_c_stops_the_wait_and_not_the_steps(ws, sinagotd):
    hold = hold_count(ws)
    daemon = ready(sinagotd, ws)
    hold.touch()
    try:
        waiting = start_wait(ws, "--force", "--record", "REC-20200602")
        daemon.wait_for("step.submitted", record_id="REC-20200602", step="count", timeout=60)
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=60)
    finally:
        hold.unlink()
    assert waiting.returncode == 130, out + err
    assert "nothing was cancelled" in err
    assert "Traceback" not in err
    daemon.wait_for("step.finished", record_id="REC-20200602", step="mean", timeout=60)


# -- without a daemon, and usage ------------------------------------------------------------


def test_wait_without_a_daemon_is_a_plain_run(harbor):
    done = sinagot("run", harbor, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "6 step(s) done, 0 failed\n"
    assert {r["status"] for r in status_json(harbor)} == {"DONE"}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--timeout", "5"], "--timeout goes with --wait"),
        (["--wait", "--timeout", "0"], "give a number above 0"),
        (["--wait", "--timeout", "soon"], "'soon' is not a number of seconds"),
    ],
)
def test_timeout_usage_errors_exit_2(harbor, args, says):
    done = sinagot("run", harbor, *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr
    assert not (harbor / "dataset" / "computed").exists()


# -- Waiter's rules, on rows as the store holds them ----------------------------------------

UNIT = Unit("REC-1")
STEPS = ("count", "mean")
COUNT, MEAN = run_key(UNIT, "count"), run_key(UNIT, "mean")


def steps_of(unit: Unit) -> tuple[str, ...]:
    return STEPS


def no_plans(units, force, only):
    raise AssertionError("only busy units are planned")


def row(state=None, finished=None, submitted=None, generation=None, error=None) -> RunRow:
    return RunRow(state, error, finished, submitted, generation)


def queued(*steps: str) -> dict[str, Any]:
    return {"ok": True, "queued_steps": [["REC-1", None, None, s] for s in steps],
            "busy_units": []}  # fmt: skip


def test_waiter_tells_a_new_run_by_the_rows_change_whatever_the_worker_clock():
    # The last runs finished at 1000.0 (generation g0); the new ones finish at 900.0: a
    # worker whose clock is behind. Only the rows' changes tell a new run.
    before = {COUNT: row("done", 1000.0, None, "g0"), MEAN: row("done", 1000.0, None, "g0")}
    waiter = Waiter(queued(*STEPS), before, steps_of)
    waiter.update(before, no_plans)  # queued, not submitted yet
    assert waiter.waiting == 2
    submitted = {COUNT: row("done", 1000.0, 5.0, "g1"), MEAN: row("done", 1000.0, 5.0, "g1")}
    waiter.update(submitted, no_plans)
    assert waiter.waiting == 2
    waiter.update({COUNT: row("done", 900.0, None, "g1"), MEAN: submitted[MEAN]}, no_plans)
    assert [e.step for e in waiter.ended.values()] == ["count"]
    waiter.update({COUNT: row("done", 900.0, None, "g1"), MEAN: row("failed", 901.0, None,
                   "g1", "ValueError: x")}, no_plans)  # fmt: skip
    assert waiter.done
    assert [(e.step, e.outcome, e.error) for e in waiter.ended.values()] == [
        ("count", Outcome.DONE, None), ("mean", Outcome.FAILED, "ValueError: x"),
    ]  # fmt: skip


def test_waiter_tells_skipped_from_could_not_run():
    before = {COUNT: row("done", 1.0, None, "g0"), MEAN: row("done", 1.0, None, "g0")}
    # count failed in run g1, and mean, not run, only left the queue: skipped.
    after = {COUNT: row("failed", 2.0, None, "g1", "boom"), MEAN: row("done", 1.0, None, "g1")}
    waiter = Waiter(queued(*STEPS), before, steps_of)
    waiter.update(after, no_plans)
    assert [(e.step, e.outcome) for e in waiter.ended.values()] == [
        ("count", Outcome.FAILED), ("mean", Outcome.SKIPPED),
    ]  # fmt: skip
    # count could not begin (it only left the queue), and mean after it: both not run,
    # the second skipped.
    after = {COUNT: row("done", 1.0, None, "g1"), MEAN: row("done", 1.0, None, "g1")}
    waiter = Waiter(queued(*STEPS), before, steps_of)
    waiter.update(after, no_plans)
    assert [(e.step, e.outcome, e.error) for e in waiter.ended.values()] == [
        ("count", Outcome.NOT_RUN, NOT_RUN_ERROR),
        ("mean", Outcome.SKIPPED, "not run: earlier step count did not succeed"),
    ]


def test_waiter_follows_a_busy_unit_through_its_landing_and_forced_rerun():
    class Plan:
        def __init__(self, step: str, run: bool) -> None:
            self.unit, self.run, self.status = UNIT, run, 0
            self.step = type("Spec", (), {"name": step})()

    def forced(units, force, only):
        assert force and units == [UNIT]
        return [Plan("count", True), Plan("mean", True)]

    flying = {COUNT: row("done", 1.0, 3.0, "g0"), MEAN: row("done", 1.0, 3.0, "g0")}
    reply = {"ok": True, "queued_steps": [], "busy_units": [["REC-1", None, None, "g0"]]}
    waiter = Waiter(reply, flying, steps_of, force=True)
    assert waiter.total == 2
    waiter.update(flying, forced)
    assert waiter.waiting == 2  # still on the cluster
    landed = {COUNT: row("done", 4.0, None, "g0"), MEAN: row("done", 4.0, None, "g0")}
    waiter.update(landed, forced)
    assert waiter.waiting == 2, "landed, but the forced rerun has not run"
    rerun = {COUNT: row("done", 4.0, 5.0, "g1"), MEAN: row("done", 4.0, 5.0, "g1")}
    waiter.update(rerun, forced)
    assert waiter.waiting == 2
    waiter.update({COUNT: row("failed", 6.0, None, "g1", "boom"),
                   MEAN: row("done", 4.0, None, "g1")}, forced)  # fmt: skip
    assert waiter.done
    assert [(e.step, e.outcome) for e in waiter.ended.values()] == [
        ("count", Outcome.FAILED), ("mean", Outcome.SKIPPED),
    ]  # fmt: skip
