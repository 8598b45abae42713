"""The `sinagot` command line, run the way a user types it (and in-process via `main`)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sinagot import Workspace
from sinagot.cli import main

HARBOR_IDS = ("REC-20200601", "REC-20200602", "REC-20200603")
EEG_IDS = ("REC-200331-A", "REC-200331-B", "REC-200401-A")
JSON_KEYS = {"record_id", "task", "modality", "step", "status", "reasons"}
BROKEN_PATTERN = '[records]\nid_pattern = "("\n\n[steps]\nscripts = ["count", "mean"]\n'


def sinagot_command() -> list[str]:
    exe = shutil.which("sinagot", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "sinagot"]


def sinagot(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `sinagot ARGS...` in a subprocess, as typed in a shell."""
    env = {k: v for k, v in os.environ.items() if k != "SINAGOT_DASK_ADDRESS"}
    return subprocess.run(
        [*sinagot_command(), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """{relative path: (mtime_ns, inode, bytes)} of every file under a folder."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_ino, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def init_runs(dataset: Path, record_id: str) -> list[str]:
    """The steps whose runs started for a record, in log order."""
    path = dataset / "LOG" / f"{record_id}.log"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["step_label"] for e in entries if e["message"] == "Init run"]


def status_json(workspace: Path, *args: str) -> list[dict]:
    done = sinagot("status", workspace, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def summary_line(lines: list[str]) -> int:
    """Where the status table's summary line ('6 step(s): ...') is."""
    found = [i for i, line in enumerate(lines) if re.match(r"\d+ step\(s\)", line)]
    assert len(found) == 1, lines
    return found[0]


def fail_for(script: Path, record_id: str, error: str) -> None:
    source = script.read_text()
    marker = "    def run(self):\n"
    patch = (
        f"{marker}        if self.id == {record_id!r}:\n            raise ValueError({error!r})\n"
    )
    script.write_text(source.replace(marker, patch))


# -- init --------------------------------------------------------------------------------


def test_init_makes_a_workspace_that_loads_and_runs(tmp_path):
    path = tmp_path / "lab"
    done = sinagot("init", path)
    assert done.returncode == 0, done.stderr
    assert "workspace.toml" in done.stdout
    assert (path / "dataset" / "raw").is_dir()

    ws = Workspace(path, verbose=False)
    assert ws.records.count() == 0
    steps = ws.steps.scripts_names()
    assert len(steps) == 1
    ws.close()

    (path / "dataset" / "raw" / "S01.csv").write_text("a,b\n1,2\n3,4\n")
    done = sinagot("run", path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 step(s) done, 0 failed" in done.stdout
    with Workspace(path, verbose=False) as ws:
        assert ws.records.ids() == ["S01"]
        status = ws.steps.status()
        assert list(status["step_status"]) == [30]
    outputs = [p for p in (path / "dataset").rglob("*S01*") if "raw" not in p.parts]
    outputs = [p for p in outputs if p.parent.name != "LOG"]
    assert [p.read_text() for p in outputs] == ["3\n"]


def test_init_refuses_an_existing_workspace(harbor):
    before = snapshot(harbor)
    done = sinagot("init", harbor)
    assert done.returncode == 1
    assert "already exists" in done.stderr
    assert "Traceback" not in done.stderr
    assert snapshot(harbor) == before


# -- run -----------------------------------------------------------------------------------


def test_run_in_the_workspace_folder_runs_everything_once(harbor):
    done = sinagot("run", cwd=harbor)
    assert done.returncode == 0, done.stderr
    assert "6 step(s) done, 0 failed" in done.stdout
    computed = harbor / "dataset" / "computed"
    assert len(list(computed.iterdir())) == 6
    before = snapshot(harbor / "dataset")

    again = sinagot("run", cwd=harbor)
    assert again.returncode == 0, again.stderr
    assert "0 step(s) done, 0 failed" in again.stdout
    assert snapshot(harbor / "dataset") == before
    assert all(init_runs(harbor / "dataset", rid) == ["count", "mean"] for rid in HARBOR_IDS)


def test_run_a_record_or_a_step_with_force(harbor, capsys):
    assert main(["run", str(harbor)]) == 0
    computed = harbor / "dataset" / "computed"
    first = snapshot(computed)
    capsys.readouterr()

    assert main(["run", str(harbor), "--record", "REC-20200601", "--force"]) == 0
    assert "2 step(s) done, 0 failed" in capsys.readouterr().out
    second = snapshot(computed)
    rewritten = {name for name in first if first[name][:2] != second[name][:2]}
    assert rewritten == {"REC-20200601-count.csv", "REC-20200601-mean.csv"}
    assert second["REC-20200601-count.csv"][2] == first["REC-20200601-count.csv"][2]

    assert main(["run", str(harbor), "--step", "mean", "--force"]) == 0
    assert "3 step(s) done, 0 failed" in capsys.readouterr().out
    third = snapshot(computed)
    rewritten = {name for name in second if second[name][:2] != third[name][:2]}
    assert rewritten == {f"{rid}-mean.csv" for rid in HARBOR_IDS}
    dataset = harbor / "dataset"
    assert init_runs(dataset, "REC-20200601") == ["count", "mean", "count", "mean", "mean"]
    assert init_runs(dataset, "REC-20200602") == ["count", "mean", "mean"]


def test_dry_run_says_what_would_run_and_changes_nothing(harbor):
    done = sinagot("run", "--dry-run", cwd=harbor)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("would run ")]
    assert len(lines) == 6
    assert any("REC-20200602 count" in line and "missing" in line for line in lines)
    assert not (harbor / "dataset" / "computed").exists()
    assert not (harbor / "dataset" / "LOG").exists()

    assert sinagot("run", cwd=harbor).returncode == 0
    raw = harbor / "dataset" / "raw" / "REC-20200603-raw.csv"
    os.utime(raw, (time.time() + 10, time.time() + 10))
    before = snapshot(harbor / "dataset")
    assert "state.db" in {Path(p).name for p in before}

    done = sinagot("run", harbor, "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("would run ")]
    assert sorted(line.split(":")[0] for line in lines) == [
        "would run REC-20200603 count", "would run REC-20200603 mean",
    ]  # fmt: skip
    assert all("raw/REC-20200603-raw.csv" in line for line in lines)
    assert snapshot(harbor / "dataset") == before  # outputs, logs and state.db untouched


def test_a_failing_step_exits_1_and_names_the_record_and_step(harbor):
    fail_for(harbor / "scripts" / "count.py", "REC-20200602", "bad boat")
    done = sinagot("run", cwd=harbor)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED REC-20200602 count: ValueError: bad boat" in done.stdout.splitlines()
    assert "Traceback" not in done.stdout + done.stderr
    computed = harbor / "dataset" / "computed"
    assert (computed / "REC-20200601-count.csv").is_file()
    assert (computed / "REC-20200603-mean.csv").is_file()
    assert not (computed / "REC-20200602-count.csv").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--record", "../etc"], "../etc"),
        (["--record", "nope"], "nope"),
        (["--step", "nope"], "count, mean"),
    ],
)
def test_usage_errors_exit_2_and_run_nothing(harbor, args, says):
    done = sinagot("run", *args, cwd=harbor)
    assert done.returncode == 2, done.stdout + done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    assert not (harbor / "dataset" / "computed").exists()
    assert not (harbor / "dataset" / "LOG").exists()


@pytest.mark.parametrize("command", [["run"], ["status"], ["status", "--json"], ["logs"]])
def test_a_broken_config_exits_78_with_the_file_and_key(harbor, command):
    config = harbor / "workspace.toml"
    config.write_text(BROKEN_PATTERN)
    done = sinagot(*command, cwd=harbor)
    assert done.returncode == 78, done.stdout + done.stderr
    assert "workspace.toml" in done.stderr
    assert "id_pattern" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not (harbor / "dataset" / "computed").exists()


def test_a_toml_syntax_error_exits_78_with_line_and_column(harbor, capsys):
    (harbor / "workspace.toml").write_text('[records]\nid_pattern = "REC-\\\\d+\n')
    assert main(["status", str(harbor)]) == 78
    err = capsys.readouterr().err
    assert "workspace.toml" in err
    assert "line 2" in err


# -- status --------------------------------------------------------------------------------


def test_status_json_has_one_object_per_step(harbor):
    before = status_json(harbor)
    assert len(before) == 6
    assert all(set(row) == JSON_KEYS for row in before)
    assert {(r["record_id"], r["step"]) for r in before} == {
        (rid, step) for rid in HARBOR_IDS for step in ("count", "mean")
    }
    assert {r["status"] for r in before} == {"DATA_READY"}
    assert all(r["task"] is None and r["modality"] is None for r in before)
    mean = next(r for r in before if (r["record_id"], r["step"]) == ("REC-20200601", "mean"))
    assert mean["reasons"] == ["output computed/REC-20200601-mean.csv is missing"]

    assert sinagot("run", harbor).returncode == 0
    after = status_json(harbor)
    assert {r["status"] for r in after} == {"DONE"}
    assert all(r["reasons"] == [] for r in after)
    assert status_json(harbor, "--stale") == []


def test_status_stale_lists_only_the_steps_that_would_run(harbor, capsys):
    assert main(["run", str(harbor)]) == 0
    raw = harbor / "dataset" / "raw" / "REC-20200602-raw.csv"
    os.utime(raw, (time.time() + 5, time.time() + 5))
    capsys.readouterr()

    assert main(["status", str(harbor), "--stale", "--json"]) == 0
    stale = json.loads(capsys.readouterr().out)
    assert [(r["record_id"], r["step"], r["status"]) for r in stale] == [
        ("REC-20200602", "count", "STALE"), ("REC-20200602", "mean", "STALE"),
    ]  # fmt: skip
    for row in stale:
        assert row["reasons"]
        assert all("raw/REC-20200602-raw.csv" in reason for reason in row["reasons"])

    assert main(["status", str(harbor)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RECORD", "STEP", "STATUS", "WHY"]
    end = summary_line(lines)
    assert lines[end] == "6 step(s): 4 DONE, 2 STALE"
    rows = [line.split() for line in lines[1:end]]
    assert len(rows) == 6
    assert {(r[0], r[1], r[2]) for r in rows if r[2] == "STALE"} == {
        ("REC-20200602", "count", "STALE"), ("REC-20200602", "mean", "STALE"),
    }  # fmt: skip

    assert main(["status", str(harbor), "--stale"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert summary_line(lines) == 3
    assert lines[3] == "2 step(s): 2 STALE"


# -- tasks and modalities ------------------------------------------------------------------


def test_run_a_task_and_modality_only(eeg):
    done = sinagot("run", "--task", "RS", "--modality", "EEG", cwd=eeg)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 step(s) done, 0 failed" in done.stdout
    data = eeg / "dataset"
    made = sorted(
        str(p.relative_to(data)) for p in data.rglob("*") if p.is_file() and p.suffix == ".json"
        and "processed" in p.parts
    )  # fmt: skip
    assert made == sorted(f"{rid}/RS/EEG/processed/alpha.json" for rid in EEG_IDS)
    for rid in EEG_IDS:
        assert (data / rid / "RS" / "EEG" / "processed" / "clean.csv").is_file()
        assert not (data / rid / "MMN" / "EEG" / "processed").exists()
        assert not (data / rid / "RS" / "clinical").exists()
        assert not (data / rid / "HDC" / "behavior" / "scores.json").exists()
    stale = status_json(eeg, "--stale")
    assert not [r for r in stale if (r["task"], r["modality"]) == ("RS", "EEG")]
    assert len(stale) == 21


def test_an_unknown_task_exits_2_and_names_the_valid_ones(eeg):
    done = sinagot("run", "--task", "XX", cwd=eeg)
    assert done.returncode == 2
    assert "'XX'" in done.stderr
    for name in ("RS", "MMN", "HDC"):
        assert name in done.stderr
    assert "Traceback" not in done.stderr
    assert not (eeg / "dataset" / "LOG").exists()


# -- logs ----------------------------------------------------------------------------------


def test_logs_of_a_record_and_of_a_step(harbor, capsys):
    assert main(["run", str(harbor)]) == 0
    capsys.readouterr()

    assert main(["logs", str(harbor), "--record", "REC-20200601"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert all("REC-20200601" in line for line in lines)
    assert not any("{" in line for line in lines), "readable lines, not JSON"
    assert sum(" count " in line and "Run finished" in line for line in lines) == 1
    assert sum(" mean " in line and "Run finished" in line for line in lines) == 1

    assert main(["logs", str(harbor), "--step", "mean"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 9
    assert all(" mean " in line and " count " not in line for line in lines)
    assert {rid for rid in HARBOR_IDS if any(rid in line for line in lines)} == set(HARBOR_IDS)


def flat(line: str) -> str:
    """A line with its alignment padding squeezed: what a person reads."""
    return " ".join(line.split())


def test_logs_follow_prints_new_lines(harbor):
    assert sinagot("run", harbor).returncode == 0
    log = harbor / "dataset" / "LOG" / "REC-20200601.log"
    process = subprocess.Popen(
        [*sinagot_command(), "logs", "--follow", "--record", "REC-20200601"],
        cwd=harbor, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in process.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    seen: list[str] = []

    def wait_for_line(text: str, timeout: float, poke=None, start: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in seen[start:]):
            if time.monotonic() > deadline:
                raise AssertionError(f"no line with {text!r} within {timeout} s: {seen}")
            if poke is not None:
                poke()
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.5))

    try:
        wait_for_line("Run finished", 20)  # what was there before: printed first
        entry = {"record_id": "REC-20200601", "task": None, "modality": None,
                 "step_label": "count", "step_status": 20, "message": "hello from the test",
                 "time": "2020-06-01T12:00:00+00:00", "workspace_version": None}  # fmt: skip

        def append() -> None:  # until the watcher is up, a line may go unnoticed
            with log.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

        wait_for_line("hello from the test", 20, poke=append)
        assert any("REC-20200601 count PROCESSING hello from the test" in flat(s) for s in seen)

        count = len(seen)
        assert sinagot("run", harbor, "--record", "REC-20200601", "--step", "mean",
                       "--force").returncode == 0  # fmt: skip
        wait_for_line("Run finished", 20, start=count)
        new = seen[count:]
        assert any("REC-20200601 mean DONE Run finished" in flat(s) for s in new)
        assert any("REC-20200601 mean INIT Init run" in flat(s) for s in new)
        ran = [s for s in new if "hello from the test" not in s]  # late copies of the poke
        assert not any(" count " in s for s in ran), "only the step that ran"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
            raise AssertionError("sinagot logs --follow did not stop on SIGINT") from None
        reader.join(timeout=5)
    assert process.returncode == 130
    assert "Traceback" not in process.stderr.read()
    process.stderr.close()
    process.stdout.close()


# -- fitting the shell: version, order, filters, exit status -------------------------------


def test_both_commands_say_their_version():
    from sinagot import __version__

    for command in (sinagot_command(), [sys.executable, "-m", "sinagotd"]):
        done = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0
        assert done.stdout.strip().endswith(__version__)


def test_status_lists_records_in_natural_order(harbor, capsys):
    # REC-2 before REC-10, as a person reads them (the dataset lists them in any order).
    config = harbor / "workspace.toml"
    config.write_text(config.read_text().replace(r"REC-[\\d]{8}", r"REC-\\d+"))
    raw = harbor / "dataset" / "raw"
    for old in raw.iterdir():
        old.unlink()
    for number in (10, 2, 1, 33, 3):
        (raw / f"REC-{number}-raw.csv").write_text("boat_name,country\nA,FR\n")

    assert main(["status", str(harbor), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)

    order = list(dict.fromkeys(row["record_id"] for row in rows))
    assert order == ["REC-1", "REC-2", "REC-3", "REC-10", "REC-33"]
    assert [row["step"] for row in rows[:2]] == ["count", "mean"]  # steps keep their order


def test_status_check_says_failed_waiting_or_done_by_exit_status(harbor, capsys):
    assert main(["status", str(harbor), "--check"]) == 3  # steps are due
    assert main(["run", str(harbor)]) == 0
    assert main(["status", str(harbor), "--check"]) == 0  # all done
    script = harbor / "scripts" / "mean.py"
    script.write_text(
        script.read_text().replace(
            "def run(self):", "def run(self):\n        raise RuntimeError('no mean today')"
        )
    )
    assert main(["run", str(harbor)]) == 1
    capsys.readouterr()

    assert main(["status", str(harbor), "--check", "--failed", "--json"]) == 1
    failed = json.loads(capsys.readouterr().out)
    assert {(row["step"], row["status"]) for row in failed} == {("mean", "ERROR")}
    assert len(failed) == 3


def test_logs_merge_records_in_time_order_and_align(harbor, capsys):
    assert main(["run", str(harbor)]) == 0
    capsys.readouterr()

    assert main(["logs", str(harbor), "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(entries) == 18
    times = [entry["time"] for entry in entries]
    assert times == sorted(times), "one timeline, not one record after the other"

    assert main(["logs", str(harbor)]) == 0
    lines = capsys.readouterr().out.splitlines()
    statuses = {line.index(status) for line in lines for status in ("INIT", "PROCESSING", "DONE")
                if f" {status} " in line}  # fmt: skip
    assert len(statuses) == 1, "the status column starts at the same place on every line"


def test_logs_last_lines_and_since(harbor, capsys):
    assert main(["run", str(harbor)]) == 0
    capsys.readouterr()

    assert main(["logs", str(harbor), "-n", "4", "--json"]) == 0
    last = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(last) == 4 and last[-1]["message"] == "Run finished"

    assert main(["logs", str(harbor), "--since", "1h"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 18
    assert main(["logs", str(harbor), "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""

    assert main(["logs", str(harbor), "--since", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert "--since 'yesterday'" in err and "2h" in err and len(err.splitlines()) == 1


def test_run_counts_a_step_skipped_after_a_failure_apart_from_the_failure(harbor):
    fail_for(harbor / "scripts" / "count.py", "REC-20200602", "bad boat")

    done = sinagot("run", cwd=harbor)

    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert "FAILED REC-20200602 count: ValueError: bad boat" in lines
    assert any(line.startswith("SKIPPED REC-20200602 mean: ") for line in lines), lines
    assert lines[-1] == ("4 step(s) done, 1 failed, 1 skipped after a failure in their unit"), (
        "the skipped step is not counted as a failure"
    )


# -- fitting the shell: completion, help, the grid, progress --------------------------------

GLYPH = {"DONE": "✓", "ERROR": "✗", "PROCESSING": "●", "DATA_READY": "○", "STALE": "◐",
         "INIT": "·", "DATA_NOT_AVAILABLE": "\u2013"}  # fmt: skip
LEGEND = "  ".join(f"{glyph} {name}" for name, glyph in GLYPH.items())
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def colour_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "FORCE_COLOR", "SINAGOT_DASK_ADDRESS")}  # fmt: skip
    return env | extra


def in_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run with stdout and stderr on a real pseudo-terminal; what it wrote there."""
    import pty

    controller, terminal = pty.openpty()
    proc = subprocess.Popen(args, stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode()


def grid(workspace: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [*sinagot_command(), "status", str(workspace), "--grid", *args],
        capture_output=True, text=True, timeout=120, env=env or colour_env(),
    )  # fmt: skip


def test_completion_scripts_complete_commands_options_and_paths(harbor):
    done = sinagot("completion", "bash")
    assert done.returncode == 0, done.stderr
    script = done.stdout
    assert "_shtab_sinagot_subparsers=(init run status logs completion)" in script
    for option in ("--grid", "--failed", "--wait", "--timeout", "--since", "--version"):
        assert option in script
    assert "_shtab_sinagot_status_pos_0_COMPGEN=_shtab_compgen_files" in script
    assert "_shtab_sinagot_init_pos_0_COMPGEN=_shtab_compgen_dirs" in script

    # As bash completes a line typed in the harbor folder.
    bash = shutil.which("bash")
    if bash is not None:
        path = harbor.parent / "sinagot.bash"
        path.write_text(script)
        probe = (
            f"source {path}\n"
            'try() { COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMPREPLY=();\n'
            '  _shtab_sinagot sinagot "${COMP_WORDS[-1]}" "${COMP_WORDS[-2]}";\n'
            '  echo "${COMPREPLY[*]}"; }\n'
            "try sinagot st\ntry sinagot run --wa\ntry sinagot status --gr\n"
            "try sinagot status work\ntry sinagot completion ''\n"
        )
        out = subprocess.run([bash, "-c", probe], cwd=harbor, capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.stdout.splitlines() == [
            "status", "--wait", "--grid", "workspace.toml", "bash zsh tcsh",
        ], out.stderr  # fmt: skip

    for shell in ("zsh", "tcsh"):
        done = sinagot("completion", shell)
        assert done.returncode == 0, done.stderr
        assert all(word in done.stdout for word in ("status", "grid", "wait", "timeout"))
    assert sinagot("completion", "fish").returncode == 2


def test_status_starts_without_rich_or_shtab(harbor):
    probe = (
        "import sys; from sinagot.cli import main\n"
        f"code = main(['status', {str(harbor)!r}])\n"
        "assert not {'rich', 'shtab'} & set(sys.modules), sorted(sys.modules)\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("command", ["init", "run", "status", "logs", "completion"])
def test_every_command_has_examples_in_its_help(command):
    done = sinagot(command, "--help")
    assert done.returncode == 0
    examples = done.stdout.split("\nexamples:\n", 1)[1].splitlines()
    assert examples and all(line.startswith(f"  {'cd lab && ' if 'cd ' in line else ''}sinagot ")
                            for line in examples)  # fmt: skip


def test_grid_has_a_mark_per_step_a_legend_and_the_tables_summary(harbor):
    fail_for(harbor / "scripts" / "count.py", "REC-20200602", "bad boat")
    assert sinagot("run", harbor).returncode == 1
    statuses = {(r["record_id"], r["step"]): r["status"] for r in status_json(harbor)}

    done = grid(harbor)

    assert done.returncode == 0, done.stderr
    assert not ANSI.search(done.stdout), "no colour into a pipe"
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["RECORD", "c", "m"]
    for rid, line in zip(HARBOR_IDS, lines[1:4], strict=True):
        assert line.split() == [rid, GLYPH[statuses[rid, "count"]], GLYPH[statuses[rid, "mean"]]]
    assert lines[2].split()[1] == "✗"
    assert lines[4] == "steps: c count, m mean"
    assert lines[5] == LEGEND
    table = sinagot("status", harbor).stdout.splitlines()
    assert lines[6:] == table[summary_line(table) :]

    failed = grid(harbor, "--failed")
    lines = failed.stdout.splitlines()
    assert [line.split()[0] for line in lines[1 : summary_line(lines) - 2]] == ["REC-20200602"]
    assert lines[1].split() == ["REC-20200602", "✗", GLYPH[statuses["REC-20200602", "mean"]]]
    table = sinagot("status", harbor, "--failed").stdout.splitlines()
    assert lines[summary_line(lines) :] == table[summary_line(table) :]

    one = grid(harbor, "--record", "REC-20200603").stdout.splitlines()
    assert one[1].split() == ["REC-20200603", "✓", "✓"] and one[2].startswith("steps:")

    raw = harbor / "dataset" / "raw" / "REC-20200601-raw.csv"
    os.utime(raw, (time.time() + 10, time.time() + 10))
    stale = grid(harbor, "--stale").stdout.splitlines()
    assert [line.split() for line in stale[1:3]] == [
        ["REC-20200601", "◐", "◐"],  # its raw file changed
        ["REC-20200602", "✗", "○"],  # a record is shown with every step, if one matches
    ]  # fmt: skip
    assert stale[3].startswith("steps:")
    assert stale[summary_line(stale)] == "3 step(s): 1 DATA_READY, 2 STALE"
    table = sinagot("status", harbor, "--stale").stdout.splitlines()
    assert stale[summary_line(stale) :] == table[summary_line(table) :]


def test_grid_in_a_scoped_workspace_has_a_line_per_unit(eeg):
    done = grid(eeg, "--task", "RS")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["RECORD", "TASK", "MODALITY", "p", "a", "s"]
    assert lines[1].split() == ["REC-200331-A", "RS", "EEG", "○", "·"]
    assert lines[2].split() == ["REC-200331-A", "RS", "clinical", "○"]
    assert lines[2].index("○") == lines[0].index(" s") + 1, "summary's mark in its column"
    assert len(lines) == 1 + 6 + 4
    assert lines[7] == "steps: p preprocess, a alpha, s summary"
    assert lines[summary_line(lines)] == "9 step(s): 6 DATA_READY, 3 INIT"

    lines = grid(eeg).stdout.splitlines()  # preprocess, summary, scores: numbers, then
    assert lines[0].split() == ["RECORD", "TASK", "MODALITY", "1", "2", "3", "4", "5"]
    assert "steps: 1 preprocess, 2 alpha, 3 summary, 4 mismatch, 5 scores" in lines
    assert lines[6].split() == ["REC-200331-A", "HDC", "behavior", "○"]
    assert lines[6].index("○") == lines[0].index("5")


def test_grid_colours_follow_the_terminal_no_color_and_force_color(harbor):
    piped = grid(harbor, env=colour_env(FORCE_COLOR="1"))
    assert ANSI.search(piped.stdout), "FORCE_COLOR colours even into a pipe"
    assert ANSI.sub("", piped.stdout) == grid(harbor).stdout
    assert not ANSI.search(grid(harbor, env=colour_env(NO_COLOR="1", FORCE_COLOR="1")).stdout)

    command = [*sinagot_command(), "status", str(harbor), "--grid"]
    shown = in_terminal(command, colour_env(TERM="xterm"))
    assert ANSI.search(shown), "colours on a terminal"
    plain = in_terminal(command, colour_env(TERM="xterm", NO_COLOR="1"))
    assert not ANSI.search(plain), "NO_COLOR: none, even on a terminal"
    assert "○ DATA_READY" in plain


def test_grid_and_json_together_are_a_usage_error(harbor):
    done = sinagot("status", harbor, "--grid", "--json")
    assert done.returncode == 2
    assert "not allowed with" in done.stderr
    assert done.stdout == ""


def test_grid_into_a_closed_pipe_exits_141_quietly(harbor):
    done = subprocess.run(
        f"{' '.join(sinagot_command())} status {harbor} --grid | head -1; "
        "echo ${PIPESTATUS[0]}",
        shell=True, executable=shutil.which("bash") or "/bin/bash", capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["RECORD", "c", "m"]
    assert lines[-1] in ("0", "141"), lines  # 0: it wrote everything before head left
    assert "Traceback" not in done.stderr


def test_run_draws_progress_on_a_terminal_only(harbor):
    shown = in_terminal([*sinagot_command(), "run", str(harbor)], colour_env(TERM="xterm"))
    assert "6/6" in ANSI.sub("", shown)
    assert "6 step(s) done, 0 failed" in shown
    piped = sinagot("run", harbor, "--force")
    assert piped.stdout == "6 step(s) done, 0 failed\n"
    assert piped.stderr == ""
