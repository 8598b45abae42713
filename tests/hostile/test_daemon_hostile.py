"""The daemon outlives what it reads from its own folders: receipts, its store, its
configuration and its scripts changing under it, steps that kill their workers.

Each test ends with `still_processing`: the daemon is alive and processes a new record.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faults.harness import wait_until

from .conftest import still_processing

BROKEN = "from sinagot import ScriptTemplate\n\nclass Script(ScriptTemplate:\n    pass\n"


def status(lab) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-m", "sinagot.cli", "status", str(lab.ws), "--json"],
        capture_output=True, text=True, env=lab.env(), timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)


def a_receipt(lab, rid: str, **changes: object) -> dict:
    receipt = {
        "unit": {"record_id": rid, "task": None, "modality": None}, "step": "count",
        "outcome": "done", "started": 1.0, "finished": 2.0, "error": None, "inputs": "",
        "outputs": "", "input_hashes": None, "code_hash": None, "run_id": "count-x-1",
    }  # fmt: skip
    receipt.update(changes)
    return receipt


def test_a_receipt_with_a_wrong_typed_field_is_set_aside_and_named(make_lab, outside):
    """A receipt whose `finished` is "x": `sinagotd --once` and `sinagot run` used to crash
    on every start. Now it is set aside under a hidden name, reported once, and the rest
    runs."""
    lab = make_lab(2)
    (rid,) = lab.ids()[:1]
    lab.receipts.mkdir(parents=True)
    bad = lab.receipts / "count-x-1.json"
    bad.write_text(json.dumps(a_receipt(lab, rid, finished="x")))

    once = lab.daemon("--once")
    event = once.wait_for("receipt.invalid", timeout=60)
    assert event["path"] == str(bad) and "finished" in event["error"]
    assert once.proc.wait(timeout=120) == 0, once.diagnosis()
    assert not bad.exists() and (lab.receipts / ".invalid-count-x-1.json").exists()

    bad.write_text("{not json")
    run = subprocess.run(
        [sys.executable, "-m", "sinagot.cli", "run", str(lab.ws)],
        capture_output=True, text=True, env=lab.env(), timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr

    bad.write_text(json.dumps(a_receipt(lab, rid, outcome="exploded")))
    daemon = lab.daemon()
    assert "outcome" in daemon.wait_for("receipt.invalid", timeout=60)["error"]
    daemon.wait_for("daemon.idle", timeout=60)
    still_processing(lab, daemon)


def test_a_receipt_that_is_a_link_or_a_folder_is_set_aside_without_following_it(make_lab, outside):
    lab = make_lab(2)
    lab.receipts.mkdir(parents=True)
    (lab.receipts / "link.json").symlink_to(outside.file)
    (lab.receipts / "folder.json").mkdir()
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    invalid = daemon.seen("receipt.invalid")
    assert invalid and invalid[0]["path"].endswith(("link.json", "folder.json"))
    assert not (lab.receipts / "link.json").exists()
    still_processing(lab, daemon)


def test_a_reload_that_moves_the_dataset_is_refused_and_says_restart(make_lab, tmp_path):
    lab = make_lab(2)
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    mark = daemon.mark()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lab.config.write_text(lab.base_config.replace('"./dataset"', f'"{elsewhere}"'))
    event = daemon.wait_for("config.invalid", since=mark, timeout=30)
    assert "[path] dataset" in event["error"] and "restart" in event["error"]
    assert not (elsewhere / ".sinagot").exists()
    still_processing(lab, daemon)
    assert not list(elsewhere.iterdir()), "the refused dataset was written to"


def test_a_syntax_error_in_a_script_is_one_event_and_its_steps_wait(make_lab):
    """An unclosed `(` in mean.py while the daemon runs: one `script.invalid` naming the
    file and line (not a failure per record), `sinagot status` still works and says why the
    steps wait; once the script is put back, nothing reruns that was up to date."""
    lab = make_lab(3)
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    script = lab.ws / "scripts" / "mean.py"
    good = script.read_text()

    mark = daemon.mark()
    script.write_text(BROKEN)
    event = daemon.wait_for("script.invalid", since=mark, timeout=30)
    assert event["path"] == str(script) and "line 3" in event["error"]
    (rid,) = lab.add([50])
    daemon.wait_for("step.finished", since=mark, timeout=60, record_id=rid, step="count")
    daemon.wait_for("daemon.idle", since=mark, timeout=60)
    assert len(daemon.seen("script.invalid", since=mark)) == 1
    assert not daemon.seen("step.failed", since=mark)
    assert not daemon.seen("step.submitted", since=mark, step="mean")
    waiting = [s for s in status(lab) if s["step"] == "mean" and s["record_id"] == rid]
    assert "cannot be loaded" in waiting[0]["reasons"][0]

    mark = daemon.mark()
    script.write_text(good)
    daemon.wait_for("script.fixed", since=mark, timeout=30)
    daemon.wait_for("step.finished", since=mark, timeout=60, record_id=rid, step="mean")
    daemon.wait_for("daemon.idle", since=mark, timeout=60)
    ran = {(e["record_id"], e["step"]) for e in daemon.seen("step.submitted", since=mark)}
    assert ran == {(rid, "mean")}, "steps that were up to date ran again"
    still_processing(lab, daemon)


KILLER = """
import os
from sinagot import ScriptTemplate

class Script(ScriptTemplate):
    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-count.csv")

    def run(self):
        if self.id.endswith("7"):
            os._exit(3)
        self.path.output.write_text("ok")
