"""A configuration or a step script that cannot be used as it is, met by a real `sinagotd`:
refused at start with one line and exit 78, or refused at reload with `config.invalid`
naming the key, the steps or the file and line, while the daemon keeps the configuration it
had and goes on processing. A script with a syntax error no longer stops a load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .conftest import still_processing

DUPLICATE = """
from sinagot import ScriptTemplate


class Script(ScriptTemplate):
    PATH_IN = ("raw", "{id}-raw.csv")
    PATH_OUT = ("computed", "{id}-count.csv")

    def run(self):
        self.path.output.write_text("overwritten")
"""
BROKEN_CLASS_LINE = "from sinagot import ScriptTemplate\n\nclass Script(ScriptTemplate:\n    pass\n"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder`: (size, mtime_ns), to show that nothing was written."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            stat = path.stat()
            out[str(path.relative_to(folder))] = (stat.st_size, stat.st_mtime_ns)
    return out


def status(lab) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sinagot.cli", "status", str(lab.ws), "--json"],
        capture_output=True, text=True, env=lab.env(), timeout=60, check=False,
    )  # fmt: skip


def reload_refused(lab, daemon, text: str) -> str:
    """Save `text` as the configuration; the error of the `config.invalid` that follows."""
    mark = daemon.mark()
    lab.config.write_text(text)
    event = daemon.wait_for("config.invalid", since=mark, timeout=30)
    assert not daemon.seen("config.reloaded", since=mark), daemon.diagnosis()
    assert "\n" not in event["error"]
    return event["error"]


def test_bad_values_saved_into_the_config_are_refused_by_key_and_the_daemon_goes_on(
    make_lab, outside
):
    """Each of these used to be accepted by a reload (a NaN settle time: no new file ever
    settled) or to raise out of it (a NUL byte in a path)."""
    lab = make_lab(2)
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    config = lab.base_config
    settle = "settle_seconds = 0.3"
    assert settle in config

    error = reload_refused(lab, daemon, config.replace(settle, "settle_seconds = nan"))
    assert f"{lab.config}: [daemon] settle_seconds" in error and "nan" in error
    nul = config.replace('scripts = "./scripts"', 'scripts = "./scr\\u0000ipts"')
    error = reload_refused(lab, daemon, nul)
    assert "[path] scripts" in error and r"'\x00'" in error
    error = reload_refused(lab, daemon, config + "\n[run]\ntime_limit = inf\n")
    assert "[run] time_limit" in error and "inf" in error
    error = reload_refused(lab, daemon, config + "\n[run.time_limits]\ncuont = 5\n")
    assert "'cuont'" in error and "steps: count, mean" in error
    error = reload_refused(lab, daemon, config.replace("n_workers = 2", "n_workers = 1000000"))
    assert "[dask] n_workers" in error

    still_processing(lab, daemon)


def test_a_step_added_that_would_overwrite_another_steps_output_is_refused_at_reload(
    make_lab, outside
):
    lab = make_lab(2)
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    before = snapshot(lab.dataset / "computed")
    (lab.ws / "scripts" / "dup.py").write_text(DUPLICATE)

    error = reload_refused(
        lab, daemon, lab.base_config.replace('["count", "mean"]', '["count", "mean", "dup"]')
    )

    assert "steps count and dup both write computed/{id}-count.csv" in error
    assert str(lab.ws / "scripts" / "dup.py") in error
    still_processing(lab, daemon)
    after = snapshot(lab.dataset / "computed")
    assert {name: after[name] for name in before} == before, "an output was overwritten"
    assert not daemon.seen("step.submitted", step="dup")


def test_sinagotd_refuses_to_start_on_a_step_that_would_rewrite_its_own_input(make_lab, outside):
    """PATH_OUT equal to PATH_IN: it used to run again on its own output, 66 times in 8 s."""
    lab = make_lab(2)
    mean = lab.ws / "scripts" / "mean.py"
    mean.write_text(
        mean.read_text().replace('("computed", "{id}-mean.csv")', '("raw", "{id}-raw.csv")')
    )
    before = snapshot(lab.ws)

    daemon = lab.daemon()

    assert daemon.proc.wait(timeout=60) == 78, daemon.diagnosis()
    lines = daemon.stderr().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sinagotd: configuration error: "), lines
    assert f"{mean}: PATH_OUT raw/{{id}}-raw.csv is also its PATH_IN" in lines[0]
    assert snapshot(lab.ws) == before
    assert not daemon.seen("step.submitted")


def test_sinagotd_starts_while_a_script_has_an_unclosed_parenthesis_and_runs_it_once_fixed(
    make_lab, outside
):
    """It used to refuse to start (exit 78), and `sinagot status` refused to run, for one
    script with a slip in it; the other steps now go on, and the step runs once fixed."""
    lab = make_lab(2)
    mean = lab.ws / "scripts" / "mean.py"
    good = mean.read_text()
    mean.write_text("oops = (\n" + good)

    daemon = lab.daemon()
    for rid in lab.ids():
        daemon.wait_for("step.finished", timeout=60, record_id=rid, step="count")
    shown = status(lab)
    assert shown.returncode != 78 and "Traceback" not in shown.stderr, shown.stderr
    assert {row["record_id"] for row in json.loads(shown.stdout)} == set(lab.ids())

    mark = daemon.mark()
    mean.write_text(good)
    for rid in lab.ids():
        daemon.wait_for("step.finished", since=mark, timeout=60, record_id=rid, step="mean")
    still_processing(lab, daemon)


def test_a_script_broken_on_its_class_line_keeps_the_patterns_last_read_for_status_and_reload(
    make_lab, outside
):
    """No pattern is left in the file: they come from the state folder's patterns.json,
    written by the last load that read the script whole."""
    lab = make_lab(2)
    daemon = lab.daemon()
    daemon.wait_for("daemon.idle", timeout=60)
    assert status(lab).returncode == 0
    mean = lab.ws / "scripts" / "mean.py"
    good = mean.read_text()

    mean.write_text(BROKEN_CLASS_LINE)
    shown = status(lab)
    assert shown.returncode != 78 and "Traceback" not in shown.stderr, shown.stderr
    assert {row["record_id"] for row in json.loads(shown.stdout)} == set(lab.ids())
    mark = daemon.mark()
    lab.config.write_text(lab.base_config + "\n# edited\n")
    daemon.wait_for("config.reloaded", since=mark, timeout=30)

    mean.write_text(good)
    still_processing(lab, daemon)
