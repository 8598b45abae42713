"""SIGTERM with a queue on the cluster: what no worker has begun is withdrawn at once;
only the step running gets the grace period; the next start runs the rest, once."""

from __future__ import annotations

import time
from pathlib import Path

from test_daemon import write_record

SLOW = 3.0  # seconds each count step takes: long enough to stop the daemon during one


def make_count_slow(ws: Path, began: Path, slow: Path) -> None:
    """count.py notes each record it begins in `began`, then takes SLOW seconds while the
    file `slow` exists."""
    script = ws / "scripts" / "count.py"
    note = (
        "        import os, time\n"
        f"        with open({str(began)!r}, 'a') as fh:\n"
        "            fh.write(self.id + '\\n')\n"
        f"        if os.path.exists({str(slow)!r}):\n"
        f"            time.sleep({SLOW})\n"
    )
    text = script.read_text()
    script.write_text(text.replace("    def run(self):\n", "    def run(self):\n" + note))


def begun(began: Path) -> list[str]:
    return began.read_text().split() if began.exists() else []


def test_sigterm_withdraws_what_has_not_begun_and_lets_the_running_step_end(ws, sinagotd, tmp_path):
    began, slow = tmp_path / "began.txt", tmp_path / "slow"
    slow.touch()
    make_count_slow(ws, began, slow)
    for n in range(4, 7):
        write_record(ws, f"REC-2020060{n}")
    daemon = sinagotd(ws)  # one worker, one thread: one unit at a time
    daemon.wait_for("daemon.ready")
    deadline = time.monotonic() + 60
    while not begun(began):
        assert time.monotonic() < deadline, "no step began"
        time.sleep(0.05)

    stopped_at = time.monotonic()
    assert daemon.stop(timeout=SLOW + 30) == 0
    took = time.monotonic() - stopped_at
    stopping = daemon.seen("daemon.stopping")[0]
    assert (stopping["withdrawn"], stopping["in_flight"]) == (5, 1)
    assert daemon.seen("daemon.stopped")[0]["in_flight"] == 0
    assert len(begun(began)) == 1  # nothing else began during the grace period
    first = begun(began)[0]
    finished = daemon.seen("step.finished")
    assert {(e["record_id"], e["step"]) for e in finished} == {(first, "count"), (first, "mean")}
    assert took < SLOW + 10  # the running unit's time, not six units' nor the grace period

    slow.unlink()
    again = sinagotd(ws)
    again.wait_for("daemon.idle", timeout=120)
    rerun = {(e["record_id"], e["step"]) for e in again.seen("step.finished")}
    others = {f"REC-2020060{n}" for n in range(1, 7)} - {first}
    assert rerun == {(r, s) for r in others for s in ("count", "mean")}  # the rest, once
    assert sorted(begun(began)) == sorted([first, *others])