"""


def test_a_step_that_kills_its_worker_ends_as_error_after_bounded_attempts(make_lab):
    """`os._exit(3)` in a script kills its Dask worker: it used to be retried forever and
    shown as DATA_READY. Now it is ERROR after `max_attempts`, with the reason, and is
    not tried again until something changes."""
    lab = make_lab(1, retry=0.2)
    (lab.ws / "scripts" / "count.py").write_text(KILLER)
    daemon = lab.daemon(env=lab.env(DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES="0"))
    daemon.wait_for("daemon.idle", timeout=90)
    mark = daemon.mark()
    (killer,) = lab.add([7])

    def count_status() -> dict | None:
        (count,) = [s for s in status(lab) if s["record_id"] == killer and s["step"] == "count"]
        return count if count["status"] == "ERROR" else None

    count = wait_until(count_status, 120, "the killing step shown as ERROR", daemon.diagnosis)
    assert "died" in count["reasons"][0], count
    wait_until(daemon.idle, 60, "the daemon idle", daemon.diagnosis)
    (mean,) = [s for s in status(lab) if s["record_id"] == killer and s["step"] == "mean"]
    assert mean["status"] != "ERROR", "the step after the one that died is not at fault"
    submitted = len(daemon.seen("step.submitted", since=mark, record_id=killer))
    still_processing(lab, daemon, number=8)
    assert len(daemon.seen("step.submitted", since=mark, record_id=killer)) == submitted
    assert 2 <= submitted <= 3 * 2  # retried, but at most max_attempts chains of two steps


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 2 MiB tmpfs (root only): a state store that fills up."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_the_state_store_pauses_then_resumes(make_lab, tiny_fs):
    lab = make_lab(2)
    lab.config.write_text(f'{lab.base_config}\n[state]\npath = "{tiny_fs}/state"\n')
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    filler = tiny_fs / "filler"
    with open(filler, "wb") as out:  # fill the file system to the last byte
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError:
            pass
    mark = daemon.mark()
    rids = lab.add(range(20, 40))
    event = daemon.wait_for("store.error", since=mark, timeout=60)
    assert "full" in event["error"] and str(tiny_fs) in event["error"]
    assert daemon.proc.poll() is None
    os.unlink(filler)
    for rid in rids:
        daemon.wait_for("step.finished", since=mark, timeout=90, record_id=rid, step="mean")
    wait_until(lambda: daemon.idle(), 60, "daemon idle", daemon.diagnosis)
    lab.settle()
    still_processing(lab, daemon)


def test_a_recording_that_is_a_link_to_itself_is_one_path_error_and_the_rest_runs(
    make_lab, outside
):
    """`ln -s REC-X-raw.csv raw/REC-X-raw.csv` used to kill the daemon at startup or
    mid-run. Now: one `path.error` naming it (not one per rescan), ERROR with the reason in
    `sinagot status`, every other record processed. A recording that is a link to a folder
    outside is not followed."""
    lab = make_lab(2)
    loop = lab.raw("REC-00000077")
    loop.symlink_to(loop.name)
    (lab.dataset / "raw" / "REC-00000078-raw.csv").symlink_to(outside.root)
    daemon = lab.daemon()
    event = daemon.wait_for("path.error", timeout=60, path="raw/REC-00000077-raw.csv")
    assert "loop" in event["error"]
    daemon.wait_for("path.error", timeout=60, path="raw/REC-00000078-raw.csv")
    daemon.wait_for("daemon.idle", timeout=60)
    for _ in range(2):  # each reload rescans the whole workspace
        mark = daemon.mark()
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_for("config.reloaded", since=mark, timeout=30)
    still_processing(lab, daemon)
    assert len(daemon.seen("path.error", path="raw/REC-00000077-raw.csv")) == 1
    rows = {(s["record_id"], s["step"]): s for s in status(lab)}
    assert rows[("REC-00000077", "count")]["status"] == "ERROR"
    assert "symbolic link loop" in rows[("REC-00000077", "count")]["reasons"][0]
    assert rows[("REC-00000078", "count")]["status"] == "ERROR"
    assert all(s["status"] == "DONE" for (rid, _), s in rows.items() if rid in lab.ids()[:2])


SLEEPER = """
import time
from sinagot import ScriptTemplate

class Script(ScriptTemplate):
    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-count.csv")

    def run(self):
        if self.id.endswith("5"):
            while True:  # a step that never ends
                time.sleep(0.05)
        self.path.output.write_text("ok")
"""


def test_a_step_that_never_ends_is_stopped_at_its_time_limit(make_lab):
    """An infinite loop used to stay in flight forever. With `[run] time_limit`, it fails
    with the reason, its worker is replaced, and the rest goes on."""
    lab = make_lab(1)
    (lab.ws / "scripts" / "count.py").write_text(SLEEPER)
    lab.config.write_text(lab.base_config + "\n[run]\ntime_limit = 2\n")
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=90)
    mark = daemon.mark()
    (looping,) = lab.add([5])
    failed = daemon.wait_for("step.failed", since=mark, timeout=90, record_id=looping)
    assert failed["step"] == "count" and "time limit of 2 s exceeded" in failed["error"]
    (count,) = [s for s in status(lab) if s["record_id"] == looping and s["step"] == "count"]
    assert count["status"] == "ERROR"
    still_processing(lab, daemon, number=6)
