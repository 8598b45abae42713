"""End-to-end tests of the daemon, sinagotd (DESIGN.md §8).

Every test runs the real daemon as a subprocess on a copy of example/harbor, with an embedded
Dask cluster of one worker, and reads the JSON events it writes on stdout (one per line).
Tests wait for events with deadlines; the only intentional sleep is the pace of the
slow-copy writer, which *is* the behaviour under test.

Each daemon is started in its own session (process group); the `sinagotd` fixture kills the
whole group after the test, so that no Dask worker outlives it.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from daemonproc import DaemonProcess, clean_env, group_members

from sinagot import __version__

#: The daemon's tests need signals, process groups, /proc and AF_UNIX sockets.
LINUX_ONLY = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="signals, process groups, /proc, AF_UNIX"
)
pytestmark = LINUX_ONLY

SETTLE = 0.3  # seconds: short, so that tests are quick
IDS = ("REC-20200601", "REC-20200602", "REC-20200603")
STEPS = ("count", "mean")
LIGHT_DASK = '\n[dask]\nn_workers = 1\ndashboard_address = ":0"\n'
HEADER = "boat_name,country,size\n"


#: The fixture's daemons: a `DaemonProcess` that follows its events (each `wait_for` returns
#: the next match; `events` holds what the test went through) and fails a test cleanly.
Sinagotd = DaemonProcess


@pytest.fixture
def sinagotd(tmp_path: Path) -> Iterator[Callable[..., Sinagotd]]:
    """Start daemons; after the test, every one of them and its workers is gone."""
    started: list[Sinagotd] = []

    def start(
        workspace: Path, *flags: str, settle: float = SETTLE, env: dict[str, str] | None = None
    ) -> Sinagotd:
        number = len(started)
        daemon = DaemonProcess(
            workspace, "--settle-seconds", str(settle), *flags, number=number,
            env=env or clean_env(), stderr_path=tmp_path / f"sinagotd-{number}.stderr",
            follow=True, error=functools.partial(pytest.fail.Exception, pytrace=False),
        )  # fmt: skip
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.close()


@pytest.fixture
def ws(harbor: Path) -> Path:
    """example/harbor with a light embedded cluster (one worker, any free dashboard port)."""
    with (harbor / "workspace.toml").open("a") as file:
        file.write(LIGHT_DASK)
    return harbor


# -- workspace helpers ------------------------------------------------------------------------


def _rows(n: int, start: int = 0) -> str:
    countries = ("FR", "UK", "NL")
    return "".join(f"Boat {i},{countries[i % 3]},{8 + i % 5}\n" for i in range(start, start + n))


def write_record(ws: Path, record_id: str, n_rows: int = 4) -> Path:
    path = ws / "dataset" / "raw" / f"{record_id}-raw.csv"
    path.write_text(HEADER + _rows(n_rows))
    return path


def atomic_write(path: Path, text: str, temp_name: str) -> None:
    """As editors and copy tools do: a temp file in the same folder, then a rename."""
    temp = path.with_name(temp_name)
    temp.write_text(text)
    os.replace(temp, path)


def counted_boats(ws: Path, record_id: str) -> int:
    """What the count step says: the number of boats (rows) of the record."""
    counts = pd.read_csv(ws / "dataset" / "computed" / f"{record_id}-count.csv")
    return int(counts["boat_name"].sum())


def raw_rows(ws: Path, record_id: str) -> int:
    return len(pd.read_csv(ws / "dataset" / "raw" / f"{record_id}-raw.csv"))


def make_count_fail_for(ws: Path, record_id: str, message: str) -> None:
    script = ws / "scripts" / "count.py"
    text = script.read_text()
    fail = f"        if self.id == {record_id!r}:\n            raise ValueError({message!r})\n"
    script.write_text(text.replace("    def run(self):\n", "    def run(self):\n" + fail))


def _utc(timestamp: str) -> datetime:
    when = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    assert when.utcoffset() is not None and when.utcoffset().total_seconds() == 0, timestamp
    return when


def _pairs(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((event["record_id"], event["step"]) for event in events)


ALL_PAIRS = sorted((record_id, step) for record_id in IDS for step in STEPS)


# -- scenarios --------------------------------------------------------------------------------


def test_initial_scan_sigterm_and_a_second_start_with_nothing_to_do(ws, sinagotd):
    daemon = sinagotd(ws)
    started = daemon.wait_for("daemon.started")
    assert started["workspace"] == str(ws / "workspace.toml")
    assert started["version"] == __version__
    assert started["scheduler"] == "embedded"
    assert str(started["dashboard"]).startswith("http")

    ready = daemon.wait_for("daemon.ready")
    assert (ready["units"], ready["stale_units"]) == (3, 3)
    assert ready["duration_s"] >= 0
    submitted = daemon.seen("step.submitted")
    assert _pairs(submitted) == ALL_PAIRS
    for event in submitted:
        assert (event["task"], event["modality"]) == (None, None)
        expected = f"output computed/{event['record_id']}-{event['step']}.csv is missing"
        assert expected in event["reasons"]

    daemon.wait_for("daemon.idle")
    finished = daemon.seen("step.finished")
    assert _pairs(finished) == ALL_PAIRS
    assert all(event["duration_s"] >= 0 for event in finished)
    assert not daemon.seen("step.failed")
    for record_id in IDS:
        assert (ws / "dataset" / "computed" / f"{record_id}-mean.csv").is_file()
        assert counted_boats(ws, record_id) == raw_rows(ws, record_id)

    assert daemon.stop() == 0
    names = [event["event"] for event in daemon.events]
    assert names[-2:] == ["daemon.stopping", "daemon.stopped"], names
    assert daemon.events[-2]["in_flight"] == 0
    assert daemon.events[-1]["in_flight"] == 0
    for event in daemon.events:
        assert event["level"] in ("debug", "info", "warning", "error", "critical"), event
        _utc(event["timestamp"])
    deadline = time.monotonic() + 15
    while (left := group_members(daemon.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)  # polling /proc for the workers' exit, with a deadline
    assert not left, f"processes left behind after SIGTERM: {left}"
    assert "Traceback" not in daemon.stderr()

    again = sinagotd(ws)
    ready = again.wait_for("daemon.ready")
    assert (ready["units"], ready["stale_units"]) == (3, 0)
    again.wait_for("daemon.idle")
    assert not again.seen("step.submitted")
    assert again.stop() == 0


def test_file_copied_slowly_is_processed_once_from_its_complete_content(ws, sinagotd):
    daemon = sinagotd(ws, settle=1.0)
    daemon.wait_for("daemon.idle")
    mark = daemon.mark()
    path = ws / "dataset" / "raw" / "REC-20200604-raw.csv"
    with path.open("w") as file:
        for chunk in range(5):
            file.write((HEADER if chunk == 0 else "") + _rows(2, start=2 * chunk))
            file.flush()
            if chunk < 4:
                # The copy's own pace (0.6 s between chunks, settle 1.0 s): the behaviour
                # under test is that a file still growing this slowly starts nothing.
                time.sleep(0.6)
    copied = datetime.now(UTC)

    def idle_after_the_copy(event: dict[str, Any]) -> bool:
        return event["event"] == "daemon.idle" and _utc(event["timestamp"]) > copied

    daemon.wait_for(idle_after_the_copy)
    submitted = daemon.seen("step.submitted", since=mark, record_id="REC-20200604", step="count")
    assert len(submitted) == 1, submitted
    assert _utc(submitted[0]["timestamp"]) >= copied
    assert counted_boats(ws, "REC-20200604") == 10


def test_replaced_file_is_reprocessed_and_hidden_temp_names_start_nothing(ws, sinagotd):
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    mark = daemon.mark()
    raw = ws / "dataset" / "raw"
    # rsync writes into a hidden temp name first; that file alone must start nothing.
    hidden = raw / ".REC-20200604-raw.csv.XyZ123"
    hidden.write_text(HEADER + _rows(6))
    atomic_write(raw / "REC-20200601-raw.csv", HEADER + _rows(7), "upload-20200601.tmp")

    daemon.wait_for("step.finished", record_id="REC-20200601", step="count")
    daemon.wait_for("daemon.idle")
    count = daemon.seen("step.submitted", since=mark, record_id="REC-20200601", step="count")
    assert len(count) == 1, count
    assert any("raw/REC-20200601-raw.csv" in reason for reason in count[0]["reasons"]), count
    assert counted_boats(ws, "REC-20200601") == 7
    assert not daemon.seen("step.submitted", since=mark, record_id="REC-20200604", step="count")

    mark = daemon.mark()
    os.replace(hidden, raw / "REC-20200604-raw.csv")  # rsync's final rename
    daemon.wait_for("step.finished", record_id="REC-20200604", step="count")
    daemon.wait_for("daemon.idle")
    assert counted_boats(ws, "REC-20200604") == 6
    assert _pairs(daemon.seen("step.submitted", since=mark)) == [
        ("REC-20200604", "count"),
        ("REC-20200604", "mean"),
    ]


def test_failing_step_is_reported_and_the_daemon_goes_on(ws, sinagotd):
    make_count_fail_for(ws, "REC-20200604", "corrupted header in REC-20200604")
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")

    write_record(ws, "REC-20200604")
    failed = daemon.wait_for("step.failed", record_id="REC-20200604")
    assert failed["step"] == "count"
    assert (failed["task"], failed["modality"]) == (None, None)
    assert "corrupted header in REC-20200604" in failed["error"]
    assert "\n" not in failed["error"].strip(), failed["error"]
    assert failed["duration_s"] >= 0
    daemon.wait_for("daemon.idle")
    assert not (ws / "dataset" / "computed" / "REC-20200604-count.csv").exists()

    write_record(ws, "REC-20200605", n_rows=3)
    daemon.wait_for("step.finished", record_id="REC-20200605", step="count")
    daemon.wait_for("daemon.idle")
    assert counted_boats(ws, "REC-20200605") == 3
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_changed_script_reprocesses_exactly_its_step(ws, sinagotd):
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    mark = daemon.mark()
    with (ws / "scripts" / "mean.py").open("a") as file:
        file.write("\n# rounding reviewed on 2020-06-05\n")

    daemon.wait_for("daemon.idle")
    submitted = daemon.seen("step.submitted", since=mark)
    assert _pairs(submitted) == [(record_id, "mean") for record_id in IDS]
    for event in submitted:
        assert "script mean.py changed since last run" in event["reasons"], event
    assert _pairs(daemon.seen("step.finished", since=mark)) == [(r, "mean") for r in IDS]


def test_invalid_config_edit_is_reported_and_ignored(ws, sinagotd):
    config = ws / "workspace.toml"
    good = config.read_text()
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")

    broken = good.replace('id_pattern = "REC-[\\\\d]{8}"', 'id_pattern = "("')
    assert broken != good
    config.write_text(broken)
    invalid = daemon.wait_for("config.invalid")
    assert invalid["path"] == str(config)
    assert "workspace.toml" in invalid["error"] and "id_pattern" in invalid["error"]

    write_record(ws, "REC-20200604", n_rows=5)  # still picked up, with the old config
    daemon.wait_for("step.finished", record_id="REC-20200604", step="count")
    assert counted_boats(ws, "REC-20200604") == 5

    config.write_text(good)
    reloaded = daemon.wait_for("config.reloaded")
    assert reloaded["path"] == str(config)

    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for("config.reloaded")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_once_exits_0_when_every_step_succeeded(ws, sinagotd):
    daemon = sinagotd(ws, "--once")
    assert daemon.wait() == 0
    names = [event["event"] for event in daemon.events]
    assert "daemon.idle" in names, names
    idle = names.index("daemon.idle")
    assert _pairs(daemon.seen("step.finished")) == ALL_PAIRS
    assert all(i < idle for i, name in enumerate(names) if name == "step.finished")
    assert "step.submitted" not in names[idle:]
    for record_id in IDS:
        assert counted_boats(ws, record_id) == raw_rows(ws, record_id)


def test_once_exits_1_when_a_step_failed(ws, sinagotd):
    make_count_fail_for(ws, "REC-20200602", "no boats on 2020-06-02")
    daemon = sinagotd(ws, "--once")
    assert daemon.wait() == 1
    failed = daemon.seen("step.failed")
    assert _pairs(failed) == [("REC-20200602", "count")]
    assert "no boats on 2020-06-02" in failed[0]["error"]
    finished = _pairs(daemon.seen("step.finished"))
    assert ("REC-20200601", "count") in finished and ("REC-20200603", "count") in finished


def test_broken_config_at_start_exits_78(ws, sinagotd):
    config = ws / "workspace.toml"
    config.write_text(config.read_text().replace('"REC-[\\\\d]{8}"', '"("'))
    daemon = sinagotd(ws, "--once")
    assert daemon.wait() == 78
    stderr = daemon.stderr()
    assert "workspace.toml" in stderr and "id_pattern" in stderr, stderr
    assert "Traceback" not in stderr
    assert not daemon.seen("step.submitted")


def test_second_daemon_on_the_same_workspace_refuses_to_start(ws, sinagotd):
    first = sinagotd(ws)
    first.wait_for("daemon.ready")
    second = sinagotd(ws)
    began = time.monotonic()
    status = second.wait(timeout=30)
    assert status != 0
    assert time.monotonic() - began < 15  # at once: no cluster, no scan
    said = second.stderr() + "\n".join(json.dumps(event) for event in second.events)
    assert "already" in said and "pid" in said, said
    assert str(first.proc.pid) in said, said
    assert not second.seen("step.submitted")

    first.wait_for("daemon.idle")
    write_record(ws, "REC-20200604")  # the first one is undisturbed
    first.wait_for("step.finished", record_id="REC-20200604", step="count")
    assert first.stop() == 0


def test_sd_notify(ws, sinagotd, tmp_path):
    address = tmp_path / "notify.sock"
    received: list[tuple[str, datetime]] = []

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(0.2)

        def receive_until(done: Callable[[list[str]], bool], timeout: float = 30) -> None:
            deadline = time.monotonic() + timeout
            while not done([message for message, _ in received]):
                if time.monotonic() > deadline:
                    pytest.fail(f"sd_notify messages so far: {received}")
                try:
                    data = sock.recv(4096)
                except TimeoutError:
                    continue
                for line in data.decode().splitlines():
                    received.append((line, datetime.now(UTC)))

        env = clean_env(NOTIFY_SOCKET=str(address), WATCHDOG_USEC="1000000")
        daemon = sinagotd(ws, env=env)
        receive_until(lambda messages: "READY=1" in messages)
        ready = daemon.wait_for("daemon.ready")
        ready_at = next(when for message, when in received if message == "READY=1")
        assert _utc(ready["timestamp"]) <= ready_at
        receive_until(lambda messages: messages.count("WATCHDOG=1") >= 2)
        assert "STOPPING=1" not in [message for message, _ in received]

        assert daemon.stop() == 0
        receive_until(lambda messages: "STOPPING=1" in messages)
    messages = [message for message, _ in received]
    assert messages[0] == "READY=1" and messages[-1] == "STOPPING=1", messages


def test_polling_observer_sees_new_and_replaced_files(ws, sinagotd):
    with (ws / "workspace.toml").open("a") as file:
        file.write('\n[daemon]\nobserver = "polling"\npolling_seconds = 0.2\n')
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")

    write_record(ws, "REC-20200604", n_rows=5)
    daemon.wait_for("step.finished", record_id="REC-20200604", step="count")
    daemon.wait_for("daemon.idle")
    assert counted_boats(ws, "REC-20200604") == 5

    mark = daemon.mark()
    raw = ws / "dataset" / "raw" / "REC-20200602-raw.csv"
    atomic_write(raw, HEADER + _rows(9), "upload-20200602.tmp")
    submitted = daemon.wait_for("step.submitted", record_id="REC-20200602", step="count")
    assert any("raw/REC-20200602-raw.csv" in reason for reason in submitted["reasons"])
    daemon.wait_for("step.finished", record_id="REC-20200602", step="count")
    daemon.wait_for("daemon.idle")
    assert counted_boats(ws, "REC-20200602") == 9
    assert {event["record_id"] for event in daemon.seen("step.submitted", since=mark)} == {
        "REC-20200602"
    }


def test_ignored_paths_submit_nothing(ws, sinagotd):
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    mark = daemon.mark()
    dataset = ws / "dataset"
    with (dataset / "LOG" / "REC-20200601.log").open("a") as file:
        file.write('{"message": "a note appended by hand"}\n')
    (dataset / "LOG" / "REC-20200602-raw.csv").write_text(HEADER + _rows(2))
    (dataset / ".sinagot" / "REC-20200603-raw.csv").write_text(HEADER + _rows(2))
    (dataset / "raw" / "notes.txt").write_text("harbor closed on Sunday\n")
    (dataset / "raw" / "REC-20200601-notes.txt").write_text("windy\n")

    # A barrier: a real new record, written after the others and settled after them.
    write_record(ws, "REC-20200604")
    daemon.wait_for("step.finished", record_id="REC-20200604", step="mean")
    daemon.wait_for("daemon.idle")
    assert _pairs(daemon.seen("step.submitted", since=mark)) == [
        ("REC-20200604", "count"),
        ("REC-20200604", "mean"),
    ]


def test_a_failed_step_is_not_retried_until_asked_with_run_force(ws, sinagotd):
    """While the daemon runs, `sinagot run --force` asks it to retry instead of racing it."""
    script = ws / "scripts" / "count.py"
    original = script.read_text()
    make_count_fail_for(ws, "REC-20200604", "flaky sensor in REC-20200604")
    daemon = sinagotd(ws)
    daemon.wait_for("daemon.idle")
    write_record(ws, "REC-20200604")
    daemon.wait_for("step.failed", record_id="REC-20200604", step="count")
    daemon.wait_for("daemon.idle")

    # A rescan does not retry it: nothing about it changed.
    mark = daemon.mark()
    os.kill(daemon.proc.pid, signal.SIGHUP)
    daemon.wait_for("config.reloaded")
    daemon.wait_for("daemon.idle")
    assert not daemon.seen("step.submitted", since=mark, record_id="REC-20200604", step="count")

    # Fixing the script retries it.
    script.write_text(original)
    daemon.wait_for("step.submitted", record_id="REC-20200604", step="count")
    daemon.wait_for("step.finished", record_id="REC-20200604", step="count")
    daemon.wait_for("daemon.idle")

    mark = daemon.mark()
    command = [sys.executable, "-m", "sinagot", "run", str(ws), "--record", "REC-20200604",
               "--step", "count", "--force"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"sinagotd pid {daemon.proc.pid} is running" in result.stdout
    daemon.wait_for("run.requested", force=True, step="count")
    daemon.wait_for("step.finished", record_id="REC-20200604", step="count")
    assert _pairs(daemon.seen("step.submitted", since=mark)) == [("REC-20200604", "count")]
    assert daemon.stop() == 0
